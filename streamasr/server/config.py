"""Server configuration: a frozen dataclass from defaults < TOML file < STREAMASR_* env < flags."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamasr.config import ENCODERS, SessionConfig
from streamasr.errors import InputError
from streamasr.models.loader import DEFAULT_MODEL
from streamasr.models.placement import check_compute, check_dtype
from streamasr.net import is_loopback

ENV_PREFIX = "STREAMASR_"


class ConfigError(InputError):
    """A configuration value that is missing, malformed or unsafe."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # bind address; anything but loopback requires a token
    port: int = 8765  # 0 picks a free port (tests)
    model: str = DEFAULT_MODEL  # a model name, a local model dir or a hub id
    token: str | None = None  # bearer token; required when host is not loopback
    allow_origins: tuple[str, ...] = ()  # extra browser origins; same-origin is always allowed,
    # "*" allows any origin
    allow_hosts: tuple[str, ...] = ()  # without a token: Host names served besides loopback
    max_sessions: int = 0  # concurrent sessions; one more is accepted, then closed 1013.
    # 0: derived at start-up from the measured time of one final (`estimate_capacity`)
    max_client_sessions: int = 0  # sessions of one client address at once (streams and REST
    # jobs); 0: half of max_sessions, at least 1. Loopback clients are not limited (behind a
    # proxy on this machine, its X-Forwarded-For names the client)
    max_frame_bytes: int = 1_048_576  # largest binary frame (1 MiB: 32 s of 16 kHz s16 mono)
    max_messages_per_s: float = 200.0  # messages read from one client a second (a burst of as
    # many at once); more wait in the socket: 20 ms frames stream at 4x real time
    idle_timeout_s: float = 30.0  # no audio for this long: finalise, close 1000 "idle"
    max_session_s: float | None = 14_400.0  # session length limit (4 h): finalise, close 1008;
    # None: no limit (a recorded meeting)
    drain_timeout_s: float = 10.0  # on SIGTERM: time for open sessions to send their finals
    resume_grace_s: float = 30.0  # a session whose client vanished goes on decoding this long,
    # for the client to resume it (`session.resume`); 0: it ends at once, as on session.end
    resume_secret: str | None = None  # signs resume tokens: replicas that share it continue
    # each other's sessions; None: a secret of this process only
    workers: int = 1  # inference threads shared by all sessions, each with its own continuous
    # batch (with max_batch 1: plain decode threads)
    threads: int | None = None  # torch intra-op threads (None: torch's default, one per core):
    # a final's 30 s window encodes on every core, where two one-thread workers held no round of
    # 5 real-time clients on 2 cores (docs/engine.md, "Measured")
    max_batch: int = 8  # rows of a continuous batch: calls of different sessions decoded together;
    # 1: each call runs alone on the `workers` threads
    batch_budget_ms: float = 5.0  # how long a first call waits for others to join an empty batch
    slow_partials_lag_s: float = 0.5  # a session this far behind real time decodes partials
    # every second step (half their compute) until it is back under half of this
    lag_warning_s: float = 3.0  # a session this far behind real time gets a `warning` event and
    # its partials pause (finals only) until it is back under a third of this
    encoder: str = SessionConfig.encoder  # auto, window or chunked (see SessionConfig.encoder)
    language: str = SessionConfig.language  # for sessions that name none: an ISO 639-1 code
    # the model speaks, or auto (detected per utterance)
    task: str = SessionConfig.task  # for sessions that name none: transcribe or translate
    compute: str = "auto"  # auto (CUDA when torch sees it, else CPU), cpu, cuda or cuda:N
    dtype: str = "auto"  # auto (float32 on CPU; on CUDA the model's half type), float32, ...
    outgoing_queue: int = 64  # messages queued for a client that does not read (partials merge)
    max_backlog_s: float = 10.0  # audio queued for the decoder per session before reads pause
    max_upload_bytes: int = 104_857_600  # largest file a REST transcription takes (100 MiB)
    static_dir: str | None = None  # files served at /; None: the page shipped in the package
    tls_cert: str | None = None  # PEM certificate (chain) file: serve https:// and wss://
    tls_key: str | None = None  # its PEM private key file (None: the key is in `tls_cert`)
    log_level: str = "info"  # debug, info, warning, error

    def __post_init__(self) -> None:
        _check_positive(self)
        if not 0 <= self.port <= 65_535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"log_level must be debug, info, warning or error, not {self.log_level!r}"
            )
        if self.batch_budget_ms < 0:
            raise ConfigError(f"batch_budget_ms must not be negative, got {self.batch_budget_ms}")
        if self.resume_grace_s < 0:
            raise ConfigError(f"resume_grace_s must not be negative, got {self.resume_grace_s}")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}; not {self.encoder!r}")
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigError("tls_key needs tls_cert, the certificate it belongs to")
        problem = token_problem(self.token)
        if problem:
            raise ConfigError(problem)
        try:
            check_compute(self.compute)
            check_dtype(self.dtype)
        except InputError as exc:
            raise ConfigError(str(exc)) from exc
        if self.token is None and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host!r} without a token: set --token, "
                "STREAMASR_TOKEN or `token` in the config file (or bind to 127.0.0.1)"
            )

    @property
    def protocol_limits(self) -> dict[str, Any]:
        """The limits a client is told in session.started."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "idle_timeout_s": self.idle_timeout_s,
            "max_session_s": self.max_session_s,
        }


_POSITIVE = (
    "max_frame_bytes",
    "max_messages_per_s",
    "idle_timeout_s",
    "max_session_s",
    "drain_timeout_s",
    "workers",
    "max_batch",
    "lag_warning_s",
    "slow_partials_lag_s",
    "outgoing_queue",
    "max_backlog_s",
    "max_upload_bytes",
)


def _check_positive(config: ServerConfig) -> None:
    for name in _POSITIVE:
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("max_sessions", "max_client_sessions"):
        value = getattr(config, name)
        if value < 0:
            raise ConfigError(f"{name} must be 0 (derived) or positive, got {value}")
    if config.threads is not None and config.threads <= 0:
        raise ConfigError(f"threads must be positive, got {config.threads}")


MIN_TOKEN_CHARS = 16  # a guessable token is no token: `openssl rand -hex 16` gives 32


def token_problem(token: str | None) -> str | None:
    """Why `token` cannot guard a server (too short, not printable ASCII), or None."""
    if token is None:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        return (
            f"the token must be at least {MIN_TOKEN_CHARS} characters, got {len(token)}: "
            "make one with `openssl rand -hex 16`"
        )
    if not (token.isascii() and token.isprintable()) or " " in token or "," in token:
        return "the token must be printable ASCII without spaces or commas"
    return None


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Merge the sources, later ones winning: defaults, `file`, `env` (STREAMASR_*), `flags`.

    `flags` holds only the options given on the command line (None values are ignored).
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_from_toml(file))
    values.update(_from_env(env or {}))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return ServerConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(ServerConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(ServerConfig)}


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return coerce_settings(raw, str(path))


def coerce_settings(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Settings by name (`-` or `_`), as TOML values or strings, in their fields' types;
    ConfigError for an unknown name or a bad value, naming `where` they came from."""
    types_ = _field_types()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in types_:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(types_)})")
        out[name] = _coerce(name, types_[name], value, f"{where}: {key}")
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind in _field_types().items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            out[name] = _coerce(name, kind, env[var], var)
    return out


def _coerce(name: str, kind: Any, value: Any, where: str) -> Any:
    """`value` (a TOML value or an env string) as the field's type; ConfigError if it is not."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (types.UnionType, typing.Union):  # X | None
        if value is None or value == "":
            return None
        kind = next(a for a in args if a is not type(None))
    try:
        if typing.get_origin(kind) is tuple:
            items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
            return tuple(str(i) for i in items)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        if kind is int and isinstance(value, float):
            raise ValueError("expected an integer")
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad value {value!r} for {name}: {exc}") from None
