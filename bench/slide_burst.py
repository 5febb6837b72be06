"""Final latency of a `meeting --listen` producer with and without bursts of slides to OCR.

    python bench/slide_burst.py [--model tiny.en] [--threads 1] [--every 8] [--burst 6]
                                [--corpus DIR]

One producer streams the held-out corpus's 64 s meeting (`long_joe_plain.wav`, Piper's voice,
bench/corpus.py) to an in-process `MeetingListener` over a real WebSocket, in 50 ms frames on
an absolute real-time schedule, as s16le. Condition `none` sends no slides; `burst` sends, every
`--every` seconds of audio, `--burst` slides at once (1280x720 PNGs, each unlike the last, so
each is OCR'd by Tesseract: more than the 8 that may wait are dropped, oldest first). Per
condition the table gives the finals, the final latency p50/p95/max (the instant the final
arrived minus the instant its `end` sample was sent; it includes the endpointer's silence
wait), the slides read and dropped, and the mean OCR seconds of a slide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "meeting"))
from slide_deck import render_slide  # noqa: E402

from streamasr import SAMPLE_RATE  # noqa: E402
from streamasr.meeting.listen import ListenConfig, MeetingListener  # noqa: E402
from streamasr.meeting.ocr import TesseractOcr  # noqa: E402
from streamasr.meeting.slides import SlideReader  # noqa: E402
from streamasr.meeting.terms import extract_terms, tokenizer_rarity  # noqa: E402
from streamasr.models.loader import load_model  # noqa: E402
from streamasr.server.protocol import SessionEnd, SessionStart, SlideMessage  # noqa: E402
from streamasr.server.worker import DecodePool  # noqa: E402

CHUNK = 800  # 50 ms
CORPUS = Path(__file__).resolve().parent / ".corpus" / "v2"
WORDS = ("Budget", "Hiring", "Roadmap", "Security", "Incidents", "Latency", "Storage", "Pricing")


def slide(n: int) -> bytes:
    """Slide `n`, unlike slide n - 1."""
    lines = [f"{WORDS[(n + k) % 8]} {n * 7 + k}" for k in range(2 + n % 4)]
    return render_slide(f"{n}. {WORDS[n % 8]} review", lines)


async def produce(url: str, audio: np.ndarray, every_s: float, burst: int) -> list[float]:
    """Stream `audio` in real time; returns each final's latency."""
    latencies: list[float] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(SessionStart().to_json())
        t0 = time.perf_counter()

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "transcript.final" and message["text"].strip():
                    latencies.append(time.perf_counter() - (t0 + message["end"]))

        reader = asyncio.create_task(receive())
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
        next_burst, shown = every_s, 0
        for start in range(0, pcm.size, CHUNK):
            end = min(start + CHUNK, pcm.size)
            delay = t0 + end / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(pcm[start:end].tobytes())
            if burst and end / SAMPLE_RATE >= next_burst:
                next_burst += every_s
                for _ in range(burst):
                    await ws.send(SlideMessage(slide(shown)).to_json())
                    shown += 1
        await ws.send(SessionEnd().to_json())
        await reader
    return latencies


async def run(model: Any, audio: np.ndarray, every_s: float, burst: int) -> dict[str, Any]:
    rare = tokenizer_rarity(model.encode_text)
    reader = SlideReader(TesseractOcr(), lambda text: extract_terms(text, rare))
    records: list[dict[str, Any]] = []
    pool = DecodePool(1)
    with tempfile.TemporaryDirectory() as out:
        server = MeetingListener(ListenConfig(Path(out)), model, records.append, pool, reader)
        await server.start()
        try:
            latencies = await produce(server.url, audio, every_s, burst)
        finally:
            await server.stop()
            pool.shutdown()
            reader.close()
    read = [r for r in records if r["type"] == "slide"]
    return {
        "latencies": latencies,
        "read": len(read),
        "dropped": reader.dropped,
        "ocr_s": float(np.mean([r["ocr_s"] for r in read])) if read else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=float, default=8.0, help="seconds of audio between bursts")
    p.add_argument("--burst", type=int, default=6, help="slides in a burst")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    audio, rate = sf.read(args.corpus / "long_joe_plain.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    print(
        f"model {args.model}, {audio.size / SAMPLE_RATE:.1f} s of audio, torch threads "
        f"{args.threads}, bursts of {args.burst} slides every {args.every:g} s\n"
    )
    print(
        "| condition | finals | final p50 s | final p95 s | final max s | slides read | "
        "dropped | OCR s/slide |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, burst in (("none", 0), ("burst", args.burst)):
        r = asyncio.run(run(model, audio, args.every, burst))
        lat = np.array(r["latencies"])
        print(
            f"| {name} | {lat.size} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 95):.2f}"
            f" | {lat.max():.2f} | {r['read']} | {r['dropped']} | {r['ocr_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
