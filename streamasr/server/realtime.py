"""OpenAI's Realtime transcription sessions over WebSocket (`/v1/realtime`), as a codec.

The client sends JSON events: `session.update` (the current shape, `session.type =
"transcription"`) or the older `transcription_session.update`, `input_audio_buffer.append`
(base64 audio), `.commit` and `.clear`. The server answers with `session.created` at once, then
`session.updated`, and for each item of speech:

- with `turn_detection` `server_vad` (the default): `input_audio_buffer.speech_started`, deltas
  as the transcript's stable prefix grows, `speech_stopped`, `committed`, then
  `conversation.item.input_audio_transcription.completed`. Deltas are append-only; the
  completed transcript is authoritative when the final decode revises what the deltas said.
- with `turn_detection: null`: nothing until the client commits; then `committed`, one delta
  and `completed` with everything said since the previous commit.

Audio is `audio/pcm` (16-bit, 24 kHz), `audio/pcmu` or `audio/pcma` (G.711, 8 kHz). The format
is fixed once audio has been appended. Errors are `error` events in OpenAI's shape; they leave
the session open, as OpenAI's do.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import string
from collections import deque
from typing import Any

from starlette.websockets import WebSocket

from streamasr import SAMPLE_RATE
from streamasr.audio.pcm import decode_pcm
from streamasr.events import (
    ErrorEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
)
from streamasr.models.base import ModelInfo
from streamasr.server.protocol import (
    Action,
    Audio,
    AudioFormat,
    Close,
    CloseCode,
    End,
    Flush,
    KeepAlive,
    Mark,
    ProtocolError,
    Reply,
    ServerMessage,
    SessionStart,
    Start,
    load_json,
)
from streamasr.server.realtime_session import FORMATS, RealtimeError, RealtimeSettings
from streamasr.server.session_io import ServerContext

REALTIME_PATH = "/v1/realtime"
MIN_COMMIT_MS = 100.0  # OpenAI refuses to commit less audio than this
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id in OpenAI's form: `event_` plus 21 letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(21))


def realtime_codec(websocket: WebSocket, ctx: ServerContext) -> RealtimeCodec:
    """`?intent=transcription` and `?model=` are accepted, neither needed: every session
    here is a transcription session, on the loaded model."""
    return RealtimeCodec(ctx.model.info, max_frame_bytes=ctx.config.max_frame_bytes)


class RealtimeCodec:
    """One Realtime transcription session: client events in, runner actions out; the
    session's events out as Realtime server events."""

    def __init__(self, model: ModelInfo, *, max_frame_bytes: int) -> None:
        self.model = model
        self.max_frame_bytes = max_frame_bytes
        self.settings = RealtimeSettings(model, new_id("sess_"))
        self.started = False  # the engine session exists (the first append started it)
        self.ended = False
        self._carry = b""  # the odd byte of a 16-bit append, for the next one
        self._buffered = 0  # input samples appended since the last commit
        self._item: str | None = None  # the item being spoken (server_vad) or buffered (manual)
        self._previous: str | None = None  # the last committed item
        self._sent = ""  # the text the deltas of `_item` have sent so far
        self._pending: str | None = None  # the committed item awaiting its final
        self._texts: list[str] = []  # manual: finals since the last commit
        # the flushes asked for and not yet begun: ("commit", seconds of audio) or ("clear", 0)
        self._flushes: deque[tuple[str, float]] = deque()
        self._flushing: tuple[str, float] | None = None  # the flush under way
        self._stopped = False  # an utterance stopped during the flush under way

    # ---------------------------------------------------------------- client events
    def open(self) -> list[Action]:
        return [Reply((self._event("session.created", session=self.settings.session()),))]

    def receive_bytes(self, data: bytes) -> list[Action]:
        return self._error(
            "binary frames are not part of this API: send input_audio_buffer.append events",
            "invalid_event",
        )

    def receive_text(self, text: str) -> list[Action]:
        if self.ended:
            return []
        try:
            event = load_json(text)
        except ProtocolError as exc:
            return self._error(exc.message, "invalid_json")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return self._error("an event is a JSON object with a string `type`", param="type")
        kind = event["type"]
        try:
            if kind == "input_audio_buffer.append":
                return [KeepAlive(), *self._append(event.get("audio"))]
            if kind == "input_audio_buffer.commit":
                return [KeepAlive(), *self._commit()]
            if kind == "input_audio_buffer.clear":
                return [KeepAlive(), *self._clear()]
            if kind == "session.update":
                return [KeepAlive(), *self._update(event.get("session"), beta=False)]
            if kind == "transcription_session.update":
                return [KeepAlive(), *self._update(event.get("session"), beta=True)]
        except RealtimeError as exc:
            return self._error(exc.message, exc.code, exc.param)
        except ProtocolError as exc:  # a prompt or keywords over the limits
            return self._error(exc.message, "invalid_value", "session.audio.input.transcription")
        return self._error(f"Invalid value: {kind[:60]!r}", "invalid_value", "type")

    def end(self, reason: str, *, close_code: CloseCode = CloseCode.NORMAL) -> list[Action]:
        was, self.ended = self.ended, True
        if self.started and not was:
            return [End(reason)]
        return [Close(close_code, reason)] if not was else []

    def _append(self, audio: object) -> list[Action]:
        if not isinstance(audio, str):
            raise RealtimeError("`audio` must be a base64 string", param="audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RealtimeError("`audio` is not valid base64", param="audio") from exc
        if len(data) > self.max_frame_bytes:
            raise RealtimeError(
                f"an append of {len(data)} bytes of audio is over the limit, "
                f"{self.max_frame_bytes} bytes",
                "frame_too_big",
                "audio",
            )
        encoding, rate = FORMATS[self.settings.format]
        actions: list[Action] = []
        if not self.started:
            self.started = True
            fmt = AudioFormat(encoding, rate, 1)
            start = SessionStart(  # language None: the server's default
                audio=fmt,
                language=self.settings.transcription.get("language") or None,
                partials=self.settings.turn_detection is not None,  # manual commits send no deltas
                prompt=self.settings.transcription.get("prompt") or "",
                keywords=tuple(self.settings.transcription.get("keywords") or ()),
            )
            actions.append(Start(start))
        if encoding == "pcm_s16le":
            data = self._carry + data
            cut = len(data) - len(data) % 2
            data, self._carry = data[:cut], data[cut:]
        samples = decode_pcm(data, encoding=encoding, channels=1)
        self._buffered += samples.size
        if samples.size:
            actions.append(Audio(samples))
        return actions

    def _buffered_ms(self) -> float:
        return 1000.0 * self._buffered / FORMATS[self.settings.format][1]

    def _commit(self) -> list[Action]:
        if self._buffered_ms() < MIN_COMMIT_MS:
            raise RealtimeError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self._buffered_ms():.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
            )
        self._flushes.append(("commit", self._buffered / FORMATS[self.settings.format][1]))
        self._buffered = 0
        return [Flush()]

    def _clear(self) -> list[Action]:
        """Drop the audio not yet committed: it is flushed and its transcript discarded."""
        self._buffered = 0
        actions: list[Action] = [Reply((self._event("input_audio_buffer.cleared"),))]
        if self.started:
            self._flushes.append(("clear", 0.0))
            actions.append(Flush())
        return actions

    def _update(self, session: object, *, beta: bool) -> list[Action]:
        self.settings.update(session, beta=beta, started=self.started)
        name = "transcription_session.updated" if beta else "session.updated"
        body = self.settings.beta_session() if beta else self.settings.session()
        return [Reply((self._event(name, session=body),))]

    # ---------------------------------------------------------------- session events
    def encode(self, message: ServerMessage) -> list[str]:
        if isinstance(message, ErrorEvent):
            return [self._error_frame(message.message, message.code)]
        if isinstance(message, Mark):
            return self._on_mark(message.kind)
        if self._flushing is not None and self._flushing[0] == "clear":
            return []  # the transcript of cleared audio is dropped
        vad = self.settings.turn_detection is not None
        if isinstance(message, SpeechStarted):
            return self._speech_started(message) if vad else []
        if isinstance(message, SpeechStopped):
            return self._speech_stopped(message) if vad else []
        if isinstance(message, TranscriptPartial):
            return self._delta(message.stable_text) if vad and self._item else []
        if isinstance(message, TranscriptFinal):
            if vad:
                return self._completed(message.text, message.end_sample - message.start_sample)
            self._texts.append(message.text)
        return []

    def _speech_started(self, event: SpeechStarted) -> list[str]:
        frames = self._complete_pending("")
        self._item, self._sent = new_id("item_"), ""
        start_ms = round(1000 * event.sample / SAMPLE_RATE)
        frames.append(
            self._event(
                "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self._item
            )
        )
        return frames

    def _speech_stopped(self, event: SpeechStopped) -> list[str]:
        self._stopped = True
        item = self._item or new_id("item_")
        self._item = None
        end_ms = round(1000 * event.sample / SAMPLE_RATE)
        frames = [
            self._event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item),
            self._committed(item),
        ]
        self._pending = item
        self._buffered = 0
        return frames

    def _committed(self, item: str) -> str:
        frame = self._event(
            "input_audio_buffer.committed", previous_item_id=self._previous, item_id=item
        )
        self._previous = item
        return frame

    def _delta(self, stable: str) -> list[str]:
        text = stable.strip()
        if not text.startswith(self._sent) or len(text) == len(self._sent):
            return []
        delta, self._sent = text[len(self._sent) :], text
        return [self._transcript_delta(self._item or "", delta)]

    def _transcript_delta(self, item: str, delta: str) -> str:
        return self._event(
            "conversation.item.input_audio_transcription.delta",
            item_id=item,
            content_index=0,
            delta=delta,
        )

    def _completed(self, text: str, samples: int) -> list[str]:
        if self._pending is None:
            return []
        item, self._pending = self._pending, None
        return [self._completed_frame(item, text.strip(), samples / SAMPLE_RATE)]

    def _complete_pending(self, text: str) -> list[str]:
        """An item committed whose utterance had no final (too short, or nothing said)."""
        return self._completed(text, 0)

    def _completed_frame(self, item: str, transcript: str, seconds: float) -> str:
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item,
            content_index=0,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )

    def _on_mark(self, kind: str) -> list[str]:
        if kind == "settled":
            return self._complete_pending("")
        if kind == "flush":
            self._flushing = self._flushes.popleft() if self._flushes else ("commit", 0.0)
            self._stopped = False
            return []
        if self._flushing is None:
            return []
        (flushing, seconds), self._flushing = self._flushing, None
        if flushing == "clear":
            self._texts = []
            return []
        frames = self._complete_pending("")
        if self.settings.turn_detection is not None and self._stopped:
            return frames  # the utterance the commit cut went out as an item of its own
        item = new_id("item_")  # manual, or a commit of audio without speech
        text = " ".join(t.strip() for t in self._texts if t.strip())
        self._texts = []
        frames.append(self._committed(item))
        if text:
            frames.append(self._transcript_delta(item, text))
        frames.append(self._completed_frame(item, text, seconds))
        return frames

    # ---------------------------------------------------------------- frames
    def _event(self, kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, "event_id": new_id("event_"), **fields})

    def _error_frame(self, message: str, code: str, param: str | None = None) -> str:
        error = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        if code in ("internal_error", "server_busy", "session_too_long"):
            error["type"] = "server_error"
        return self._event("error", error=error)

    def _error(
        self, message: str, code: str = "invalid_value", param: str | None = None
    ) -> list[Action]:
        return [Reply((self._error_frame(message, code, param),))]
