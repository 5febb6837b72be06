"""The daemon: startup (listen, load, warm up, READY), serve, graceful shutdown with a drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket

from streamasr import __version__
from streamasr.config import SessionConfig
from streamasr.engine.scheduler import Scheduler, SchedulerConfig
from streamasr.models.base import AsrModel
from streamasr.models.loader import load_model
from streamasr.net import is_loopback
from streamasr.server.asgi import AsgiChannel, Refused, build_app, close_channel
from streamasr.server.config import ConfigError, ServerConfig, load_config
from streamasr.server.deepgram import LISTEN_PATH, deepgram_codec
from streamasr.server.host import Host
from streamasr.server.metrics import ServerMetrics
from streamasr.server.notify import notify
from streamasr.server.openai_rest import TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH, OpenAIAudio
from streamasr.server.protocol import (
    STREAM_PATH,
    CloseCode,
    ErrorCode,
    ServerProtocol,
    error_event,
)
from streamasr.server.realtime import REALTIME_PATH, realtime_codec
from streamasr.server.resume import ResumeTokens
from streamasr.server.routes import Routes
from streamasr.server.runner import SessionRunner
from streamasr.server.session_io import (
    CLOSE_GRACE_S,
    Channel,
    ChannelClosed,
    Codec,
    ServerContext,
    resuming,
)
from streamasr.server.static import PACKAGE_STATIC, StaticFiles
from streamasr.server.worker import (
    TRIM_INTERVAL_S,
    DecodePool,
    estimate_capacity,
    set_torch_threads,
    time_final,
    trim_heap,
    warm_up,
)

log = logging.getLogger(__name__)

ModelFactory = Callable[[str], AsrModel]
# A codec for one WebSocket connection, from its handshake (raises `Refused` to refuse it)
CodecFactory = Callable[[WebSocket, ServerContext], Codec]


def v1_codec(websocket: WebSocket, ctx: ServerContext) -> Codec:
    """Protocol v1 (docs/protocol.md)."""
    return ServerProtocol(
        max_frame_bytes=ctx.config.max_frame_bytes, model=ctx.model.info, tokens=ctx.tokens
    )


# The WebSocket APIs: path -> codec factory
SESSION_APIS: dict[str, CodecFactory] = {
    STREAM_PATH: v1_codec,
    LISTEN_PATH: deepgram_codec,
    REALTIME_PATH: realtime_codec,
}
# Threads for the sessions' own work. It is mostly Python, under the GIL: more threads would
# only contend for it.
SESSION_THREADS = min(4, os.cpu_count() or 1)
FORCE_CLOSE_GRACE_S = 0.5  # after the drain timeout: how long a stalled socket gets to close


class Server:
    """One listening port, one shared model, one `SessionRunner` per client.

    `run()` is the whole life; `startup()`, `request_shutdown()` and `shutdown()` are its steps,
    public so that tests drive them in-process. The signal handlers only call
    `request_shutdown()`.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        model_factory: ModelFactory | None = None,
        session_config: SessionConfig | None = None,
    ) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.state = "starting"  # "starting" -> "ready" -> "stopping" -> "stopped"
        self._model_factory = model_factory or partial(
            load_model, compute=config.compute, dtype=config.dtype
        )
        self._session_config = session_config or SessionConfig(
            encoder=config.encoder, language=config.language, task=config.task
        )
        self.capacity = config.max_sessions  # sessions taken; when 0, derived in `startup`
        self._pool = DecodePool(1)  # loads the model; replaced by the sessions' pool in `startup`
        self._scheduler: Scheduler | None = None
        self._trimmer: asyncio.Task[None] | None = None
        static = Path(config.static_dir) if config.static_dir else PACKAGE_STATIC
        self._routes = Routes(
            config,
            self.metrics,
            StaticFiles(static),
            lambda: self.state,
            lambda: (self.placed_sessions, self.capacity),
            lambda: self._ctx.model.info if self._ctx is not None else None,
        )
        self._ctx: ServerContext | None = None
        audio = OpenAIAudio(lambda: self._ctx, self._admit_job, config.max_upload_bytes)
        posts = {TRANSCRIPTIONS_PATH: audio.transcriptions, TRANSLATIONS_PATH: audio.translations}
        sessions = {path: self._api(make) for path, make in SESSION_APIS.items()}
        self.app = build_app(self._routes, sessions, posts, self.lifespan)
        self._jobs = 0  # REST transcriptions running: each takes a session's place
        self._by_client: Counter[str] = Counter()  # sessions of each non-loopback address
        self._host: Host | None = None
        self._connections: set[SessionRunner] = set()
        self._drained = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None
        self._shutting_down = False

    # ---------------------------------------------------------------- public
    @property
    def port(self) -> int:
        if self._host is None:
            raise RuntimeError("the server is not listening")
        return self._host.port

    @property
    def url(self) -> str:
        """The caption page's URL (the WebSocket is at ws://.../v1/stream, wss:// with TLS)."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}/"

    @property
    def client_limit(self) -> int:
        """Sessions one non-loopback client address may hold at once."""
        return self.config.max_client_sessions or max(1, self.capacity // 2)

    @property
    def active_sessions(self) -> int:
        """Streams open plus REST transcriptions running."""
        return len(self._connections) + self._jobs

    @property
    def held_sessions(self) -> int:
        """Streams whose client vanished, held for it to resume: they take no place."""
        return len(self._ctx.held) if self._ctx is not None else 0

    @property
    def placed_sessions(self) -> int:
        """The sessions that take a place of `capacity`: all but the held ones."""
        return self.active_sessions - self.held_sessions

    async def run(self, on_ready: Callable[[Server], None] | None = None) -> None:
        """Start, serve until `request_shutdown()` (SIGTERM/SIGINT), then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        try:
            startup = asyncio.create_task(self.startup())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
            if startup.done():
                startup.result()  # raises a model or bind error
                if on_ready is not None:
                    on_ready(self)
                await stop
            else:
                startup.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()

    async def startup(self) -> None:
        """Listen (so /healthz answers 503), load and warm up the model, then accept sessions."""
        host = Host(
            self.app,
            max_message_bytes=2 * self.config.max_frame_bytes,  # the hard cap; docs/protocol.md
            server_header=f"streamasr/{__version__}",
            tls_cert=self.config.tls_cert,
            tls_key=self.config.tls_key,
        )
        await host.start(self.config.host, self.config.port)
        self._host = host
        log.info("listening on %s:%d", self.config.host, self.port)
        await self.load()

    async def load(self) -> None:
        """Load and warm up the model, then accept sessions (`startup` without listening: what
        the app's ASGI lifespan runs under another host)."""
        log.info("loading %s", self.config.model)
        await self._pool.run(set_torch_threads, self.config.threads)
        model, load_s = await self._pool.run(self._model_factory, self.config.model)
        try:  # the sessions' default, which a session that names none is not checked for
            model.info.check_language(self._session_config.language, self._session_config.task)
        except ValueError as exc:
            raise ConfigError(f"--language/--task: {exc}") from None
        _, warm_s = await self._pool.run(warm_up, model)
        if not self.capacity:
            final_s, _ = await self._pool.run(time_final, model)
            self.capacity = estimate_capacity(final_s, self.config.workers)
            log.info(
                "capacity: %d sessions (a 30 s-window final took %.2f s)", self.capacity, final_s
            )
        self.metrics.sessions_max.set(self.capacity)
        # Pool threads run the sessions' own work (resampling, VAD, features, text) and never
        # wait for a model call: the scheduler's inference threads run those.
        loader = self._pool
        self._pool = DecodePool(SESSION_THREADS)
        loader.shutdown()
        budget = self.config.batch_budget_ms
        scheduling = SchedulerConfig(self.config.max_batch, budget, self.config.workers)
        self._scheduler = Scheduler(model, scheduling)
        self.metrics.watch(self._scheduler)
        self._ctx = ServerContext(
            self.config,
            model,
            self._session_config,
            self._pool,
            self.metrics,
            self._scheduler,
            ResumeTokens(self.config.resume_secret),
            max_held=self.capacity,
        )
        self._trimmer = asyncio.create_task(self._trim_heap())
        self.state = "ready"
        self.metrics.ready.set(1)
        notify("READY=1")
        log.info("ready: model loaded in %.1f s, warmed up in %.2f s", load_s, warm_s)

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown; a second request skips what is left of the drain."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop accepting, finalise every open session, close each 1001, within the drain time;
        then stop."""
        if self._shutting_down:
            return
        self._shutting_down = True
        await self.drain()
        if self._host is not None:
            await self._host.stop()
        await self._unload()
        log.info("stopped")

    async def drain(self) -> None:
        """Take no more sessions; finalise every open one and close it 1001 ("going away":
        clients resume elsewhere), within the drain time. The model stays loaded: what a
        replica that its platform removes does before it is stopped (`deploy.ray_serve`)."""
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        await asyncio.shield(self._draining)

    async def _drain(self) -> None:
        self.state = "stopping"
        self.metrics.ready.set(0)
        notify("STOPPING=1")
        if self._host is not None:
            self._host.stop_accepting()  # open sessions drain below
        log.info("draining %d session(s)", len(self._connections))
        for conn in list(self._connections):
            conn.end("shutdown")
        if not await self.wait_idle(self.config.drain_timeout_s):
            log.warning("drain timeout: closing %d session(s) now", len(self._connections))
            for conn in list(self._connections):
                conn.abort(grace_s=FORCE_CLOSE_GRACE_S)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The ASGI lifespan, for a host other than `run`'s: load at its startup; at its
        shutdown, finalise every session (within the drain time) and stop."""
        await self.load()
        try:
            yield
        finally:
            await self.shutdown()

    async def _unload(self) -> None:
        self._pool.shutdown()
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.close)  # after the calls already queued
        self.state = "stopped"

    # ---------------------------------------------------------------- internals
    async def _trim_heap(self) -> None:
        """Every `TRIM_INTERVAL_S`, hand freed heap pages back (`trim_heap`), off the loop."""
        while await asyncio.to_thread(trim_heap):
            await asyncio.sleep(TRIM_INTERVAL_S)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no session (stream or REST job) is open; False after `timeout_s` or a
        forced stop."""
        if not self.active_sessions:
            return True
        self._drained.clear()
        drained = asyncio.create_task(self._drained.wait())
        forced = asyncio.create_task(self._force.wait())
        await asyncio.wait(
            {drained, forced}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        drained.cancel()
        forced.cancel()
        return not self.active_sessions

    def _api(self, make_codec: CodecFactory) -> Callable[[WebSocket], Awaitable[None]]:
        async def handle(websocket: WebSocket) -> None:
            await self._handle(websocket, make_codec)

        return handle

    async def _handle(self, websocket: WebSocket, make_codec: CodecFactory) -> None:
        """One WebSocket session of an API, within max_sessions; the codec speaks the API."""
        ctx = self._ctx
        if ctx is None:  # the access check refused it already, unless the state just changed
            await websocket.close(CloseCode.TRY_AGAIN, "server not ready")
            return
        try:
            codec = make_codec(websocket, ctx)
        except Refused as refused:  # the handshake asked for what this API cannot do
            await refused.send(websocket)
            return
        ws = AsgiChannel(websocket)
        await ws.accept()
        if self.state == "stopping":  # the handshake finished just as the drain began
            await close_channel(ws, CloseCode.GOING_AWAY, "server shutting down")
            return
        if self.state != "ready":
            await close_channel(ws, CloseCode.TRY_AGAIN, "server not ready")
            return
        client = _client_key(websocket.client.host if websocket.client else None)
        channel: Channel = ws
        refusal = self._refusal(client)
        if refusal is not None and ctx.live:  # a full daemon still takes back its sessions
            channel = await resuming(ws, ctx)
        if refusal is not None and channel is ws:
            await self._reject_busy(ws, codec, *refusal)
            return
        conn = SessionRunner(channel, codec, ctx)
        self._connections.add(conn)
        self._opened(client)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._closed(client)
        if conn.handed_off is not None:  # a resumed session goes on over this connection
            await conn.handed_off

    def _refusal(self, client: str | None) -> tuple[str, str] | None:
        """Why a new session of `client` is refused (the message and the close reason), if it
        is: the server is full, or that client holds its share."""
        if self.placed_sessions >= self.capacity:
            limit = self.capacity
            message = f"the server is at its limit of {limit} sessions; try again later"
            return message, f"server busy: {limit} sessions"
        if client is not None and self._by_client[client] >= self.client_limit:
            limit = self.client_limit
            message = f"{client} already holds {limit} sessions, the most one client may hold"
            return message, f"client busy: {limit} sessions"
        return None

    def _opened(self, client: str | None) -> None:
        """A session (stream or REST job) took a place."""
        if client is not None:
            self._by_client[client] += 1
        self.metrics.sessions.inc()
        self.metrics.sessions_active.set(self.active_sessions)

    def _closed(self, client: str | None) -> None:
        """A session gave its place back: the drain may be over."""
        if client is not None:
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]
        self.metrics.sessions_active.set(self.active_sessions)
        if not self.active_sessions:
            self._drained.set()

    def _admit_job(self, address: str | None) -> Callable[[], None] | str:
        """A session's place for a REST transcription: its release, or why there is none."""
        client = _client_key(address)
        if self.state != "ready":
            refusal: tuple[str, str] | None = ("the server is shutting down; try another", "")
        else:
            refusal = self._refusal(client)
        if refusal is not None:
            self.metrics.rejected.labels(reason="busy").inc()
            return refusal[0]
        self._jobs += 1
        self._opened(client)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._jobs -= 1
                self._closed(client)

        return release

    async def _reject_busy(self, ws: AsgiChannel, codec: Codec, message: str, reason: str) -> None:
        self.metrics.rejected.labels(reason="busy").inc()
        self.metrics.errors.labels(code=ErrorCode.SERVER_BUSY.value).inc()
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                for frame in codec.encode(error_event(ErrorCode.SERVER_BUSY, message)):
                    await ws.send(frame)
        except (TimeoutError, ChannelClosed):
            pass
        await close_channel(ws, CloseCode.TRY_AGAIN, reason)


def _client_key(address: str | None) -> str | None:
    """The address a client's sessions are counted under; None (not counted): loopback."""
    if address is None or is_loopback(address):
        return None
    return address


def create_app() -> Any:
    """The daemon as an ASGI app for another host, e.g. `uvicorn --factory
    streamasr.server.app:create_app`: settings from the `STREAMASR_*` variables and the TOML
    file named by `STREAMASR_CONFIG`, as for `serve`; the model loads at the host's lifespan
    startup, and the host's shutdown drains the sessions."""
    file = os.environ.get("STREAMASR_CONFIG")
    config = load_config(Path(file) if file else None, os.environ)
    return Server(config).app


__all__ = ["STREAM_PATH", "ModelFactory", "Server", "create_app"]
