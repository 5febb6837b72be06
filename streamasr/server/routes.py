"""Plain HTTP on the WebSocket port: /healthz, /metrics, static files, and the access checks."""

from __future__ import annotations

import hmac
import http
import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streamasr.models.base import ModelInfo
from streamasr.server.config import ServerConfig, is_loopback
from streamasr.server.metrics import CONTENT_TYPE, ServerMetrics
from streamasr.server.protocol import STREAM_PATH
from streamasr.server.static import StaticFiles

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
MODELS_PATH = "/v1/models"  # the loaded model and what it speaks, in OpenAI's list shape


def response(
    status: http.HTTPStatus,
    body: bytes | str,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> Response:
    """A complete HTTP response; the connection closes after it (no keep-alive)."""
    data = body.encode() if isinstance(body, str) else body
    h = Headers()
    h["Content-Type"] = content_type
    h["Content-Length"] = str(len(data))
    h["Connection"] = "close"
    h["Cache-Control"] = "no-cache"
    h["X-Content-Type-Options"] = "nosniff"
    for key, value in (headers or {}).items():
        h[key] = value
    return Response(status.value, status.phrase, h, data)


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer X`, else of the `?token=X` query parameter."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = parse_qs(urlsplit(request.path).query).get("token")
    return tokens[0] if tokens else None


def origin_allowed(origin: str | None, host: str | None, config: ServerConfig) -> bool:
    """Browsers only: no Origin header passes; else it must be listed, or same-origin.

    Same-origin (the Origin names the Host the browser asked for) counts only with a token or
    when that name is loopback, so a DNS-rebinding page cannot reach an open loopback daemon.
    """
    if origin is None or "*" in config.allow_origins or origin in config.allow_origins:
        return True
    parts = urlsplit(origin)
    if host is None or parts.netloc.lower() != host.lower():
        return False
    return config.token is not None or is_loopback(parts.hostname or "")


class Routes:
    """`process_request` for websockets: answer plain HTTP, gate the WebSocket upgrade."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: ServerMetrics,
        static: StaticFiles,
        state: Callable[[], str],
        sessions: Callable[[], tuple[int, int]] = lambda: (0, 0),
        model: Callable[[], ModelInfo | None] = lambda: None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.static = static
        self.state = state  # "starting", "ready" or "stopping"
        self.sessions = sessions  # (open, most taken at once)
        self.model = model  # None until the model is loaded

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if not origin_allowed(
            request.headers.get("Origin"), request.headers.get("Host"), self.config
        ):
            return self._reject(path, "origin", http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if path == HEALTH_PATH:
            return self._health(request)
        if path in (METRICS_PATH, STREAM_PATH, MODELS_PATH) and not self._authorized(request):
            return self._reject(
                path,
                "unauthorized",
                http.HTTPStatus.UNAUTHORIZED,
                "missing or wrong token\n",
                {"WWW-Authenticate": 'Bearer realm="streamasr"'},
            )
        if path == METRICS_PATH:
            return response(http.HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE)
        if path == MODELS_PATH:
            return self._models()
        if path == STREAM_PATH:
            if self.state() != "ready":
                return self._reject(
                    path, "not_ready", http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.state()}\n"
                )
            return None  # go on with the WebSocket handshake
        found = self.static.lookup(path)
        if found is None:
            return response(http.HTTPStatus.NOT_FOUND, "not found\n")
        return response(http.HTTPStatus.OK, found.body, found.content_type)

    def _health(self, request: Request) -> Response:
        """200 `ok` when ready, else 503 with the state. Headers give the sessions open and
        free; with `?free=N` (N 1 when empty) a ready daemon with fewer than N free is 503
        `full`, so a load balancer's check sends new streams only where they fit."""
        active, most = self.sessions()
        free = max(0, most - active)
        headers = {
            "X-Sessions-Active": str(active),
            "X-Sessions-Max": str(most),
            "X-Sessions-Free": str(free),
        }
        if self.state() != "ready":
            return response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.state()}\n", headers=headers
            )
        wanted = parse_qs(urlsplit(request.path).query, keep_blank_values=True).get("free")
        if wanted is not None:
            try:
                need = int(wanted[0] or "1")
            except ValueError:
                return response(http.HTTPStatus.BAD_REQUEST, "free must be an integer\n")
            if free < need:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, "full\n", headers=headers)
        return response(http.HTTPStatus.OK, "ok\n", headers=headers)

    def _models(self) -> Response:
        """The loaded model as OpenAI's `GET /v1/models` lists models, with its languages
        (null: any) and tasks; 503 while it loads."""
        info = self.model()
        if info is None:
            return response(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.state()}\n")
        entry = {
            "id": info.name,
            "object": "model",
            "owned_by": "streamasr",
            "languages": None if info.languages is None else list(info.languages),
            "tasks": list(info.tasks),
        }
        body = json.dumps({"object": "list", "data": [entry]})
        return response(http.HTTPStatus.OK, body, "application/json")

    def _authorized(self, request: Request) -> bool:
        if self.config.token is None:
            return True
        given = bearer_token(request)
        return given is not None and hmac.compare_digest(given.encode(), self.config.token.encode())

    def _reject(
        self,
        path: str,
        reason: str,
        status: http.HTTPStatus,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if path == STREAM_PATH:
            self.metrics.rejected.labels(reason=reason).inc()
        return response(status, body, headers=headers)
