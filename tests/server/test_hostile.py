"""Clients that cost the server more than their audio is worth: tiny frames, trickles, hoards."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from server_helpers import (
    CHUNK_BYTES,
    Result,
    http_get,
    pcm16,
    receive_all,
    reference_finals,
    stream_session,
    ws_url,
)
from websockets.asyncio.client import connect

from streamasr.server.queues import ArrivalClock, Inbox, ReadPacer


async def test_tiny_frames_queue_as_few_arrays() -> None:
    box = Inbox(max_samples=160_000)
    samples = np.arange(20_000, dtype=np.float32)
    for x in samples:
        await box.put_audio(np.array([x], np.float32))
    assert len(box._items) <= 20_000 // 4096 + 1
    got = await box.get()
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, samples)


def test_arrival_clock_keeps_an_entry_per_10_ms_however_small_the_frames() -> None:
    clock = ArrivalClock(sample_rate=16_000)
    for i in range(100_000):  # one-sample frames, 100 000 a second
        clock.mark(1, i * 1e-5)
    assert len(clock) <= 101
    assert clock.time_of(1) is not None and clock.time_of(1) <= 0.01  # type: ignore[operator]
    assert 0.99 < clock.time_of(100_000) <= 1.0  # type: ignore[operator]
    for i in range(100_000, 2_000_000, 160):  # then two minutes of 10 ms frames
        clock.mark(160, i / 16_000)
    assert len(clock) <= 2 * 60 * 100 + 1  # two minutes at most, of 100 entries a second
    assert clock.time_of(1_999_990) == pytest.approx(1_999_840 / 16_000)


def test_read_pacer_allows_a_burst_then_the_rate() -> None:
    pacer = ReadPacer(rate=100, burst=10, now=0.0)
    assert [pacer.take(0.0) for _ in range(10)] == [0.0] * 10
    assert pacer.take(0.0) == pytest.approx(0.01)
    assert pacer.take(0.0) == pytest.approx(0.02)
    assert pacer.take(1.0) == 0.0  # a second later the bucket is full again


async def test_a_flood_of_tiny_frames_is_read_at_the_message_rate(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    """One-sample frames as fast as the socket takes them are read at `max_messages_per_s`,
    while another client streams at real time and gets its transcript, exactly."""
    server = await make_server(max_messages_per_s=100)
    clip = speech_clips[2]
    normal = asyncio.create_task(stream_session(server, pcm16(clip), speed=1.0, timeout_s=60))
    async with connect(ws_url(server)) as flood:
        t0 = time.monotonic()
        for _ in range(400):
            await flood.send(b"\x01\x00")
        await flood.send("marker")  # answered once the 400 frames before it were read
        async with asyncio.timeout(60):
            while (message := json.loads(await flood.recv()))["type"] != "error":
                pass
        answered_s = time.monotonic() - t0
        await flood.send(json.dumps({"type": "session.end"}))
        rest = await receive_all(flood)
    # 100 are read at once, then 100 a second: the marker waits 3 s at least
    assert answered_s >= 2.9
    assert message["code"] == "bad_json"
    assert rest.of("session.ended") and rest.close_code == 1000
    result = await normal
    assert result.final_texts == reference_finals(clip)


async def test_a_trickle_of_samples_does_not_hold_a_session(make_server: Any) -> None:
    """One sample every 0.1 s is far under half real time: the session goes idle."""
    server = await make_server(idle_timeout_s=1.0)
    async with connect(ws_url(server)) as ws:
        reader = asyncio.create_task(receive_all(ws))
        t0 = time.monotonic()
        async with asyncio.timeout(20):
            while not reader.done():
                try:
                    await ws.send(b"\x01\x00")
                except Exception:
                    break
                await asyncio.sleep(0.1)
        result: Result = await reader
    assert result.close_code == 1000 and result.close_reason == "idle"
    assert result.of("session.ended")[0]["reason"] == "idle"
    assert time.monotonic() - t0 < 10


async def test_real_time_audio_keeps_a_session_past_the_idle_timeout(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(idle_timeout_s=1.0)
    clip = speech_clips[3]  # 3.7 s at real time: well past the idle timeout
    result = await stream_session(server, pcm16(clip), speed=1.0, timeout_s=60)
    assert result.of("session.ended")[0]["reason"] == "client"
    assert result.final_texts == reference_finals(clip)


async def test_one_client_address_holds_at_most_its_share(make_server: Any) -> None:
    """Behind a proxy on this machine, X-Forwarded-For names the client: one address gets
    `max_client_sessions`, another address and loopback clients are not held back by it."""
    server = await make_server(max_sessions=4, max_client_sessions=2)
    first = {"X-Forwarded-For": "203.0.113.5"}
    held = [await connect(ws_url(server), additional_headers=first) for _ in range(2)]
    try:
        for ws in held:  # each starts a session
            await ws.send(bytes(CHUNK_BYTES))
            assert json.loads(await ws.recv())["type"] == "session.started"
        async with connect(ws_url(server), additional_headers=first) as third:
            refused = await receive_all(third)
        assert refused.close_code == 1013 and refused.close_reason == "client busy: 2 sessions"
        error = refused.of("error")[0]
        assert error["code"] == "server_busy" and "203.0.113.5" in error["message"]
        other = await stream_session_from(server, {"X-Forwarded-For": "198.51.100.7"})
        local = await stream_session(server, bytes(CHUNK_BYTES * 3))
        for result in (other, local):
            assert result.types == ["session.started", "session.ended"]
        reply = await http_get(server, "/metrics")
        assert "streamasr_sessions_active 2.0" in reply.body.decode()
    finally:
        for ws in held:
            await ws.close()
    async with connect(ws_url(server), additional_headers=first) as again:  # given back
        await again.send(bytes(CHUNK_BYTES))
        assert json.loads(await again.recv())["type"] == "session.started"


async def stream_session_from(server: Any, headers: dict[str, str]) -> Result:
    async with connect(ws_url(server), additional_headers=headers) as ws:
        reader = asyncio.create_task(receive_all(ws))
        await ws.send(bytes(CHUNK_BYTES * 3))
        await ws.send(json.dumps({"type": "session.end"}))
        return await reader
