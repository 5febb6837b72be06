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
from websockets.frames import CloseCode
from websockets.protocol import State

log = logging.getLogger(__name__)

# The ASGI scope extension under which uvicorn's WebSocket connections carry their transport:
# `{"transport": asyncio.Transport}`. It lets a session drop a client that stopped reading,
# which plain ASGI cannot; elsewhere the close waits for the host's own timeout.
TRANSPORT_EXTENSION = "streamasr.transport"
CLOSE_TIMEOUT_S = 2.0  # after our close frame: how long the client has to answer it


_SECRETS = (
    re.compile(r"([?&](?:token|api_key)=)[^&\s\"']+", re.IGNORECASE),  # a browser's ?token=
    # header lines ("< Authorization: Bearer T") and ASGI scopes ((b'authorization', b'...'))
    re.compile(
        r"((?:proxy-)?authorization|sec-websocket-protocol|x-api-key|cookie)"
        r"(['\"]?\s*[:,]\s*b?['\"]?)[^'\"\r\n]+",
        re.IGNORECASE,
    ),
)
# loggers that write requests (their lines, headers or scopes) at some level
REQUEST_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi", "websockets.server")


class RedactSecrets(logging.Filter):
    """Hides tokens in log lines: `?token=` and `api_key=` values, and the values of the
    headers that carry one (`Authorization`, `Sec-WebSocket-Protocol`, ...), which uvicorn and
    websockets write at DEBUG (and TRACE)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redacted = record.getMessage()
        for pattern in _SECRETS:
            redacted = pattern.sub(r"\1\2***" if pattern.groups == 2 else r"\1***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACT = RedactSecrets()
for _name in REQUEST_LOGGERS:  # for whatever handlers a host's log config gives them
    logging.getLogger(_name).addFilter(_REDACT)


def redact_logs() -> None:
    """Hide secrets in every line of this process's log, whichever logger writes it: on the
    root logger's handlers, which every propagated record reaches."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_REDACT)


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with our close timeout and the transport extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT_S

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # unset when the handshake was refused
        if scope is not None:
            scope["extensions"][TRANSPORT_EXTENSION] = {"transport": self.transport, "host": self}

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, but a text message that is not UTF-8 is a WARNING (the client's fault:
        uvicorn logs a traceback at ERROR) and closes 1007 only while the connection is open;
        in its closing handshake, which uvicorn fails at with an error of its own, it is
        dropped."""
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                self.frames = []
                log.warning("a client sent a text message that is not UTF-8: closing 1007")
                if self.conn.state is State.OPEN:
                    self.conn.send_close(CloseCode.INVALID_DATA)
                    self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    @property
    def closing(self) -> bool:
        """This side sent its close frame (the app's, or its own for a frame over the size
        limit or bad UTF-8): the app may send nothing more."""
        return bool(self.close_sent)


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

    def __init__(
        self,
        app: Any,
        *,
        max_message_bytes: int,
        server_header: str,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
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
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
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
        """Bind (`OSError` when the address is taken or not ours, or the TLS files cannot be
        read) and serve."""
        server = self._server
        try:
            server.config.load()  # reads the TLS files, if any
        except (OSError, ValueError) as exc:
            cert, key = server.config.ssl_certfile, server.config.ssl_keyfile
            raise OSError(f"cannot serve TLS with {cert} (key {key or 'in it'}): {exc}") from exc
        self._sockets = bind(host, port)
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
