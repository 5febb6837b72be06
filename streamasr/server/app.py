"""The daemon: startup (listen, load, warm up, READY), serve, graceful shutdown with a drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streamasr import __version__
from streamasr.config import SessionConfig
from streamasr.engine.scheduler import Scheduler, SchedulerConfig
from streamasr.models.base import AsrModel
from streamasr.models.loader import load_model
from streamasr.server.config import ServerConfig
from streamasr.server.connection import CLOSE_GRACE_S, Connection, ServerContext
from streamasr.server.metrics import ServerMetrics
from streamasr.server.notify import notify
from streamasr.server.protocol import (
    STREAM_PATH,
    CloseCode,
    ErrorCode,
    ServerProtocol,
    error_event,
)
from streamasr.server.routes import Routes
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
# Threads for the sessions' own work. It is mostly Python, under the GIL: more threads would
# only contend for it.
SESSION_THREADS = min(4, os.cpu_count() or 1)
FORCE_CLOSE_GRACE_S = 0.5  # after the drain timeout: how long a stalled socket gets to close


class Server:
    """One listening port, one shared model, one `Connection` per client.

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
        self._session_config = session_config or SessionConfig(encoder=config.encoder)
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
            lambda: (len(self._connections), self.capacity),
            lambda: self._ctx.model.info if self._ctx is not None else None,
        )
        self._ctx: ServerContext | None = None
        self._ws: WsServer | None = None
        self._connections: set[Connection] = set()
        self._drained = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()

    # ---------------------------------------------------------------- public
    @property
    def port(self) -> int:
        if self._ws is None:
            raise RuntimeError("the server is not listening")
        port: int = self._ws.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The caption page's URL (the WebSocket is at ws://.../v1/stream)."""
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def active_sessions(self) -> int:
        return len(self._connections)

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
        self._ws = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._routes.process_request,
            max_size=2 * self.config.max_frame_bytes,  # the hard cap; see docs/protocol.md
            compression=None,  # PCM does not deflate well; saves CPU and memory per session
            close_timeout=CLOSE_GRACE_S,
            server_header=f"streamasr/{__version__}",
        )
        log.info("listening on %s:%d, loading %s", self.config.host, self.port, self.config.model)
        await self._pool.run(set_torch_threads, self.config.threads)
        model, load_s = await self._pool.run(self._model_factory, self.config.model)
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
            self.config, model, self._session_config, self._pool, self.metrics, self._scheduler
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
        """Stop accepting, finalise every open session, close each 1001, within the drain time."""
        if self.state in ("stopping", "stopped"):
            return
        self.state = "stopping"
        self.metrics.ready.set(0)
        notify("STOPPING=1")
        if self._ws is not None:
            self._ws.close(close_connections=False)  # stop accepting; open sessions drain below
        log.info("shutting down: draining %d session(s)", len(self._connections))
        for conn in list(self._connections):
            conn.end("shutdown")
        if not await self.wait_idle(self.config.drain_timeout_s):
            log.warning("drain timeout: closing %d session(s) now", len(self._connections))
            for conn in list(self._connections):
                conn.abort(grace_s=FORCE_CLOSE_GRACE_S)
        if self._ws is not None:
            await self._ws.wait_closed()
        self._pool.shutdown()
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.close)  # after the calls already queued
        self.state = "stopped"
        log.info("stopped")

    # ---------------------------------------------------------------- internals
    async def _trim_heap(self) -> None:
        """Every `TRIM_INTERVAL_S`, hand freed heap pages back (`trim_heap`), off the loop."""
        while await asyncio.to_thread(trim_heap):
            await asyncio.sleep(TRIM_INTERVAL_S)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no session is open; False after `timeout_s` or a forced stop."""
        if not self._connections:
            return True
        self._drained.clear()
        drained = asyncio.create_task(self._drained.wait())
        forced = asyncio.create_task(self._force.wait())
        await asyncio.wait(
            {drained, forced}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        drained.cancel()
        forced.cancel()
        return not self._connections

    async def _handle(self, ws: ServerConnection) -> None:
        """The websockets handler: one session per connection, within max_sessions."""
        if self.state == "stopping":  # the handshake finished just as the drain began
            await _close(ws, CloseCode.GOING_AWAY, "server shutting down")
            return
        if self._ctx is None or self.state != "ready":
            await _close(ws, CloseCode.TRY_AGAIN, "server not ready")
            return
        if len(self._connections) >= self.capacity:
            await self._reject_busy(ws)
            return
        conn = Connection(ws, self._ctx)
        self._connections.add(conn)
        self.metrics.sessions.inc()
        self.metrics.sessions_active.set(len(self._connections))
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self.metrics.sessions_active.set(len(self._connections))
            if not self._connections:
                self._drained.set()

    async def _reject_busy(self, ws: ServerConnection) -> None:
        self.metrics.rejected.labels(reason="busy").inc()
        self.metrics.errors.labels(code=ErrorCode.SERVER_BUSY.value).inc()
        limit = self.capacity
        message = f"the server is at its limit of {limit} sessions; try again later"
        frame = ServerProtocol(max_frame_bytes=0).event(error_event(ErrorCode.SERVER_BUSY, message))
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await ws.send(frame)
        except (TimeoutError, ConnectionClosed):
            pass
        await _close(ws, CloseCode.TRY_AGAIN, f"server busy: {limit} sessions")


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()


__all__ = ["STREAM_PATH", "ModelFactory", "Server"]
