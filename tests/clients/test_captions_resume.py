"""clients/captions.py resumes its session when the connection drops: through a TCP proxy that
cuts every connection mid-stream, to the same daemon or, failing over, to another."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import speech

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "engine"), str(TESTS / "server")]  # fake_model, server_helpers

from fake_model import FakeModel  # noqa: E402
from server_helpers import reference_finals  # noqa: E402
from test_captions import captions, write_wav  # noqa: E402

from streamasr.server.app import Server  # noqa: E402
from streamasr.server.config import ServerConfig  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SECRET = "the replicas' shared resume secret"


class CuttingProxy:
    """Loopback TCP proxy to the port `target()` names; once `cut_after` bytes went upstream,
    it drops every connection (no close frame, like a network that fails) and sends the next
    ones to `target()` again."""

    def __init__(self, target: Callable[[], int], cut_after: int) -> None:
        self.target = target
        self.cut_after = cut_after
        self.upstream = 0
        self.cuts = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._cut()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target())
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, count=True),
            self._pipe(up_reader, writer, count=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
            if count:
                self.upstream += len(data)
                if not self.cuts and self.upstream >= self.cut_after:
                    self._cut()
        writer.close()

    def _cut(self) -> None:
        self.cuts += 1
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()


@pytest.fixture
def clip(sentences: list[np.ndarray]) -> np.ndarray:
    """Three utterances with pauses: the cut falls in the second."""
    pause = speech.silence(1.2)
    parts = [speech.silence(0.3), sentences[0], pause, sentences[1], pause, sentences[0], pause]
    return np.concatenate(parts)


@pytest.fixture
async def daemons() -> AsyncIterator[list[Server]]:
    servers = [
        Server(
            ServerConfig(port=0, max_sessions=4, resume_secret=SECRET),
            model_factory=lambda _spec: FakeModel(),
        )
        for _ in range(2)
    ]
    for server in servers:
        await server.startup()
    yield servers
    for server in servers:
        await server.shutdown()


async def run_through_proxy(proxy: CuttingProxy, wav: Path) -> tuple[list[dict[str, object]], str]:
    port = await proxy.start()
    try:
        rc, out, err = await captions(
            "--url", f"ws://127.0.0.1:{port}/v1/stream", "--json", "--speed", "4", str(wav)
        )
    finally:
        await proxy.close()
    assert rc == 0, err
    assert proxy.cuts >= 1
    return [json.loads(line) for line in out.splitlines()], err


def check_every_final_once(events: list[dict[str, object]], clip: np.ndarray) -> None:
    assert [e["seq"] for e in events] == list(range(len(events)))  # none missed, none twice
    finals = [e for e in events if e["type"] == "transcript.final"]
    assert [f["text"] for f in finals] == reference_finals(clip)
    assert [f["segment_id"] for f in finals] == list(range(len(finals)))
    assert events[-1]["type"] == "session.ended"


async def test_a_dropped_connection_resumes_on_the_same_daemon(
    daemons: list[Server], clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    half = clip.size  # bytes of s16le: half the audio, mid second utterance
    proxy = CuttingProxy(lambda: daemons[0].port, cut_after=half)
    events, err = await run_through_proxy(proxy, wav)
    [resumed] = [e for e in events if e["type"] == "session.resumed"]
    assert resumed["same_session"] is True, err
    assert "connection lost; resuming" in err and "lost" not in err.split("resuming")[-1]
    check_every_final_once(events, clip)


async def test_a_lost_daemon_fails_over_to_another_that_shares_the_secret(
    daemons: list[Server], clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    proxy = CuttingProxy(lambda: daemons[proxy.cuts > 0].port, cut_after=clip.size)
    events, err = await run_through_proxy(proxy, wav)
    [resumed] = [e for e in events if e["type"] == "session.resumed"]
    assert resumed["same_session"] is False, err
    before = [e for e in events if e["type"] == "transcript.final" and e["seq"] < resumed["seq"]]
    assert resumed["t"] == (before[-1]["end"] if before else 0.0)
    check_every_final_once(events, clip)
    assert daemons[1].metrics.sessions._value.get() == 1  # the second daemon took it on
