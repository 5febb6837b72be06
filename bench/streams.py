"""N simulated real-time streams through the scheduler: latency, compute, the largest N held.

    python bench/streams.py [--model tiny.en|random-glm-nano|DIR] [--encoder auto|window|chunked]
                            [--streams 1,2,4,6,8] [--seconds 30] [--threads 1] [--max-batch 8]
                            [--workers 1] [--no-polish] [--step-ms 500]
                            [--final-window utterance|full] [--compute auto|cpu|cuda[:N]]
                            [--dtype auto|float32|float16|bfloat16] [--no-stop] [--max-lag S]
                            [--warm-streams N] [--single] [--corpus DIR]

In-process, without sockets: one `Scheduler` (`--workers` inference threads, each with a
continuous batch) serves N `Session`s, driven as the daemon drives them (one asyncio task per
stream, the sessions' own work on a pool of `SESSION_THREADS`, every model call awaited), fed
50 ms chunks of the held-out corpus's single utterances (bench/corpus.py; stream i starts at the
i-th, 0.8 s of silence after each) on an absolute real-time schedule for `--seconds`. Per N the
table gives:

- partial and final latency p50/p95: when `feed`/`close` returned the event minus the instant
  the event's `end` sample was due; the final's includes the endpointer's 450 ms silence wait;
- compute per audio second: the inference thread's busy time, and the whole process's CPU
  time (VAD, features and the idle threads included), over the audio seconds of all streams;
- the mean batch (rows per batched model pass: a decoding step), the worst lateness of a
  chunk against its schedule and the lateness of the last chunk;
- the WER of the finals.

A round is *held* when p95 final latency <= `--max-latency` (1.5 s) and every stream's last
chunk was fed less than 1 s late (a stream may block for a moment while a final decodes, but
must not build up a backlog); the ramp stops after the first round not held, unless
`--no-stop` runs every N given. `--max-lag S` bounds an overloaded round: a stream that falls S
seconds behind its schedule stops feeding and closes (the round is not held; "audio s" and the
compute per audio second count the audio fed, the WER counts the unfed references as deletions,
and the held column says how many streams gave up), so a round lasts at most its audio (whole
utterances: `--seconds` and up to one more) plus S and the drain of the last calls.
`--warm-streams N` first runs an unreported round of N streams of one utterance each (on CUDA
it compiles the Triton kernels for the shapes of the rounds).

`--compute`/`--dtype` place the model (models/placement.py; `auto`: CUDA when torch sees it).
`--model random-glm-nano` builds (once, into the model cache) and loads a random-weight model of
GLM-ASR-Nano-2512's size, offline (bench/random_models.py): its timings are the real model's
shapes with decodes that run to the token budget; its WER is meaningless.

`--single` instead streams one file as fast as possible in each encoder mode, to compare the
compute per audio second of re-encoding a 30 s window every step (what Whisper streaming
servers commonly do), re-encoding the utterance window, and the chunked encoder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from corpus import DEFAULT_OUT
from random_models import is_random_model, random_model_dir
from serve import load_clips, program

from streamasr import SAMPLE_RATE
from streamasr.config import ENCODERS, SessionConfig
from streamasr.engine.calls import Step
from streamasr.engine.driver import LocalSession, Offload, SessionDriver
from streamasr.engine.scheduler import Scheduler, SchedulerConfig
from streamasr.engine.session import Session
from streamasr.events import Event, TranscriptFinal, TranscriptPartial
from streamasr.models.base import AsrModel
from streamasr.models.loader import load_model
from streamasr.models.placement import add_placement_args, resolve_compute
from streamasr.server.app import SESSION_THREADS
from streamasr.textnorm import wer

CHUNK = SAMPLE_RATE // 20  # 50 ms


@dataclass
class StreamRun:
    partial_latency: list[float] = field(default_factory=list)
    final_latency: list[float] = field(default_factory=list)
    lateness_s: float = 0.0  # worst lateness of a chunk against its schedule
    end_lateness_s: float = 0.0  # lateness of the last chunk: a backlog that never drained
    finals: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    audio_s: float = 0.0  # audio fed
    gave_up: bool = False  # fell --max-lag behind its schedule and stopped feeding


async def run_stream(
    model: AsrModel,
    config: SessionConfig,
    audio: np.ndarray,
    t0: float,
    run: StreamRun,
    scheduler: Scheduler,
    offload: Offload,
    max_lag: float = 0.0,
) -> None:
    """One stream, driven as the daemon drives a connection's session."""
    driver = SessionDriver(Session(model, config), scheduler)
    session = driver.session
    fed = 0

    def handle(events: list[Event]) -> None:
        now = time.perf_counter()
        for ev in events:
            if isinstance(ev, TranscriptFinal | TranscriptPartial):
                lat = now - (t0 + ev.end_sample / SAMPLE_RATE)
                if isinstance(ev, TranscriptFinal):
                    run.final_latency.append(lat)
                    run.finals.append(ev.text)
                else:
                    run.partial_latency.append(lat)

    for start in range(0, audio.size, CHUNK):
        end = min(start + CHUNK, audio.size)
        due = t0 + end / SAMPLE_RATE
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        run.lateness_s = max(run.lateness_s, -delay)
        run.end_lateness_s = max(0.0, -delay)
        if max_lag > 0 and -delay > max_lag:
            run.gave_up = True
            break
        handle(await driver.run_async(offload, session.feed, audio[start:end]))
        fed = end
    run.audio_s = fed / SAMPLE_RATE
    handle(await driver.run_async(offload, session.close))
    driver.release()


