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

import dataclasses
import importlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from streamasr.server.config import ConfigError, ServerConfig, coerce_settings, load_config

HEADROOM = 1  # ongoing requests a replica takes past its sessions: the daemon itself refuses
# that one with its documented error (server_busy, close 1013) instead of Serve queueing it


@dataclass(frozen=True)
class RayOptions:
    streams_per_replica: int = 8  # streams one replica holds at real time: measure it
    # (bench/serve.py, bench/streams.py); the replica's max_sessions
    min_replicas: int = 1
    max_replicas: int = 2
    target_fraction: float = 0.75  # autoscale to keep open streams at this share of the above
    num_cpus: float = 1.0  # per replica (ray_actor_options)
    num_gpus: float = 0.0
    graceful_shutdown_timeout_s: float = 20.0  # a replica being removed waits this long for
    # its streams to end before Serve stops it; clients then resume on another replica
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


def build(args: Mapping[str, Any]) -> Any:
    """The Serve application (`serve run streamasr.deploy.ray_serve:build key=value ...`)."""
    from ray import serve

    options, config = split_args(args)

    def asgi_app() -> Any:  # runs in each replica: its own Server, whose lifespan loads the model
        from streamasr.server.app import Server

        return Server(config, model_factory=_factory(options.model_factory)).app

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
