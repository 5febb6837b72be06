"""Wire protocol v1 of `streamasr serve`: typed messages and a sans-I/O per-connection core.

Clients import the message classes (`SessionStart`, `SessionFlush`, `SessionEnd`, `AudioFormat`)
and `parse_server_message`; the server drives one `ServerProtocol` per connection, which turns
received frames into actions and outgoing messages into JSON text with a per-session `seq`.
Nothing here does I/O: docs/protocol.md describes the same rules for people.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.audio.pcm import ENCODINGS, decode_pcm, sample_bytes
from streamasr.audio.resample import MAX_RATE, MIN_RATE
from streamasr.config import SessionConfig
from streamasr.errors import AudioFormatError, InputError
from streamasr.events import ErrorEvent, Event, TranscriptFinal, WarningEvent, seconds
from streamasr.models.base import ModelInfo
from streamasr.server.resume import MAX_TOKEN_CHARS, Checkpoint, ResumeTokens

PROTOCOL_VERSION = 1
STREAM_PATH = "/v1/stream"
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")  # ISO 639-1 (or 639-3 where 639-1 has none)
MAX_TEXT_BYTES = 65_536  # a control message is a few hundred bytes; anything this big is abuse
# The image of a `slide` message (meeting recorders only), decoded: a 4K screenshot as PNG is
# 1-3 MB. Its text frame, base64 and all, may be this times 4/3 plus `MAX_TEXT_BYTES`.
MAX_SLIDE_BYTES = 4 * 1024 * 1024
MAX_SLIDE_TEXT_BYTES = MAX_SLIDE_BYTES * 4 // 3 + MAX_TEXT_BYTES


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455, section 7.4.1)."""

    NORMAL = 1000  # session.end, or idle
    GOING_AWAY = 1001  # server shutdown
    INVALID_DATA = 1007  # an invalid session.start
    POLICY = 1008  # a message out of order, client too slow, session too long
    TOO_BIG = 1009  # a frame over the size limit
    INTERNAL = 1011  # a bug in the server
    TRY_AGAIN = 1013  # server busy (max sessions)


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` message; `CLOSE_CODES` says which ones end the session."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    BAD_AUDIO = "bad_audio"
    INVALID_START = "invalid_start"
    UNSUPPORTED_AUDIO = "unsupported_audio"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    UNSUPPORTED_TASK = "unsupported_task"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNEXPECTED_START = "unexpected_start"
    FRAME_TOO_BIG = "frame_too_big"
    CLIENT_TOO_SLOW = "client_too_slow"
    SESSION_TOO_LONG = "session_too_long"
    SERVER_BUSY = "server_busy"
    INTERNAL_ERROR = "internal_error"
    RESUME_FAILED = "resume_failed"
    SLIDE_REFUSED = "slide_refused"


# error code -> close code of a fatal error, or None: the error is reported and the session goes on
CLOSE_CODES: dict[ErrorCode, CloseCode | None] = {
    ErrorCode.BAD_JSON: None,
    ErrorCode.BAD_MESSAGE: None,
    ErrorCode.UNKNOWN_TYPE: None,
    ErrorCode.BAD_AUDIO: None,
    ErrorCode.INVALID_START: CloseCode.INVALID_DATA,
    ErrorCode.UNSUPPORTED_AUDIO: CloseCode.INVALID_DATA,
    ErrorCode.UNSUPPORTED_LANGUAGE: CloseCode.INVALID_DATA,
    ErrorCode.UNSUPPORTED_TASK: CloseCode.INVALID_DATA,
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.POLICY,
    ErrorCode.UNEXPECTED_START: CloseCode.POLICY,
    ErrorCode.FRAME_TOO_BIG: CloseCode.TOO_BIG,
    ErrorCode.CLIENT_TOO_SLOW: CloseCode.POLICY,
    ErrorCode.SESSION_TOO_LONG: CloseCode.POLICY,
    ErrorCode.SERVER_BUSY: CloseCode.TRY_AGAIN,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL,
    ErrorCode.RESUME_FAILED: None,  # the connection may start a new session instead
    ErrorCode.SLIDE_REFUSED: None,  # that slide is lost; the audio goes on
}


class ProtocolError(InputError):
    """A client message that breaks the protocol; `code` decides whether the session survives."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> CloseCode | None:
        return CLOSE_CODES[self.code]


# ------------------------------------------------------------------ client -> server messages
@dataclass(frozen=True)
class AudioFormat:
    """The layout of the binary frames of a session."""

    encoding: str = "pcm_s16le"  # "pcm_s16le" or "pcm_f32le" (little-endian, interleaved),
    # "pcm_mulaw" or "pcm_alaw" (G.711)
    sample_rate: int = 16_000  # Hz, MIN_RATE..MAX_RATE; resampled to 16 kHz on the server
    channels: int = 1  # 1 or 2; stereo is averaged to mono

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (all channels of one instant)."""
        return sample_bytes(self.encoding) * self.channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, obj: object) -> AudioFormat:
        """Validate a JSON `audio` object; missing keys take the defaults."""
        if not isinstance(obj, dict):
            raise ProtocolError(ErrorCode.INVALID_START, "'audio' must be an object")
        encoding = _field(obj, "audio.encoding", obj.get("encoding", cls.encoding), str)
        rate = _field(obj, "audio.sample_rate", obj.get("sample_rate", cls.sample_rate), int)
        channels = _field(obj, "audio.channels", obj.get("channels", cls.channels), int)
        if encoding not in ENCODINGS:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"unsupported encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}",
            )
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO,
                f"sample_rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz",
            )
        if channels not in (1, 2):
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_AUDIO, f"channels must be 1 or 2, not {channels}"
            )
        return cls(encoding, rate, channels)


MAX_PROMPT_CHARS = 1000  # a prompt longer than this is refused (Whisper reads ~220 tokens)
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100


def check_prompt(prompt: str) -> str:
    """`prompt`, unless it is over `MAX_PROMPT_CHARS` or not text (invalid_start)."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_START, f"'prompt' is over {MAX_PROMPT_CHARS} characters"
        )
    _check_text(prompt, "prompt")
    return prompt


def _check_text(text: str, name: str) -> None:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"), which is no character: a
    tokenizer cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            ErrorCode.INVALID_START, f"'{name}' holds a lone surrogate, which is not text"
        ) from None


def check_keywords(keywords: list[Any]) -> tuple[str, ...]:
    """`keywords` as a tuple: at most `MAX_KEYWORDS` strings of at most `MAX_KEYWORD_CHARS`."""
    if len(keywords) > MAX_KEYWORDS:
        raise ProtocolError(ErrorCode.INVALID_START, f"over {MAX_KEYWORDS} 'keywords'")
    if not all(isinstance(k, str) and 0 < len(k) <= MAX_KEYWORD_CHARS for k in keywords):
        raise ProtocolError(
            ErrorCode.INVALID_START,
            f"'keywords' must be strings of 1 to {MAX_KEYWORD_CHARS} characters",
        )
    for keyword in keywords:
        _check_text(keyword, "keywords")
    return tuple(keywords)


def _field(obj: dict[str, Any], name: str, value: object, kind: type) -> Any:
    """`value` if it is a `kind` (bool is not an int here), else an invalid_start error."""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ProtocolError(
            ErrorCode.INVALID_START, f"'{name}' must be a {kind.__name__}, got {value!r}"
        )
    return value


def _optional(obj: dict[str, Any], name: str, kind: type) -> Any:
    """`obj[name]` checked as `_field` does; None when the key is absent."""
    return _field(obj, name, obj[name], kind) if name in obj else None


@dataclass(frozen=True)
class SessionStart:
    """Optional first message: the audio format and the session's options."""

    audio: AudioFormat = field(default_factory=AudioFormat)
    language: str | None = None  # an ISO 639-1 code the model speaks, or "auto": detected;
    # None: the server's default (`serve --language`, auto unless set)
    task: str | None = None  # transcribe, or translate (into English) where the model can;
    # None: the server's default (`serve --task`, transcribe unless set)
    partials: bool = True  # send transcript.partial messages
    word_timestamps: bool = True  # word timings in transcript.final
    prompt: str = ""  # text that steers the decoding: names, spellings (context biasing)
    keywords: tuple[str, ...] = ()  # words and names likely to be said
    version: int = PROTOCOL_VERSION
    type: ClassVar[str] = "session.start"

    def to_dict(self) -> dict[str, Any]:
        """The message; a language or task left to the server's default is left out."""
        chosen = {"language": self.language, "task": self.task}
        return {
            "type": self.type,
            "version": self.version,
            "audio": self.audio.to_dict(),
            **{name: value for name, value in chosen.items() if value is not None},
            "partials": self.partials,
            "word_timestamps": self.word_timestamps,
            "prompt": self.prompt,
            "keywords": list(self.keywords),
        }

    def resolved(self, base: SessionConfig) -> SessionStart:
        """These options with the server's defaults (`base`) for a language or task not given."""
        return dataclasses.replace(
            self, language=self.language or base.language, task=self.task or base.task
        )

    def session_config(self, base: SessionConfig) -> SessionConfig:
        """`base` (the server's engine settings) with this session's options."""
        decode = dataclasses.replace(base.decode, word_timestamps=self.word_timestamps)
        return dataclasses.replace(
            base,
            partials=self.partials,
            language=self.language or base.language,
            task=self.task or base.task,
            decode=decode,
            prompt=self.prompt,
            keywords=self.keywords,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SessionStart:
        """Validate a parsed session.start; unknown keys are ignored (forward compatibility)."""
        version = _field(obj, "version", obj.get("version", PROTOCOL_VERSION), int)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {version} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}",
            )
        return cls(
            audio=AudioFormat.from_dict(obj.get("audio", {})),
            language=_optional(obj, "language", str),
            task=_optional(obj, "task", str),
            partials=_field(obj, "partials", obj.get("partials", True), bool),
            word_timestamps=_field(obj, "word_timestamps", obj.get("word_timestamps", True), bool),
            prompt=check_prompt(_field(obj, "prompt", obj.get("prompt", ""), str)),
            keywords=check_keywords(_field(obj, "keywords", obj.get("keywords", []), list)),
        )


@dataclass(frozen=True)
class SessionFlush:
    """Finalise the pending speech now; the session stays open."""

    type: ClassVar[str] = "session.flush"

    def to_json(self) -> str:
        return json.dumps({"type": self.type})


@dataclass(frozen=True)
class SessionEnd:
    """Finalise, receive session.ended, then the server closes with 1000."""

    type: ClassVar[str] = "session.end"

    def to_json(self) -> str:
        return json.dumps({"type": self.type})


MAX_SESSION_ID_CHARS = 64


@dataclass(frozen=True)
class SessionResume:
    """Instead of session.start, as the first message of a new connection: continue a session
    whose connection was lost (see docs/protocol.md, "Resume")."""

    session_id: str
    resume_token: str  # the latest one received (session.started, session.resumed, finals)
    last_seq: int  # the seq of the last message received
    type: ClassVar[str] = "session.resume"

    def to_json(self) -> str:
        return json.dumps(
            {
                "type": self.type,
                "session_id": self.session_id,
                "resume_token": self.resume_token,
                "last_seq": self.last_seq,
            }
        )

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SessionResume:
        session_id, token = obj.get("session_id"), obj.get("resume_token")
        last_seq = obj.get("last_seq")
        if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_CHARS:
            problem = f"'session_id' must be a string of 1 to {MAX_SESSION_ID_CHARS} characters"
        elif not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            problem = f"'resume_token' must be a string of 1 to {MAX_TOKEN_CHARS} characters"
        elif not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
            problem = "'last_seq' must be the seq of the last message received, an integer >= 0"
        else:
            return cls(session_id, token, last_seq)
        raise ProtocolError(ErrorCode.RESUME_FAILED, problem)


@dataclass(frozen=True)
class SlideMessage:
    """An image the meeting shows now, or at `t` (seconds on the session's clock: the audio
    sent so far); taken by `streamasr meeting --listen` only (docs/protocol.md, "Slides")."""

    image: bytes  # PNG, JPEG, WebP, BMP, GIF or TIFF, as the file would hold it
    t: float | None = None
    type: ClassVar[str] = "slide"

    def to_json(self) -> str:
        body: dict[str, Any] = {"type": self.type, "image": base64.b64encode(self.image).decode()}
        if self.t is not None:
            body["t"] = self.t
        return json.dumps(body)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SlideMessage:
        data, t = obj.get("image"), obj.get("t")
        if t is not None and (
            not isinstance(t, int | float) or isinstance(t, bool) or not 0 <= t < 1e7
        ):
            raise ProtocolError(ErrorCode.SLIDE_REFUSED, "'t' must be seconds >= 0")
        if not isinstance(data, str) or not data:
            raise ProtocolError(ErrorCode.SLIDE_REFUSED, "'image' must be the image in base64")
        try:
            image = base64.b64decode(data, validate=True)
        except ValueError:
            raise ProtocolError(ErrorCode.SLIDE_REFUSED, "'image' is not valid base64") from None
        if len(image) > MAX_SLIDE_BYTES:
            message = f"the image is {len(image)} B, over the limit of {MAX_SLIDE_BYTES} B"
            raise ProtocolError(ErrorCode.SLIDE_REFUSED, message)
        return cls(image, None if t is None else float(t))


ClientMessage = SessionStart | SessionResume | SessionFlush | SessionEnd | SlideMessage


def load_json(text: str) -> Any:
    """A client's JSON text; ProtocolError `bad_json` when it is not JSON or nests too deeply
    for the parser (`"[" * 40000` is under the text limit)."""
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError from lone surrogates
        raise ProtocolError(ErrorCode.BAD_JSON, f"text frame is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "text frame nests too deeply") from None


def parse_client_message(text: str, slides: bool = False) -> ClientMessage:
    """One client text frame to its message; raises ProtocolError when it is not one. A
    `slide` is a message only where `slides` are taken (meeting recorders)."""
    obj = load_json(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(
            ErrorCode.BAD_MESSAGE, "a text frame must be a JSON object with a string 'type'"
        )
    kind = obj["type"]
    if kind == SessionStart.type:
        return SessionStart.from_dict(obj)
    if kind == SessionResume.type:
        return SessionResume.from_dict(obj)
    if kind == SessionFlush.type:
        return SessionFlush()
    if kind == SessionEnd.type:
        return SessionEnd()
    if kind == SlideMessage.type and slides:
        return SlideMessage.from_dict(obj)
    raise ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"unknown message type {kind[:40]!r}; expected session.start, session.resume, "
        "session.flush or session.end",
    )


# ------------------------------------------------------------------ server -> client messages
@dataclass(frozen=True)
class SessionStarted:
    session_id: str
    model: ModelInfo
    start: SessionStart  # the options in force (the defaults when the client sent none)
    limits: dict[str, Any]  # max_frame_bytes, idle_timeout_s, max_session_s
    type: str = field(default="session.started", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "session_id": self.session_id,
            "model": self.model.name,
            "protocol": PROTOCOL_VERSION,
            "audio": self.start.audio.to_dict(),
            "language": self.start.language,
            "task": self.start.task,
            "languages": None if self.model.languages is None else list(self.model.languages),
            "tasks": list(self.model.tasks),
            "partials": self.start.partials,
            "word_timestamps": self.start.word_timestamps,
            "limits": dict(self.limits),
        }


@dataclass(frozen=True)
class SessionEnded:
    reason: str  # "client" (session.end), "idle", "max_length" or "shutdown"
    type: str = field(default="session.ended", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason}


@dataclass(frozen=True)
class SessionResumed:
    """The answer to session.resume: the session goes on. `same`: this daemon still held it,
    and the messages after the client's `last_seq` were sent again just before this one
    (`replayed` of them); otherwise a new session continues the transcript's clock and
    numbering. `sample`: the stream time the next audio is placed at; the client sends again
    what it sent from there, if it kept it."""

    session_id: str
    start: SessionStart  # the options in force, as in session.started
    same: bool
    replayed: int
    sample: int
    type: str = field(default="session.resumed", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "session_id": self.session_id,
            "same_session": self.same,
            "replayed": self.replayed,
            "t": seconds(self.sample),
        }


@dataclass(frozen=True)
class Mark:
    """Where the session's events stand, for a codec; never sent as such. `kind`: "flush"
    (the events of a flush follow), "flushed" (they are all out), "settled" (the utterance that
    just stopped has its final out, if it has one)."""

    kind: str
    type: str = field(default="mark", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "kind": self.kind}


ServerMessage = Event | WarningEvent | SessionStarted | SessionResumed | SessionEnded | Mark


def error_event(code: ErrorCode, message: str) -> ErrorEvent:
    return ErrorEvent(code.value, message, fatal=CLOSE_CODES[code] is not None)


def parse_server_message(text: str) -> dict[str, Any]:
    """A server text frame as a dict with at least `type` (str) and `seq` (int), for clients."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError(f"not a server message: {text[:200]!r}")
    if not isinstance(obj.get("seq"), int):
        raise ValueError(f"server message without a seq: {text[:200]!r}")
    return obj


# ------------------------------------------------------------------ the sans-I/O core
@dataclass(frozen=True)
class Start:
    """Open the session with these options (`implicit`: the client sent no session.start)."""

    options: SessionStart
    implicit: bool = False


@dataclass(frozen=True, eq=False)
class Audio:
    samples: np.ndarray  # (n,) float32 mono at the session's sample_rate, not yet resampled


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class End:
    reason: str = "client"  # SessionEnded.reason


@dataclass(frozen=True)
class SendError:
    error: ErrorEvent


@dataclass(frozen=True)
class Close:
    code: CloseCode
    reason: str


@dataclass(frozen=True)
class Reply:
    """Frames a codec answers with itself, sent in order with the session's messages."""

    frames: tuple[str, ...]


@dataclass(frozen=True)
class KeepAlive:
    """The client is there though it sends no audio: restart the idle timer."""


@dataclass(frozen=True)
class Resume:
    """The client asks to continue a session (session.resume as its first message)."""

    request: SessionResume


@dataclass(frozen=True, eq=False)
class ShowSlide:
    """A slide shown at `sample` on the session's 16 kHz stream clock."""

    image: bytes
    sample: int


Action = Start | Audio | Flush | End | SendError | Close | Reply | KeepAlive | Resume | ShowSlide


class State(enum.Enum):
    AWAITING_START = "awaiting_start"  # nothing valid received yet
    STREAMING = "streaming"
    ENDED = "ended"  # ending or failed: further input is ignored


class ServerProtocol:
    """One connection's protocol state: frames in, actions out; messages out with their `seq`."""

    def __init__(
        self,
        *,
        max_frame_bytes: int,
        model: ModelInfo | None = None,
        tokens: ResumeTokens | None = None,
        slides: bool = False,
    ) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.model = model  # what session.start may ask of it; None: English transcripts only
        self.tokens = tokens  # signs the resume tokens of the messages; None: no resume
        self.slides = slides  # `slide` messages are taken (a meeting recorder)
        self._received = 0  # samples of audio received, at the session's rate
        self.state = State.AWAITING_START
        self.options: SessionStart | None = None
        self._seq = 0
        self._session: tuple[str, dict[str, Any]] | None = None  # id and options, once started
        self._mark = (0, 0)  # the next segment_id, and the stream time every final reaches

    @property
    def next_seq(self) -> int:
        """The seq the next message will carry."""
        return self._seq

    def continue_from(self, checkpoint: Checkpoint, last_seq: int) -> SessionStart:
        """Continue a session from another connection: its options, numbering and clock."""
        self.state = State.STREAMING
        self.options = SessionStart.from_dict(checkpoint.start)
        self._seq = max(last_seq, checkpoint.seq) + 1
        self._mark = (checkpoint.segment, checkpoint.sample)
        return self.options

    def receive_text(self, text: str) -> list[Action]:
        if self.state is State.ENDED:
            return []
        try:
            limit = MAX_SLIDE_TEXT_BYTES if self.slides else MAX_TEXT_BYTES
            if len(text) > limit or len(text.encode("utf-8", "replace")) > limit:
                raise ProtocolError(ErrorCode.FRAME_TOO_BIG, f"text frame over {limit} B")
            message = parse_client_message(text, self.slides)
            if len(text) > MAX_TEXT_BYTES and not isinstance(message, SlideMessage):
                raise ProtocolError(ErrorCode.FRAME_TOO_BIG, f"text frame over {MAX_TEXT_BYTES} B")
            return self._on_message(message)
        except ProtocolError as exc:
            return self._fail(exc)

    def receive_bytes(self, data: bytes) -> list[Action]:
        if self.state is State.ENDED:
            return []
        if len(data) > self.max_frame_bytes:
            message = f"binary frame of {len(data)} B is over the limit, {self.max_frame_bytes} B"
            return self._fail(ProtocolError(ErrorCode.FRAME_TOO_BIG, message))
        actions = self._implicit_start()
        fmt = (self.options or SessionStart()).audio  # set: the session has started
        try:
            samples = decode_pcm(data, encoding=fmt.encoding, channels=fmt.channels)
        except AudioFormatError as exc:
            return actions + self._fail(ProtocolError(ErrorCode.BAD_AUDIO, f"frame dropped: {exc}"))
        self._received += samples.size
        return [*actions, Audio(samples)] if samples.size else actions

    def end(self, reason: str, *, close_code: CloseCode = CloseCode.NORMAL) -> list[Action]:
        """A server-side end (idle, max_length, shutdown): finalise if a session is open."""
        state, self.state = self.state, State.ENDED
        if state is State.STREAMING:
            return [End(reason)]
        if state is State.AWAITING_START:
            return [Close(close_code, reason)]
        return []

    def open(self) -> list[Action]:
        """Nothing happens before the client's first message."""
        return []

    def encode(self, message: ServerMessage) -> list[str]:
        """The frames of an outgoing message: its `event` (the runner's codec call)."""
        return [] if isinstance(message, Mark) else [self.event(message)]

    def event(self, message: ServerMessage) -> str:
        """The JSON text frame of an outgoing message, with the next `seq` of this session."""
        body = message.to_dict()
        frame = {"type": body.pop("type"), "seq": self._seq, **body}
        token = self._resume_token(message)
        if token is not None:
            frame["resume_token"] = token
        self._seq += 1
        return json.dumps(frame, ensure_ascii=False)

    def _resume_token(self, message: ServerMessage) -> str | None:
        """The token of a message that moves the checkpoint: the session's start or resume,
        and each final (the audio before its end need not be sent again)."""
        if self.tokens is None:
            return None
        if isinstance(message, SessionStarted | SessionResumed):
            self._session = (message.session_id, message.start.to_dict())
        elif isinstance(message, TranscriptFinal):
            self._mark = (message.segment_id + 1, max(self._mark[1], message.end_sample))
        else:
            return None
        if self._session is None:
            return None
        session_id, start = self._session
        segment, sample = self._mark
        return self.tokens.issue(Checkpoint(session_id, start, self._seq, segment, sample))

    # ---------------------------------------------------------------- internals
    def _on_message(self, message: ClientMessage) -> list[Action]:
        if isinstance(message, SessionStart):
            return self._on_start(message)
        if isinstance(message, SessionResume):
            if self.state is not State.AWAITING_START:
                raise ProtocolError(
                    ErrorCode.UNEXPECTED_START,
                    "session.resume must be the first message; the session has already started",
                )
            if self.tokens is None:
                raise ProtocolError(ErrorCode.RESUME_FAILED, "this server does not resume sessions")
            return [Resume(message)]
        actions = self._implicit_start()
        if isinstance(message, SlideMessage):
            rate = (self.options or SessionStart()).audio.sample_rate
            t = self._received / rate if message.t is None else message.t
            return [*actions, ShowSlide(message.image, round(t * SAMPLE_RATE))]
        if isinstance(message, SessionFlush):
            return [*actions, Flush()]
        self.state = State.ENDED
        return [*actions, End("client")]

    def _on_start(self, start: SessionStart) -> list[Action]:
        if self.state is not State.AWAITING_START:
            raise ProtocolError(
                ErrorCode.UNEXPECTED_START,
                "session.start must be the first message; the session has already started",
            )
        self._check_language(start)
        self.state = State.STREAMING
        self.options = start
        return [Start(start)]

    def _check_language(self, start: SessionStart) -> None:
        languages = self.model.languages if self.model else ("en",)
        tasks = self.model.tasks if self.model else ("transcribe",)
        if start.task is not None and start.task not in tasks:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TASK,
                f"task {start.task[:40]!r} is not supported by this model "
                f"(supported: {', '.join(tasks)})",
            )
        if start.language is None or start.language == "auto":
            return  # None: the server's default, checked against the model at start-up
        if languages is None and _LANGUAGE_CODE.fullmatch(start.language):
            return  # a prompt-driven model: any language
        if languages is None or start.language not in languages:
            spoken = "any ISO 639-1 code" if languages is None else ", ".join(languages)
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"language {start.language[:40]!r} is not supported by this model "
                f"(supported: auto, {spoken})",
            )

    def _implicit_start(self) -> list[Action]:
        if self.state is not State.AWAITING_START:
            return []
        self.state = State.STREAMING
        self.options = SessionStart()
        return [Start(self.options, implicit=True)]

    def _fail(self, exc: ProtocolError) -> list[Action]:
        actions: list[Action] = [SendError(error_event(exc.code, exc.message))]
        if exc.close_code is not None:
            self.state = State.ENDED
            actions.append(Close(exc.close_code, _reason(exc.code)))
        return actions


def _reason(code: ErrorCode) -> str:
    """A close reason: the error code in words (reasons are capped at 123 bytes)."""
    return code.value.replace("_", " ")
