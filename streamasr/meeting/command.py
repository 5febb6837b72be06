"""The `streamasr meeting` subcommand: record meetings, or `render` a meeting directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from streamasr.errors import InputError

EXIT_OK = 0


def add_meeting_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "meeting",
        help="transcribe meetings into one directory each (see docs/meeting.md)",
        description="Record until the input ends or SIGTERM/SIGINT (which finalise and render); "
        "SIGUSR1 ends the current meeting. `streamasr meeting render DIR` rewrites a meeting's "
        "srt/vtt/md from its transcript.jsonl.",
    )
    m.add_argument("action", nargs="?", choices=["record", "render"], default="record")
    m.add_argument("dirs", nargs="*", type=Path, help="meeting directories (render)")
    m.add_argument(
        "--out",
        type=Path,
        help="meetings dir ($STATE_DIRECTORY or ~/.local/share/streamasr/meetings)",
    )
    m.add_argument("--model", default="tiny.en", help="tiny.en, a model dir or a hub id")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--device", help="sound input (name or index; needs sounddevice)")
    src.add_argument("--input", help="audio file (wav/flac/ogg), or - for 16 kHz s16le on stdin")
    m.add_argument(
        "--speed",
        default="max",
        help="file pacing: a factor of real time (1, 4, ...) or max (default)",
    )
    m.add_argument(
        "--silence-timeout",
        type=float,
        default=None,
        metavar="S",
        help="end the meeting after S seconds without speech (default: never)",
    )


def _emitter(out: TextIO) -> Any:
    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()

    return emit


def run_meeting_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "render":
        if not args.dirs:
            raise InputError("meeting render needs at least one meeting directory")
        from streamasr.meeting.store import render_dir

        for d in args.dirs:
            if not d.is_dir():
                raise InputError(f"{d}: not a directory")
            try:
                for path in render_dir(d):
                    out.write(f"{path}\n")
            except (OSError, ValueError) as exc:
                raise InputError(str(exc)) from exc
        return EXIT_OK
    if args.dirs:
        raise InputError("unexpected arguments: " + " ".join(map(str, args.dirs)))
    return _record(args, out)


def _record(args: argparse.Namespace, out: TextIO) -> int:
    from streamasr.config import SessionConfig
    from streamasr.engine.session import Session
    from streamasr.meeting.recorder import MeetingRecorder, run_meeting
    from streamasr.meeting.sources import AudioSource, DeviceSource, FileSource, StdinSource
    from streamasr.meeting.store import default_out_dir
    from streamasr.models.loader import load_model

    try:
        speed = float("inf") if args.speed == "max" else float(args.speed)
    except ValueError:
        raise InputError(f"--speed must be a number or max, got {args.speed!r}") from None
    source: AudioSource
    if args.input == "-":
        source = StdinSource()
    elif args.input is not None:
        source = FileSource(args.input, speed=speed)
    else:
        source = DeviceSource(args.device)
    model = load_model(args.model)
    session = Session(model, SessionConfig(partials=False))
    outdir = args.out if args.out is not None else default_out_dir()
    recorder = MeetingRecorder(session, outdir, _emitter(out), args.silence_timeout)
    run_meeting(source, recorder)
    return EXIT_OK
