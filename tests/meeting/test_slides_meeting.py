"""`streamasr meeting --input WAV --slides DIR` end to end, with no network: espeak-ng speech full
of rare names, slides rendered with those names, Tesseract, tiny.en."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import speech
from slide_deck import DeckSlide

from streamasr import SAMPLE_RATE
from streamasr.textnorm import normalize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Written for this test; bench/slides.py uses bench/biasing_texts.py's sentences instead.
DECK = (
    DeckSlide(
        "Welcome",
        ("Bartholomew Okafor", "Terraform", "Ingrid Halvorsen", "Grafana"),
        (
            "Thank you, Bartholomew Okafor, for joining the call about Terraform.",
            "Next, Ingrid Halvorsen will show the Grafana dashboards.",
        ),
    ),
    DeckSlide(
        "Field Trials",
        ("Tegucigalpa", "Ouagadougou", "Doctor Nakagawa", "levetiracetam"),
        (
            "The pilot runs in Tegucigalpa and Ouagadougou this spring.",
            "Doctor Nakagawa prescribed levetiracetam for the seizures.",
        ),
    ),
)
TERMS = ("Okafor", "Terraform", "Halvorsen", "Grafana", "Tegucigalpa", "Ouagadougou")
TERMS += ("Nakagawa", "levetiracetam")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """The meeting's audio, its slides folder, and each slide's time (0.5 s before its first
    sentence)."""
    directory = tmp_path_factory.mktemp("replay")
    slides = directory / "slides"
    slides.mkdir()
    parts, t, times = [speech.silence(1.0)], 1.0, []
    for n, slide in enumerate(DECK, start=1):
        times.append(round(t - 0.5, 2))
        (slides / f"{times[-1]:07.2f}-part{n}.png").write_bytes(slide.png())
        for sentence in slide.sentences:
            said = speech.espeak(sentence, directory)
            parts += [said, speech.silence(1.2)]
            t += said.size / SAMPLE_RATE + 1.2
    wav = directory / "meeting.wav"
    sf.write(wav, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return wav, slides, times


def meeting(wav: Path, slides: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "streamasr.cli", "meeting", "--input", str(wav)]
        + ["--slides", str(slides), "--out", str(out), *extra],
        capture_output=True,
        cwd=out.parent,  # not the checkout: its kernels/ folder must not be importable
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


@contextlib.contextmanager
def recording(args: list[str], cwd: Path, stdin: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """`streamasr meeting ARGS` as a subprocess, killed if it outlives TIMEOUT_S."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamasr.cli", "meeting", *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=cwd,  # not the checkout: its kernels/ folder must not be importable
    )
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()


def as_written(record: dict[str, Any]) -> dict[str, Any]:
    """A slide record on stdout as slides.jsonl holds it."""
    return {k: v for k, v in record.items() if k not in ("meeting", "ocr_s")}


def term_hits(records: list[dict[str, Any]]) -> int:
    said = " ".join(normalize(" ".join(r["text"] for r in finals(records))))
    return sum(" ".join(normalize(term)) in said for term in TERMS)


def finals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "transcript.final" and r["text"].strip()]


def test_slides_land_at_their_times_and_their_names_are_heard(
    replay: tuple[Path, Path, list[float]], tmp_path: Path, tiny_en_dir: Path
) -> None:
    wav, slides, times = replay
    model = ("--model", str(tiny_en_dir))
    biased = meeting(wav, slides, tmp_path / "biased", *model)
    plain = meeting(wav, slides, tmp_path / "plain", *model, "--slide-terms", "0")

    (ended,) = [r for r in biased if r["type"] == "meeting.ended"]
    notes = Path(ended["dir"])
    reported = [r for r in biased if r["type"] == "slide"]
    lines = [json.loads(line) for line in (notes / "slides.jsonl").read_text().splitlines()]
    assert [as_written(r) for r in reported] == lines
    assert [line["t"] for line in lines] == times
    for line, path in zip(lines, sorted(slides.iterdir()), strict=True):
        assert (notes / line["image"]).read_bytes() == path.read_bytes()
        assert "Ouagadougou" in line["text"] or "Okafor" in line["text"]
    md = (notes / "transcript.md").read_text()
    first, second = (md.index(f"Slide** ([{line['image']}]") for line in lines)
    spoken = [md.index(r["text"].strip()) for r in finals(biased)]
    assert first < md.index("> Welcome") < spoken[0] < spoken[1] < second < spoken[2], md

    hits, without = term_hits(biased), term_hits(plain)
    assert hits >= without + 3, (hits, without, [r["text"] for r in finals(biased)])
    assert [r["t"] for r in plain if r["type"] == "slide"] == times  # read, not used


