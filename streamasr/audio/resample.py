"""Streaming resampling to the 16 kHz engine clock (soxr) and the decode+resample input stage."""

from __future__ import annotations

import numpy as np
import soxr

from streamasr import SAMPLE_RATE
from streamasr.audio.pcm import check_format, decode_pcm
from streamasr.errors import AudioFormatError

MIN_RATE = 8_000  # Hz; narrowband telephony is the lowest rate we accept
MAX_RATE = 48_000  # Hz; higher rates carry nothing the models use
QUALITY = "HQ"  # soxr quality; the same default as soxr.resample, so one-shot and streaming agree


def check_rate(rate: int) -> None:
    """Raise AudioFormatError unless MIN_RATE <= rate <= MAX_RATE."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise AudioFormatError(f"sample rate must be an integer in Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")


def _as_mono_f32(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {a.shape}")
    return a


class StreamResampler:
    """A chunked resampler whose filter state carries across `process` calls.

    Streaming output equals soxr's one-shot `soxr.resample(x, in_rate, out_rate)` of the whole
    signal to within float32 rounding, however the input is split. The output lags the input by
    the filter delay; `flush()` returns the tail and readies the resampler for a fresh signal.
    When in_rate == out_rate it is a passthrough: `process` returns its input cast to float32
    (the same array when it already is float32), `flush` an empty array.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        check_rate(in_rate)
        check_rate(out_rate)
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._stream: soxr.ResampleStream | None = None
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=QUALITY
            )

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample one chunk (n,) float32 at in_rate; returns the output that is ready, (m,)."""
        a = _as_mono_f32(x)
        if self._stream is None:
            return a
        out: np.ndarray = self._stream.resample_chunk(a, last=False)
        return out

    def flush(self) -> np.ndarray:
        """Return the delayed tail of the signal and reset the state for a new signal."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out: np.ndarray = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return out


class AudioInput:
    """Client bytes in a declared format to 16 kHz float32 mono: decode, downmix, resample.

    A chunk that fails to decode raises AudioFormatError before any state changes, so the stream
    can go on with the next (valid) chunk.
    """

    def __init__(self, encoding: str, sample_rate: int, channels: int) -> None:
        check_format(encoding, channels)
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.channels = channels
        self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)

    def push(self, data: bytes) -> np.ndarray:
        """Decode and resample one chunk of bytes; returns (m,) float32 at 16 kHz (m may be 0)."""
        x = decode_pcm(data, encoding=self.encoding, channels=self.channels)
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        """The resampler's tail at the end of the stream, (m,) float32 at 16 kHz."""
        return self._resampler.flush()
