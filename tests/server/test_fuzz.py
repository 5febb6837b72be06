"""Protocol fuzzer: a Hypothesis state machine sends random frames to a real server (FakeModel)
on /v1/stream, /v1/listen and /v1/realtime, while a well-behaved client streams known speech
beside it. `bench/fuzz.py` runs the same machine for longer.

Invariants, checked on every run: no ERROR log record (streamasr, uvicorn, asyncio); on every
API no close 1011 and only JSON text frames; on /v1/stream a gapless `seq`, every `error` with a
code, `fatal` flag and close code of docs/protocol.md's table (never `internal_error`), nothing
after a fatal error, and `session.ended` then 1000 after a `session.end`; a refused handshake is
a 4xx; and the witness client gets exactly the transcript FakeModel gives its audio offline.
A failure prints the run's steps and every client's frames: a reproduction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pytest
import soxr
import speech
from fake_model import FakeModel
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from server_helpers import pcm16, reference_finals, stream_session, wav_bytes
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamasr.audio.pcm import ENCODINGS, decode_pcm
from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.server.protocol import CLOSE_CODES, ErrorCode, ProtocolError, SessionStart

T = TypeVar("T")
MAX_FRAME = 40_000  # max_frame_bytes: the WebSocket hard cap (2x) stays above the 64 KiB text limit
HARD_CAP = 2 * MAX_FRAME
MAX_OPEN = 4  # fuzzing clients open at once; max_sessions leaves the witness room
STEP_TIMEOUT_S = 20.0  # one send, or a close handshake: longer means the server stopped reading
WITNESS_SPEED = 4.0  # times real time
PAUSE_PER_RUN_S = 0.5  # the pauses of one run, at most
DEFAULT_FORMAT = ("pcm_s16le", 16_000, 1)  # (encoding, sample rate, channels)
APIS = ("v1", "v1", "v1", "listen", "realtime")
LISTEN_QUERIES = (
    "encoding=linear16&sample_rate=16000",
    "encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true&utterance_end_ms=1000",
    "encoding=linear32&sample_rate=48000&channels=2",
    "encoding=mulaw&sample_rate=8000",
    "encoding=alaw&sample_rate=8000",
    "",  # a WAV stream: the format comes from its header
    "encoding=linear16",  # no sample_rate: refused with 400
    "encoding=opus&sample_rate=48000",
)
LISTEN_ENCODINGS = {"linear16": "pcm_s16le", "linear32": "pcm_f32le", "mulaw": "pcm_mulaw"}
LISTEN_ENCODINGS["alaw"] = "pcm_alaw"


class FuzzModel(FakeModel):
    """FakeModel that takes any prompt or keywords (one token per word) and keeps no call log.
    Like a real tokenizer, it refuses text that is not Unicode scalars (a lone surrogate)."""

    def encode_text(self, text: str) -> list[int]:
        return [len(word.encode("utf-8")) for word in text.split()]

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        result = super().decode(request)
        self.calls.clear()
        return result


# ------------------------------------------------------------------ frames, as short recipes
@dataclass(frozen=True)
class Frame:
    """One client frame: `head`, then `unit` repeated to `size` items, then `tail`. Kept as a
    recipe so that a failing run prints an exact reproduction of a 70 KB frame in one line."""

    kind: str  # "text" or "binary"; a bytes payload sent as "text" is invalid UTF-8
    head: str | bytes
    unit: str | bytes = ""
    size: int = 0
    tail: str | bytes = ""

    def payload(self) -> str | bytes:
        empty = self.head[:0]  # "" or b"": the parts left out take the head's type
        unit, tail = self.unit or empty, self.tail or empty
        middle = (unit * (self.size // max(1, len(unit)) + 1))[: self.size]
        return self.head + middle + tail  # type: ignore[operator]

    def __repr__(self) -> str:
        parts = [repr(self.kind), repr(self.head)]
        if self.size or self.tail:
            parts += [repr(self.unit), str(self.size)]
        if self.tail:
            parts.append(repr(self.tail))
        return f"Frame({', '.join(parts)})"

    def __len__(self) -> int:
        data = self.payload()
        return len(data.encode("utf-8") if isinstance(data, str) else data)


@dataclass(frozen=True)
class Speech:
    """`ms` of a witness clip from `start_ms`, in the connection's audio format."""

    clip: int
    start_ms: int
    ms: int


