"""Sessions over real sockets with FakeModel: concurrency, flush, formats, limits, backpressure."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import numpy as np
import pytest
import soxr
from fake_model import FakeModel
from server_helpers import (
    CHUNK_BYTES,
    Result,
    assert_served,
    masked_binary_frame,
    pcm16,
    raw_websocket,
    receive_all,
    reference_finals,
    send_audio,
    session,
    stream_session,
    ws_url,
)
from websockets.asyncio.client import connect

from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.server import queues
from streamasr.server.app import Server
from streamasr.server.protocol import Flush

END = json.dumps({"type": "session.end"})
FLUSH = json.dumps({"type": "session.flush"})


def check_clean(result: Result) -> None:
    assert result.types[0] == "session.started"
    assert result.types[-1] == "session.ended" and result.close_code == 1000
    assert result.of("error") == []
    result.check_seq()


async def test_eight_concurrent_clients_each_get_their_own_transcript(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(max_sessions=8)
    expected = [reference_finals(clip) for clip in speech_clips]
    assert len({tuple(e) for e in expected}) == 8, "the clips must give different transcripts"
    paced = (stream_session(server, pcm16(c), speed=5.0) for c in speech_clips)
    results = await asyncio.gather(*paced)
    for result, want in zip(results, expected, strict=True):
        check_clean(result)
        assert result.final_texts == want
        assert result.of("transcript.partial"), "partials while speaking"
    assert server.metrics.sessions._value.get() == 8


async def test_flush_finalises_now_and_the_session_goes_on(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    clip = pcm16(speech_clips[4])
    half = len(clip) // 2 // CHUNK_BYTES * CHUNK_BYTES
    frames: list[str | bytes] = [clip[i : i + CHUNK_BYTES] for i in range(0, half, CHUNK_BYTES)]
    frames.append(FLUSH)
    frames += [clip[i : i + CHUNK_BYTES] for i in range(half, len(clip), CHUNK_BYTES)]
    result = await session(server, [*frames, END])
    check_clean(result)
    assert len(result.final_texts) == 2
    stopped = result.types.index("speech.stopped")
    assert result.types[stopped + 1] == "transcript.final"


async def test_48k_stereo_float_is_resampled(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    mono = speech_clips[3]
    x48 = soxr.resample(mono, 16_000, 48_000).astype(np.float32)
    stereo = np.stack([x48, x48], axis=1).astype("<f4").tobytes()  # (n, 2) interleaved
    start = {
        "type": "session.start",
        "audio": {"encoding": "pcm_f32le", "sample_rate": 48000, "channels": 2},
    }
    result = await stream_session(server, stereo, start=start)
    check_clean(result)
    [final] = result.of("transcript.final")
    want = reference_finals(mono)[0].split()
    assert abs(len(final["text"].split()) - len(want)) <= 1  # resampling moves edges a little


async def test_one_session_over_the_limit_is_told_and_closed_1013(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(max_sessions=2)
    async with connect(ws_url(server)) as a, connect(ws_url(server)) as b:
        for ws in (a, b):
            await ws.send(bytes(CHUNK_BYTES))
            assert json.loads(await ws.recv())["type"] == "session.started"
        async with connect(ws_url(server)) as c:
            busy = await receive_all(c)
    assert busy.close_code == 1013 and busy.close_reason == "server busy: 2 sessions"
    assert [(e["code"], e["fatal"]) for e in busy.of("error")] == [("server_busy", True)]
    assert server.metrics.rejected.labels(reason="busy")._value.get() == 1
    assert await server.wait_idle(5.0)
    check_clean(await stream_session(server, pcm16(speech_clips[0])))


async def test_idle_timeout_finalises_then_closes_1000(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(idle_timeout_s=0.5)
    speech_only = pcm16(speech_clips[2][:-16_000])  # ends mid-utterance, then nothing
    async with connect(ws_url(server)) as ws:
        await send_audio(ws, speech_only)
        result = await receive_all(ws)
    assert result.close_code == 1000 and result.close_reason == "idle"
    assert result.types[-3:] == ["speech.stopped", "transcript.final", "session.ended"]
    assert result.of("session.ended")[0]["reason"] == "idle"
    async with connect(ws_url(server)) as silent:  # never sent anything
        nothing = await receive_all(silent)
    assert nothing.messages == [] and nothing.close_code == 1000


async def test_max_session_length_finalises_then_closes_1008(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(max_session_s=0.6)
    async with connect(ws_url(server)) as ws:
        await send_audio(ws, pcm16(speech_clips[2][:-16_000]))
        result = await receive_all(ws)
    assert result.close_code == 1008 and result.close_reason == "session too long"
    assert result.types[-3:] == ["transcript.final", "error", "session.ended"]
    assert result.of("error")[0]["code"] == "session_too_long"
    await assert_served(server)


async def test_a_stalled_client_is_closed_and_never_delays_the_others(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(outgoing_queue=8)
    errors = server.metrics.errors
    odd_frame = masked_binary_frame(b"\x01")  # each one earns a (non-fatal) bad_audio error

    async def stall() -> float:
        _, writer = await raw_websocket(server.port)  # it never reads
        writer.write(odd_frame)
        while not errors.labels(code="bad_audio")._value.get():
            await asyncio.sleep(0.01)
        # small kernel buffers on the server side too, so kilobytes (not megabytes) fill them
        [conn] = [c for c in server._connections if c.channel.peer_port == _port(writer)]
        sock = conn.channel.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            async with asyncio.timeout(20.0):
                while not errors.labels(code="client_too_slow")._value.get():
                    writer.write(odd_frame * 200)
                    await writer.drain()
                    await asyncio.sleep(0.005)
        finally:
            writer.transport.abort()
        return errors.labels(code="bad_audio")._value.get()

    async def normal() -> tuple[Result, float]:
        t0 = time.monotonic()
        result = await stream_session(server, pcm16(speech_clips[1]), speed=4.0)
        return result, time.monotonic() - t0

    n_errors, (other, took) = await asyncio.gather(stall(), normal())
    check_clean(other)
    assert took < len(speech_clips[1]) / 16_000 / 4.0 + 2.0
    assert n_errors > 8  # more than the queue holds: the kernel buffers took some
    assert errors.labels(code="client_too_slow")._value.get() == 1
    assert await server.wait_idle(5.0)


def _port(writer: asyncio.StreamWriter) -> int:
    port: int = writer.get_extra_info("sockname")[1]
    return port


async def test_incoming_audio_is_bounded_and_nothing_is_dropped(
    make_server: Any, speech_clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    peak: list[int] = []
    put = queues.Inbox.put_audio

    async def spy(self: queues.Inbox, samples: np.ndarray) -> None:
        await put(self, samples)
        peak.append(self.queued_samples)

    monkeypatch.setattr(queues.Inbox, "put_audio", spy)
    server = await make_server(max_backlog_s=0.5, model_factory=lambda _: SlowModel())
    audio = np.concatenate(speech_clips[:4])
    result = await stream_session(server, pcm16(audio))  # as fast as it can: faster than decoding
    check_clean(result)
    assert 8_000 <= max(peak) <= 8_000 + CHUNK_BYTES // 2  # it filled: 0.5 s, plus one frame
    assert result.final_texts == reference_finals(audio)


class SlowModel(FakeModel):
    """FakeModel that takes 40 ms per decode, like a real model on a slow CPU."""

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        time.sleep(0.04)  # simulated compute, on the worker thread
        return super().decode(request)


async def test_server_side_latency_metrics_are_observed(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    speed = 8.0
    t0 = time.monotonic()  # the clock of the server's event loop (same process)
    result = await stream_session(server, pcm16(speech_clips[5]), speed=speed)
    elapsed = time.monotonic() - t0
    check_clean(result)
    m = server.metrics
    assert _count(m.final_latency) == 1
    # The audio at the final's end was paced out no sooner than end/speed after t0, and the
    # final was sent before the session ended: the latency is measured from that audio's
    # arrival, not from the stream's start (or not at all: observations are clamped at 0).
    (final,) = result.of("transcript.final")
    assert 0 < m.final_latency._sum.get() <= elapsed - final["end"] / speed
    assert _count(m.partial_latency) >= 1
    assert m.audio_seconds._value.get() == pytest.approx(len(speech_clips[5]) / 16_000, abs=0.01)


def _count(histogram: Any) -> float:
    return sum(b.get() for b in histogram._buckets)


async def test_partials_can_be_turned_off(server: Server, speech_clips: list[np.ndarray]) -> None:
    start = {"type": "session.start", "partials": False, "word_timestamps": False}
    result = await stream_session(server, pcm16(speech_clips[3]), start=start)
    check_clean(result)
    assert result.of("transcript.partial") == []
    assert [f["words"] for f in result.of("transcript.final")] == [[]]


async def test_a_prompt_over_the_budget_is_cut_with_a_warning(server: Server) -> None:
    long = " ".join(f"w{i}" for i in range(200))  # FakeModel: 200 tokens
    start = {"type": "session.start", "prompt": long[:1000]}
    result = await session(server, [json.dumps(start), json.dumps({"type": "session.end"})])
    assert result.types == ["session.started", "warning", "session.ended"], result.messages
    warning = result.of("warning")[0]
    assert warning["code"] == "bias_cut" and "the first 159" in warning["message"]


async def test_a_flood_of_flushes_waits_in_the_bounded_backlog(
    make_server: Any, speech_clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    peak: list[int] = []
    put = queues.Inbox.put_command

    async def spy(self: queues.Inbox, command: Any) -> None:
        await put(self, command)
        peak.append(sum(isinstance(i, Flush) for i in self._items))

    monkeypatch.setattr(queues.Inbox, "put_command", spy)
    server = await make_server(model_factory=lambda _: SlowModel())
    audio = speech_clips[2]
    flush = json.dumps({"type": "session.flush"})
    frames: list[str | bytes] = [pcm16(audio), *[flush] * 300, json.dumps({"type": "session.end"})]
    result = await session(server, frames, timeout_s=60)
    check_clean(result)
    assert len(peak) == 301 and max(peak) <= 11  # at most a tenth of the room each
    assert result.final_texts == reference_finals(audio)
    await assert_served(server)
