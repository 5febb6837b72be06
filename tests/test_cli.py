"""The `streamasr` command line, run as a user runs it: a subprocess with real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speech

from streamasr import SAMPLE_RATE


def run(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMASR_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "streamasr.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cache,  # not the checkout: its kernels/ folder must not be importable
    )


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    said = speech.espeak("I left my keys on the kitchen table this morning.", d, voice="en-gb")
    audio = np.concatenate([speech.silence(0.4), said, speech.silence(0.8)])
    path = d / "keys.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def test_stream_jsonl_prints_events_and_a_latency_summary(
    wav: Path, tiny_en_dir: Path, tiny_en_cache: Path
) -> None:
    r = run("transcribe", str(wav), "--format", "jsonl", "--speed", "1", cache=tiny_en_cache)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types[0] == "speech.started" and "transcript.partial" in types
    assert types[-2:] == ["speech.stopped", "transcript.final"]
    assert "kitchen table" in events[-1]["text"].lower()
    assert r.stderr.strip().splitlines()[-1].startswith("final latency after speech end: 1 ")


@pytest.mark.parametrize("fmt,head", [("srt", "1\n00:00:00,"), ("vtt", "WEBVTT\n\n00:00:00.")])
def test_offline_subtitle_formats(
    wav: Path, tiny_en_dir: Path, tiny_en_cache: Path, fmt: str, head: str
) -> None:
    r = run("transcribe", str(wav), "--mode", "offline", "--format", fmt, cache=tiny_en_cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(head)
    assert "kitchen table" in r.stdout.lower()


def test_bad_inputs_exit_2_with_one_line(wav: Path, tmp_path: Path, tiny_en_cache: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    aiff = tmp_path / "tone.aiff"
    sf.write(aiff, np.zeros(1600, dtype=np.float32), SAMPLE_RATE, format="AIFF")
    cases = [
        ("transcribe", str(tmp_path / "missing.wav")),
        ("transcribe", str(corrupt)),
        ("transcribe", str(aiff)),
        ("transcribe", str(corrupt), "--chunk-ms", "5"),
        ("transcribe", str(wav), "--model", str(tmp_path / "no-such-model")),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(("transcribe", str(wav), "--compute", "cuda"))
    for args in cases:
        r = run(*args, cache=tiny_en_cache)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("streamasr: error: "), r.stderr
    usage = run("transcribe", "x.wav", "--format", "docx", cache=tiny_en_cache)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    usage = run("transcribe", "x.wav", "--compute", "gpu", cache=tiny_en_cache)
    assert usage.returncode == 2 and "invalid compute value: 'gpu'" in usage.stderr
