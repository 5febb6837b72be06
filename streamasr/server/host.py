"""Serving an ASGI app with uvicorn on sockets bound here, under the daemon's own signals.

uvicorn runs the HTTP and WebSocket protocol; the daemon keeps what it must decide itself:
binding (a taken port is an error to report, not an exit), when to stop accepting, and the
drain before the connections that are left are closed. The app object itself is plain ASGI,
so other hosts can mount it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger(__name__)

# The ASGI scope extension under which uvicorn's WebSocket connections carry their transport:
# `{"transport": asyncio.Transport}`. It lets a session drop a client that stopped reading,
# which plain ASGI cannot; elsewhere the close waits for the host's own timeout.
TRANSPORT_EXTENSION = "streamasr.transport"
CLOSE_TIMEOUT_S = 2.0  # after our close frame: how long the client has to answer it


_SECRET = re.compile(r"([?&](?:token|api_key)=)[^&\s\"']+", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Hides `?token=` values in uvicorn's log lines ("WebSocket /v1/stream?token=..."
    [accepted]): a browser can pass its token only in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


for _name in ("uvicorn.error", "uvicorn.access"):
    logging.getLogger(_name).addFilter(RedactSecrets())


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with our close timeout and the transport extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT_S

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # unset when the handshake was refused
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = {"transport": self.transport}


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host` (all on one port, even for port 0)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:  # port 0: the others take the first one's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(2048)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Server(uvicorn.Server):
    def capture_signals(self) -> Any:  # the daemon handles SIGTERM and SIGINT itself
        return contextlib.nullcontext()


class Host:
    """One ASGI app on uvicorn: `start`, later `stop_accepting`, then `stop`."""

    def __init__(self, app: Any, *, max_message_bytes: int, server_header: str) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            ws=_WebSocketProtocol,
            ws_max_size=max_message_bytes,
            ws_per_message_deflate=False,  # PCM does not deflate well; saves CPU and memory
            server_header=False,
            headers=[("server", server_header)],
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._sockets: list[socket.socket] = []
        self._main: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if not self._sockets:
            raise RuntimeError("not listening")
        port: int = self._sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        """Bind (`OSError` when the address is taken or not ours) and serve."""
        self._sockets = bind(host, port)
        server = self._server
        server.config.load()
        server.lifespan = server.config.lifespan_class(server.config)
        await server.startup(sockets=self._sockets)
        self._main = asyncio.create_task(server.main_loop())

    def stop_accepting(self) -> None:
        """Close the listening sockets; open connections go on."""
        for listener in getattr(self._server, "servers", []):
            listener.close()

    async def stop(self) -> None:
        """Close what is still open (WebSockets 1012) and stop."""
        if self._main is None:
            for sock in self._sockets:
                sock.close()
            return
        self._server.should_exit = True
        await self._main
        self._main = None
        await self._server.shutdown(sockets=self._sockets)
