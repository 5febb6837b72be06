"""Soak of `streamasr serve`: clients stream, flush, end or drop, and reconnect for an hour.

    python bench/soak.py [--minutes 60] [--clients 2] [--port 0] [--seed 0] [--every 30]
                         [--corpus DIR] [--log FILE]

Starts the daemon on 127.0.0.1 with the embedded tiny.en (`--port`; 0 picks a free one) and
stops it with SIGTERM at the end. Each client loops until `--minutes` are up: it connects,
streams 1-6 of the corpus's single utterances (bench/corpus.py; each followed by 0.8 s of
silence) as 16 kHz s16le in 100 ms frames on a real-time schedule, sends `session.flush` right
after an utterance 1 time in 4, and ends with `session.end` 3 sessions in 5; the others stop at
a random frame (in speech or in a pause) and close the socket, half of them without a close
frame (TCP abort). Then it reconnects. Every `--every` seconds the script records the daemon's
resident set (VmRSS), its open file descriptors and `streamasr_sessions_active`.

The table lists the samples: `start` before any client, `end` once all have left (sessions are
waited for up to 15 s). The summary gives the RSS growth (median of the last quarter of the
samples taken while clients ran minus that of the first quarter), fd min/max, the sessions open
at the end, utterances sent, finals received, lost finals and the WER of the finals of the
sessions that ended with `session.end`. An utterance is one corpus clip, spanning its samples
on the session's stream clock; it is lost when a session that ended with `session.end` got no
final with text overlapping it, or when a final with empty text overlaps it (in any session).
The script exits 1 when sessions remain open at the end or a final was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from corpus import DEFAULT_OUT
from serve import FRAME, GAP, RATE, Clip, ProcessWatch, load_clips, start_daemon
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from streamasr.server.protocol import SessionEnd, SessionFlush, parse_server_message
from streamasr.textnorm import wer

END_S = 60.0  # how long a session.end may take to bring its finals and the close
SETTLE_S = 15.0  # how long the daemon may take to close the sessions of departed clients


@dataclass
class Utterance:
    start_s: float  # on the session's stream clock
    end_s: float
    text: str


@dataclass
class SessionLog:
    """One connection: how it ended, the whole utterances it sent and the finals it got."""

    ending: str  # "end" (session.end), "close" (close frame) or "abort" (TCP dropped)
    utterances: list[Utterance] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    flushes: int = 0
    ended: bool = False  # session.ended arrived
    close_code: int | None = None

    @property
    def refused(self) -> bool:
        """The daemon was full (`server_busy`) or the connection failed."""
        return "server_busy" in self.errors or "connect" in self.errors

    def lost(self) -> tuple[int, int]:
        """(utterances without a final with text, utterances overlapped by an empty final)."""
        missing = empty = 0
        for u in self.utterances:
            over = [f for f in self.finals if f["start"] < u.end_s and f["end"] > u.start_s]
            if any(not f["text"].strip() for f in over):
                empty += 1
            elif self.ending == "end" and not over:
                missing += 1
        return missing, empty


@dataclass
class Sample:
    label: str
    rss: int  # bytes
    fds: int
    sessions: float | None


def sessions_active(url: str) -> float | None:
    """`streamasr_sessions_active` from the daemon's /metrics (None when it does not answer)."""
    http = re.sub(r"^ws", "http", url).split("/v1/")[0] + "/metrics"
    try:
        with urllib.request.urlopen(http, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    match = re.search(r"^streamasr_sessions_active (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else None


async def sample(label: str, watch: ProcessWatch, url: str) -> Sample:
    fds = len(os.listdir(f"/proc/{watch.pid}/fd"))
    return Sample(label, watch.rss(), fds, await asyncio.to_thread(sessions_active, url))


def pcm16(x: np.ndarray) -> bytes:
    pcm: bytes = (np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes()
    return pcm


async def stream(
    ws: ClientConnection, log: SessionLog, plan: list[tuple[Clip, bool]], cut: int, deadline: float
) -> None:
    """Send the plan's clips, each then a gap, at real time; stop at frame `cut` or the
    deadline. `log.utterances` gets every clip sent whole."""
    loop = asyncio.get_running_loop()
    t0, frames, samples = loop.time(), 0, 0
    for clip, flush in plan:
        if loop.time() > deadline:
            return
        for piece, speech in ((clip.audio, True), (GAP, False)):
            for start in range(0, piece.size, FRAME):
                if frames == cut:
                    return
                frame = piece[start : start + FRAME]
                samples += frame.size
                await asyncio.sleep(t0 + samples / RATE - loop.time())  # absolute schedule
                await ws.send(pcm16(frame))
                frames += 1
            if speech:
                log.utterances.append(
                    Utterance((samples - piece.size) / RATE, samples / RATE, clip.text)
                )
            if speech and flush:
                await ws.send(SessionFlush().to_json())
                log.flushes += 1


async def read(ws: ClientConnection, log: SessionLog) -> None:
    try:
        async for raw in ws:
            m = parse_server_message(str(raw))
            if m["type"] == "transcript.final":
                log.finals.append(m)
            elif m["type"] == "error":
                log.errors.append(m["code"])
            elif m["type"] == "session.ended":
                log.ended = True
    except ConnectionClosed:
        pass


def plan_session(
    rng: random.Random, clips: list[Clip]
) -> tuple[SessionLog, list[tuple[Clip, bool]], int]:
    """A session's ending, its clips (each with whether a flush follows) and its cut frame."""
    first, n = rng.randrange(len(clips)), rng.randint(1, 6)
    plan = [(clips[(first + j) % len(clips)], rng.random() < 0.25) for j in range(n)]
    ending = "end" if rng.random() < 0.6 else rng.choice(("close", "abort"))
    frames = sum(-(-c.audio.size // FRAME) - (-GAP.size // FRAME) for c, _ in plan)
    cut = -1 if ending == "end" else rng.randrange(1, frames)
    return SessionLog(ending), plan, cut


async def run_session(
    url: str, rng: random.Random, clips: list[Clip], deadline: float
) -> SessionLog:
    log, plan, cut = plan_session(rng, clips)
    try:
        ws = await connect(url, max_size=None, open_timeout=30, close_timeout=5)
    except (OSError, TimeoutError, InvalidHandshake):
        log.errors.append("connect")
        return log
    async with ws:
        reader = asyncio.create_task(read(ws, log))
        try:
            await stream(ws, log, plan, cut, deadline)
            if log.ending == "end":
                await ws.send(SessionEnd().to_json())
                await asyncio.wait_for(asyncio.shield(reader), END_S)
            elif log.ending == "close":
                await ws.close()
            else:
                ws.transport.abort()
        except (ConnectionClosed, TimeoutError):
            pass  # the log shows it: no session.ended, a close code other than 1000
        reader.cancel()
    log.close_code = ws.close_code
    return log


async def client(
    url: str, clips: list[Clip], rng: random.Random, deadline: float
) -> list[SessionLog]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(rng.uniform(0, 2))  # the clients' sessions do not start in step
    logs: list[SessionLog] = []
    while loop.time() < deadline:
        logs.append(await run_session(url, rng, clips, deadline))
        if logs[-1].refused:
            await asyncio.sleep(1)
    return logs


async def watch_until(
    done: asyncio.Future[Any], watch: ProcessWatch, url: str, every: float, t0: float
) -> list[Sample]:
    loop = asyncio.get_running_loop()
    samples = []
    while not done.done():
        await asyncio.wait({done}, timeout=every)
        if not done.done():
            samples.append(await sample(f"{loop.time() - t0:.0f}", watch, url))
            print(row(samples[-1]), flush=True)
    return samples


async def settle(watch: ProcessWatch, url: str) -> Sample:
    """The end sample, once the daemon reports no sessions or after SETTLE_S."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + SETTLE_S
    while True:
        last = await sample("end", watch, url)
        if last.sessions == 0 or loop.time() > give_up:
            return last
        await asyncio.sleep(0.5)


def row(s: Sample) -> str:
    sessions = "n/a" if s.sessions is None else f"{s.sessions:g}"
    return f"| {s.label} | {s.rss / 2**20:.1f} | {s.fds} | {sessions} |"


def summary(
    samples: list[Sample], end: Sample, logs: list[SessionLog], peak: int, cores: float
) -> bool:
    """Print the summary; True when the soak passed."""
    rss = [s.rss / 2**20 for s in samples] or [end.rss / 2**20]
    q = max(1, len(rss) // 4)
    first, last = float(np.median(rss[:q])), float(np.median(rss[-q:]))
    fds = [s.fds for s in samples + [end]]
    used = [g for g in logs if not g.refused]
    lost = [g.lost() for g in used]
    missing, empty = sum(m for m, _ in lost), sum(e for _, e in lost)
    ended = [g for g in used if g.ending == "end"]
    by = {e: sum(g.ending == e for g in used) for e in ("end", "close", "abort")}
    bad = sum(not g.ended or g.close_code != 1000 for g in ended)
    print(
        f"\nRSS: first-quarter median {first:.1f} MiB, last-quarter median {last:.1f} MiB, "
        f"growth {last - first:+.1f} MiB (peak {peak / 2**20:.1f} MiB, {cores:.2f} cores)"
    )
    print(f"fds: min {min(fds)}, max {max(fds)}")
    print(f"sessions at the end: {end.sessions if end.sessions is None else f'{end.sessions:g}'}")
    print(
        f"sessions: {len(used)} ({by['end']} session.end, {by['close']} closed, {by['abort']} "
        f"aborted; {len(logs) - len(used)} refused or not connected; "
        f"{bad} session.end without a clean close)"
    )
    print(
        f"utterances sent: {sum(len(g.utterances) for g in used)}, flushes: "
        f"{sum(g.flushes for g in used)}, finals received: {sum(len(g.finals) for g in used)} "
        f"({sum(f.get('fallback', False) for g in used for f in g.finals)} fallback)"
    )
    print(f"lost finals: {missing + empty} ({missing} missing, {empty} empty)")
    refs = [" ".join(u.text for u in g.utterances) for g in ended]
    hyps = [" ".join(f["text"] for f in g.finals) for g in ended]
    print(f"WER (session.end sessions): {wer(refs, hyps):.1%}" if ended else "WER: n/a")
    return end.sessions == 0 and missing + empty == 0


async def main_async(args: argparse.Namespace) -> int:
    clips = load_clips(args.corpus)
    # room for sessions still closing
    proc, url = await start_daemon("tiny.en", args.log, 2 * args.clients, port=args.port)
    loop = asyncio.get_running_loop()
    watch = ProcessWatch(proc.pid)
    print(f"# soak: {args.clients} clients, {args.minutes:g} min, {url}, seed {args.seed}")
    print("| t s | RSS MiB | fds | sessions |\n|---|---|---|---|")
    print(row(await sample("start", watch, url)), flush=True)
    t0 = loop.time()
    deadline = t0 + args.minutes * 60
    try:
        rngs = [random.Random(f"{args.seed}:{i}") for i in range(args.clients)]
        clients = asyncio.gather(*(client(url, clips, rng, deadline) for rng in rngs))
        samples = await watch_until(clients, watch, url, args.every, t0)
        logs = [g for per_client in await clients for g in per_client]
        end = await settle(watch, url)
        print(row(end))
        cores, peak = watch.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    return 0 if summary(samples, end, logs, peak, cores) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=60.0, help="how long clients reconnect")
    p.add_argument("--clients", type=int, default=2, help="concurrent real-time clients")
    p.add_argument("--port", type=int, default=0, help="the daemon's port (0: a free one)")
    p.add_argument("--seed", type=int, default=0, help="seeds the clients' choices")
    p.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="bench/corpus.py output")
    p.add_argument(
        "--log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "streamasr-soak.log",
        help="the daemon's stderr (default: streamasr-soak.log in the temp dir)",
    )
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
