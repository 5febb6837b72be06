"""`streamasr meeting --listen`: a WebSocket (protocol v1) audio producer records a meeting.

Each producer is a `SessionRunner`, as a daemon client is, whose `Recording` is the meeting's
notes (`MeetingNotes`): every final is on disk before the producer hears of it, and whatever
way the connection ends, the audio received is transcribed into the meeting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import http
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from streamasr.config import SessionConfig
from streamasr.engine.scheduler import Scheduler, SchedulerConfig
from streamasr.errors import InputError
from streamasr.meeting.recorder import Emit, MeetingNotes
from streamasr.meeting.slides import SlideReader
from streamasr.meeting.terms import SlideTerms, TermWindow
from streamasr.models.base import AsrModel
from streamasr.net import is_loopback
from streamasr.server.asgi import AsgiChannel, close_channel, deny
from streamasr.server.config import ServerConfig, token_problem
from streamasr.server.host import Host
from streamasr.server.metrics import ServerMetrics
from streamasr.server.protocol import (
    MAX_SLIDE_TEXT_BYTES,
    STREAM_PATH,
    CloseCode,
    ErrorCode,
    ServerProtocol,
    error_event,
)
from streamasr.server.resume import ResumeTokens
from streamasr.server.routes import bearer_token, response
from streamasr.server.runner import SessionRunner
from streamasr.server.session_io import CLOSE_GRACE_S, ChannelClosed, ServerContext, resuming
from streamasr.server.worker import DecodePool

log = logging.getLogger(__name__)

BUSY_REASON = "busy: another producer is recording"
SHUTDOWN_REASON = "meeting recorder shutting down"


@dataclass(frozen=True)
class ListenConfig:
    """Where to listen and what a producer may send; built once by the meeting command."""

    out: Path  # meetings directory
    host: str = "127.0.0.1"  # bind address; anything but loopback requires a token
    port: int = 0  # 0 picks a free port (printed in the meeting.listening line)
    token: str | None = None  # bearer token (Authorization header or ?token=)
    silence_timeout_s: float | None = None  # as for the other sources: ends the meeting
    max_frame_bytes: int = 1_048_576  # the daemon's default: 32 s of 16 kHz s16 mono
    idle_timeout_s: float = 60.0  # no audio for this long: the meeting ends, the producer's
    # slot is given back (close 1000 "idle")
    session: SessionConfig = dataclasses.field(default_factory=SessionConfig)  # the engine's
    # settings; partials and word timings follow each producer's session.start
    terms: TermWindow = TermWindow()  # which slides' terms bias the recogniser

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65_535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        problem = token_problem(self.token)
        if problem:
            raise ValueError(problem)
        if not self.idle_timeout_s > 0:
            raise ValueError(f"the idle timeout must be positive, got {self.idle_timeout_s}")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host!r} without a token: set --token or "
                "STREAMASR_TOKEN (or listen on 127.0.0.1)"
            )

    def server_config(self) -> ServerConfig:
        """The limits of a producer's session, as the daemon's settings: no length limit."""
        return ServerConfig(
            host=self.host,
            port=self.port,
            token=self.token,
            max_frame_bytes=self.max_frame_bytes,
            idle_timeout_s=self.idle_timeout_s,
            max_session_s=None,
            encoder=self.session.encoder,
        )


class MeetingListener:
    """A WebSocket server at `STREAM_PATH` that lets one producer at a time record a meeting."""

    def __init__(
        self,
        config: ListenConfig,
        model: AsrModel,
        emit: Emit,
        pool: DecodePool,
        slides: SlideReader | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.emit = emit
        self.pool = pool
        self.slides = slides  # reads the producers' slide messages; None: they are refused
        # one producer, so one inference thread and no batching
        self.scheduler = Scheduler(model, SchedulerConfig(max_batch=1, budget_ms=0.0, workers=1))
        server_config = config.server_config()
        self.ctx = ServerContext(
            server_config,
            model,
            config.session,
            pool,
            ServerMetrics(),
            self.scheduler,
            ResumeTokens(server_config.resume_secret),
            max_held=1,  # the producer whose connection dropped, until it resumes
        )
        self.producer: SessionRunner | None = None
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
            # the hard cap, as in the daemon, or a slide message's
            max_message_bytes=max(2 * self.config.max_frame_bytes, MAX_SLIDE_TEXT_BYTES),
            server_header="streamasr-meeting",
        )
        await host.start(self.config.host, self.config.port)
        self._host = host

    def split(self) -> None:
        """End the current producer's meeting, its speech so far finalised; its next speech
        opens one. A no-op before the producer's session.start."""
        if self.producer is not None:
            self.producer.cut()

    async def stop(self) -> None:
        """Stop accepting; the open meeting is finalised and its producer closed 1001."""
        self._stopping = True
        if self._host is None:
            return
        self._host.stop_accepting()
        if self.producer is not None:
            self.producer.end("shutdown")
        await self._idle.wait()
        await self._host.stop()

    async def _handle(self, websocket: WebSocket) -> None:
        ws = AsgiChannel(websocket)
        await ws.accept()
        if self._stopping:
            await close_channel(ws, CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return
        limit, tokens = self.config.max_frame_bytes, self.ctx.tokens
        codec = ServerProtocol(
            max_frame_bytes=limit, model=self.model.info, tokens=tokens, slides=True
        )
        if self.producer is not None:
            channel = await resuming(ws, self.ctx) if self.ctx.live else ws
            if channel is ws:
                await self._refuse(ws)
                return
            back = SessionRunner(channel, codec, self.ctx)  # hands the channel to the producer
            await back.run()
            if back.handed_off is not None:
                await back.handed_off
            return
        terms = SlideTerms(self.config.terms)
        notes = MeetingNotes(
            self.config.out, self.emit, self.config.silence_timeout_s, self.slides, terms
        )
        producer = self.producer = SessionRunner(
            ws, codec, self.ctx, recording=notes, shutdown_reason=SHUTDOWN_REASON
        )
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


async def listen(
    config: ListenConfig, model: AsrModel, emit: Emit, slides: SlideReader | None = None
) -> None:
    """Serve producers until SIGTERM/SIGINT; SIGUSR1 ends the current meeting."""
    loop = asyncio.get_running_loop()
    pool = DecodePool(1)  # one producer, so one decode thread
    listener = MeetingListener(config, model, emit, pool, slides)
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
        await asyncio.to_thread(listener.scheduler.close)
