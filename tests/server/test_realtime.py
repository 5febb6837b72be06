"""OpenAI Realtime transcription at /v1/realtime: the official SDK on real tiny.en speech, and
the event flow, formats and errors with FakeModel."""

from __future__ import annotations

import asyncio
import base64
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
import speech
from fake_model import FakeModel
from server_helpers import assert_served, pcm24, reference_finals
from websockets.asyncio.client import ClientConnection, connect

from streamasr.audio.pcm import decode_pcm
from streamasr.engine.driver import LocalSession
from streamasr.events import TranscriptFinal
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.textnorm import wer

TOKEN = "realtime-test-token"
SAID = (
    "Please send me the report before the meeting tomorrow morning.",
    "The children played in the park until it got dark.",
)


def mulaw8k(x: np.ndarray) -> bytes:
    """16 kHz float audio as 8 kHz G.711 mu-law (the stdlib encoder)."""
    y = soxr.resample(x, 16_000, 8_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # the reference encoder (stdlib until Python 3.13)

        return audioop.lin2ulaw((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes(), 2)


def appends(data: bytes, chunk: int = 4800) -> list[str]:
    """`input_audio_buffer.append` events of `chunk` bytes (4800: 100 ms of 24 kHz PCM)."""
    return [
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(data[i : i + chunk]).decode(),
            }
        )
        for i in range(0, len(data), chunk)
    ]


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"


async def events_until(ws: ClientConnection, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Events received until the `count`-th of type `kind`."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while sum(e["type"] == kind for e in got) < count:
            event = json.loads(await ws.recv())
            assert isinstance(event.get("event_id"), str) and event["event_id"].startswith("event_")
            got.append(event)
    return got


async def test_server_vad_items_in_order(server: Server, speech_clips: list[np.ndarray]) -> None:
    audio = np.concatenate(speech_clips[:2])
    want = words(reference_finals(audio))  # FakeModel: one word per 0.4 s of each utterance
    async with connect(url(server)) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "transcription"
        assert created["session"]["audio"]["input"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        for event in appends(pcm24(audio)):
            await ws.send(event)
        got = await events_until(ws, "conversation.item.input_audio_transcription.completed", 2)
    kinds = [e["type"] for e in got if not e["type"].endswith(".delta")]
    assert (
        kinds
        == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
        ]
        * 2
    )
    started = [e for e in got if e["type"] == "input_audio_buffer.speech_started"]
    committed = [e for e in got if e["type"] == "input_audio_buffer.committed"]
    completed = [e for e in got if e["type"].endswith(".completed")]
    assert [c["item_id"] for c in committed] == [s["item_id"] for s in started]
    assert [c["item_id"] for c in completed] == [s["item_id"] for s in started]
    assert committed[0]["previous_item_id"] is None
    assert committed[1]["previous_item_id"] == committed[0]["item_id"]
    heard = words([c["transcript"] for c in completed])
    assert all(abs(h - w) <= 1 for h, w in zip(heard, want, strict=True)), (heard, want)
    assert all(c["usage"]["type"] == "duration" and c["usage"]["seconds"] > 0 for c in completed)
    assert started[0]["audio_start_ms"] < started[1]["audio_start_ms"]
    for item in (s["item_id"] for s in started):
        deltas = "".join(
            e["delta"] for e in got if e["type"].endswith(".delta") and e["item_id"] == item
        )
        final = next(c["transcript"] for c in completed if c["item_id"] == item)
        assert final.startswith(deltas)  # append-only, and never ahead of the final
    await assert_served(server)


async def test_manual_commits_clear_and_g711(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    cleared, kept = mulaw8k(speech_clips[1]), mulaw8k(speech_clips[3])
    update = {
        "type": "transcription_session.update",
        "session": {"input_audio_format": "g711_ulaw", "turn_detection": None},
    }
    async with connect(url(server)) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps(update))
        updated = json.loads(await ws.recv())
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_format"] == "g711_ulaw"
        assert updated["session"]["turn_detection"] is None
        for event in appends(cleared, 800):  # 100 ms of 8 kHz G.711 each
            await ws.send(event)
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
        for event in appends(kept, 800):
            await ws.send(event)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        got = await events_until(ws, "conversation.item.input_audio_transcription.completed")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # nothing new since
        empty = json.loads(await ws.recv())
    assert [e["type"] for e in got] == [
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    heard = got[-1]["transcript"]
    assert heard == got[1]["delta"] and heard
    # a local session fed the same audio, flushed where the clear and the commit were
    local = LocalSession(FakeModel(), sample_rate=8_000)
    local.feed(decode_pcm(cleared, encoding="pcm_mulaw", channels=1))
    local.flush()
    after = local.feed(decode_pcm(kept, encoding="pcm_mulaw", channels=1)) + local.flush()
    kept_text = " ".join(e.text.strip() for e in after if isinstance(e, TranscriptFinal))
    assert heard == kept_text  # the cleared speech added nothing
    assert empty["type"] == "error"
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_bad_events_get_errors_and_the_session_goes_on(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    bad = [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"type": "response.create"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": "!!!"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": 5}),
        json.dumps({"type": "session.update", "session": {"type": "realtime"}}),
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}},
            }
        ),
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"language": "xx"}}}},
            }
        ),
        "[" * 100_000,
        json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": []}}),
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"transcription": {"prompt": "\ud800"}}}},
            }
        ),
    ]
    async with connect(url(server)) as ws:
        await ws.recv()  # session.created
        for event in bad:
            await ws.send(event)
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error", (event[:80], reply)
            assert set(reply["error"]) >= {"type", "code", "message", "param"}
        await ws.send(b"\x00\x01")  # binary frames are not part of this API
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_event"
        for event in appends(pcm24(speech_clips[0][:8000])):
            await ws.send(event)
        change = {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        }
        await ws.send(json.dumps(change))
        refused = json.loads(await ws.recv())
        assert refused["type"] == "error" and "cannot change" in refused["error"]["message"]
        for event in appends(pcm24(speech_clips[0][8000:])):
            await ws.send(event)
        got = await events_until(ws, "conversation.item.input_audio_transcription.completed")
    assert got[-1]["transcript"].startswith("w0")
    await assert_served(server)


