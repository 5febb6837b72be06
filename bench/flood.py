"""A hostile client beside a normal one: does a flood of tiny frames slow the other's finals?

    python bench/flood.py [--seconds 25] [--model tiny.en] [--corpus DIR] [--frame-bytes 2]

Starts `streamasr serve` (as bench/serve.py does) and runs two rounds of `--seconds`: in the
first, one real-time client streams the corpus's utterances alone (serve.py's client: 100 ms
frames on an absolute schedule, 0.8 s of silence after each utterance); in the second, the
same client streams while another one, on its own connection, sends `--frame-bytes`-byte
binary frames (one 16 kHz s16le sample by default) as fast as the daemon takes them. The table
gives per round the normal client's final latency (p50, p95, max: arrival of the final minus
the send time of the frame that held its end; or how its connection was lost), its WER, the
flooder's frames sent and their
rate, and the daemon's CPU use and resident set (at the start, at the end, and the peak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from corpus import DEFAULT_OUT
from serve import ProcessWatch, Round, load_clips, pct, program, run_client, start_daemon
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamasr.textnorm import wer

HEADER = (
    "| flooders | frames sent | frames/s | finals | final p50 s | final p95 s | final max s "
    "| WER | daemon cores | RSS start MiB | RSS end MiB | peak RSS MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def flood(url: str, frame: bytes, seconds: float) -> int:
    """In a process of its own (so that its loop does not slow the normal client's): send
    `frame` as fast as the connection takes it for `seconds`; the frames sent."""
    return asyncio.run(_flood(url, frame, seconds))


async def _flood(url: str, frame: bytes, seconds: float) -> int:
    sent = 0
    deadline = time.monotonic() + seconds
    async with connect(url, max_size=None) as ws:
        drain = asyncio.create_task(_discard(ws))
        try:
            while time.monotonic() < deadline:
                await ws.send(frame)
                sent += 1
            await ws.send(json.dumps({"type": "session.end"}))
        except ConnectionClosed:
            pass
        drain.cancel()
    return sent


async def _discard(ws: Any) -> None:
    async for _ in ws:
        pass


async def run_round(
    url: str, pid: int, audio: np.ndarray, refs: list[str], flooders: int, frame: bytes
) -> str:
    watch = ProcessWatch(pid)
    rss0 = watch.rss()
    loop = asyncio.get_running_loop()
    seconds = audio.size / 16_000
    with ProcessPoolExecutor(max(flooders, 1)) as pool:
        floods = [loop.run_in_executor(pool, flood, url, frame, seconds) for _ in range(flooders)]
        return await _measure(url, audio, refs, flooders, floods, watch, rss0)


async def _measure(
    url: str,
    audio: np.ndarray,
    refs: list[str],
    flooders: int,
    floods: list[asyncio.Future[int]],
    watch: ProcessWatch,
    rss0: int,
) -> str:
    t0 = time.monotonic()
    lost = ""
    result = Round(1)
    try:
        run = await run_client(url, {}, audio)
        run.refs = refs
        result.add(run)
    except ConnectionClosed as exc:  # the normal client's connection broke
        lost = f"lost: {exc}"
    sent = sum(await asyncio.gather(*floods))
    elapsed = time.monotonic() - t0
    rss1 = watch.rss()
    cores, peak = watch.stop()
    cells = [
        str(flooders),
        str(sent),
        f"{sent / elapsed:.0f}",
        lost or str(len(result.final_latency)),
        pct(result.final_latency, 50),
        pct(result.final_latency, 95),
        f"{max(result.final_latency):.2f}" if result.final_latency else "n/a",
        f"{wer(result.refs, result.hyps):.1%}" if result.refs else "n/a",
        f"{cores:.2f}",
        f"{rss0 / 2**20:.0f}",
        f"{rss1 / 2**20:.0f}",
        f"{peak / 2**20:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


async def main_async(args: argparse.Namespace) -> int:
    clips = load_clips(args.corpus)
    audio, refs = program(clips, 0, args.seconds)
    log = Path(tempfile.gettempdir()) / "streamasr-flood.log"
    proc, url = await start_daemon(args.model, log, 4)
    print(f"# {url}, {args.seconds:g} s of speech, frames of {args.frame_bytes} bytes", flush=True)
    print(HEADER, flush=True)
    try:
        for flooders in (0, 1):
            frame = bytes(args.frame_bytes)
            print(await run_round(url, proc.pid, audio, refs, flooders, frame), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    p.add_argument("--frame-bytes", type=int, default=2)
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
