"""Start, readiness, graceful shutdown and churn: the daemon's life with FakeModel, in-process."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_model import FakeModel
from server_helpers import (
    Result,
    assert_served,
    pcm16,
    receive_all,
    send_audio,
    stream_session,
    ws_url,
)
from websockets.asyncio.client import ClientConnection, connect

from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.server.app import Server


async def open_utterance(server: Server, clip: np.ndarray) -> tuple[ClientConnection, Result]:
    """A client that has sent speech with no end: its utterance is open on the server."""
    ws = await connect(ws_url(server))
    await send_audio(ws, pcm16(clip[:-16_000]))  # drop the trailing second of silence
    first = [json.loads(await ws.recv()) for _ in range(2)]
    assert [m["type"] for m in first] == ["session.started", "speech.started"]
    return ws, Result(messages=first)


async def rest_of(ws: ClientConnection, result: Result) -> Result:
    more = await receive_all(ws)
    return Result(result.messages + more.messages, more.close_code, more.close_reason)


async def run_in_task(server: Server) -> asyncio.Task[None]:
    """`server.run()` as the CLI runs it (signal handlers included), once it is ready."""
    ready = asyncio.Event()
    task = asyncio.create_task(server.run(on_ready=lambda _s: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    return task


@pytest.mark.parametrize("how", ["request_shutdown", "SIGTERM"])
async def test_shutdown_finalises_every_open_session_then_closes_1001(
    make_server: Any, speech_clips: list[np.ndarray], how: str
) -> None:
    server = await make_server(start=False, drain_timeout_s=5.0)
    task = await run_in_task(server)
    opened = [await open_utterance(server, clip) for clip in speech_clips[3:6]]
    t0 = time.monotonic()
    if how == "SIGTERM":  # the real signal path: the loop's handler calls request_shutdown()
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        server.request_shutdown()
    results = await asyncio.gather(*(rest_of(ws, first) for ws, first in opened))
    await asyncio.wait_for(task, 5.0)
    assert time.monotonic() - t0 < 5.0
    for result in results:
        result.check_seq()
        assert result.types[-3:] == ["speech.stopped", "transcript.final", "session.ended"]
        assert result.of("session.ended")[0]["reason"] == "shutdown"
        assert (result.close_code, result.close_reason) == (1001, "server shutting down")
    assert server.state == "stopped" and server.active_sessions == 0


async def test_a_drain_finalises_the_sessions_and_keeps_the_model_until_shutdown(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    """`drain()`, what a replica its platform removes runs: the sessions end as on SIGTERM,
    no new one is taken, and the later `shutdown()` still stops the server."""
    server = await make_server(start=False, drain_timeout_s=5.0)
    task = await run_in_task(server)
    ws, first = await open_utterance(server, speech_clips[3])
    await asyncio.gather(server.drain(), server.drain())  # once, however often it is asked
    result = await rest_of(ws, first)
    assert result.types[-3:] == ["speech.stopped", "transcript.final", "session.ended"]
    assert result.of("session.ended")[0]["reason"] == "shutdown"
    assert result.close_code == 1001
    assert server.state == "stopping" and server.active_sessions == 0
    server.request_shutdown()
    await asyncio.wait_for(task, 5.0)
    assert server.state == "stopped"


class SlowModel(FakeModel):
    def decode(self, request: TranscribeRequest) -> DecodeResult:
        time.sleep(0.6)  # simulated compute on the worker thread, longer than the drain time
        return super().decode(request)


async def test_the_drain_timeout_bounds_shutdown(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(drain_timeout_s=0.3, model_factory=lambda _: SlowModel())
    ws = await connect(ws_url(server))
    await send_audio(ws, pcm16(speech_clips[6][:-16_000]))
    assert json.loads(await ws.recv())["type"] == "session.started"
    reader = asyncio.create_task(receive_all(ws))
    t0 = time.monotonic()
    await server.shutdown()
    assert time.monotonic() - t0 < 0.3 + 0.5 + 0.6  # drain + close grace + one decode's slack
    result = await asyncio.wait_for(reader, 5.0)
    assert result.close_code in (1001, 1006)  # 1006: the socket was dropped after the grace


async def test_ready_and_stopping_go_to_notify_socket_after_warm_up(
    make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_factory(_spec: str) -> FakeModel:
        release.wait(10)
        return FakeModel()

    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        server = await make_server(model_factory=slow_factory, start=False)
        startup = asyncio.create_task(server.startup())
        await asyncio.sleep(0.2)
        with pytest.raises(BlockingIOError):
            sock.recv(100)  # loading: not ready yet
        release.set()
        await startup
        assert sock.recv(100) == b"READY=1"
        await server.shutdown()
        assert sock.recv(100) == b"STOPPING=1"


async def churn_once(server: Server, i: int, clip: bytes) -> None:
    """One of four ways to come and go; the odd ones leave mid-utterance."""
    ws = await connect(ws_url(server))
    kind = i % 4
    if kind in (1, 2, 3):
        await send_audio(ws, clip)
    if kind == 2:
        ws.transport.abort()  # TCP gone, no close frame
        await ws.wait_closed()
        return
    if kind == 3:
        await ws.send(json.dumps({"type": "session.end"}))
        result = await receive_all(ws)
        assert result.types[-1] == "session.ended"
        return
    await ws.close()


async def churn(server: Server, cycles: int, clip: bytes) -> None:
    for batch in range(0, cycles, 8):
        await asyncio.gather(*(churn_once(server, i, clip) for i in range(batch, batch + 8)))


async def test_connect_disconnect_churn_leaves_nothing_behind(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    # The sessions of clients whose TCP connection drops are held a second for them to resume.
    server = await make_server(max_sessions=8, resume_grace_s=1.0)
    clip = pcm16(speech_clips[2][:16_000])  # 0.3 s of silence, 0.7 s of speech: mid-utterance
    tracemalloc.start()
    try:
        await churn(server, 24, clip)  # warm: lazy imports, caches, the worker thread
        assert await server.wait_idle(5.0)
        gc.collect()
        threads, (memory, _) = threading.active_count(), tracemalloc.get_traced_memory()
        await churn(server, 200, clip)
        assert await server.wait_idle(5.0)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - memory
    finally:
        tracemalloc.stop()
    assert server.active_sessions == 0
    assert server.metrics.sessions_active._value.get() == 0
    assert server.metrics.sessions._value.get() == 224
    assert threading.active_count() == threads
    assert grown < 2_000_000, f"{grown} bytes more after 200 sessions"
    await assert_served(server)


async def test_a_fresh_session_after_shutdown_of_another_server(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    """Two servers in one process share nothing: stopping one leaves the other serving."""
    first, second = await make_server(), await make_server()
    await first.shutdown()
    result = await stream_session(second, pcm16(speech_clips[0]))
    assert result.close_code == 1000 and result.final_texts
