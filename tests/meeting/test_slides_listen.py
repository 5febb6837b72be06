"""Slides pushed by a `meeting --listen` producer, with the weightless FakeModel: the OCR thread
never holds up a final, and every slide read is in the meeting's notes."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
from fake_model import FakeModel
from slide_deck import render_slide
from websockets.asyncio.client import ClientConnection, connect

from streamasr.meeting.listen import ListenConfig, MeetingListener
from streamasr.meeting.slides import SlideReader
from streamasr.meeting.store import read_finals, read_slides
from streamasr.server.protocol import SessionEnd, SessionFlush, SessionStart, SlideMessage
from streamasr.server.worker import DecodePool

pytestmark = pytest.mark.timeout(120)

TOPICS = ("Budget", "Hiring", "Roadmap", "Security", "Incidents", "Latency", "Storage", "Pricing")


class GatedOcr:
    """An OCR that reads nothing until its gate opens: as slow as OCR can be."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def read(self, image: object) -> str:
        if not self.gate.wait(60):
            raise TimeoutError("the gate never opened")
        return "Kubernetes Roadmap"


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type `kind`."""
    seen = []
    async with asyncio.timeout(60):
        while not seen or seen[-1]["type"] != kind:
            seen.append(json.loads(await ws.recv()))
    return seen


async def test_a_burst_of_slides_with_ocr_stuck_holds_up_no_final(
    tmp_path: Path, sentences: list[np.ndarray]
) -> None:
    ocr = GatedOcr()
    reader = SlideReader(ocr, lambda text: [])  # FakeModel's tokenizer knows no real words
    records: list[dict[str, Any]] = []
    pool = DecodePool(1)
    config = ListenConfig(tmp_path / "meetings")
    server = MeetingListener(config, FakeModel(), records.append, pool, reader)  # type: ignore[arg-type]
    await server.start()
    try:
        async with connect(server.url, max_size=None) as ws:
            await ws.send(SessionStart().to_json())
            for n in range(12):  # a burst: more than the reader keeps waiting
                image = render_slide(f"{n}. {TOPICS[n % 8]}", list(TOPICS[: 1 + n % 4]))
                await ws.send(SlideMessage(image, t=0.1 * n).to_json())
            await ws.send(pcm16(np.concatenate([sentences[0], speech.silence(1.0)])))
            await ws.send(SessionFlush().to_json())
            got = await until(ws, "transcript.final")  # with the OCR still stuck
            assert not ocr.gate.is_set() and got[-1]["text"].strip()
            assert all(m["type"] != "error" for m in got), got
            ocr.gate.set()
            await ws.send(SessionEnd().to_json())
            await until(ws, "session.ended")
    finally:
        ocr.gate.set()
        await server.stop()
        pool.shutdown()
        reader.close()
    ended = [r for r in records if r["type"] == "meeting.ended"]
    assert len(ended) == 1
    meeting = Path(ended[0]["dir"])
    slides = read_slides(meeting)
    reported = [r for r in records if r["type"] == "slide"]
    assert len(slides) == len(reported) >= 2, "the slides read are in the notes"
    assert len(slides) + reader.dropped + reader.unchanged == 12
    assert [s.t for s in slides] == sorted(s.t for s in slides)
    assert all((meeting / s.image).is_file() for s in slides)
    assert read_finals(meeting), "the final is in the notes too"


async def test_without_ocr_a_slide_is_refused_and_the_audio_goes_on(
    tmp_path: Path, sentences: list[np.ndarray]
) -> None:
    records: list[dict[str, Any]] = []
    pool = DecodePool(1)
    server = MeetingListener(ListenConfig(tmp_path / "m"), FakeModel(), records.append, pool)  # type: ignore[arg-type]
    await server.start()
    try:
        async with connect(server.url, max_size=None) as ws:
            await ws.send(SessionStart().to_json())
            frame = {"type": "slide", "image": base64.b64encode(render_slide("A", ["b"])).decode()}
            await ws.send(json.dumps(frame))
            await ws.send(pcm16(np.concatenate([sentences[0], speech.silence(1.0)])))
            await ws.send(SessionEnd().to_json())
            got = await until(ws, "session.ended")
    finally:
        await server.stop()
        pool.shutdown()
    errors = [m for m in got if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["slide_refused"] and not errors[0]["fatal"]
    assert "reads no slides" in errors[0]["message"]
    assert any(m["type"] == "transcript.final" and m["text"].strip() for m in got)