def text(obj: Any) -> Frame:
    return Frame("text", json.dumps(obj))


FLUSH, END = text({"type": "session.flush"}), text({"type": "session.end"})
# strings with lone surrogates: JSON's "\ud800" escape reaches the server as such a str
surrogate_text = st.sampled_from(["\ud800", "a\udfff", "\udc00\ud800"]) | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def either(good: st.SearchStrategy[Any], wild: bool = True) -> st.SearchStrategy[Any]:
    """Mostly `good` values, sometimes (when `wild`) any JSON value."""
    return st.one_of(good, good, json_values) if wild else good


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with any subset of `fields`."""
    return st.fixed_dictionaries({}, optional=fields)


def start_messages(wild: bool) -> st.SearchStrategy[Frame]:
    """session.start with values of the right types (some of them unsupported), or, when
    `wild`, of any type."""
    rates = st.sampled_from([8000, 11025, 16000, 44100, 48000, 7999, 48001, 0, -1, 2**40])
    audio = obj(
        encoding=either(st.sampled_from([*ENCODINGS, "mp3", "PCM_S16LE", ""]), wild),
        sample_rate=either(rates | st.integers(7000, 50000), wild),
        channels=either(st.sampled_from([1, 1, 2, 0, 3, -1]), wild),
    )
    keywords = st.lists(st.text(max_size=10) | surrogate_text, max_size=4)
    fields = {
        "version": st.sampled_from([1, 1, 1, 2, 0] + (["1", True, 1.0, None] if wild else [])),
        "audio": either(audio, wild),
        "language": either(st.sampled_from(["auto", "en", "de", "xx", "EN", "", "\ud800"]), wild),
        "task": either(st.sampled_from(["transcribe", "transcribe", "translate", "x"]), wild),
        "partials": either(st.booleans(), wild),
        "word_timestamps": either(st.booleans(), wild),
        "prompt": either(st.text(max_size=40) | surrogate_text | st.just("x " * 600), wild),
        "keywords": either(keywords | st.just(["k"] * 101), wild),
        "later_field": json_values,
    }
    return st.fixed_dictionaries({"type": st.just("session.start")}, optional=fields).map(text)


starts = start_messages(wild=False) | start_messages(wild=True)
deep = st.builds(
    lambda head_unit, size: Frame("text", head_unit[0], head_unit[1], size),
    st.sampled_from([("", "["), ("", '{"a":'), ('{"type":"session.start","audio":', "[")]),
    st.integers(1, 60_000),
)
oversized = st.builds(
    Frame,
    st.just("text"),
    st.just('{"type":"session.flush","pad":"'),
    st.sampled_from(["a", "é", "€"]),
    st.sampled_from([21_000, 32_000, 65_400, 65_600, 70_000, HARD_CAP + 10]),
    st.just('"}'),
)
odd_text = st.sampled_from(
    [
        Frame("text", b"\xff\xfe"),  # not UTF-8: the WebSocket layer closes 1007
        Frame("text", ""),
        Frame("text", '{"type":"session.start","audio":{"sample_rate":NaN}}'),
        Frame("text", '{"type":"session.start","audio":{"sample_rate":1e999}}'),
        Frame("text", '{"type":"session.start","audio":{"sample_rate":', "1", 5000, "}}"),
        Frame("text", '{"type":"\\ud800"}'),
        Frame("text", '{"type":"session.flush"'),
    ]
)
text_frames = st.one_of(
    starts,
    starts,
    st.sampled_from(
        [FLUSH, END, text({"type": "session.end", "x": 1}), text({"type": "session.start"})]
    ),
    st.builds(lambda kind: text({"type": kind}), st.text(max_size=60)),
    st.builds(lambda kind: text({"type": kind}), json_values),
    json_values.map(text),
    st.text(max_size=80).map(lambda s: Frame("text", s)),
    deep,
    oversized,
    odd_text,
)
binary_frames = st.builds(
    Frame,
    st.just("binary"),
    st.just(b""),
    st.binary(min_size=1, max_size=4),
    st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 3200, 3201]),
        st.integers(0, 8000),
        st.sampled_from([MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, HARD_CAP, HARD_CAP + 1]),
    ),
)
b64 = st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=20)
realtime_input = obj(
    format=either(
        obj(
            type=st.sampled_from(["audio/pcm", "audio/pcmu", "x"]),
            rate=either(st.sampled_from([24000, 16000])),
        )
    ),
    transcription=either(
        obj(
            language=either(st.sampled_from(["en", "de", "zz"])),
            prompt=either(st.text(max_size=20) | surrogate_text),
            keywords=json_values,
        )
    ),
    turn_detection=st.sampled_from([None, {"type": "server_vad"}, {"type": "semantic_vad"}])
    | json_values,
)
realtime_session = obj(
    type=either(st.just("transcription")),
    audio=either(obj(input=realtime_input)),
    input_audio_format=either(st.sampled_from(["pcm16", "g711_ulaw", "g711_alaw", "x"])),
    turn_detection=json_values,
)
REALTIME_TYPES = ("session.update", "transcription_session.update", "response.create")
REALTIME_TYPES += tuple(f"input_audio_buffer.{verb}" for verb in ("append", "commit", "clear"))
realtime_events = st.fixed_dictionaries(
    {"type": st.sampled_from(REALTIME_TYPES)},
    optional={"audio": either(b64), "session": either(realtime_session), "event_id": json_values},
).map(text)
listen_messages = st.builds(
    lambda kind, extra: text({"type": kind, **extra}),
    st.sampled_from(["KeepAlive", "Finalize", "CloseStream", "Configure", "Bogus"]),
    st.dictionaries(st.sampled_from(["keyterms", "x"]), json_values, max_size=1),
)


# ------------------------------------------------------------------ the server and the witness
class ErrorRecords(logging.Handler):
    """Keeps every ERROR (and worse) record."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not any(seen is record for seen in self.records):  # it reaches several loggers
            self.records.append(record)


LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")  # uvicorn's may not propagate


class FuzzServer:
    """A real server on its own event loop thread, and a witness client streaming known speech
    to it in a loop; the state machine's clients run on the same loop."""

    def __init__(self, clips: list[np.ndarray]) -> None:
        self.clips = clips
        self.expected = [reference_finals(clip) for clip in clips]
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None
        self.errors = ErrorRecords()
        self.witness_failures: list[str] = []
        self.failures: list[str] = []  # every failed check, with the clients of its run
        self.stats: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self._witness: asyncio.Future[None] | None = None

    def __enter__(self) -> FuzzServer:
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.errors)
        self._thread.start()
        self.call(self._startup(), timeout_s=60)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._shutdown(), timeout_s=90)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(self.errors)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            raise AssertionError(f"the server's loop did not answer in {timeout_s:g} s") from None

    async def _startup(self) -> None:
        config = ServerConfig(
            port=0, max_sessions=MAX_OPEN + 8, max_frame_bytes=MAX_FRAME, idle_timeout_s=5.0
        )
        self.server = Server(config, model_factory=lambda _spec: FuzzModel())
        await self.server.startup()
        self._stopping = asyncio.Event()
        self._witness = asyncio.ensure_future(self._run_witness())

    async def _shutdown(self) -> None:
        self._stopping.set()
        if self._witness is not None:
            await self._witness  # the session under way is finished and checked
        if self.server is not None:
            await self.server.shutdown()

    async def _run_witness(self) -> None:
        """Stream the clips in turn, each one session, until told to stop; check each."""
        assert self.server is not None
        n = 0
        while not self._stopping.is_set():
            i = n % len(self.clips)
            n += 1
            try:
                result = await stream_session(
                    self.server, pcm16(self.clips[i]), speed=WITNESS_SPEED, timeout_s=60
                )
            except Exception as exc:  # a timeout, a refused connection: a failure to report
                self.witness_failures.append(f"witness session {n} (clip {i}): {exc!r}")
                continue
            self.stats["witness sessions"] += 1
            problem = _witness_problem(result.messages, result.close_code, self.expected[i])
            if problem:
                self.witness_failures.append(f"witness session {n} (clip {i}): {problem}")

    def check(self) -> None:
        """The invariants that hold for the whole server: no ERROR record, a correct witness."""
        # Each failure is reported once, by the run that saw it; later runs start clean.
        records, self.errors.records = self.errors.records, []
        witness, self.witness_failures = self.witness_failures, []
        lines = [
            f"{r.name}: {r.getMessage()}\n"
            + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
            for r in records
        ]
        assert not lines, "ERROR log records:\n" + "\n".join(lines)
        assert not witness, "\n".join(witness)


