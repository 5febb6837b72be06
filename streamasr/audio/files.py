"""Audio files (wav, flac, ogg) to float32 mono at 16 kHz, with one-line errors naming the path."""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import soundfile as sf

from streamasr import SAMPLE_RATE
from streamasr.audio.resample import MAX_RATE, MIN_RATE, StreamResampler
from streamasr.errors import AudioFileError

# libsndfile major formats we accept; anything else it can read (AIFF, MP3, ...) is refused so
# the supported set stays what the docs promise
SUPPORTED_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "FLAC", "OGG"})


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a wav/flac/ogg file as (n,) float32 mono at 16 kHz (channels averaged, soxr HQ).

    Raises AudioFileError, with a one-line message naming the path, for a missing path, a file
    libsndfile cannot read or that is corrupt, a format outside wav/flac/ogg, a file with no
    samples, or a sample rate outside 8..48 kHz.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioFileError(f"{name}: no such file")
    if not os.path.isfile(name):
        raise AudioFileError(f"{name}: not a regular file")
    if os.path.getsize(name) == 0:
        raise AudioFileError(f"{name}: the file is empty")
    return read_audio(name, name)


def read_audio(source: str | BinaryIO, name: str, *, any_format: bool = False) -> np.ndarray:
    """`load_audio` of a path or an open binary file (an upload), named `name` in errors.
    `any_format`: every format libsndfile reads (MP3, AIFF, ...), not only wav/flac/ogg."""
    try:
        with sf.SoundFile(source) as f:
            fmt = str(f.format)
            rate = int(f.samplerate)
            if not any_format and fmt not in SUPPORTED_FORMATS:
                raise AudioFileError(
                    f"{name}: unsupported audio format {fmt}; use wav, flac or ogg"
                )
            if not MIN_RATE <= rate <= MAX_RATE:
                raise AudioFileError(
                    f"{name}: sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz"
                )
            data = f.read(dtype="float32", always_2d=True)  # (n, channels)
    except AudioFileError:
        raise
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise AudioFileError(f"{name}: cannot read audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioFileError(f"{name}: the file holds no audio samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioFileError(f"{name}: the file holds NaN or infinite samples")
    if rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    resampler = StreamResampler(rate, SAMPLE_RATE)
    return np.concatenate([resampler.process(mono), resampler.flush()])
