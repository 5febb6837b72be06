"""The `streamasr` command line: transcribe files (streamed or offline); more subcommands later."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from streamasr import SAMPLE_RATE, __version__
from streamasr.errors import InputError
from streamasr.events import Event, TranscriptFinal
from streamasr.formats import RENDERERS

EXIT_OK = 0
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
    t.add_argument("--model", default="tiny.en", help="tiny.en, a model dir or a hub id")
    t.add_argument("--chunk-ms", type=int, default=50, help="stream chunk length (20..100 ms)")
    return p


def _emit(ev: Event, fmt: str, out: TextIO) -> None:
    if fmt == "jsonl":
        out.write(json.dumps(ev.to_dict()) + "\n")
        out.flush()


def _stream(
    model: object, audio: np.ndarray, args: argparse.Namespace, out: TextIO
) -> tuple[list[TranscriptFinal], StreamStats]:
    from streamasr.engine.session import Session

    session = Session(model)  # type: ignore[arg-type]
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
    from streamasr.audio.files import load_audio
    from streamasr.models.loader import load_model

    audio = load_audio(args.file)
    model = load_model(args.model)
    if args.mode == "offline":
        from streamasr.engine.offline import transcribe_offline

        finals = transcribe_offline(model, audio)
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
    except InputError as exc:
        print(f"streamasr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