async def test_unauthorized_realtime_is_refused(make_server: Any) -> None:
    from websockets.exceptions import InvalidStatus

    server = await make_server(token=TOKEN)
    with pytest.raises(InvalidStatus) as refused:
        await connect(url(server))
    assert refused.value.response.status_code == 401
    async with connect(url(server), additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


@pytest.mark.slow
async def test_the_openai_sdk_transcribes_a_live_stream(tiny_en_dir: Path, tmp_path: Path) -> None:
    from openai import AsyncOpenAI

    clips = [speech.espeak(text, tmp_path) for text in SAID]
    audio = np.concatenate(
        [speech.silence(0.3), clips[0], speech.silence(1.2), clips[1], speech.silence(1.5)]
    )
    server = Server(ServerConfig(port=0, model=str(tiny_en_dir), threads=1, token=TOKEN))
    await server.startup()
    events: list[Any] = []
    try:
        client = AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "whisper-1", "language": "en"},
                            "turn_detection": {"type": "server_vad"},
                        }
                    },
                }
            )
            data = pcm24(audio)
            for i in range(0, len(data), 4800):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(data[i : i + 4800]).decode()
                )
                await asyncio.sleep(0.025)  # 4x real time
            async with asyncio.timeout(120):
                async for event in conn:
                    events.append(event)
                    done = [e for e in events if e.type.endswith("transcription.completed")]
                    if len(done) == 2:
                        break
    finally:
        await server.shutdown()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"]
    done = [e for e in events if e.type.endswith("transcription.completed")]
    for said, event in zip(SAID, done, strict=True):
        assert wer([said], [event.transcript]) < 0.35, event.transcript
        assert event.usage.type == "duration" and event.usage.seconds > 1
    deltas = [e for e in events if e.type.endswith("transcription.delta")]
    assert deltas and all(e.item_id in {d.item_id for d in done} for e in deltas)
