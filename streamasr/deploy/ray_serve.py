"""streamasr on Ray Serve: the daemon's ASGI app in replicas that Ray places and scales
(docs/scaling.md, "Ray Serve"). Needs `pip install "streamasr[ray]"`.

    serve run streamasr.deploy.ray_serve:build model=tiny.en streams_per_replica=8 \\
        min_replicas=1 max_replicas=4

Every replica is one engine (its own model, batcher and streams); Serve keeps each WebSocket
on one replica for its life and counts it as one ongoing request. `build` takes the
`RayOptions` below and any daemon setting (`ServerConfig`'s names: model, token,
resume_secret, ...), as `serve run` arguments or a config file's `args`; the `STREAMASR_*`
variables of the replicas' environment apply too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamasr.server.config import ConfigError, ServerConfig, coerce_settings, load_config

log = logging.getLogger(__name__)

HEADROOM = 1  # ongoing requests a replica takes past its sessions: the daemon itself refuses
# that one with its documented error (server_busy, close 1013) instead of Serve queueing it
REMOVAL_POLL_S = 1.0  # how often a replica asks Serve whether it is being removed


@dataclass(frozen=True)
class RayOptions:
    streams_per_replica: int = 8  # streams one replica holds at real time: measure it
    # (bench/serve.py, bench/streams.py); the replica's max_sessions
    min_replicas: int = 1
    max_replicas: int = 2
    target_fraction: float = 0.75  # autoscale to keep open streams at this share of the above
    num_cpus: float = 1.0  # per replica (ray_actor_options)
    num_gpus: float = 0.0
    graceful_shutdown_timeout_s: float = 20.0  # a replica being removed drains its streams
    # (finals, close 1001: they resume elsewhere) and Serve stops it at the latest after this
    model_factory: str | None = None  # "module:callable" that makes the model (tests)

    def __post_init__(self) -> None:
        if self.streams_per_replica < 1:
            raise ConfigError("streams_per_replica must be at least 1")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError("need 1 <= min_replicas <= max_replicas")
        if not 0 < self.target_fraction <= 1:
            raise ConfigError("target_fraction must be in (0, 1]")

    @property
    def max_ongoing_requests(self) -> int:
        return self.streams_per_replica + HEADROOM

    @property
    def target_ongoing_requests(self) -> float:
        return max(1.0, self.target_fraction * self.streams_per_replica)


def split_args(args: Mapping[str, Any]) -> tuple[RayOptions, ServerConfig]:
    """`serve run` arguments (strings) as the Ray options and the replicas' daemon settings."""
    fields = {f.name: f for f in dataclasses.fields(RayOptions)}
    ray_args: dict[str, Any] = {}
    daemon_args: dict[str, Any] = {}
    for key, value in args.items():
        name = key.replace("-", "_")
        if name in fields:
            kind = {"int": int, "float": float}.get(str(fields[name].type), str)
            try:
                ray_args[name] = kind(value)
            except ValueError:
                raise ConfigError(f"{key}: bad value {value!r}") from None
        else:
            daemon_args[name] = value
    options = RayOptions(**ray_args)
    env = dict(os.environ)
    # every replica signs with one secret, so that each continues the others' sessions
    env.setdefault("STREAMASR_RESUME_SECRET", secrets.token_hex(32))
    flags = coerce_settings(daemon_args, "serve run arguments")
    flags.update(max_sessions=options.streams_per_replica, port=0)
    return options, load_config(None, env, flags)


def _factory(spec: str | None) -> Callable[[str], Any] | None:
    if spec is None:
        return None
    module, _, name = spec.partition(":")
    made = getattr(importlib.import_module(module), name)
    return lambda _model: made()


def _replica_server(config: ServerConfig, options: RayOptions) -> Any:
    """The daemon of one replica, which drains itself once Serve starts to remove it."""
    from streamasr.server.app import Server

    class ReplicaServer(Server):
        @contextlib.asynccontextmanager
        async def lifespan(self, app: object) -> AsyncIterator[None]:
            async with super().lifespan(app):
                watcher = asyncio.create_task(drain_when_removed(self))
                try:
                    yield
                finally:
                    watcher.cancel()

    return ReplicaServer(config, model_factory=_factory(options.model_factory))


async def drain_when_removed(server: Any, poll_s: float = REMOVAL_POLL_S) -> None:
    """Drain `server` (finals, `session.ended` "shutdown", close 1001: its clients resume on
    another replica) once Serve marks this replica STOPPING: on a scale-down or a redeploy.

    Serve itself only waits for the open requests (streams) to end, up to
    `graceful_shutdown_timeout_s`, then kills the replica, and calls no code of the replica's
    before that wait. So the replica asks Serve's controller for its own state, the details
    behind `serve status`: through `_get_global_client`, Ray's own accessor, which is not
    public API. Should a Ray release change it, the replica goes back to being killed after
    the timeout, and its clients resume from their last final."""
    from ray import serve

    replica = serve.get_replica_context().replica_tag
    while server.state in ("starting", "ready"):
        await asyncio.sleep(poll_s)
        try:
            state = await asyncio.to_thread(_replica_state, replica)
        except Exception:  # Serve busy or changed: keep serving, ask again
            log.debug("replica %s: no state from Serve", replica, exc_info=True)
            continue
        if state == "STOPPING":
            log.info("replica %s is being removed: draining", replica)
            await server.drain()
            return


def _replica_state(replica: str) -> str | None:
    """This replica's state in Serve's controller ("RUNNING", "STOPPING", ...), if listed."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        return None
    details = client.get_serve_details()
    for application in details.get("applications", {}).values():
        for deployment in application.get("deployments", {}).values():
            for entry in deployment.get("replicas", []):
                if entry.get("replica_id") == replica:
                    state = entry.get("state")
                    return str(getattr(state, "value", state))  # a str enum, or its value
    return None


def build(args: Mapping[str, Any]) -> Any:
    """The Serve application (`serve run streamasr.deploy.ray_serve:build key=value ...`)."""
    from ray import serve

    options, config = split_args(args)

    def asgi_app() -> Any:  # runs in each replica: its own Server, whose lifespan loads the model
        return _replica_server(config, options).app

    autoscaling = {
        "min_replicas": options.min_replicas,
        "max_replicas": options.max_replicas,
        "target_ongoing_requests": options.target_ongoing_requests,
    }

    class StreamASR:  # the ingress: no __call__ of its own
        pass

    deployment = serve.deployment(
        name="streamasr",
        max_ongoing_requests=options.max_ongoing_requests,
        autoscaling_config=autoscaling,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": options.num_gpus},
    )(serve.ingress(asgi_app)(StreamASR))
    return deployment.bind()
