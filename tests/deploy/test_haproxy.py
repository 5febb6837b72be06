"""deploy/haproxy.cfg with the Debian haproxy in front of two daemons in processes of their own:
new streams are spread over both, and when one is killed mid-stream its clients resume on the
other through the same address with every final once."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
sys.path[:0] = [str(TESTS / "engine"), str(TESTS / "server"), str(TESTS / "clients")]

from fleet_helpers import free_port, resumed_elsewhere  # noqa: E402
from server_helpers import reference_finals  # noqa: E402
from test_captions import captions, write_wav  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

pytestmark = pytest.mark.timeout(180)

SECRET = "replicas behind haproxy share this"
CONFIG = ROOT / "deploy" / "haproxy.cfg"


def sessions_on(port: int) -> int:
    """Open sessions of the daemon on `port`, from its /healthz headers."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        return int(reply.headers["X-Sessions-Active"])


async def start_daemon(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(TESTS / "deploy" / "fake_daemon.py"),
        str(port),
        SECRET,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.decode().strip() == f"ready {port}", line
    return proc


def rendered(tmp_path: Path, front: int, backends: list[int]) -> Path:
    """The shipped config on this test's ports."""
    text = CONFIG.read_text().replace("bind 127.0.0.1:8765", f"bind 127.0.0.1:{front}")
    text = text.replace("127.0.0.1:8766", f"127.0.0.1:{backends[0]}")
    text = text.replace("127.0.0.1:8767", f"127.0.0.1:{backends[1]}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


class Fleet:
    def __init__(self, front: int, ports: list[int], daemons: list[asyncio.subprocess.Process]):
        self.front = front
        self.ports = ports
        self.daemons = daemons

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.front}/v1/stream"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:  # a hard failure: a skip would hide an untested recipe
        pytest.fail("haproxy is not installed (apt-get install haproxy)")
    ports, front = [free_port(), free_port()], free_port()
    daemons = [await start_daemon(port) for port in ports]
    proxy = await asyncio.create_subprocess_exec(
        haproxy, "-db", "-f", str(rendered(tmp_path, front, ports)), stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20):
            while True:  # until the proxy answers for a daemon
                try:
                    reply = await asyncio.to_thread(
                        urllib.request.urlopen, f"http://127.0.0.1:{front}/healthz", timeout=2
                    )
                    if reply.status == 200:
                        break
                except OSError:
                    await asyncio.sleep(0.1)
        yield Fleet(front, ports, daemons)
    finally:
        for proc in [proxy, *daemons]:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()


async def test_new_streams_are_spread_over_both_daemons(fleet: Fleet) -> None:
    clients = [await connect(fleet.url) for _ in range(4)]
    try:
        for ws in clients:
            await ws.send(bytes(3200))
            assert json.loads(await ws.recv())["type"] == "session.started"
        assert [sessions_on(port) for port in fleet.ports] == [2, 2]
    finally:
        for ws in clients:
            await ws.close()


async def test_a_killed_daemons_clients_resume_on_the_other(
    fleet: Fleet, clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    args = ("--url", fleet.url, "--json", "--speed", "2", str(wav))
    runs = [asyncio.create_task(captions(*args)) for _ in range(2)]
    async with asyncio.timeout(20):  # both streaming, one on each daemon
        while [sessions_on(port) for port in fleet.ports] != [1, 1]:
            await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # mid second utterance
    victim = fleet.daemons[0]
    os.kill(victim.pid, signal.SIGKILL)
    outcomes = await asyncio.gather(*runs)
    # the killed daemon's client, on the survivor
    assert resumed_elsewhere(outcomes, reference_finals(clip)) == 1
