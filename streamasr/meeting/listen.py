"""`streamasr meeting --listen`: a WebSocket (protocol v1) audio producer records a meeting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import http
import logging
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.errors import InputError
from streamasr.events import Event
from streamasr.meeting.recorder import Emit, MeetingRecorder
from streamasr.models.base import AsrModel
from streamasr.server.asgi import AsgiChannel, close_channel, deny
from streamasr.server.config import is_loopback
from streamasr.server.host import Host
from streamasr.server.protocol import (
    STREAM_PATH,
    Action,
    Audio,
    Close,
    CloseCode,
    End,
    ErrorCode,
    Flush,
    SendError,
    ServerMessage,
    ServerProtocol,
    SessionEnded,
    SessionStart,
    SessionStarted,
    Start,
    error_event,
)
from streamasr.server.routes import bearer_token, response
from streamasr.server.runner import ChannelClosed
from streamasr.server.worker import DecodePool

log = logging.getLogger(__name__)

CLOSE_GRACE_S = 2.0  # wait this long for the producer's close frame, then drop the connection
BUSY_REASON = "busy: another producer is recording"
SHUTDOWN_REASON = "meeting recorder shutting down"
# meeting.ended reason for each way a producer's meeting can end
END_REASONS = {"client": "end", "shutdown": "shutdown"}


@dataclass(frozen=True)
class ListenConfig:
    """Where to listen and what a producer may send; built once by the meeting command."""

    out: Path  # meetings directory
    host: str = "127.0.0.1"  # bind address; anything but loopback requires a token
    port: int = 0  # 0 picks a free port (printed in the meeting.listening line)
    token: str | None = None  # bearer token (Authorization header or ?token=)
    silence_timeout_s: float | None = None  # as for the other sources: ends the meeting
    max_frame_bytes: int = 1_048_576  # the daemon's default: 32 s of 16 kHz s16 mono
    session: SessionConfig = dataclasses.field(default_factory=SessionConfig)  # the engine's
    # settings; partials and word timings follow each producer's session.start

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65_535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.token == "":
            raise ValueError("the token must not be empty")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host!r} without a token: set --token or "
                "STREAMASR_TOKEN (or listen on 127.0.0.1)"
            )

    @property
    def limits(self) -> dict[str, float | None]:
        """The limits a producer is told in session.started: no idle or length limit here."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "idle_timeout_s": None,
            "max_session_s": None,
        }


