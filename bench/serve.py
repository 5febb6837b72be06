"""N concurrent real-time clients against `streamasr serve`: latency, and the largest N held.

    python bench/serve.py [--url ws://HOST:PORT/v1/stream] [--token T] [--model tiny.en]
                          [--clients 1,2,3,4,6,8] [--seconds 20] [--threads N] [--workers N]
                          [--max-batch N]
                          [--corpus DIR] [--max-latency 2.0]

Without `--url` it starts a daemon (`python -m streamasr.cli serve --port 0 ...`) and stops it
with SIGTERM at the end. For each N in `--clients`, N clients connect at once; client i streams
the held-out corpus's single utterances (bench/corpus.py), starting at the i-th, with 0.8 s of
silence after each, as 16 kHz s16le in 100 ms frames paced on an absolute real-time schedule,
for `--seconds` seconds, then sends session.end. Per N the markdown table gives:

- final latency p50/p95: arrival of a `transcript.final` minus the send time of the frame that
  held its `end` (the speech stop), so it includes the endpointer's silence wait (450 ms);
- partial interval p50/p95: gaps between consecutive partials of one segment;
- partial latency p50, and its growth: the p50 of the last third of the round minus the first
  third (a server that falls behind real time shows a growing lag);
- send lateness: how far behind its schedule a frame went out, at worst (the server pauses
  reading a session whose decode backlog is full, so a lagging server shows up here too);
- inference busy: the daemon's inference threads' time in model calls (from /metrics) over the
  round's wall time times their number: how much of the compute it gives them was used; and
  the mean batch, calls per batched pass (decoding step). Both read n/a against a daemon
  without inference threads (`max_batch` 1);
- daemon cores and peak RSS, for a daemon this script started: its CPU time (user + system, all
  threads) over the round's wall time, and the largest resident set sampled every 100 ms in the
  round (n/a with `--url`); cores streaming: its CPU time over the part of the round when every
  client streams (from the last client's first frame to the first client's last), without the
  start, when no client has spoken yet, and the end, when the last finals drain from fewer
  streams: what an overloaded daemon uses while it falls behind; client cores: this script's
  own CPU time over the round (its clients share the machine with a local daemon, which can use
  at most what they leave);
- WER of the finals against the corpus text.

A round is *held* when p95 final latency <= `--max-latency`, the lag growth < 0.5 s and the
send lateness < 0.5 s. The ramp stops after the first round not held; the last line names the
largest N held. Timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from corpus import DEFAULT_OUT, load_manifest
from websockets.asyncio.client import connect

from streamasr.audio.files import load_audio
from streamasr.textnorm import wer

RATE = 16_000
FRAME = 1_600  # samples: 100 ms
GAP = np.zeros(int(0.8 * RATE), dtype=np.float32)


@dataclass
class Clip:
    audio: np.ndarray  # (n,) float32 at 16 kHz
    text: str


@dataclass
class ClientRun:
    """What one client saw: its send times and every message with its arrival time."""

    sent_at: list[float] = field(default_factory=list)  # sent_at[k]: frame k went out
    lateness_s: float = 0.0
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    close_code: int | None = None


def load_clips(corpus: Path) -> list[Clip]:
    """The corpus's single utterances, every group's in turn (natural voices, espeak, human)."""
    return [
        Clip(load_audio(corpus / e["file"]), e["text"])
        for e in load_manifest(corpus)
        if e["kind"] == "single"
    ]


def program(clips: list[Clip], first: int, seconds: float) -> tuple[np.ndarray, list[str]]:
    """Utterances from `first` on, each followed by a gap, up to `seconds` (whole utterances)."""
    parts: list[np.ndarray] = []
    refs: list[str] = []
    total, i = 0, first
    while total < seconds * RATE or not parts:
        clip = clips[i % len(clips)]
        parts += [clip.audio, GAP]
        refs.append(clip.text)
        total += clip.audio.size + GAP.size
        i += 1
    return np.concatenate(parts), refs


async def run_client(url: str, headers: dict[str, str], audio: np.ndarray) -> ClientRun:
    run = ClientRun()
    pcm = (np.clip(audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    loop = asyncio.get_running_loop()
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        reader = asyncio.create_task(_read(ws, run))
        t0 = loop.time()
        for k, start in enumerate(range(0, len(pcm), FRAME * 2)):
            due = t0 + (k + 1) * FRAME / RATE  # frame k holds audio up to this instant
            await asyncio.sleep(due - loop.time())
            run.lateness_s = max(run.lateness_s, loop.time() - due)
            run.sent_at.append(loop.time())
            await ws.send(pcm[start : start + FRAME * 2])
        await ws.send(json.dumps({"type": "session.end"}))
        await reader
        run.close_code = ws.close_code
    return run


async def _read(ws: Any, run: ClientRun) -> None:
    loop = asyncio.get_running_loop()
    async for raw in ws:
        run.messages.append((loop.time(), json.loads(raw)))


@dataclass
class Round:
    clients: int
    final_latency: list[float] = field(default_factory=list)
    partial_gap: list[float] = field(default_factory=list)
    partial_latency: list[tuple[float, float]] = field(default_factory=list)  # (arrival, lat)
    lateness_s: float = 0.0
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    busy: float | None = None  # inference threads' utilisation
    mean_batch: float | None = None
    cores: float | None = None  # the daemon's CPU time over the round's wall time
    streaming_cores: float | None = None  # ... over the part of it when every client streams
    client_cores: float = 0.0  # this script's (the clients'), which shares the machine
    peak_rss: int | None = None  # bytes
    failures: int = 0

    def add(self, run: ClientRun) -> None:
        last_partial: dict[int, float] = {}
        finals: list[str] = []
        for arrived, m in run.messages:
            kind = m["type"]
            if kind not in ("transcript.partial", "transcript.final"):
                continue
            k = min(max(int(np.ceil(m["end"] * RATE / FRAME)) - 1, 0), len(run.sent_at) - 1)
            latency = arrived - run.sent_at[k]
            if kind == "transcript.final":
                self.final_latency.append(latency)
                finals.append(m["text"])
                continue
            self.partial_latency.append((arrived, latency))
            if m["segment_id"] in last_partial:
                self.partial_gap.append(arrived - last_partial[m["segment_id"]])
            last_partial[m["segment_id"]] = arrived
        self.lateness_s = max(self.lateness_s, run.lateness_s)
        self.refs.append(" ".join(run.refs))
        self.hyps.append(" ".join(finals))
        self.failures += run.close_code != 1000

    @property
    def lag_growth(self) -> float:
        pts = sorted(self.partial_latency)
        third = len(pts) // 3
        if third == 0:
            return 0.0
        first = float(np.median([lat for _, lat in pts[:third]]))
        return float(np.median([lat for _, lat in pts[-third:]])) - first

    def held(self, max_latency: float) -> bool:
        return (
            self.failures == 0
            and bool(self.final_latency)
            and float(np.percentile(self.final_latency, 95)) <= max_latency
            and self.lag_growth < 0.5
            and self.lateness_s < 0.5
        )


def pct(xs: list[float], q: float) -> str:
    return f"{np.percentile(xs, q):.2f}" if xs else "n/a"


HEADER = (
    "| clients | finals | final p50 s | final p95 s | partial gap p50 s | partial gap p95 s "
    "| partial lat p50 s | lag growth s | send late s | inference busy | mean batch "
    "| daemon cores | cores streaming | client cores | peak RSS GiB | WER | held |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: Round, max_latency: float) -> str:
    partial_lat = [lat for _, lat in r.partial_latency]
    cells = [
        str(r.clients),
        str(len(r.final_latency)),
        pct(r.final_latency, 50),
        pct(r.final_latency, 95),
        pct(r.partial_gap, 50),
        pct(r.partial_gap, 95),
        pct(partial_lat, 50),
        f"{r.lag_growth:+.2f}",
        f"{r.lateness_s:.2f}",
        "n/a" if r.busy is None else f"{r.busy:.0%}",
        "n/a" if r.mean_batch is None else f"{r.mean_batch:.2f}",
        "n/a" if r.cores is None else f"{r.cores:.2f}",
        "n/a" if r.streaming_cores is None else f"{r.streaming_cores:.2f}",
        f"{r.client_cores:.2f}",
        "n/a" if r.peak_rss is None else f"{r.peak_rss / 2**30:.2f}",
        f"{wer(r.refs, r.hyps):.1%}",
        "yes" if r.held(max_latency) else "NO",
    ]
    return "| " + " | ".join(cells) + " |"


INFERENCE = ("busy_seconds", "passes", "rows", "threads")


def inference_counters(url: str, headers: dict[str, str]) -> dict[str, float]:
    """The daemon's streamasr_inference_* counters from its /metrics ({} without them)."""
    http = re.sub(r"^ws", "http", url).split("/v1/")[0] + "/metrics"
    with urllib.request.urlopen(urllib.request.Request(http, headers=headers), timeout=10) as r:
        text = r.read().decode()
    found = {}
    for name in INFERENCE:
        match = re.search(rf"^streamasr_inference_{name}(?:_total)? (\S+)$", text, re.MULTILINE)
        if match:
            found[name] = float(match[1])
    return found