def _witness_problem(
    messages: list[dict[str, Any]], close_code: int | None, expected: list[str]
) -> str:
    types = [m["type"] for m in messages]
    finals = [m["text"] for m in messages if m["type"] == "transcript.final"]
    if [m["seq"] for m in messages] != list(range(len(messages))):
        return f"seq has gaps: {types}"
    if types[:1] != ["session.started"] or types[-1:] != ["session.ended"] or close_code != 1000:
        return f"not a clean session: {types}, close {close_code}"
    if "error" in types:
        return f"errors: {[m for m in messages if m['type'] == 'error']}"
    if finals != expected:
        return f"finals {finals}, expected {expected}"
    return ""


# ------------------------------------------------------------------ one fuzzing client
@dataclass(eq=False)
class Conn:
    """A fuzzing client: what it sent (the reproduction), what it received, how it closed."""

    api: str
    query: str
    ws: ClientConnection | None = None
    refused: int | None = None  # the HTTP status of a refused handshake
    sent: list[str] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    fmt: tuple[str, int, int] = DEFAULT_FORMAT
    wav_pending: bool = False  # /v1/listen without an encoding: the next Speech carries a header
    ended: bool = False  # a session.end went out
    client_closing: bool = False  # we closed or aborted: the server's close code is not checked
    server_closed_first: bool = False
    # close codes of the frames the WebSocket layer refuses itself, before the server reads them
    hard: set[int] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"Conn({self.api}{'?' + self.query if self.query else ''}, sent={self.sent})"

    @property
    def alive(self) -> bool:
        return self.ws is not None and not self.client_closing and not self.server_closed_first

    async def open(self, port: int) -> None:
        path = {"v1": "/v1/stream", "listen": "/v1/listen", "realtime": "/v1/realtime"}[self.api]
        url = f"ws://127.0.0.1:{port}{path}" + (f"?{self.query}" if self.query else "")
        try:
            self.ws = await connect(url, compression=None, max_size=None, open_timeout=20)
        except InvalidStatus as exc:
            self.refused = exc.response.status_code
            return
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                self.received.append(message)
        except ConnectionClosed:
            pass
        if not self.client_closing:
            self.server_closed_first = True

    async def send(self, frame: Frame, label: str, count: int = 1) -> bool:
        """Send `frame` `count` times, back to back; False once the connection is closed."""
        if not self.alive:
            return False
        assert self.ws is not None
        self.sent.append(label if count == 1 else f"{count} x {label}")
        if len(frame) > HARD_CAP:
            self.hard.add(1009)
        data = frame.payload()
        if frame.kind == "text" and isinstance(data, bytes):
            self.hard.add(1007)
        self.ended = self.ended or _is_end(data)
        try:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                for _ in range(count):
                    await self.ws.send(data, text=frame.kind == "text")
        except ConnectionClosed:
            return False
        except TimeoutError:
            raise AssertionError(f"a send blocked for {STEP_TIMEOUT_S:g} s: {self!r}") from None
        return True

    async def close(self, how: str) -> None:
        """End the connection: "close" (handshake), "abort" (TCP drop), "garbage" (bytes that
        are no WebSocket frame, then a drop) or "half" (half a frame header, then a drop)."""
        if self.ws is None:
            return
        if self.alive:
            self.sent.append(how)
        self.client_closing = True
        transport = self.ws.transport
        if how == "close":
            try:
                async with asyncio.timeout(STEP_TIMEOUT_S):
                    await self.ws.close()
            except TimeoutError:
                message = f"no closing handshake in {STEP_TIMEOUT_S:g} s: {self!r}"
                raise AssertionError(message) from None
        else:
            if how in ("garbage", "half") and not transport.is_closing():
                with contextlib.suppress(RuntimeError):  # after write_eof: the server closed
                    transport.write(b"\x82\xfe\x00" if how == "half" else b"\x00\xff junk\r\n")
            transport.abort()
        if self.reader is not None:
            async with asyncio.timeout(STEP_TIMEOUT_S):
                await self.reader

    def speech_frame(self, clips: list[np.ndarray], speech_: Speech) -> Frame:
        clip = clips[speech_.clip % len(clips)]
        start = speech_.start_ms * 16 % max(1, len(clip))
        x = clip[start : start + speech_.ms * 16]
        if self.api == "realtime":  # 24 kHz s16le in an append event
            audio = base64.b64encode(encode(x, ("pcm_s16le", 24_000, 1))).decode()
            return text({"type": "input_audio_buffer.append", "audio": audio})
        if self.wav_pending:
            self.wav_pending = False
            return Frame("binary", wav_bytes(x))
        return Frame("binary", encode(x, self.fmt))


