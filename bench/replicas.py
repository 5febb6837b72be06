"""Replicas behind HAProxy on one machine: real-time clients direct to one daemon, through
deploy/haproxy.cfg to one daemon, and through it to two.

    python bench/replicas.py [--clients 4,8,12] [--seconds 30] [--model tiny.en]

Each configuration starts its daemons (`streamasr serve`; two replicas get `--threads 1` each,
so that together they use the cores one daemon uses) and, behind a proxy, `haproxy` with the
shipped config on free ports, then runs `bench/serve.py`'s rounds against the address the
clients use (columns as there). `daemon cores` and `peak RSS` are summed over the daemons (the
sum of each one's peak); `inference busy` and `mean batch` are n/a through the proxy, whose
/metrics would come from whichever daemon answers. HAProxy's own CPU is the `proxy cores`
column. Needs `haproxy` (apt-get install haproxy).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from corpus import DEFAULT_OUT
from serve import HEADER, ProcessWatch, load_clips, row, run_round, start_daemon

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
CONFIGURATIONS = (("direct", 1), ("haproxy", 1), ("haproxy", 2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_proxy(ports: list[int], directory: Path) -> tuple[Any, int]:
    front = free_port()
    text = CONFIG.read_text().replace("bind 127.0.0.1:8765", f"bind 127.0.0.1:{front}")
    servers = "\n".join(f"    server replica{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
    head, _, _ = text.partition("    server replica1")
    path = directory / "haproxy.cfg"
    path.write_text(head + servers + "\n")
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    proc = await asyncio.create_subprocess_exec(haproxy, "-db", "-f", str(path))
    for _ in range(100):
        try:
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{front}/healthz", timeout=2
            )
            break
        except OSError:
            await asyncio.sleep(0.1)
    return proc, front


async def configuration(kind: str, replicas: int, args: argparse.Namespace) -> None:
    clips = load_clips(args.corpus)
    ns = [int(x) for x in args.clients.split(",")]
    directory = Path(tempfile.mkdtemp(prefix="replicas-"))
    extra = ["--threads", "1"] if replicas > 1 else []
    daemons = []
    proxy = None
    try:
        for i in range(replicas):
            port = free_port()
            proc, url = await start_daemon(
                args.model, directory / f"daemon{i}.log", max(ns), port=port, extra=extra
            )
            daemons.append((proc, port, url))
        if kind == "haproxy":
            proxy, front = await start_proxy([p for _, p, _ in daemons], directory)
            url = f"ws://127.0.0.1:{front}/v1/stream"
        print(f"\n## {kind}, {replicas} replica(s): {url}", flush=True)
        header = HEADER.replace("| WER", "| proxy cores | WER", 1).replace("|---|", "|---|---|", 1)
        print(header, flush=True)
        for n in ns:
            watches = [ProcessWatch(proc.pid) for proc, _, _ in daemons]
            proxy_watch = None if proxy is None else ProcessWatch(proxy.pid)
            result = await run_round(url, {}, clips, n, args.seconds)
            used = [w.stop() for w in watches]
            result.cores = sum(c for c, _ in used)
            result.peak_rss = sum(p for _, p in used)
            if proxy is not None:
                result.busy = result.mean_batch = None
            proxy_cores = "n/a" if proxy_watch is None else f"{proxy_watch.stop()[0]:.2f}"
            line = row(result, args.max_latency)
            cells = line.split(" | ")
            cells.insert(-2, proxy_cores)  # before WER and held
            print(" | ".join(cells), flush=True)
            if not result.held(args.max_latency):
                break
    finally:
        for proc in [proxy, *(d[0] for d in daemons)]:
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()


async def main_async(args: argparse.Namespace) -> int:
    for kind, replicas in CONFIGURATIONS:
        await configuration(kind, replicas, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--clients", default="4,8,12", help="comma-separated N to try, in order")
    p.add_argument("--seconds", type=float, default=30.0, help="audio per client per round")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="bench/corpus.py output")
    p.add_argument("--max-latency", type=float, default=1.5, help="p95 final latency bound, s")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
