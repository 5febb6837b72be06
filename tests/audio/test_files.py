"""load_audio: formats, downmix and resampling, and one-line AudioFileError messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamasr.audio.files import load_audio
from streamasr.errors import AudioFileError


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    return np.stack([mono] * channels, axis=1).astype(np.float32) if channels > 1 else mono


@pytest.mark.parametrize(
    ("ext", "subtype"), [("wav", "PCM_16"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("ogg", "VORBIS")]
)
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_formats_and_rates(tmp_path: Path, ext: str, subtype: str, rate: int) -> None:
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(rate, 0.5, channels=2), rate, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 8000) <= 1
    assert 0.4 < np.abs(x).max() < 0.6


def test_16k_wav_is_read_exactly(tmp_path: Path) -> None:
    x = (np.random.default_rng(0).standard_normal(4000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(str(tmp_path / "a.wav")), x)


def test_stereo_is_averaged_and_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((22050, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 22050, subtype="FLOAT")
    ref = soxr.resample(stereo.mean(axis=1), 22050, 16000)
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), ref, rtol=0, atol=1e-5)


def _assert_error(path: Path, match: str) -> None:
    with pytest.raises(AudioFileError, match=match) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    _assert_error(tmp_path / "nope.wav", "no such file")


def test_directory(tmp_path: Path) -> None:
    _assert_error(tmp_path, "not a regular file")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    _assert_error(tmp_path / "empty.wav", "empty")


def test_header_only_wav(tmp_path: Path) -> None:
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    _assert_error(tmp_path / "zero.wav", "no audio samples")


@pytest.mark.parametrize("name", ["noise.wav", "noise.flac", "noise.bin"])
def test_corrupt_bytes(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(np.random.default_rng(2).bytes(5000))
    _assert_error(tmp_path / name, "cannot read audio")


def test_truncated_header(tmp_path: Path) -> None:
    sf.write(tmp_path / "ok.wav", _tone(16000, 0.1), 16000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "ok.wav").read_bytes()[:20])
    _assert_error(tmp_path / "cut.wav", "cannot read audio")


def test_unsupported_format(tmp_path: Path) -> None:
    sf.write(tmp_path / "tone.aiff", _tone(16000, 0.1), 16000, format="AIFF")
    _assert_error(tmp_path / "tone.aiff", "unsupported audio format AIFF")


@pytest.mark.parametrize("rate", [4000, 96000])
def test_rate_outside_range(tmp_path: Path, rate: int) -> None:
    sf.write(tmp_path / "r.wav", _tone(rate, 0.1), rate)
    _assert_error(tmp_path / "r.wav", f"sample rate {rate} Hz")
