"""Where the daemon's time and its GIL go under N real-time clients: py-spy on `bench/serve.py`.

    python bench/hotspots.py [--clients 6] [--seconds 45] [--sample-s 25] [--rate 100]
                             [--mode gil|cpu|none] [--out DIR]

Runs `bench/serve.py --clients N` (which starts a daemon with its defaults), waits until the
clients stream, then for `--sample-s` seconds reads the daemon's CPU time from /proc and, with
`--mode gil`, samples which thread holds the GIL (`py-spy record --gil`), or with `--mode cpu`
every thread's Python stack (`py-spy record`; this costs the daemon CPU on a small machine, so
its latency figures do not hold for that run). `pip install py-spy` (the `bench` extra).

Prints serve.py's table, the daemon's CPU in cores over the window, and per thread (session
threads pooled as `streamasr-decode_N`) its samples in core-equivalents and the innermost
streamasr function of its stacks. With `--mode gil` a thread's core-equivalents are the share
of wall time it held the GIL. py-spy counts a thread blocked on a Python lock or queue as
active, so the session threads' `cpu` figures include their waits for the inference thread.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def daemon_pid(serve: subprocess.Popen[str], log: Path, timeout_s: float = 300) -> int:
    """The pid of the daemon serve.py started, once it logged that it is ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise SystemExit(f"bench/serve.py exited early; see {log}")
        if log.exists() and "ready" in log.read_text(errors="replace"):
            children = subprocess.run(
                ["pgrep", "-P", str(serve.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            if children:
                return int(children[0])
        time.sleep(0.5)
    raise SystemExit("the daemon did not become ready")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(raw: Path, seconds: float, rate: float, top: int = 6) -> list[str]:
    """Per thread: samples in core-equivalents, and its stacks' innermost streamasr frames."""
    threads: collections.Counter[str] = collections.Counter()
    funcs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        thread = re.sub(r"_\d+$", "_N", re.sub(r"^thread \(\d+\): ", "", frames[0]))
        ours = [f for f in frames[1:] if "streamasr/" in f]
        where = re.sub(r":\d+\)", ")", ours[-1] if ours else frames[-1])
        threads[thread] += int(count)
        funcs[thread][where] += int(count)
    lines = []
    for thread, n in threads.most_common():
        lines.append(f"{thread}: {n / rate / seconds:.2f} core-equivalents ({n} samples)")
        lines += [f"    {m / n:6.1%}  {f}" for f, m in funcs[thread].most_common(top)]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--seconds", type=float, default=45.0, help="audio per client")
    p.add_argument("--sample-s", type=float, default=25.0, help="how long to sample")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--mode", choices=["gil", "cpu", "none"], default="gil")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args()
    log = args.out / "hotspots-serve.log"
    log.unlink(missing_ok=True)
    serve = subprocess.Popen(
        [sys.executable, str(HERE / "serve.py"), "--clients", str(args.clients)]
        + ["--seconds", str(args.seconds), "--max-latency", "1.5", "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = daemon_pid(serve, log)
    time.sleep(12)  # the clients connect and reach their steady state
    raw = args.out / f"hotspots-{args.mode}-{args.clients}.txt"
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    if args.mode == "none":
        time.sleep(args.sample_s)
    else:
        spy = ["py-spy", "record", "-p", str(pid), "-d", str(int(args.sample_s))]
        spy += ["-r", str(args.rate), "--format", "raw", "-o", str(raw), "--threads"]
        subprocess.run(spy + (["--gil"] if args.mode == "gil" else []), check=True)
    cores = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    out, _ = serve.communicate()
    print(out, end="")
    print(f"\ndaemon CPU over {args.sample_s:g} s of the round: {cores:.2f} cores")
    if args.mode != "none":
        print(f"py-spy --mode {args.mode}, {args.rate} Hz ({raw}):")
        print("\n".join(summarise(raw, args.sample_s, args.rate)))
    return serve.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
