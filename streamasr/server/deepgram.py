"""Deepgram's live streaming API, `WS /v1/listen`, as a codec for the runner: binary audio and
`KeepAlive` / `Finalize` / `CloseStream` in; `Results`, `SpeechStarted`, `UtteranceEnd`,
`Metadata` and `Error` out. Where it differs from Deepgram's service: `docs/apis.md`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.websockets import WebSocket

from streamasr import SAMPLE_RATE, __version__
from streamasr.audio.pcm import decode_pcm
from streamasr.audio.wav import MAX_WAV_HEADER_BYTES, read_wav_header
from streamasr.errors import AudioFormatError
from streamasr.events import (
    ErrorEvent,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    Word,
    seconds,
)
from streamasr.models.base import ModelInfo
from streamasr.server.asgi import Refused
from streamasr.server.deepgram_query import BadRequest, ListenOptions, bad_request
from streamasr.server.protocol import (
    CLOSE_CODES,
    MAX_TEXT_BYTES,
    Action,
    Audio,
    AudioFormat,
    Close,
    CloseCode,
    End,
    ErrorCode,
    Flush,
    KeepAlive,
    Mark,
    ProtocolError,
    Reply,
    SendError,
    ServerMessage,
    SessionEnded,
    SessionStart,
    Start,
    error_event,
    load_json,
)
from streamasr.server.session_io import ServerContext

LISTEN_PATH = "/v1/listen"
_SCHEMA_ERRORS = (ErrorCode.BAD_JSON, ErrorCode.BAD_MESSAGE, ErrorCode.UNKNOWN_TYPE)
CHANNEL = [0, 1]  # `channel_index`: channel 0 of 1, as Deepgram says of a mixed stream


@dataclass(frozen=True)
class _SchemaError(ErrorEvent):
    """A client text message that is not one of Deepgram's, with the text, for `message`."""

    client_text: str = ""


def _plain(word: str) -> str:
    """A word as Deepgram writes it without punctuate: lowercase, no punctuation around it."""
    text = word.strip().lower()
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[start:end]


class State(enum.Enum):
    AWAITING_HEADER = "awaiting_header"  # a WAV stream whose header has not all come
    STREAMING = "streaming"
    ENDED = "ended"  # ending or failed: further input is ignored


