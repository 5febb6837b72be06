"""OpenAI's audio REST API on the daemon: formats, streaming, limits and errors (FakeModel), and
the official `openai` SDK on real tiny.en speech."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import speech
from fake_model import FakeModel
from server_helpers import assert_served, dequantized, reference_finals, wav_bytes

from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.textnorm import wer

TOKEN = "rest-api-test-token"


async def post(
    server: Server,
    audio: bytes | None,
    path: str = "/v1/audio/transcriptions",
    token: str | None = None,
    **fields: Any,
) -> httpx.Response:
    files = {"file": ("speech.wav", audio, "audio/wav")} if audio is not None else None
    data: dict[str, Any] = {"model": "whisper-1", **fields}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as c:
        if files is None:  # still multipart: a form without the file
            return await c.post(path, files={"model": (None, "whisper-1")}, headers=headers)
        return await c.post(path, files=files, data=data, headers=headers)


def expected_text(audio: np.ndarray) -> str:
    """What FakeModel says for the same audio read back from 16-bit WAV."""
    return " ".join(t.strip() for t in reference_finals(audio))


async def test_every_response_format(server: Server, speech_clips: list[np.ndarray]) -> None:
    audio = np.concatenate(speech_clips[:3])
    data = wav_bytes(audio)
    want = expected_text(audio)
    assert want.count("w0") == 3, want  # three utterances

    reply = await post(server, data)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] == want
    assert body["usage"] == {"type": "duration", "seconds": int(np.ceil(audio.size / 16_000))}

    reply = await post(server, data, response_format="text")
    assert reply.text == want + "\n"

    srt = (await post(server, data, response_format="srt")).text
    assert srt.startswith("1\n00:00:00,") and srt.count(" --> ") == 3
    vtt = (await post(server, data, response_format="vtt")).text
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == 3

    reply = await post(
        server, data, response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    )
    verbose = reply.json()
    assert verbose["task"] == "transcribe" and verbose["text"] == want
    assert verbose["duration"] == pytest.approx(audio.size / 16_000, abs=1e-3)
    assert "segments" not in verbose  # only the granularity asked for
    assert " ".join(w["word"] for w in verbose["words"]) == want
    starts = [w["start"] for w in verbose["words"]]
    assert starts == sorted(starts) and verbose["words"][-1]["end"] <= verbose["duration"]

    verbose = (await post(server, data, response_format="verbose_json")).json()
    segments = verbose["segments"]
    assert [s["id"] for s in segments] == [0, 1, 2]
    assert " ".join(s["text"] for s in segments) == want
    assert all(s["start"] < s["end"] for s in segments)
    await assert_served(server)


async def test_streamed_deltas_add_up_to_the_text(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    audio = np.concatenate(speech_clips[:3])
    reply = await post(server, wav_bytes(audio), stream="true")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in reply.text.split("\n\n")
        if line.startswith("data: ")
    ]
    kinds = [e["type"] for e in events]
    assert kinds == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"]
    assert events[-1]["text"] == expected_text(audio)
    assert events[-1]["usage"]["type"] == "duration"


async def test_other_formats_and_rates_are_read(
    server: Server, sentences: list[np.ndarray]
) -> None:
    import soxr

    audio = np.concatenate([speech.silence(0.3), sentences[0], speech.silence(1.0)])
    at_44k = soxr.resample(audio, 16_000, 44_100)
    flac = (await post(server, wav_bytes(at_44k, 44_100, "FLAC"))).json()
    wav = (await post(server, wav_bytes(audio))).json()
    assert flac["text"] and len(flac["text"].split()) == len(wav["text"].split())


async def test_bad_requests_get_openai_errors_and_others_are_served(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(max_upload_bytes=200_000, token=TOKEN)
    data = wav_bytes(speech_clips[0])

    async def error(reply: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
        assert reply.status_code == status, reply.text
        err: dict[str, Any] = reply.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert err["param"] == param
        return err

    assert (await post(server, data)).status_code == 401  # no token
    await error(await post(server, None, token=TOKEN), 400, "file")
    garbage = await error(await post(server, b"\x00garbage" * 100, token=TOKEN), 400, "file")
    assert garbage["code"] == "invalid_audio" and "speech.wav" in garbage["message"]
    docx = await post(server, data, token=TOKEN, response_format="docx")
    await error(docx, 400, "response_format")
    await error(await post(server, data, token=TOKEN, temperature="hot"), 400, "temperature")
    err = await error(await post(server, data, token=TOKEN, language="xx"), 400, "language")
    assert err["code"] == "unsupported_language"
    # FakeModel transcribes English only: no translations
    await error(await post(server, data, "/v1/audio/translations", token=TOKEN), 400, "model")
    big = wav_bytes(np.concatenate(speech_clips))
    err = await error(await post(server, big, token=TOKEN), 413, "file")
    assert "200000 bytes" in err["message"]
    ok = await post(server, data, token=TOKEN)
    assert ok.status_code == 200 and ok.json()["text"] == expected_text(speech_clips[0])
    assert server.active_sessions == 0


async def test_a_rest_job_takes_a_session_place(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    gate = threading.Event()

    class GatedModel(FakeModel):
        def decode(self, request: Any) -> Any:
            gate.wait(30)  # an inference thread waits for the test
            return super().decode(request)

    gate.set()  # let the warm-up through
    server = await make_server(max_sessions=1, model_factory=lambda _: GatedModel())
    gate.clear()
    first = asyncio.create_task(post(server, wav_bytes(speech_clips[0])))
    while server.active_sessions == 0:
        await asyncio.sleep(0.01)
    busy = await post(server, wav_bytes(speech_clips[0]))
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "server_busy"
    gate.set()
    assert (await first).status_code == 200
    assert server.active_sessions == 0


@pytest.mark.slow
async def test_the_openai_sdk_transcribes_a_file(tiny_en_dir: Path, tmp_path: Path) -> None:
    from openai import AsyncOpenAI

    said = "Please send me the report before the meeting tomorrow morning."
    clip = speech.espeak(said, tmp_path)
    audio = np.concatenate([speech.silence(0.5), clip, speech.silence(0.8), clip])
    server = Server(ServerConfig(port=0, model=str(tiny_en_dir), threads=1, token=TOKEN))
    await server.startup()
    try:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)
        file = ("speech.wav", wav_bytes(dequantized(audio)), "audio/wav")
        verbose = await client.audio.transcriptions.create(
            model="whisper-1",
            file=file,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=file, stream=True
        )
        events = [event async for event in stream]
        models = await client.models.list()
    finally:
        await server.shutdown()
    assert wer([f"{said} {said}"], [verbose.text]) < 0.2, verbose.text
    assert verbose.language == "english" and verbose.words and verbose.segments
    assert len(verbose.segments) == 2
    assert verbose.words[0].start < 1.0 < verbose.words[-1].end
    assert events[-1].type == "transcript.text.done" and events[-1].text == verbose.text
    assert "".join(e.delta for e in events[:-1]) == verbose.text
    assert len(models.data) == 1 and models.data[0].object == "model"
