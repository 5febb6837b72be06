"""Test helpers: synthetic speech from espeak-ng at 16 kHz, level scaling, silence padding."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.audio.files import load_audio

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition needs a careful audio front end.",
)


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, directory: Path, voice: str = "en-us", wpm: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng, 16 kHz float32, outer silence trimmed."""
    path = directory / f"espeak_{voice}_{wpm}_{abs(hash(text))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    x = load_audio(path)
    loud = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    return x[loud[0] : loud[-1] + 1].copy()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def to_peak_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """`x` scaled so its peak is at `dbfs` (0 dBFS = full scale 1.0)."""
    return (x * (10.0 ** (dbfs / 20.0) / np.abs(x).max())).astype(np.float32)


def chunks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def split_at_a_pause(audio: np.ndarray, pause_s: float) -> tuple[np.ndarray, int]:
    """`audio` with `pause_s` of silence inserted at its quietest 20 ms near the middle (between
    two words), and the sample the pause starts at."""
    hop = SAMPLE_RATE // 50
    mid = len(audio) // 2
    lo, hi = mid - SAMPLE_RATE, mid + SAMPLE_RATE
    rms = [float(np.sqrt(np.mean(audio[i : i + hop] ** 2))) for i in range(lo, hi, hop)]
    cut = lo + hop * int(np.argmin(rms))
    return np.concatenate([audio[:cut], silence(pause_s), audio[cut:]]), cut