def test_sigkill_mid_meeting_keeps_every_slide_reported(
    replay: tuple[Path, Path, list[float]], tmp_path: Path, tiny_en_dir: Path
) -> None:
    wav, slides, _ = replay
    out = tmp_path / "meetings"
    out.mkdir()
    args = ["--input", str(wav), "--slides", str(slides), "--out", str(out)]
    with recording([*args, "--model", str(tiny_en_dir), "--speed", "2"], tmp_path) as proc:
        assert proc.stdout is not None
        reported: list[dict[str, Any]] = []
        while not (reported and reported[-1]["type"] == "transcript.final"):
            line = proc.stdout.readline()
            assert line, "the meeting ended before a slide and a final"
            record = json.loads(line)
            if record["type"] in ("slide", "transcript.final"):
                reported.append(record)
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT_S)
    (notes,) = out.iterdir()
    raw = (notes / "slides.jsonl").read_bytes()
    assert raw.endswith(b"\n"), "a torn last line"
    on_disk = [json.loads(line) for line in raw.decode().splitlines()]
    shown = [r for r in reported if r["type"] == "slide"]
    assert shown and on_disk[: len(shown)] == [as_written(r) for r in shown]
    assert all((notes / r["image"]).stat().st_size > 0 for r in on_disk)
    subprocess.run(
        [sys.executable, "-m", "streamasr.cli", "meeting", "render", str(notes)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert shown[0]["text"].splitlines()[0] in (notes / "transcript.md").read_text()


@pytest.mark.parametrize("source", ["folder", "screenshot"])
def test_a_slide_shown_during_a_live_meeting_is_in_its_notes(
    replay: tuple[Path, Path, list[float]], tmp_path: Path, tiny_en_dir: Path, source: str
) -> None:
    """Audio on stdin in real time (as from `arecord`). A slide copied into `--slides` 1.5 s
    in shows at the stream time it was seen, a second or two later; or the screen changes to
    it then, and the next `--screenshot` sees it (the command fails until then: one warning)."""
    wav, deck, _ = replay
    audio, _ = sf.read(wav, dtype="int16")
    live = tmp_path / "live"
    live.mkdir()
    out = tmp_path / "meetings"
    shown = live / "next.png"
    slides = ["--slides", str(live)]
    if source == "screenshot":
        slides = ["--screenshot", f"cat {shown}", "--screenshot-every", "1"]
    args = ["--input", "-", *slides, "--out", str(out), "--model", str(tiny_en_dir)]
    with recording(args, tmp_path, stdin=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the model is loaded, the source watched
        assert first["type"] == "meeting.started", first
        frame, seconds = SAMPLE_RATE // 10, 6.0
        start = time.monotonic()
        for n, i in enumerate(range(0, int(seconds * SAMPLE_RATE), frame)):
            if n == 15:  # 1.5 s in: the presenter moves to the next slide
                shutil.copy(sorted(deck.iterdir())[1], shown)
            time.sleep(max(0.0, start + n * 0.1 - time.monotonic()))
            proc.stdin.write(audio[i : i + frame].tobytes())
            proc.stdin.flush()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)  # closes stdin: the input's end
    assert proc.returncode == 0
    records = [json.loads(line) for line in rest.decode().splitlines()]
    (slide,) = [r for r in records if r["type"] == "slide"]
    assert 1.5 <= slide["t"] <= 4.5, slide
    assert "Ouagadougou" in slide["text"]
    notes = out / slide["meeting"]
    assert (notes / slide["image"]).read_bytes() == shown.read_bytes()
    assert "> Field Trials" in (notes / "transcript.md").read_text()
    warnings = [r["message"] for r in records if r["type"] == "warning"]
    assert len(warnings) == (source == "screenshot"), warnings
