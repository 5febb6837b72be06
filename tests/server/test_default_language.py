"""`serve --language`/`--task`: the language and task of every session that names none, on
every API, while a session that names one keeps its own."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
from fake_model import MultilingualFakeModel as Multilingual
from server_helpers import pcm16, pcm24, session, wav_bytes
from websockets.asyncio.client import connect

from streamasr.server.app import Server
from streamasr.server.config import ConfigError
from streamasr.server.deepgram import LISTEN_PATH

END = json.dumps({"type": "session.end"})


async def started(
    server: Server, speech: np.ndarray, **fields: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """session.started and the finals of one v1 session of `speech` with `fields` in its start."""
    start = json.dumps({"type": "session.start", **fields})
    result = await session(server, [start, pcm16(speech), END])
    return result.of("session.started")[0], result.of("transcript.final")


@pytest.fixture
def model() -> Multilingual:
    return Multilingual()


@pytest.fixture
def speech(speech_clips: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([speech_clips[0], np.zeros(16_000, np.float32)])


async def test_v1_sessions_take_the_server_default_unless_they_name_one(
    make_server: Any, model: Multilingual, speech: np.ndarray
) -> None:
    server = await make_server(model_factory=lambda _: model, language="en", task="translate")
    model.asked.clear()  # the warm-up's
    begun, finals = await started(server, speech)
    assert (begun["language"], begun["task"]) == ("en", "translate")
    assert finals and {f["language"] for f in finals} == {"en"}
    assert set(model.asked) == {("en", "translate")}
    model.asked.clear()
    begun, finals = await started(server, speech, language="auto", task="transcribe")
    assert (begun["language"], begun["task"]) == ("auto", "transcribe")
    assert finals and {f["language"] for f in finals} == {"es"}
    assert set(model.asked) == {("auto", "transcribe")}


async def test_rest_deepgram_and_realtime_take_the_server_default(
    make_server: Any, model: Multilingual, speech: np.ndarray
) -> None:
    server = await make_server(model_factory=lambda _: model, language="en")
    model.asked.clear()  # the warm-up's
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        files = {"file": ("speech.wav", wav_bytes(speech), "audio/wav")}
        fields = {"model": "whisper-1", "response_format": "verbose_json"}
        reply = await client.post("/v1/audio/transcriptions", files=files, data=fields)
        assert reply.status_code == 200 and reply.json()["language"] == "english"
        named = await client.post(
            "/v1/audio/transcriptions", files=files, data={**fields, "language": "es"}
        )
        assert named.json()["language"] == "spanish"
    assert model.asked and {language for language, _ in model.asked} == {"en", "es"}

    model.asked.clear()
    query = "?encoding=linear16&sample_rate=16000"
    async with connect(f"ws://127.0.0.1:{server.port}{LISTEN_PATH}{query}") as ws:
        await ws.send(pcm16(speech))
        await ws.send(json.dumps({"type": "CloseStream"}))
        replies = [json.loads(m) async for m in ws]
    results = [r for r in replies if r["type"] == "Results"]
    assert results and {r["channel"]["alternatives"][0]["languages"][0] for r in results} == {"en"}
    assert {language for language, _ in model.asked} == {"en"}

    model.asked.clear()
    async with connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        await ws.recv()  # session.created
        data = pcm24(speech)
        for i in range(0, len(data), 4800):
            chunk = base64.b64encode(data[i : i + 4800]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        while json.loads(await ws.recv())["type"] != (
            "conversation.item.input_audio_transcription.completed"
        ):
            pass
    assert {language for language, _ in model.asked} == {"en"}


async def test_a_default_the_model_does_not_speak_stops_the_start(make_server: Any) -> None:
    server = await make_server(language="es", start=False)  # FakeModel speaks en only
    with pytest.raises(ConfigError, match="--language/--task: model fake does not speak"):
        await server.startup()
    server = await make_server(model_factory=lambda _: Multilingual(), task="translate")
    assert server.state == "ready"


async def test_models_names_the_default_language(make_server: Any) -> None:
    server = await make_server(model_factory=lambda _: Multilingual(), language="es")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        (entry,) = (await client.get("/v1/models")).json()["data"]
    assert (entry["languages"], entry["language"]) == (["en", "es"], "es")
