"""Plain HTTP on the daemon's port: /healthz, /metrics, /v1/models, static files, and the
access checks (Origin, token) every path and WebSocket passes first."""

from __future__ import annotations

import hmac
import http
import json
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from streamasr.models.base import ModelInfo
from streamasr.net import is_loopback
from streamasr.server.config import ServerConfig
from streamasr.server.metrics import CONTENT_TYPE, ServerMetrics
from streamasr.server.static import StaticFiles

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
MODELS_PATH = "/v1/models"  # the loaded model and what it speaks, in OpenAI's list shape


def response(
    status: http.HTTPStatus,
    body: bytes | str,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A complete HTTP response, never cached nor sniffed."""
    h = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **(headers or {})}
    return Response(body, status.value, headers=h, media_type=content_type)


def bearer_token(request: HTTPConnection) -> str | None:
    """The token of `Authorization: Bearer X` (or `Token X`), else of a browser's WebSocket
    `Sec-WebSocket-Protocol: token, X` (Deepgram's way), else of the `?token=X` query."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) == 2 and offered[0] == "token" and offered[1]:
        return offered[1]
    return request.query_params.get("token")


def origin_allowed(origin: str | None, host: str | None, config: ServerConfig) -> bool:
    """Browsers only: no Origin header passes; else it must be listed, or same-origin.

    Same-origin (the Origin names the Host the browser asked for) counts only with a token or
    when that name is loopback, so a DNS-rebinding page cannot reach an open loopback daemon.
    """
    if origin is None or "*" in config.allow_origins or origin in config.allow_origins:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname or ""
    except ValueError:  # "http://[": not an origin a browser sends
        return False
    if host is None or parts.netloc.lower() != host.lower():
        return False
    return config.token is not None or is_loopback(hostname)


def host_allowed(host: str | None, config: ServerConfig) -> bool:
    """Without a token, the `Host` a request names must be loopback or listed in
    `allow_hosts`: a page whose DNS name an attacker rebinds to 127.0.0.1 still names its own
    host, so it cannot read an open daemon's pages and metrics. No `Host`: not a browser."""
    if config.token is not None or host is None:
        return True
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    return is_loopback(name) or name in config.allow_hosts


class Routes:
    """The HTTP endpoints, and `refuse`: the access checks of every request and WebSocket."""

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

    def refuse(self, request: HTTPConnection, guarded: bool, session: bool) -> Response | None:
        """The response that refuses `request`, or None to let it through: a browser page of
        another origin (403); without the token where one is set, on a `guarded` path (401);
        a `session` (a WebSocket of an API) before the model is ready (503)."""
        if not origin_allowed(
            request.headers.get("Origin"), request.headers.get("Host"), self.config
        ):
            forbidden = http.HTTPStatus.FORBIDDEN
            return self._reject(session, "origin", forbidden, "origin not allowed\n")
        if not host_allowed(request.headers.get("Host"), self.config):
            forbidden = http.HTTPStatus.FORBIDDEN
            return self._reject(session, "host", forbidden, "host not allowed\n")
        if guarded and not self._authorized(request):
            return self._reject(
                session,
                "unauthorized",
                http.HTTPStatus.UNAUTHORIZED,
                "missing or wrong token\n",
                {"WWW-Authenticate": 'Bearer realm="streamasr"'},
            )
        if session and self.state() != "ready":
            return self._reject(
                session, "not_ready", http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.state()}\n"
            )
        return None

    async def health(self, request: Request) -> Response:
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
        wanted = request.query_params.get("free")
        if wanted is not None:
            try:
                need = int(wanted or "1")
            except ValueError:
                return response(http.HTTPStatus.BAD_REQUEST, "free must be an integer\n")
            if free < need:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, "full\n", headers=headers)
        return response(http.HTTPStatus.OK, "ok\n", headers=headers)

    async def metrics_page(self, request: Request) -> Response:
        return response(http.HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE)

    async def models(self, request: Request) -> Response:
        """The loaded model as OpenAI's `GET /v1/models` lists models, with its languages
        (null: any), its tasks and the language of sessions that name none; 503 while it
        loads."""
        info = self.model()
        if info is None:
            return response(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{self.state()}\n")
        entry = {
            "id": info.name,
            "object": "model",
            "owned_by": "streamasr",
            "languages": None if info.languages is None else list(info.languages),
            "tasks": list(info.tasks),
            "language": self.config.language,
        }
        body = json.dumps({"object": "list", "data": [entry]})
        return response(http.HTTPStatus.OK, body, "application/json")

    async def static_file(self, request: Request) -> Response:
        found = self.static.lookup(request.scope["path"])  # `request.url` fails on "//["
        if found is None:
            return response(http.HTTPStatus.NOT_FOUND, "not found\n")
        return response(http.HTTPStatus.OK, found.body, found.content_type)

    def _authorized(self, request: HTTPConnection) -> bool:
        if self.config.token is None:
            return True
        given = bearer_token(request)
        return given is not None and hmac.compare_digest(given.encode(), self.config.token.encode())

    def _reject(
        self,
        session: bool,
        reason: str,
        status: http.HTTPStatus,
        body: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if session:
            self.metrics.rejected.labels(reason=reason).inc()
        return response(status, body, headers=headers)
