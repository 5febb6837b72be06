"""The daemon on the real tiny.en: concurrent clients with no cross-talk; SIGTERM on the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path

import numpy as np
import pytest
import speech
from server_helpers import Result, pcm16, receive_all, send_audio, stream_session
from websockets.asyncio.client import connect

from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.textnorm import wer

pytestmark = pytest.mark.slow

SENTENCES = (
    ("en-us", "Please send me the report before the meeting tomorrow morning."),
    ("en-gb", "The children played in the park until it got dark."),
    ("en-us", "We should leave early to avoid the traffic on the highway."),
)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("server-speech")
    return [
        np.concatenate([speech.silence(0.3), speech.espeak(text, d, voice=voice)])
        for voice, text in SENTENCES
    ]


async def test_three_clients_each_get_their_own_words(
    tiny_en_dir: Path, spoken: list[np.ndarray]
) -> None:
    server = Server(ServerConfig(port=0, model=str(tiny_en_dir), threads=1))
    await server.startup()
    try:
        tail = speech.silence(1.0)
        clients = (
            stream_session(server, pcm16(np.concatenate([x, tail])), speed=4.0, timeout_s=120)
            for x in spoken
        )
        results = await asyncio.gather(*clients)
    finally:
        await server.shutdown()
    refs = [text for _, text in SENTENCES]
    for i, result in enumerate(results):
        assert result.close_code == 1000 and result.of("error") == []
        hyp = " ".join(result.final_texts)
        assert wer([refs[i]], [hyp]) < 0.35, hyp
        for j in range(len(refs)):  # nothing of the others' sentences
            if j != i:
                assert wer([refs[j]], [hyp]) > 0.7, (i, j, hyp)


async def serve_subprocess(tiny_en_dir: Path, *argv: str) -> tuple[Process, int]:
    """`streamasr serve` on tiny.en in a process of its own, once it prints its URL: the
    process and its port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMASR_")}
    env.pop("NOTIFY_SOCKET", None)
    base = ["--model", str(tiny_en_dir), "--port", "0", "--threads", "1"]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "streamasr.cli", "serve", *base, *argv],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tiny_en_dir,  # not the checkout: its kernels/ folder must not be importable
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 180)).decode()
        match = re.fullmatch(r"streamasr: serving captions at http://127\.0\.0\.1:(\d+)/.*\n", line)
        assert match, line
    except BaseException:
        proc.kill()
        await proc.communicate()
        raise
    return proc, int(match[1])


async def test_sigterm_mid_utterance_sends_the_final_and_exits_0(
    tiny_en_dir: Path, spoken: list[np.ndarray]
) -> None:
    drain_s = 20.0
    proc, port = await serve_subprocess(tiny_en_dir, "--drain-timeout", str(drain_s))
    try:
        result, exited_after = await _stream_then_sigterm(proc, port, spoken[0])
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert exited_after < drain_s
    assert result.types[-3:] == ["speech.stopped", "transcript.final", "session.ended"], result
    assert result.of("session.ended")[0]["reason"] == "shutdown"
    assert (result.close_code, result.close_reason) == (1001, "server shutting down")
    final = result.final_texts[-1]
    assert wer([SENTENCES[0][1]], [final]) < 0.5, final


async def test_the_debug_log_shows_requests_but_no_token(tiny_en_dir: Path) -> None:
    """At DEBUG, websockets and uvicorn log each request's headers: every way a client can
    carry its token (Bearer, ?token=, Deepgram's subprotocol, Token) is hidden in them."""
    secret = "s3cret-token-that-must-not-leak"
    proc, port = await serve_subprocess(tiny_en_dir, "--token", secret, "--log-level", "debug")
    try:
        base = f"ws://127.0.0.1:{port}"
        for url, kwargs in [
            (f"{base}/v1/stream", {"additional_headers": {"Authorization": f"Bearer {secret}"}}),
            (f"{base}/v1/stream?token={secret}", {}),
            (f"{base}/v1/listen", {"subprotocols": ["token", secret]}),
            (f"{base}/v1/listen", {"additional_headers": {"Authorization": f"Token {secret}"}}),
        ]:
            async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
                await ws.send(bytes(3200))
                await asyncio.wait_for(ws.recv(), 60)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
    log = err.decode()
    assert proc.returncode == 0, log[-2000:]
    assert "/v1/stream?token=***" in log and "authorization: ***" in log.lower(), log[-4000:]
    assert secret not in log


async def _stream_then_sigterm(
    proc: asyncio.subprocess.Process, port: int, clip: np.ndarray
) -> tuple[Result, float]:
    """Stream speech with no pause at its end, SIGTERM once the utterance is open."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await send_audio(ws, pcm16(clip))
        first = [json.loads(await asyncio.wait_for(ws.recv(), 60)) for _ in range(2)]
        assert [m["type"] for m in first] == ["session.started", "speech.started"]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(receive_all(ws), 60)
    await asyncio.wait_for(proc.wait(), 60)
    return Result(first + rest.messages, rest.close_code, rest.close_reason), time.monotonic() - t0