@dataclass
class Round:
    streams: int
    runs: list[StreamRun]
    wall_s: float
    busy_s: float
    cpu_s: float
    passes: int
    rows: int

    def held(self, max_latency: float) -> bool:
        finals = [x for r in self.runs for x in r.final_latency]
        late = max(r.end_lateness_s for r in self.runs)
        if any(r.gave_up for r in self.runs):
            return False
        return bool(finals) and float(np.percentile(finals, 95)) <= max_latency and late <= 1.0

    def row(self, max_latency: float) -> str:
        audio = max(sum(r.audio_s for r in self.runs), 1e-9)
        gave_up = sum(r.gave_up for r in self.runs)
        partial = [x for r in self.runs for x in r.partial_latency]
        final = [x for r in self.runs for x in r.final_latency]
        refs = [t for r in self.runs for t in r.refs]
        hyps = [" ".join(r.finals) for r in self.runs]

        def pct(xs: list[float], q: float) -> str:
            return f"{np.percentile(xs, q):.2f}" if xs else "n/a"

        cells = [
            str(self.streams),
            f"{audio:.0f}",
            pct(partial, 50),
            pct(partial, 95),
            pct(final, 50),
            pct(final, 95),
            f"{self.busy_s / audio:.3f}",
            f"{self.cpu_s / audio:.3f}",
            f"{self.rows / max(self.passes, 1):.2f}",
            f"{max(r.lateness_s for r in self.runs):.2f}",
            f"{max(r.end_lateness_s for r in self.runs):.2f}",
            f"{wer([' '.join(refs)], [' '.join(hyps)]):.1%}",
            ("yes" if self.held(max_latency) else "no")
            + (f" ({gave_up} gave up)" if gave_up else ""),
        ]
        return "| " + " | ".join(cells) + " |"


HEADER = (
    "| streams | audio s | partial lat p50 s | partial lat p95 s | final lat p50 s "
    "| final lat p95 s | inference s per audio s | process CPU s per audio s | mean batch "
    "| worst lateness s | lateness at end s | WER | held |\n"
    "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|"
)


def run_round(
    model: AsrModel,
    config: SessionConfig,
    clips: list,
    n: int,
    seconds: float,
    scheduling: SchedulerConfig,
    max_lag: float = 0.0,
) -> Round:
    scheduler = Scheduler(model, scheduling)
    runs = [StreamRun() for _ in range(n)]
    audios = []
    for i, run in enumerate(runs):
        audio, run.refs = program(clips, i * 3, seconds)
        audios.append(audio)
    cpu0, t0 = time.process_time(), time.perf_counter() + 0.2

    async def streams() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(SESSION_THREADS, thread_name_prefix="session") as pool:

            def offload(fn: Callable[..., Step], *args: object) -> Awaitable[Step]:
                return loop.run_in_executor(pool, partial(fn, *args))

            await asyncio.gather(
                *(
                    run_stream(model, config, a, t0, r, scheduler, offload, max_lag)
                    for a, r in zip(audios, runs, strict=True)
                )
            )

    asyncio.run(streams())
    wall = time.perf_counter() - t0
    scheduler.close()
    st = scheduler.stats
    return Round(n, runs, wall, st.busy_s, time.process_time() - cpu0, st.passes, st.rows)