class Producer:
    """One connected producer: its `ServerProtocol`, its `LocalSession`, and its meeting.

    Frames are handled one at a time, each model call awaited on the decode pool before the
    next frame is read: a producer faster than the model is paused by TCP flow control
    (the daemon's pause-reading policy) and its events go back in order, each final only
    once it is on disk.
    """

    def __init__(self, ws: AsgiChannel, listener: MeetingListener) -> None:
        self.ws = ws
        self.listener = listener
        self.config = listener.config
        self.protocol = ServerProtocol(
            max_frame_bytes=self.config.max_frame_bytes, model=listener.model.info
        )
        self.recorder: MeetingRecorder | None = None
        self.split_requested = False
        self._stop = asyncio.Event()
        self._ended = False  # the meeting is over and the socket closing
        self._end_reason = "disconnect"  # meeting.ended reason unless session.end came first

    def stop(self) -> None:
        """Shutdown: finalise, send the last finals and session.ended, close 1001."""
        self._stop.set()

    async def run(self) -> None:
        """Serve the producer until its meeting ends; never raises."""
        stopping = asyncio.create_task(self._stop.wait())
        try:
            while not self._ended:
                receiving = asyncio.create_task(self.ws.receive())
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()  # safe: the host keeps an unread message for later
                    actions = self.protocol.end("shutdown", close_code=CloseCode.GOING_AWAY)
                    await self._apply(actions, close_reason=SHUTDOWN_REASON)
                    break
                message = receiving.result()  # ChannelClosed: the producer went away
                if isinstance(message, str):
                    await self._apply(self.protocol.receive_text(message))
                else:
                    await self._apply(self.protocol.receive_bytes(message))
                if self.split_requested:
                    self.split_requested = False  # with no meeting open there is none to end
                    if self.recorder is not None and not self._ended:
                        await self._call(self.recorder.split)
        except ChannelClosed:
            pass  # the meeting ends below, keeping what was said
        except Exception:
            log.exception("meeting producer failed")
            self._end_reason = "error"
            await self._send_error(ErrorCode.INTERNAL_ERROR, "internal error; see the log")
            await self._close(CloseCode.INTERNAL, "internal error")
        finally:
            stopping.cancel()
            await self._end_meeting()

    # ---------------------------------------------------------------- actions
    async def _apply(self, actions: list[Action], close_reason: str | None = None) -> None:
        for action in actions:
            if isinstance(action, Start):
                await self._start(action.options)
            elif isinstance(action, Audio):
                await self._call(self._recorder().feed, action.samples)
            elif isinstance(action, Flush):
                await self._call(self._recorder().flush)
            elif isinstance(action, End):
                await self._finish(action.reason)
            elif isinstance(action, SendError):
                await self._send(action.error)
            elif isinstance(action, Close):
                # a fatal error (or shutdown before any audio): the meeting, if one is open,
                # ends in `run` with every final written so far
                self._end_reason = "error"
                await self._close(action.code, close_reason or action.reason)

    def _recorder(self) -> MeetingRecorder:
        if self.recorder is None:  # the protocol core starts a session before anything else
            raise RuntimeError("no meeting is open")
        return self.recorder

    async def _start(self, options: SessionStart) -> None:
        session_config = options.session_config(self.config.session)
        rate = options.audio.sample_rate
        stream = LocalSession(self.listener.model, session_config, sample_rate=rate)
        self.recorder = MeetingRecorder(
            stream, self.config.out, self.listener.emit, self.config.silence_timeout_s
        )
        await self.listener.pool.run(self.recorder.open_meeting)  # mkdir and fsync: off the loop
        info = self.listener.model.info
        await self._send(SessionStarted(uuid.uuid4().hex, info, options, self.config.limits))

    async def _call(self, method: Callable[..., list[Event]], *args: object) -> None:
        """A recorder call on the decode pool, then its events to the producer, in order."""
        events, _ = await self.listener.pool.run(method, *args)
        await self._send_all(events)

    async def _finish(self, reason: str) -> None:
        """session.end or shutdown: finalise, send the finals and session.ended, close."""
        self._ended = True
        if self.recorder is not None:
            events, _ = await self.listener.pool.run(self.recorder.close, END_REASONS[reason])
            self.recorder = None
            await self._send_all(events)
        await self._send(SessionEnded(reason))
        if reason == "shutdown":
            await self._close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
        else:
            await self._close(CloseCode.NORMAL, "")

    async def _end_meeting(self) -> None:
        """The producer is gone or failed: finalise into the transcript, render, tell stdout."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        try:
            await self.listener.pool.run(recorder.close, self._end_reason)
        except Exception:  # a broken session: keep the finals written so far, render them
            log.exception("finalising the meeting failed")
            await self.listener.pool.run(recorder.end_meeting, self._end_reason)

    # ---------------------------------------------------------------- sending
    async def _send_all(self, events: list[Event]) -> None:
        for event in events:
            await self._send(event)

    async def _send(self, message: ServerMessage) -> None:
        await self.ws.send(self.protocol.event(message))

    async def _send_error(self, code: ErrorCode, message: str) -> None:
        with contextlib.suppress(ChannelClosed):  # it may be the producer that broke
            await self._send(error_event(code, message))

    async def _close(self, code: int, reason: str) -> None:
        self._ended = True
        await close_channel(self.ws, code, reason)


class MeetingListener:
    """A WebSocket server at `STREAM_PATH` that lets one producer at a time record a meeting."""

    def __init__(self, config: ListenConfig, model: AsrModel, emit: Emit, pool: DecodePool) -> None:
        self.config = config
        self.model = model
        self.emit = emit
        self.pool = pool
        self.producer: Producer | None = None
        app = Starlette(routes=[WebSocketRoute(STREAM_PATH, self._handle)])
        self.app = _ProducerCheck(app, config.token)
        self._host: Host | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        if self._host is None:
            raise RuntimeError("the listener is not listening")
        return self._host.port

    @property
    def url(self) -> str:
        host = self.config.host
        return f"ws://{f'[{host}]' if ':' in host else host}:{self.port}{STREAM_PATH}"

    async def start(self) -> None:
        host = Host(
            self.app,
            max_message_bytes=2 * self.config.max_frame_bytes,  # the hard cap, as in the daemon
            server_header="streamasr-meeting",
        )
        await host.start(self.config.host, self.config.port)
        self._host = host

    def split(self) -> None:
        """End the current producer's meeting at the next frame; its next speech opens one."""
        if self.producer is not None:
            self.producer.split_requested = True

    async def stop(self) -> None:
        """Stop accepting; the open meeting is finalised and its producer closed 1001."""
        self._stopping = True
        if self._host is None:
            return
        self._host.stop_accepting()
        if self.producer is not None:
            self.producer.stop()
        await self._idle.wait()
        await self._host.stop()

    async def _handle(self, websocket: WebSocket) -> None:
        ws = AsgiChannel(websocket)
        await ws.accept()
        if self._stopping:
            await close_channel(ws, CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return
        if self.producer is not None:
            await self._refuse(ws)
            return
        producer = self.producer = Producer(ws, self)
        self._idle.clear()
        try:
            await producer.run()
        finally:
            self.producer = None
            self._idle.set()

    async def _refuse(self, ws: AsgiChannel) -> None:
        message = "a producer is already recording a meeting here; try again when it ends"
        frame = ServerProtocol(max_frame_bytes=0).event(error_event(ErrorCode.SERVER_BUSY, message))
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await ws.send(frame)
        except (TimeoutError, ChannelClosed):
            pass
        await close_channel(ws, CloseCode.TRY_AGAIN, BUSY_REASON)


class _ProducerCheck:
    """ASGI middleware: only the stream path; no browsers (a web page must not inject audio);
    the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(HTTPConnection(scope)) if scope["type"] != "lifespan" else None
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await refusal(scope, receive, send)
        else:
            await deny(WebSocket(scope, receive, send), refusal)

    def _refusal(self, request: HTTPConnection) -> Response | None:
        if request.url.path != STREAM_PATH:
            return response(http.HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Origin") is not None:
            return response(http.HTTPStatus.FORBIDDEN, "browsers may not record meetings\n")
        given = bearer_token(request)
        if self.token is not None and (
            given is None or not hmac.compare_digest(given.encode(), self.token.encode())
        ):
            return response(
                http.HTTPStatus.UNAUTHORIZED,
                "missing or wrong token\n",
                headers={"WWW-Authenticate": 'Bearer realm="streamasr"'},
            )
        return None


async def listen(config: ListenConfig, model: AsrModel, emit: Emit) -> None:
    """Serve producers until SIGTERM/SIGINT; SIGUSR1 ends the current meeting."""
    loop = asyncio.get_running_loop()
    pool = DecodePool(1)  # one producer, so one decode thread
    listener = MeetingListener(config, model, emit, pool)
    stop = asyncio.Event()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set, signal.SIGUSR1: listener.split}
    try:
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            await listener.start()
        except OSError as exc:  # the port is taken, the address is not ours, ...
            raise InputError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
        emit({"type": "meeting.listening", "url": listener.url})
        await stop.wait()
        await listener.stop()
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        pool.shutdown()