class ProcessWatch:
    """CPU time and the peak resident set of a local process, from /proc, over one round."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.clock = asyncio.get_running_loop().time  # the clients' clock (their `sent_at`)
        self.cpu0 = self.cpu_seconds()
        self.t0 = self.clock()
        self.cpu: list[tuple[float, float]] = [(self.t0, self.cpu0)]  # (clock, CPU seconds)
        self.task = asyncio.create_task(self._sample())

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def rss(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match[1]) * 1024 if match else 0

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            self.cpu.append((self.clock(), self.cpu_seconds()))
            await asyncio.sleep(0.1)

    def cores_between(self, start: float, end: float) -> float | None:
        """Cores used between two instants of `clock` (the outermost samples inside them)."""
        inside = [(t, c) for t, c in self.cpu if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def stop(self) -> tuple[float, int]:
        """(cores used, peak RSS in bytes) since the start."""
        self.task.cancel()
        self.peak = max(self.peak, self.rss())
        return (self.cpu_seconds() - self.cpu0) / (self.clock() - self.t0), self.peak


async def run_round(
    url: str,
    headers: dict[str, str],
    clips: list[Clip],
    n: int,
    seconds: float,
    pid: int | None = None,
) -> Round:
    programs = [program(clips, i * 3, seconds) for i in range(n)]
    before, t0 = await asyncio.to_thread(inference_counters, url, headers), time.monotonic()
    watch = None if pid is None else ProcessWatch(pid)
    clients = ProcessWatch(os.getpid())
    runs = await asyncio.gather(*(run_client(url, headers, audio) for audio, _ in programs))
    after, t1 = await asyncio.to_thread(inference_counters, url, headers), time.monotonic()
    result = Round(n)
    result.client_cores = clients.stop()[0]
    if watch is not None:
        result.cores, result.peak_rss = watch.stop()
        streaming = max(r.sent_at[0] for r in runs), min(r.sent_at[-1] for r in runs)
        result.streaming_cores = watch.cores_between(*streaming)
    if len(before) == len(after) == len(INFERENCE):
        delta = {k: after[k] - before[k] for k in INFERENCE}
        result.busy = delta["busy_seconds"] / ((t1 - t0) * after["threads"])
        result.mean_batch = delta["rows"] / max(delta["passes"], 1)
    for run, (_, refs) in zip(runs, programs, strict=True):
        run.refs = refs
        result.add(run)
    return result


async def start_daemon(
    model: str,
    log_path: str | Path,
    max_sessions: int,
    *,
    port: int = 0,
    extra: list[str] | None = None,
) -> tuple[Any, str]:
    """`streamasr serve` on loopback (`port` 0: a free one), its log in `log_path`; (process,
    ws URL) once it is ready."""
    model = str(Path(model).resolve()) if Path(model).exists() else model
    argv = ["--port", str(port), "--model", model, "--max-sessions", str(max_sessions)]
    log = open(log_path, "w")  # noqa: SIM115 - the daemon writes to it until it exits
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamasr.cli",
        "serve",
        *argv,
        *(extra or []),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=tempfile.gettempdir(),  # not the checkout: its kernels/ folder must not be importable
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
    match = re.search(r"http://([^/]+)/", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the daemon did not start; see {log_path}")
    return proc, f"ws://{match[1]}/v1/stream"


async def main_async(args: argparse.Namespace) -> int:
    clips = load_clips(args.corpus)
    ns = [int(x) for x in args.clients.split(",")]
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    extra = ["--workers", str(args.workers)] + (
        ["--threads", str(args.threads)] if args.threads else []
    )
    extra += ["--max-batch", str(args.max_batch)] if args.max_batch else []
    proc, url = (
        (None, args.url)
        if args.url
        else await start_daemon(args.model, args.log, max(ns), extra=extra)
    )
    print(f"# {url}, {args.seconds:g} s per client per round, cpu: {_cpu()}", flush=True)
    print(HEADER, flush=True)
    best = 0
    try:
        for n in ns:
            pid = None if proc is None else proc.pid
            result = await run_round(url, headers, clips, n, args.seconds, pid)
            print(row(result, args.max_latency), flush=True)
            if not result.held(args.max_latency):
                break
            best = n
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    print(f"\nlargest N held at real time: {best}")
    return 0


def _cpu() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {load[0]:.1f} at start (shared machine?)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", help="a running daemon's ws://.../v1/stream (default: start one)")
    p.add_argument("--token", help="bearer token for --url")
    p.add_argument("--model", default="tiny.en", help="model of the daemon this script starts")
    p.add_argument("--clients", default="1,2,3,4,6,8", help="comma-separated N to try, in order")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per client per round")
    p.add_argument("--threads", type=int, help="the daemon's torch threads")
    p.add_argument("--workers", type=int, default=1, help="the daemon's decode threads")
    p.add_argument("--max-batch", type=int, help="the daemon's rows per batch (its default: 8)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="bench/corpus.py output")
    p.add_argument("--max-latency", type=float, default=2.0, help="p95 final latency bound, s")
    p.add_argument(
        "--log",
        type=Path,
        default=Path(__file__).with_name("serve-bench.log"),
        help="the started daemon's stderr (default: bench/serve-bench.log)",
    )
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
