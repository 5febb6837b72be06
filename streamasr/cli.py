"""The `streamasr` command line: transcribe files (streamed or offline) and serve the daemon."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from streamasr import SAMPLE_RATE, __version__
from streamasr.config import ENCODERS, SessionConfig
from streamasr.errors import InputError, ModelError
from streamasr.events import Event, TranscriptFinal
from streamasr.formats import RENDERERS
from streamasr.models.placement import add_placement_args

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass
class StreamStats:
    """Wall-clock bookkeeping of a paced stream, for the latency summary."""

    t0: float
    speed: float
    final_latency_s: list[float] = field(default_factory=list)

    def fed_at(self, sample: int) -> float:
        """Wall time at which the stream clock reached `sample`."""
        return self.t0 + sample / SAMPLE_RATE / self.speed


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamasr", description="Streaming speech recognition.")
    p.add_argument("--version", action="version", version=f"streamasr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe an audio file (wav, flac, ogg)")
    t.add_argument("file", help="audio file")
    t.add_argument(
        "--mode",
        choices=["stream", "offline"],
        default="stream",
        help="stream: feed the file through a live session; offline: 30 s windows",
    )
    t.add_argument(
        "--speed",
        choices=["1", "4", "max"],
        default="max",
        help="stream pacing: 1 = real time, 4 = four times real time, max = no pacing",
    )
    t.add_argument("--format", choices=["jsonl", "text", "srt", "vtt"], default="text")
    t.add_argument(
        "--model", default="tiny.en", help="tiny.en, base (multilingual), a model dir or a hub id"
    )
    add_language_args(t)
    t.add_argument("--chunk-ms", type=int, default=50, help="stream chunk length (20..100 ms)")
    t.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    add_placement_args(t)
    t.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        default=SessionConfig.encoder,
        help="stream mode: re-encode the utterance window at each update, or encode chunks "
        f"over cached states, or the model's choice ({SessionConfig.encoder})",
    )
    _add_serve_parser(sub)
    from streamasr.meeting.command import add_meeting_parser

    add_meeting_parser(sub)
    return p


def add_language_args(
    parser: argparse.ArgumentParser, *, defaults: bool = True, who: str = ""
) -> None:
    """`--language` and `--task` (None when not given and `defaults` is False); `who` says
    whose language it is in the help ("sessions that name none")."""
    parser.add_argument(
        "--language",
        default=SessionConfig.language if defaults else None,
        help=f"the spoken language{who}, an ISO 639-1 code such as es, or auto: detected per "
        f"utterance ({SessionConfig.language})",
    )
    parser.add_argument(
        "--task",
        choices=["transcribe", "translate"],
        default=SessionConfig.task if defaults else None,
        help=f"translate{who}: any language into English text (multilingual Whisper models)",
    )


def _add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "serve",
        help="run the WebSocket daemon (protocol v1) and the caption page",
        description="Flags override STREAMASR_* environment variables, which override the "
        "--config file, which overrides the defaults. See docs/protocol.md.",
    )
    s.add_argument("--config", type=Path, help="TOML file of settings (keys as the flags)")
    s.add_argument("--host", help="bind address (127.0.0.1); other hosts need a token")
    s.add_argument("--port", type=int, help="port (8765); 0 picks a free one")
    s.add_argument("--model", help="tiny.en (default), a model dir or a hub id")
    s.add_argument("--token", help="bearer token (prefer STREAMASR_TOKEN: flags show in ps)")
    s.add_argument(
        "--allow-origin",
        dest="allow_origins",
        action="append",
        metavar="ORIGIN",
        help="a browser origin allowed besides same-origin, e.g. https://example.org; repeatable",
    )
    s.add_argument(
        "--allow-host",
        dest="allow_hosts",
        action="append",
        metavar="NAME",
        help="without a token, a Host name served besides loopback (DNS rebinding guard)",
    )
    s.add_argument(
        "--max-sessions",
        type=int,
        help="concurrent sessions (0: derived from the measured cost of a final at start-up)",
    )
    s.add_argument(
        "--max-client-sessions",
        type=int,
        help="sessions one client address may hold (0: half of --max-sessions; loopback: any)",
    )
    s.add_argument("--max-frame-bytes", type=int, help="largest binary frame (1048576)")
    s.add_argument(
        "--max-messages",
        dest="max_messages_per_s",
        type=float,
        help="messages read from one client a second; more wait in the socket (200)",
    )
    s.add_argument(
        "--max-upload-bytes", type=int, help="largest file a REST transcription takes (100 MiB)"
    )
    s.add_argument("--idle-timeout", dest="idle_timeout_s", type=float, help="seconds (30)")
    s.add_argument("--max-session", dest="max_session_s", type=float, help="seconds (14400)")
    s.add_argument("--drain-timeout", dest="drain_timeout_s", type=float, help="seconds (10)")
    s.add_argument(
        "--resume-grace",
        dest="resume_grace_s",
        type=float,
        help="seconds a session whose client vanished waits to be resumed (30; 0: none)",
    )
    s.add_argument(
        "--resume-secret",
        help="signs resume tokens; replicas sharing it continue each other's sessions "
        "(prefer STREAMASR_RESUME_SECRET: flags show in ps)",
    )
    s.add_argument("--workers", type=int, help="inference threads shared by all sessions (1)")
    s.add_argument("--threads", type=int, help="torch intra-op threads (one per core)")
    add_placement_args(s, defaults=False)  # None: the config file, env or default decides
    s.add_argument("--max-batch", type=int, help="calls of different sessions batched (8)")
    s.add_argument(
        "--encoder",
        choices=list(ENCODERS),
        help=f"window: re-encode per update; chunked: cached prefix ({SessionConfig.encoder})",
    )
    add_language_args(s, defaults=False, who=" of sessions that name none")
    s.add_argument("--tls-cert", help="PEM certificate (chain): serve https:// and wss://")
    s.add_argument("--tls-key", help="the certificate's PEM private key (if not in --tls-cert)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio
    import logging
    import os

    from streamasr.server.app import Server
    from streamasr.server.config import load_config
    from streamasr.server.host import redact_logs
    from streamasr.server.worker import limit_native_memory

    limit_native_memory()  # before any thread allocates and before the model's first call
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    for name in ("allow_origins", "allow_hosts"):
        if flags.get(name) is not None:
            flags[name] = tuple(flags[name])
    config = load_config(args.config, os.environ, flags)
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",  # no timestamps: journald adds them
    )
    redact_logs()  # tokens in headers and queries, which uvicorn and websockets log at DEBUG
    if config.log_level != "debug":  # websockets logs every connection and HTTP reply at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)

    def ready(server: Server) -> None:
        hint = " (add ?token=...)" if config.token else ""
        out.write(f"streamasr: serving captions at {server.url}{hint}\n")
        out.flush()

    try:
        asyncio.run(Server(config).run(on_ready=ready))
    except ModelError as exc:  # a malformed or unsupported model (not found is an InputError)
        print(f"streamasr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the port is taken, the address is not ours, ...
        where = f"cannot listen on {config.host}:{config.port}: " if _is_bind_error(exc) else ""
        print(f"streamasr: error: {where}{exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _is_bind_error(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _emit(ev: Event, fmt: str, out: TextIO) -> None:
    if fmt == "jsonl":
        out.write(json.dumps(ev.to_dict()) + "\n")
        out.flush()


def _stream(
    model: object, audio: np.ndarray, args: argparse.Namespace, out: TextIO
) -> tuple[list[TranscriptFinal], StreamStats]:
    from streamasr.engine.driver import LocalSession

    config = SessionConfig(encoder=args.encoder, language=args.language, task=args.task)
    session = LocalSession(model, config)  # type: ignore[arg-type]
    speed = float("inf") if args.speed == "max" else float(args.speed)
    chunk = args.chunk_ms * SAMPLE_RATE // 1000
    stats = StreamStats(t0=time.monotonic(), speed=speed)
    finals: list[TranscriptFinal] = []

    def handle(events: list[Event]) -> None:
        now = time.monotonic()
        for ev in events:
            if isinstance(ev, TranscriptFinal):
                if speed != float("inf"):  # a final's end is its utterance's speech-stop sample
                    stats.final_latency_s.append(now - stats.fed_at(ev.end_sample))
                finals.append(ev)
            _emit(ev, args.format, out)

    for start in range(0, len(audio), chunk):
        end = min(start + chunk, len(audio))
        if speed != float("inf"):
            delay = stats.fed_at(end) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        handle(session.feed(audio[start:end]))
    handle(session.close())
    return finals, stats


def _transcribe(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not 20 <= args.chunk_ms <= 100:
        raise InputError(f"--chunk-ms must be between 20 and 100, got {args.chunk_ms}")
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    from streamasr.audio.files import load_audio
    from streamasr.models.loader import load_model
    from streamasr.server.worker import set_torch_threads

    set_torch_threads(args.threads)

    audio = load_audio(args.file)
    model = load_model(args.model, compute=args.compute, dtype=args.dtype)
    try:
        model.info.check_language(args.language, args.task)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.mode == "offline":
        from streamasr.engine.offline import transcribe_offline

        finals = transcribe_offline(model, audio, language=args.language, task=args.task)
        for f in finals:
            _emit(f, args.format, out)
        stats = None
    else:
        finals, stats = _stream(model, audio, args, out)
    if args.format != "jsonl":
        out.write(RENDERERS[args.format](finals))
        out.flush()
    if stats is not None and args.speed == "1":
        lat = sorted(stats.final_latency_s)
        if lat:
            p50 = lat[len(lat) // 2]
            err.write(
                f"final latency after speech end: {len(lat)} utterances, "
                f"p50 {p50:.2f} s, max {lat[-1]:.2f} s; per utterance: "
                + " ".join(f"{x:.2f}" for x in stats.final_latency_s)
                + "\n"
            )
        else:
            err.write("final latency after speech end: no utterances\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "transcribe":
            return _transcribe(args, sys.stdout, sys.stderr)
        if args.command == "serve":
            return _serve(args, sys.stdout)
        if args.command == "meeting":
            from streamasr.meeting.command import run_meeting_command

            return run_meeting_command(args, sys.stdout)
    except InputError as exc:
        print(f"streamasr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
