"""`streamasr serve --model <GLM-ASR dir | Tiny Audio dir>`: the same protocol as Whisper."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import builders
import numpy as np
import pytest
from websockets.asyncio.client import connect

from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.events import TranscriptFinal
from streamasr.models.loader import load_model
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("glm-serve")
    glm = builders.build_glmasr(root / "glmasr", std=0.5)
    qwen = builders.build_qwen3(root / "qwen3", std=2.0)
    tiny = builders.build_tiny_audio(root / "tiny-audio", glmasr_dir=glm, qwen3_dir=qwen, std=2.0)
    return {"glmasr": glm, "tinyaudio": tiny}


@pytest.fixture(scope="module")
def speech_audio(sentences: list[np.ndarray]) -> np.ndarray:
    silence = np.zeros(12800, dtype=np.float32)
    return np.concatenate([silence, sentences[0], silence, sentences[1], silence])


def session_finals(model_dir: Path, audio: np.ndarray, config: SessionConfig) -> list[str]:
    session = LocalSession(load_model(str(model_dir)), config)
    events = []
    for i in range(0, len(audio), 1600):
        events += session.feed(audio[i : i + 1600])
    events += session.close()
    return [e.text for e in events if isinstance(e, TranscriptFinal)]


@pytest.mark.parametrize("family", ["glmasr", "tinyaudio"])
@pytest.mark.parametrize("encoder", ["auto", "chunked"])
async def test_daemon_streams_glm_family_transcripts(
    dirs: dict[str, Path], speech_audio: np.ndarray, family: str, encoder: str
) -> None:
    model_dir = dirs[family]
    config = ServerConfig(port=0, model=str(model_dir), threads=1, encoder=encoder)
    server = Server(config)
    await server.startup()
    try:
        pcm = (np.clip(speech_audio, -1, 1) * 32767).round().astype("<i2").tobytes()
        messages = []
        async with asyncio.timeout(120):
            async with connect(f"ws://127.0.0.1:{server.port}/v1/stream") as ws:
                for i in range(0, len(pcm), 3200):
                    await ws.send(pcm[i : i + 3200])
                await ws.send(json.dumps({"type": "session.end"}))
                async for raw in ws:
                    messages.append(json.loads(raw))
                assert ws.close_code == 1000
    finally:
        await server.shutdown()
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "session.started" and kinds[-1] == "session.ended"
    assert messages[0]["model"] == str(model_dir)  # the --model it was started with
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    finals = [m["text"] for m in messages if m["type"] == "transcript.final"]
    # the dequantised PCM the daemon heard, decoded by a session of its own
    heard = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert finals == session_finals(model_dir, heard, SessionConfig(encoder=encoder))
    assert len(finals) == 2 and all(finals)