def encode(x: np.ndarray, fmt: tuple[str, int, int]) -> bytes:
    """16 kHz float audio in a session's format."""
    encoding, rate, channels = fmt
    y = np.clip(soxr.resample(x, 16_000, rate) if rate != 16_000 else x, -1.0, 1.0)
    y = np.repeat(y, channels)  # interleaved: each sample once per channel
    if encoding == "pcm_s16le":
        return (y * 32767).round().astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return y.astype("<f4").tobytes()
    table = decode_pcm(bytes(range(256)), encoding=encoding, channels=1)  # G.711: nearest code
    order = np.argsort(table)
    index = np.searchsorted(table[order], y).clip(0, 255)
    return order[index].astype(np.uint8).tobytes()


# ------------------------------------------------------------------ what each client must see
def documented_errors() -> dict[str, int | None]:
    """docs/protocol.md's error table: code -> the close code of a fatal error, None if not."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    table = text.split("\n## Errors", 1)[1].split("\n## ", 1)[0]
    errors: dict[str, int | None] = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`") and cells[2] in ("yes", "no"):
            errors[cells[1].strip("`")] = int(cells[3].split()[0]) if cells[2] == "yes" else None
    return errors


DOCUMENTED_ERRORS = documented_errors()


def check_conn(conn: Conn) -> None:
    """The invariants of one finished fuzzing connection."""
    if conn.refused is not None:
        assert conn.refused < 500, f"handshake refused with {conn.refused}: {conn!r}"
        return
    assert conn.ws is not None
    assert all(isinstance(m, str) for m in conn.received), f"a binary frame came: {conn!r}"
    messages = [json.loads(m) for m in conn.received]  # type: ignore[arg-type]
    assert all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in messages)
    code, reason = conn.ws.close_code, conn.ws.close_reason or ""
    assert code != 1011, f"closed 1011 {reason!r}: {conn!r}\nreceived {messages}"
    if conn.api == "v1":
        _check_v1(conn, messages, code, reason)
    elif conn.server_closed_first:
        allowed = {1000, 1001, 1008, 1009, 1013} | conn.hard
        assert code in allowed, f"closed {code} {reason!r}: {conn!r}\nreceived {messages}"


def _check_v1(conn: Conn, messages: list[dict[str, Any]], code: int | None, reason: str) -> None:
    where = f"{conn!r}\nreceived {messages}\nclosed {code} {reason!r}"
    assert [m.get("seq") for m in messages] == list(range(len(messages))), f"seq: {where}"
    errors = [m for m in messages if m["type"] == "error"]
    for error in errors:
        code_ = error.get("code")
        assert code_ in DOCUMENTED_ERRORS, f"undocumented error {error}: {where}"
        assert code_ != ErrorCode.INTERNAL_ERROR.value, f"internal error: {where}"
        fatal = DOCUMENTED_ERRORS[code_] is not None
        assert error.get("fatal") is fatal, f"wrong fatal flag {error}: {where}"
    types = [m["type"] for m in messages]
    if "session.started" in types:
        first = types.index("session.started")
        assert set(types[:first]) <= {"error"}, f"session.started is not first: {where}"
    fatal_errors = [e for e in errors if e["fatal"]]
    if fatal_errors:  # the last message (session_too_long: then session.ended)
        last = messages[-2] if types[-1] == "session.ended" else messages[-1]
        assert len(fatal_errors) == 1 and last is fatal_errors[0], f"after fatal: {where}"
    if not conn.server_closed_first:
        return  # we closed first: the code is our own
    if code in conn.hard:
        return  # a frame the WebSocket layer refused closed it, maybe before a fatal error did
    if fatal_errors:
        want = DOCUMENTED_ERRORS[fatal_errors[0]["code"]]
        assert code == want, f"fatal {fatal_errors[0]['code']} closed {code}, not {want}: {where}"
        if fatal_errors[0]["code"] != ErrorCode.SERVER_BUSY.value:
            assert reason == fatal_errors[0]["code"].replace("_", " "), f"reason: {where}"
        return
    assert code == 1000, f"closed {code} without an error: {where}"
    ended = [m for m in messages if m["type"] == "session.ended"]
    if conn.ended:
        assert ended and messages[-1] is ended[0], f"no session.ended after session.end: {where}"
    else:
        assert reason == "idle", f"closed 1000 {reason!r} without session.end: {where}"


# ------------------------------------------------------------------ the state machine
CONNECT = {  # the arguments of a new client
    "api": st.sampled_from(APIS),
    "pick": st.integers(0, len(LISTEN_QUERIES) - 1),  # the /v1/listen query
    "start": st.none() | starts,  # a session.start first, on /v1/stream
}


class ProtocolFuzz(RuleBasedStateMachine):
    """Random clients against one running server; see the module docstring for the invariants."""

    harness: ClassVar[FuzzServer]
    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Conn] = []
        self.clients: list[Conn] = []  # every client of this run, for the failure report
        self.paused_s = 0.0
        self.harness.stats["runs"] += 1

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        self.harness.stats["steps"] += 1
        return self._guard(lambda: self.harness.call(coro, timeout_s=3 * STEP_TIMEOUT_S))

    def _guard(self, check: Callable[[], T]) -> T:
        """Run `check`; a failure is also kept on the harness with every client of this run,
        since Hypothesis reports a failure that timing made flaky only as `Flaky...`."""
        try:
            return check()
        except Exception as exc:
            clients = "\n".join(f"  {conn!r}" for conn in self.clients)
            self.harness.failures.append(f"{exc}\nthe clients of this run:\n{clients}")
            raise

    def _send(self, conn: Conn, frame: Frame, label: str, count: int = 1) -> None:
        if self._call(conn.send(frame, label, count)):
            self.harness.stats["frames sent"] += count
            self.harness.stats["bytes sent"] += count * len(frame)

    # A first client for every run, also for those that leave `connect` out
    @initialize(target=conns, **CONNECT)
    def first_client(self, api: str, pick: int, start: Frame | None) -> Conn:
        return self.connect(api, pick, start)

    @rule(target=conns, **CONNECT)
    def connect(self, api: str, pick: int, start: Frame | None) -> Conn:
        """A new client; on /v1/stream it may send a session.start first."""
        query = {"v1": "", "listen": LISTEN_QUERIES[pick], "realtime": "intent=transcription"}[api]
        if len(self.open) >= MAX_OPEN:  # not a precondition: that would depend on timing
            self.disconnect(self.open[0], "close")
        conn = Conn(api, query)
        if api == "listen":
            fields = dict(part.split("=") for part in query.split("&") if part)
            encoding = LISTEN_ENCODINGS.get(fields.get("encoding", ""), "pcm_s16le")
            conn.fmt = (
                encoding,
                int(fields.get("sample_rate", 16_000)),
                int(fields.get("channels", 1)),
            )
            conn.wav_pending = "encoding" not in fields
        assert self.harness.server is not None
        self._call(conn.open(self.harness.server.port))
        self.harness.stats[f"connections {api}"] += 1
        self.open.append(conn)
        self.clients.append(conn)
        if api == "v1" and start is not None:
            self.send_text(conn, start)
        return conn

    @rule(conn=conns, frame=text_frames)
    def send_text(self, conn: Conn, frame: Frame) -> None:
        if conn.api == "v1" and not conn.sent and frame.kind == "text":
            conn.fmt = _declared_format(frame)
        self._send(conn, frame, repr(frame))

    @rule(conn=conns, frame=st.one_of(realtime_events, listen_messages))
    def send_api_text(self, conn: Conn, frame: Frame) -> None:
        self._send(conn, frame, repr(frame))

    @rule(conn=conns, frame=binary_frames)
    def send_binary(self, conn: Conn, frame: Frame) -> None:
        self._send(conn, frame, repr(frame))

    @rule(conn=conns, clip=st.integers(0, 2), start_ms=st.integers(0, 4000), ms=st.integers(1, 600))
    def send_speech(self, conn: Conn, clip: int, start_ms: int, ms: int) -> None:
        speech_ = Speech(clip, start_ms, ms)
        self._send(conn, conn.speech_frame(self.harness.clips, speech_), repr(speech_))

    @rule(conn=conns, size=st.integers(1, 8), count=st.integers(2, 200))
    def burst(self, conn: Conn, size: int, count: int) -> None:
        """Many tiny binary frames back to back."""
        frame = Frame("binary", b"", b"\x01", size)
        self._send(conn, frame, repr(frame), count)

    @rule(conn=conns, end=st.sampled_from([False, False, True]))
    def flush_or_end(self, conn: Conn, end: bool) -> None:
        self._send(conn, END if end else FLUSH, "END" if end else "FLUSH")

    # Bounded per run: with its other rules left out (swarm testing), a run could only pause.
    @precondition(lambda self: self.paused_s < PAUSE_PER_RUN_S)
    @rule(seconds=st.sampled_from([0.0, 0.01, 0.05, 0.25]))
    def pause(self, seconds: float) -> None:
        self.paused_s += seconds
        self._call(asyncio.sleep(seconds))

    @rule(conn=consumes(conns), how=st.sampled_from(["close", "abort", "garbage", "half"]))
    def disconnect(self, conn: Conn, how: str) -> None:
        self._call(conn.close(how))
        self._finished(conn)

    def teardown(self) -> None:
        """Close every client, even after a failure (a client left open would hold a session
        place into the next runs), then check them and the server."""
        failed: list[Exception] = []
        for conn in self.open:
            try:
                self._call(conn.close("close"))
            except Exception as exc:  # kept on the harness by `_call`; raised below
                failed.append(exc)
        try:
            for conn in list(self.open):
                self._finished(conn)
        finally:
            # Checked once every client is closed, so that a failure belongs to this run
            # whatever the timing: the server's log and the witness run beside the steps.
            self._guard(self.harness.check)
        if failed:
            raise failed[0]

    def _finished(self, conn: Conn) -> None:
        if conn in self.open:
            self.open.remove(conn)
            code = conn.ws.close_code if conn.ws is not None else conn.refused
            self.harness.stats[f"closed {code}"] += 1
            self.harness.stats["messages received"] += len(conn.received)
            self._guard(lambda: check_conn(conn))
            for message in map(json.loads, conn.received) if conn.api == "v1" else ():
                if message["type"] == "error":
                    self.harness.stats[f"error {message['code']}"] += 1


def _declared_format(frame: Frame) -> tuple[str, int, int]:
    """The audio format a v1 session.start asks for, or the default."""
    try:
        obj = json.loads(frame.payload())
        audio = SessionStart.from_dict(obj).audio if isinstance(obj, dict) else None
    except (ValueError, ProtocolError, RecursionError, TypeError, AttributeError):
        audio = None
    return (audio.encoding, audio.sample_rate, audio.channels) if audio else DEFAULT_FORMAT


def _is_end(data: str | bytes) -> bool:
    """Whether a frame is a v1 session.end (any object whose `type` is "session.end")."""
    try:
        obj = json.loads(data) if isinstance(data, str) else None
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("type") == "session.end"


def machine_for(harness: FuzzServer) -> type[ProtocolFuzz]:
    return type("ProtocolFuzz", (ProtocolFuzz,), {"harness": harness})


def witness_clips(sentences: list[np.ndarray]) -> list[np.ndarray]:
    """Three clips of different lengths (so different FakeModel transcripts), with pauses."""
    both = np.concatenate(sentences)
    return [
        np.concatenate([speech.silence(0.3), both[: int(s * 16_000)], speech.silence(1.0)])
        for s in (1.2, 1.8, 2.4)
    ]


CI_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,  # the same sequences on every run, in CI too
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: the failing run's steps are printed
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.mark.timeout(240)
def test_random_clients_never_break_the_server_or_its_neighbour(
    sentences: list[np.ndarray],
) -> None:
    with FuzzServer(witness_clips(sentences)) as harness:
        try:
            run_state_machine_as_test(machine_for(harness), settings=CI_SETTINGS)
        except Exception as exc:
            failures = dict.fromkeys(harness.failures)  # Hypothesis replays a failing run
            raise AssertionError("\n\n".join(failures) or str(exc)) from exc
        assert harness.stats["witness sessions"] >= 1, harness.stats
    harness.check()


def test_the_fuzzer_checks_against_the_documented_error_table() -> None:
    """docs/protocol.md, which the fuzzer reads, says what the protocol module does."""
    in_code = {code.value: close for code, close in CLOSE_CODES.items()}
    assert in_code == DOCUMENTED_ERRORS
