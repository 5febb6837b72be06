"""Every front door at once on one daemon (real tiny.en): a protocol v1 stream, an OpenAI
Realtime stream, a Deepgram stream and an OpenAI REST upload, each through its client, each
with its own sentence; each gets its own transcript and nothing of the others'."""

from __future__ import annotations

import asyncio
import base64
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
from server_helpers import deepgram_sdk_client, pcm16, pcm24, stream_session, wav_bytes

from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.textnorm import wer

pytestmark = pytest.mark.slow

TOKEN = "any-key"  # no token is set: every client key is accepted
SAID = (
    "Please send me the report before the meeting tomorrow morning.",
    "The children played in the park until it got dark.",
    "We should leave early to avoid the traffic on the highway.",
    "Can you open the window in the kitchen please?",
)
PACE_S = 0.1 / 3  # a 100 ms frame every 33 ms: 3x real time


async def v1_client(server: Server, audio: np.ndarray) -> str:
    result = await stream_session(server, pcm16(audio), speed=3.0, timeout_s=120)
    assert result.close_code == 1000, result.messages[-3:]
    return " ".join(result.final_texts)


async def realtime_client(server: Server, audio: np.ndarray) -> str:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)
    texts: list[str] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        )
        data = pcm24(audio)
        for i in range(0, len(data), 4800):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(data[i : i + 4800]).decode()
            )
            await asyncio.sleep(PACE_S)
        await conn.input_audio_buffer.commit()
        async with asyncio.timeout(120):
            async for event in conn:
                if event.type == "conversation.item.input_audio_transcription.completed":
                    texts.append(event.transcript)
                    break
                assert event.type != "error", event
    return " ".join(texts)


async def deepgram_client(server: Server, audio: np.ndarray) -> str:
    client = deepgram_sdk_client(server.port, TOKEN)
    finals: list[str] = []
    with warnings.catch_warnings():  # the SDK's async client uses websockets.legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        async with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=16000, smart_format=True
        ) as conn:

            async def read() -> None:
                async for message in conn:
                    if getattr(message, "type", None) == "Results" and message.is_final:
                        finals.append(message.channel.alternatives[0].transcript)

            reader = asyncio.create_task(read())
            data = pcm16(audio)
            for i in range(0, len(data), 3200):
                await conn.send_media(data[i : i + 3200])
                await asyncio.sleep(PACE_S)
            await conn.send_close_stream()
            await asyncio.wait_for(reader, 120)
    return " ".join(t for t in finals if t)


async def rest_client(server: Server, audio: np.ndarray) -> str:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)
    file = ("speech.wav", wav_bytes(audio), "audio/wav")
    reply = await client.audio.transcriptions.create(model="whisper-1", file=file)
    return reply.text


async def test_four_apis_at_once_each_get_their_own_words(
    tiny_en_dir: Path, tmp_path: Path
) -> None:
    clips = [
        np.concatenate([speech.silence(0.3), speech.espeak(text, tmp_path), speech.silence(1.2)])
        for text in SAID
    ]
    server = Server(ServerConfig(port=0, model=str(tiny_en_dir), threads=1, max_sessions=4))
    await server.startup()
    clients: list[Any] = [v1_client, realtime_client, deepgram_client, rest_client]
    try:
        heard = await asyncio.gather(
            *(client(server, clip) for client, clip in zip(clients, clips, strict=True))
        )
        assert server.active_sessions == 0
    finally:
        await server.shutdown()
    for i, text in enumerate(heard):
        assert wer([SAID[i]], [text]) < 0.35, (clients[i].__name__, text)
        for j, other in enumerate(SAID):
            if j != i:
                assert wer([other], [text]) > 0.7, (clients[i].__name__, j, text)