class DeepgramCodec:
    """One `/v1/listen` connection: Deepgram's messages in, `Action`s out; the session's
    messages out as Deepgram's `Results`, `SpeechStarted`, `UtteranceEnd`, `Metadata`, `Error`."""

    def __init__(
        self, options: ListenOptions, *, model: ModelInfo, max_frame_bytes: int, request_id: str
    ) -> None:
        self.options = options
        self.max_frame_bytes = max_frame_bytes
        self.request_id = request_id
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamasr:{model.name}"))
        self.model_info = {"name": model.name, "version": __version__, "arch": model.name}
        self.state = State.STREAMING if options.audio else State.AWAITING_HEADER
        self._format = options.audio
        self._pending = b""  # the WAV header so far, then the bytes of a split sample
        self._sha256 = hashlib.sha256()  # of every audio byte received
        self._frames = 0  # sample frames received, at the stream's rate
        self._created = datetime.now(UTC)
        self._in_flush = False  # between Mark("flush") and Mark("flushed")
        self._flush_answered = False  # a from_finalize final went out for this flush
        self._final_end = 0  # engine sample where the last final ended
        self._last_word_end: int | None = None  # owed an UtteranceEnd at the next pause
        self._metadata_sent = False

    # ---------------------------------------------------------------- client -> actions
    def open(self) -> list[Action]:
        """Deepgram has no start message: raw audio starts the session now."""
        self._created = datetime.now(UTC)
        return [Start(self._start())] if self._format else []

    def receive_text(self, text: str) -> list[Action]:
        if self.state is State.ENDED:
            return []
        if len(text.encode("utf-8", "replace")) > MAX_TEXT_BYTES:
            return self._fail(ErrorCode.FRAME_TOO_BIG, f"text message over {MAX_TEXT_BYTES} B")
        try:
            obj = load_json(text)
        except ProtocolError as exc:
            return self._schema_error(ErrorCode.BAD_JSON, exc.message, text)
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str):
            return self._schema_error(
                ErrorCode.BAD_MESSAGE, "a message must be a JSON object with a string type", text
            )
        if kind == "KeepAlive":
            return [KeepAlive()]
        if kind == "Finalize":
            return [KeepAlive(), self._finalize()]
        if kind == "CloseStream":
            return self._close_stream()
        if kind == "Configure":
            return [KeepAlive(), Reply((self._configure_failure("keyterms" in obj),))]
        return self._schema_error(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {kind[:40]!r}; expected KeepAlive, Finalize, CloseStream "
            "or Configure",
            text,
        )

    def receive_bytes(self, data: bytes) -> list[Action]:
        if self.state is State.ENDED:
            return []
        if not data:  # Deepgram's deprecated end of stream
            return self._close_stream()
        if len(data) > self.max_frame_bytes:
            message = f"binary frame of {len(data)} B is over the limit, {self.max_frame_bytes} B"
            return self._fail(ErrorCode.FRAME_TOO_BIG, message)
        self._sha256.update(data)
        data, self._pending = self._pending + data, b""
        actions: list[Action] = []
        if self._format is None:
            try:
                found = read_wav_header(data)
            except AudioFormatError as exc:
                return self._fail(ErrorCode.UNSUPPORTED_AUDIO, str(exc), CloseCode.POLICY)
            if found is None:
                if len(data) > MAX_WAV_HEADER_BYTES:
                    message = f"no WAV data chunk in the first {MAX_WAV_HEADER_BYTES} B"
                    return self._fail(ErrorCode.UNSUPPORTED_AUDIO, message, CloseCode.POLICY)
                self._pending = data
                return [KeepAlive()]
            wav, offset = found
            self._format = AudioFormat(wav.encoding, wav.sample_rate, wav.channels)
            self.state = State.STREAMING
            data = data[offset:]
            actions.append(Start(self._start()))
        return actions + self._audio(data, self._format)

    def end(self, reason: str, *, close_code: CloseCode = CloseCode.NORMAL) -> list[Action]:
        """A server-side end (idle, max_length, shutdown): finalise if a session is open."""
        state, self.state = self.state, State.ENDED
        if state is State.STREAMING:
            return [End(reason)]
        if state is State.AWAITING_HEADER:
            return [Reply(tuple(self._metadata())), Close(close_code, reason)]
        return []

    def _start(self) -> SessionStart:
        assert self._format is not None
        return SessionStart(
            audio=self._format,
            language=self.options.language,
            partials=self.options.interim_results,
            word_timestamps=True,
            keywords=self.options.keywords,
        )

    def _audio(self, data: bytes, fmt: AudioFormat) -> list[Action]:
        whole = len(data) - len(data) % fmt.bytes_per_frame
        data, self._pending = data[:whole], data[whole:]
        if not data:
            return [KeepAlive()]
        try:
            samples = decode_pcm(data, encoding=fmt.encoding, channels=fmt.channels)
        except AudioFormatError as exc:  # NaN or inf in float audio
            return [SendError(error_event(ErrorCode.BAD_AUDIO, f"frame dropped: {exc}"))]
        self._frames += samples.size
        return [Audio(samples)]

    def _configure_failure(self, keyterms: bool) -> str:
        code = "KEYTERMS_NOT_SUPPORTED" if keyterms else "INTERNAL_ERROR"
        failure = {
            "type": "ConfigureFailure",
            "request_id": self.request_id,
            "code": f"CONFIGURE_{code}",
            "description": "this server does not change a stream's settings mid-stream",
        }
        return json.dumps(failure)

    def _finalize(self) -> Action:
        if self.state is State.STREAMING:
            return Flush()
        return Reply((self._empty_final(),))  # no session yet: nothing to finalise

    def _close_stream(self) -> list[Action]:
        state, self.state = self.state, State.ENDED
        if state is State.STREAMING:
            return [End("client")]
        return [Reply(tuple(self._metadata())), Close(CloseCode.NORMAL, "")]

    def _schema_error(self, code: ErrorCode, message: str, text: str) -> list[Action]:
        return [SendError(_SchemaError(code.value, message, client_text=text[:1000]))]

    def _fail(
        self, code: ErrorCode, message: str, close_code: CloseCode | None = None
    ) -> list[Action]:
        self.state = State.ENDED
        close = close_code or CLOSE_CODES[code] or CloseCode.POLICY
        return [SendError(error_event(code, message)), Close(close, code.value.replace("_", " "))]

    # ---------------------------------------------------------------- messages -> frames
    def encode(self, message: ServerMessage) -> list[str]:
        """The frames of one outgoing message; Deepgram has none for several of them."""
        if isinstance(message, TranscriptFinal):
            return [self._final(message)]
        if isinstance(message, TranscriptPartial):
            return [self._partial(message)] if self.options.interim_results else []
        if isinstance(message, SpeechStarted) and self.options.vad_events:
            frame = {
                "type": "SpeechStarted",
                "channel": CHANNEL,
                "timestamp": seconds(message.sample),
            }
            return [json.dumps(frame)]
        if isinstance(message, Mark):
            return self._mark(message.kind)
        if isinstance(message, ErrorEvent):
            return [self._error(message), *(self._metadata() if message.fatal else [])]
        if isinstance(message, SessionEnded):
            return self._metadata()
        return []  # SessionStarted, SpeechStopped, WarningEvent

    def _mark(self, kind: str) -> list[str]:
        if kind == "flush":
            self._in_flush, self._flush_answered = True, False
        elif kind == "flushed":
            self._in_flush = False
            if not self._flush_answered:  # clients wait for one from_finalize final
                return [self._empty_final()]
        elif kind == "settled" and self._last_word_end is not None:
            if self.options.utterance_end_ms is None:
                return []
            end, self._last_word_end = self._last_word_end, None
            frame = {"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": seconds(end)}
            return [json.dumps(frame)]
        return []

    def _final(self, final: TranscriptFinal) -> str:
        words = [w for w in final.words if _plain(w.word)]
        confidence = sum(w.probability for w in words) / len(words) if words else 0.0
        if self._in_flush:
            self._flush_answered = True
        self._final_end = final.end_sample
        if final.text.strip():
            self._last_word_end = words[-1].end_sample if words else final.end_sample
        return self._results(
            final.text,
            final.start_sample,
            final.end_sample,
            confidence=confidence,
            words=words,
            final=True,
            from_finalize=self._in_flush,
            language=final.language,
        )

    def _partial(self, partial: TranscriptPartial) -> str:
        return self._results(
            partial.text, partial.start_sample, partial.end_sample, language=partial.language
        )

    def _empty_final(self) -> str:
        """The answer to a Finalize that finalised nothing."""
        return self._results("", self._final_end, self._final_end, final=True, from_finalize=True)

    def _results(
        self,
        text: str,
        start_sample: int,
        end_sample: int,
        *,
        confidence: float = 0.0,
        words: list[Word] | None = None,
        final: bool = False,
        from_finalize: bool = False,
        language: str | None = None,
    ) -> str:
        if self.options.punctuate:
            transcript = text.strip()
        else:
            transcript = " ".join(word for word in map(_plain, text.split()) if word)
        alternative: dict[str, Any] = {
            "transcript": transcript,
            "confidence": round(confidence, 4),
            "words": [self._word(w) for w in words or ()],
        }
        if language is not None:
            alternative["languages"] = [language]
        body = {
            "type": "Results",
            "channel_index": CHANNEL,
            "duration": round((end_sample - start_sample) / SAMPLE_RATE, 3),
            "start": seconds(start_sample),
            "is_final": final,
            "speech_final": final and self.options.endpointing,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [alternative]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": self.model_info,
                "model_uuid": self.model_uuid,
            },
        }
        return json.dumps(body, ensure_ascii=False)

    def _word(self, word: Word) -> dict[str, Any]:
        plain = _plain(word.word)
        return {
            "word": plain,
            "start": seconds(word.start_sample),
            "end": seconds(word.end_sample),
            "confidence": round(word.probability, 4),
            "punctuated_word": word.word.strip() if self.options.punctuate else plain,
        }

    def _error(self, error: ErrorEvent) -> str:
        schema = error.code in _SCHEMA_ERRORS
        variant = "SchemaError" if schema else error.code.title().replace("_", "")
        body = {"type": "Error", "variant": variant, "description": error.message}
        body["code"] = error.code  # deprecated in Deepgram's, streamasr's code here
        if isinstance(error, _SchemaError):
            body["message"] = error.client_text
        return json.dumps(body, ensure_ascii=False)

    def _metadata(self) -> list[str]:
        """The summary Deepgram sends last: once, and with the model only if audio came."""
        if self._metadata_sent:
            return []
        self._metadata_sent = True
        fmt = self._format
        rate = fmt.sample_rate if fmt else 1
        body: dict[str, Any] = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha256.hexdigest(),
            "created": self._created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self._frames / rate, 6),
            "channels": fmt.channels if fmt and self._frames else 0,
        }
        if self._frames:
            body["models"] = [self.model_uuid]
            body["model_info"] = {self.model_uuid: self.model_info}
        return [json.dumps(body)]


def deepgram_codec(websocket: WebSocket, ctx: ServerContext) -> DeepgramCodec:
    """The codec of a `/v1/listen` handshake; raises `Refused` (Deepgram's 400) for a bad query."""
    request_id = str(uuid.uuid4())
    try:
        options = ListenOptions.from_query(websocket.query_params, ctx.model.info)
    except BadRequest as exc:
        raise Refused(bad_request(str(exc), request_id)) from None
    return DeepgramCodec(
        options,
        model=ctx.model.info,
        max_frame_bytes=ctx.config.max_frame_bytes,
        request_id=request_id,
    )
