"""The daemon's one ASGI application: the HTTP routes and the WebSocket front doors.

Every request passes the access checks first (`AccessCheck`); each WebSocket API is a codec on
the one `SessionRunner`, reached through an `AsgiChannel`. The app is plain ASGI (Starlette):
uvicorn serves it by default (`server/host.py`) and any ASGI host can mount it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from streamasr.server.host import TRANSPORT_EXTENSION
from streamasr.server.openapi import OPENAPI_PATH, openapi
from streamasr.server.protocol import STREAM_PATH
from streamasr.server.routes import HEALTH_PATH, METRICS_PATH, MODELS_PATH, Routes
from streamasr.server.session_io import CLOSE_GRACE_S, ChannelClosed

SessionHandler = Callable[[WebSocket], Awaitable[None]]


class AsgiChannel:
    """A `Channel` over an ASGI WebSocket (Starlette's)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        extension = websocket.scope.get("extensions", {}).get(TRANSPORT_EXTENSION)
        self.transport = extension["transport"] if extension else None
        self._host = extension["host"] if extension else None  # uvicorn's protocol, ours

    @property
    def peer_port(self) -> int | None:
        client = self.websocket.client
        return client.port if client else None

    async def accept(self) -> None:
        # A browser that sent its key as `Sec-WebSocket-Protocol: token, KEY` (`bearer_token`)
        # aborts unless the server picks the `token` subprotocol.
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept("token" if "token" in offered else None)

    async def receive(self) -> str | bytes:
        try:
            message = await self.websocket.receive()
        except WebSocketDisconnected as exc:
            raise ChannelClosed from exc
        if message["type"] == "websocket.disconnect":
            raise ChannelClosed(message.get("code"))
        text = message.get("text")
        if text is not None:
            return str(text)
        return bytes(message.get("bytes") or b"")

    async def send(self, text: str) -> None:
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise ChannelClosed from exc
        except RuntimeError as exc:  # uvicorn's "Unexpected ASGI message ... after ... close"
            if self._closing:  # it closed the socket itself
                raise ChannelClosed from exc
            raise

    async def close(self, code: int, reason: str) -> None:
        if self._closing:  # uvicorn closed it itself (a frame over the limit, bad UTF-8)
            return
        with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected):  # already closed
            await self.websocket.close(code, reason)

    @property
    def _closing(self) -> bool:
        return self._host is not None and bool(self._host.closing)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def close_channel(ws: AsgiChannel, code: int, reason: str) -> None:
    """Close with `code`; drop the connection if the peer does not answer in time."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await ws.close(code, reason)
    except TimeoutError:
        ws.abort()


class Refused(Exception):
    """A WebSocket handshake refused with an HTTP response (bad parameters, say)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response

    async def send(self, websocket: WebSocket) -> None:
        await deny(websocket, self.response)


async def deny(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket handshake with `response`; a bare 403 where the host cannot."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close()


def guarded(path: str) -> bool:
    """Paths behind the token: every API and the metrics; not the page, nor /healthz."""
    return path == METRICS_PATH or path.startswith("/v1/")


class AccessCheck:
    """ASGI middleware: `Routes.refuse` on every request and WebSocket handshake."""

    def __init__(self, app: ASGIApp, routes: Routes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        session = scope["type"] == "websocket"
        refusal = self.routes.refuse(HTTPConnection(scope), guarded(scope["path"]), session)
        if refusal is None:
            await self.app(scope, receive, send)
        elif not session:
            await refusal(scope, receive, send)
        else:
            await deny(WebSocket(scope, receive, send), refusal)


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi())


def build_app(
    routes: Routes,
    sessions: Mapping[str, SessionHandler],
    posts: Mapping[str, Callable[[Request], Awaitable[Response]]],
    lifespan: Any = None,
) -> Any:
    """The ASGI app: `routes`' HTTP endpoints, a WebSocket handler per path in `sessions`, a
    POST handler per path in `posts`, static files for every other GET; `lifespan` runs
    under a host that sends ASGI lifespan events."""
    table: list[Any] = [
        Route(HEALTH_PATH, routes.health),
        Route(METRICS_PATH, routes.metrics_page),
        Route(MODELS_PATH, routes.models),
        Route(OPENAPI_PATH, _openapi),
        *(WebSocketRoute(path, handler) for path, handler in sessions.items()),
        *(Route(path, handler, methods=["POST"]) for path, handler in posts.items()),
        Route("/{path:path}", routes.static_file),
    ]
    app = Starlette(routes=table, lifespan=lifespan)
    return AccessCheck(app, routes)


__all__ = ["STREAM_PATH", "AccessCheck", "AsgiChannel", "build_app"]
