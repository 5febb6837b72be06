"""The daemon's app under another ASGI host: uvicorn's own command line with `create_app`, its
lifespan loading the real tiny.en, serving REST and protocol v1, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import speech
from server_helpers import pcm16, receive_all, send_audio
from websockets.asyncio.client import connect

from streamasr.textnorm import wer

pytestmark = pytest.mark.slow

SAID = "Please send me the report before the meeting tomorrow morning."


async def test_uvicorn_cli_serves_the_app(tiny_en_dir: Path, tmp_path: Path) -> None:
    clip = np.concatenate([speech.silence(0.3), speech.espeak(SAID, tmp_path), speech.silence(1.0)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMASR_")}
    env.update(STREAMASR_MODEL=str(tiny_en_dir), STREAMASR_THREADS="1", STREAMASR_MAX_SESSIONS="2")
    argv = ["-m", "uvicorn", "--factory", "streamasr.server.app:create_app", "--port", "0"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,  # not the checkout: its kernels/ folder must not be importable
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        async with asyncio.timeout(180):
            while not (
                match := re.search(r"running on http://127\.0\.0\.1:(\d+)", log[-1] if log else "")
            ):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(log)
                log.append(line)
        port = int(match[1])
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            health = await client.get("/healthz")
            assert health.status_code == 200 and health.text == "ok\n"  # loaded at startup
            buffer = io.BytesIO()
            sf.write(buffer, clip, 16_000, format="WAV")
            files = {"file": ("speech.wav", buffer.getvalue(), "audio/wav")}
            reply = await client.post("/v1/audio/transcriptions", files=files)
            assert reply.status_code == 200, reply.text
            assert wer([SAID], [reply.json()["text"]]) < 0.35, reply.text
            spec = (await client.get("/openapi.json")).json()
            assert {"/v1/audio/transcriptions", "/v1/realtime", "/v1/listen"} <= set(spec["paths"])
        async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
            await send_audio(ws, pcm16(clip))
            await ws.send(json.dumps({"type": "session.end"}))
            result = await receive_all(ws)
        assert result.close_code == 1000
        assert wer([SAID], [" ".join(result.final_texts)]) < 0.35, result.final_texts
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rest = (await proc.stderr.read()).decode()
    # uvicorn shuts down (our lifespan drains and stops), then re-raises the signal it caught
    assert proc.returncode == -signal.SIGTERM, "".join(log) + rest
    assert "Application shutdown complete." in rest, rest