def single(model: AsrModel, clips: list, seconds: float) -> None:
    """One stream, unpaced, per encoder mode: compute per audio second."""
    audio, refs = program(clips, 0, seconds)
    modes = {
        "window, 30 s window every step": SessionConfig(encoder="window", encode_window="full"),
        "window, partials on the utterance + 1 s": SessionConfig(encoder="window"),
        "chunked, finals re-encoded (30 s)": SessionConfig(encoder="chunked"),
        "chunked, finals re-encoded (utterance + 10 s)": SessionConfig(
            encoder="chunked", final_window="utterance"
        ),
        "chunked, finals from the cache": SessionConfig(encoder="chunked", polish_final=False),
    }
    print("| mode | audio s | compute s per audio s | vs 30 s window | WER |")
    print("|---|--:|--:|--:|--:|")
    base = None
    for name, config in modes.items():
        session = LocalSession(model, config)
        finals: list[str] = []
        t = time.process_time()
        for start in range(0, audio.size, CHUNK):
            evs = session.feed(audio[start : start + CHUNK])
            finals += [e.text for e in evs if isinstance(e, TranscriptFinal)]
        finals += [e.text for e in session.close() if isinstance(e, TranscriptFinal)]
        per_s = (time.process_time() - t) / (audio.size / SAMPLE_RATE)
        base = base or per_s
        w = wer([" ".join(refs)], [" ".join(finals)])
        print(f"| {name} | {audio.size / SAMPLE_RATE:.0f} | {per_s:.3f} | {base / per_s:.1f}x "
              f"| {w:.1%} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--model", default="tiny.en", help="a --model of streamasr, or random-glm-nano (offline)"
    )
    p.add_argument("--encoder", choices=list(ENCODERS), default=SessionConfig.encoder)
    p.add_argument("--no-polish", action="store_true", help="chunked finals without re-encode")
    p.add_argument(
        "--final-window", choices=["utterance", "full"], default=SessionConfig.final_window
    )
    p.add_argument("--streams", default="1,2,4,6,8", help="N of each round, ascending")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per stream per round")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="inference threads")
    p.add_argument("--step-ms", type=int, default=SessionConfig.step_ms, help="partial interval")
    p.add_argument("--max-latency", type=float, default=1.5, help="p95 final latency to hold")
    p.add_argument("--no-stop", action="store_true", help="run every N, held or not")
    p.add_argument(
        "--max-lag",
        type=float,
        default=0.0,
        help="a stream this many seconds behind its schedule stops feeding (0: never)",
    )
    p.add_argument(
        "--warm-streams", type=int, default=0, help="an unreported round of N streams first"
    )
    p.add_argument("--single", action="store_true", help="single-stream compute per mode")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    add_placement_args(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_compute(args.compute)
    spec = args.model
    if is_random_model(spec):
        spec = str(random_model_dir(spec, build_on=device.type))
    t_load = time.perf_counter()
    model = load_model(spec, compute=args.compute, dtype=args.dtype)
    load_s = time.perf_counter() - t_load
    clips = load_clips(args.corpus)
    where = str(device)
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(
        f"machine: nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
        f"device {where}, dtype {args.dtype}; model {args.model} (loaded in {load_s:.1f} s)\n"
    )
    warm = LocalSession(model, SessionConfig(encoder=args.encoder))
    warm.feed(clips[0].audio)
    warm.close()
    if args.single:
        single(model, clips, args.seconds)
        return 0
    config = SessionConfig(
        encoder=args.encoder,
        polish_final=not args.no_polish,
        final_window=args.final_window,
        step_ms=args.step_ms,
    )
    print(
        f"encoder {args.encoder}, polish {not args.no_polish}, final window "
        f"{args.final_window}, step {args.step_ms} ms, max batch {args.max_batch}, "
        f"inference threads {args.workers}\n"
    )
    scheduling = SchedulerConfig(max_batch=args.max_batch, workers=args.workers)
    if args.warm_streams > 0:
        t = time.perf_counter()  # seconds 0: one utterance per stream
        run_round(model, config, clips, args.warm_streams, 0.0, scheduling, args.max_lag)
        wall = time.perf_counter() - t
        print(f"warm-up round, {args.warm_streams} streams: {wall:.1f} s wall\n", flush=True)
    print(HEADER, flush=True)
    largest = 0
    for n in (int(x) for x in args.streams.split(",")):
        rnd = run_round(model, config, clips, n, args.seconds, scheduling, args.max_lag)
        print(rnd.row(args.max_latency), flush=True)
        if rnd.held(args.max_latency):
            largest = max(largest, n)
        elif not args.no_stop:
            break
    print(f"\nlargest N held at real time (p95 final <= {args.max_latency} s): {largest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
