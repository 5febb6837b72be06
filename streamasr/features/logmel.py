"""Incremental Whisper log-mel of one segment (<= 30 s), equal to transformers' extractor.

The extractor (transformers' `WhisperFeatureExtractor`, torch path) pads or not, then takes a
centred STFT (n_fft 400, hop 160, periodic Hann, reflect padding of 200 samples at both ends of
the padded signal), drops the last frame, applies slaney mel filters (0..8000 Hz), and computes

    raw = log10(max(mel, 1e-10))
    out = (max(raw, W - 8) + 4) / 4,    W = max(raw) over every frame of the (padded) window.

Incremental scheme. Frame t covers samples [160 t - 200, 160 t + 200) of the (zero-padded)
signal, indices outside it reading the reflect padding. It is
*final* once that support lies inside the segment audio seen so far (the reflection at the
segment start only reads samples 1..200, so frame 0 is final once 201 samples are in); a final
frame reads no padding, so its raw value never changes again. `append` computes raw values for
the frames that became final, once each, and folds them into a running max. `features` computes
only the few tail frames that read padding: at most 3 near the end of the audio, plus, when the
segment nearly fills the padded length, the frames whose end reflection folds back into it.
Every other frame of the padded window reads only zeros, so its raw value is log10(1e-10) = -10,
the smallest raw value there is: it never raises W.

The window-max clamp is therefore exact, not approximate: W = max(running max of the final
frames, max of the recomputed tail frames, -10 when pure-padding frames exist) is the same
maximum the extractor takes over the whole window, since max is associative and no frame is
left out. The only differences from the extractor are float rounding: this module takes the
STFT and mel projection in float64 with numpy (numpy's rfft beats torch.stft's call overhead for
the ~5 frames of a 50 ms chunk) and matches the extractor's own float64 numpy path to ~1e-7; the
extractor's default float32 torch path differs from both by up to ~5e-5 on loud speech, which
is the float32 STFT's rounding.
"""

from __future__ import annotations

import functools

import numpy as np

from streamasr import SAMPLE_RATE

N_FFT = 400  # samples per STFT window (25 ms)
HOP = 160  # samples per frame (10 ms)
PAD = N_FFT // 2  # reflect padding at each end of the centred STFT
MAX_SAMPLES = 30 * SAMPLE_RATE  # one Whisper window
MAX_FRAMES = MAX_SAMPLES // HOP  # 3000
LOG_FLOOR = -10.0  # log10 of the extractor's 1e-10 power floor: the raw value of silent frames


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-scale, slaney-normalised triangular mel filters, (n_mels, 201) float64, read-only.

    Equal to `transformers.audio_utils.mel_filter_bank(201, n_mels, 0.0, 8000.0, 16000,
    norm="slaney", mel_scale="slaney")` transposed (and to librosa's default filters).
    """

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        lin = 3.0 * f / 200.0  # linear below 1 kHz
        log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        lin = 200.0 * m / 3.0
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    n_bins = N_FFT // 2 + 1
    fft_hz = np.linspace(0.0, SAMPLE_RATE // 2, n_bins)  # (201,)
    edges = hz_to_mel(np.array([0.0, 8000.0]))
    band_hz = mel_to_hz(np.linspace(edges[0], edges[1], n_mels + 2))  # (n_mels + 2,)
    slopes = band_hz[None, :] - fft_hz[:, None]  # (201, n_mels + 2)
    widths = np.diff(band_hz)  # (n_mels + 1,)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = np.maximum(0.0, np.minimum(down, up))  # (201, n_mels)
    fb *= 2.0 / (band_hz[2:] - band_hz[:-2])  # slaney area normalisation
    out = np.ascontiguousarray(fb.T)  # (n_mels, 201)
    out.flags.writeable = False
    return out


_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann, (400,)


def _final_frames(num_samples: int) -> int:
    """How many leading frames read no padding once num_samples samples are in."""
    return 0 if num_samples <= PAD else (num_samples - PAD) // HOP + 1


class LogMelBuffer:
    """The log-mel of one segment (at most 30 s), grown chunk by chunk.

    Exact when run incrementally: `features` equals the one-shot extractor on the concatenated
    audio for any chunking, up to float rounding (see the module docstring).
    """

    def __init__(self, n_mels: int = 80) -> None:
        if n_mels <= 0:
            raise ValueError(f"n_mels must be positive, got {n_mels}")
        self.n_mels = n_mels
        self._filters_t = np.ascontiguousarray(mel_filters(n_mels).T)  # (201, n_mels)
        self._audio = np.zeros(MAX_SAMPLES, dtype=np.float32)  # (MAX_SAMPLES,) segment audio
        self._raw = np.zeros((n_mels, MAX_FRAMES), dtype=np.float32)  # raw log10 of final frames
        self.reset()

    def reset(self) -> None:
        """Start a new, empty segment (no reallocation)."""
        self._n = 0  # samples in the segment
        self._n_final = 0  # frames whose raw value is in self._raw
        self._raw_max = -np.inf  # running max of the final frames' raw values

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def num_frames(self) -> int:
        """Frames of the unpadded segment, num_samples // 160 (the extractor's count)."""
        return self._n // HOP

    @property
    def covered_frames(self) -> int:
        """Frames that hold any audio, ceil(num_samples / 160): the processors' mask count."""
        return -(-self._n // HOP)

    def append(self, samples: np.ndarray) -> None:
        """Add (n,) float32 16 kHz samples and compute the frames that became final.

        Exact when run incrementally: each frame is computed once from the same samples a
        one-shot pass would read. Raises ValueError past 30 s (the segment is left unchanged).
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
        n = x.shape[0]
        if self._n + n > MAX_SAMPLES:
            raise ValueError(
                f"a log-mel segment holds at most {MAX_SAMPLES} samples (30 s); "
                f"{self._n} + {n} is too many"
            )
        self._audio[self._n : self._n + n] = x
        self._n += n
        first, stop = self._n_final, _final_frames(self._n)
        if stop <= first:
            return
        raw = self._raw_frames(np.arange(first, stop), self._n)  # (n_mels, stop - first)
        self._raw[:, first:stop] = raw
        self._raw_max = max(self._raw_max, float(raw.max()))
        self._n_final = stop

    def features(self, pad_to_frames: int | None = None) -> np.ndarray:
        """Normalised log-mel (n_mels, T) float32 of the segment.

        pad_to_frames=None: T = num_frames, as the extractor with padding="longest".
        pad_to_frames=P: the audio zero-padded to P * 160 samples, T = P, as the extractor with
        padding="max_length", max_length=P * 160 (P = 3000 is its default call). P * 160 must
        cover num_samples. Exact when run incrementally: only the tail frames that read padding
        are computed here; the window max is combined exactly (module docstring).
        """
        if pad_to_frames is None:
            padded, frames = self._n, self.num_frames
        else:
            if pad_to_frames < 0 or pad_to_frames * HOP < self._n:
                raise ValueError(f"pad_to_frames={pad_to_frames} does not cover {self._n} samples")
            padded, frames = pad_to_frames * HOP, pad_to_frames
        out = np.full((self.n_mels, frames), LOG_FLOOR, dtype=np.float32)  # (n_mels, T)
        final = min(self._n_final, frames)
        out[:, :final] = self._raw[:, :final]
        top = self._raw_max if final else -np.inf
        tail = np.arange(final, frames)  # (frames - final,)
        reads_audio = (tail * HOP - PAD < self._n) | (
            (tail * HOP + PAD - 1 >= padded) & (2 * padded - PAD - 1 - tail * HOP < self._n)
        )
        todo = tail[reads_audio]
        if todo.size:
            raw = self._raw_frames(todo, padded)
            out[:, todo] = raw
            top = max(top, float(raw.max()))
        if todo.size < tail.size:  # pure-padding frames sit at LOG_FLOOR
            top = max(top, LOG_FLOOR)
        np.maximum(out, np.float32(top - 8.0), out=out)
        out += 4.0
        out /= 4.0
        return out

    # ---------------------------------------------------------------- internals
    def _raw_frames(self, frames: np.ndarray, padded: int) -> np.ndarray:
        """Raw log10 mel of the given frame indices, (n_mels, len(frames)) float32.

        The segment audio is taken as zero-padded to `padded` samples, then reflect-padded by
        PAD at both ends, as the extractor's centred STFT does.
        """
        lo = int(frames[0]) * HOP - PAD
        hi = int(frames[-1]) * HOP + PAD
        if lo >= 0 and hi <= self._n:  # the common case: a plain view of the audio
            span = self._audio[lo:hi]
        else:
            span = self._padded(np.arange(lo, hi), padded)
        span = np.ascontiguousarray(span)
        n_span = (int(frames[-1]) - int(frames[0])) + 1
        step = span.strides[0]
        windows = np.lib.stride_tricks.as_strided(  # (n_span, 400) view, frame i at i * HOP
            span, shape=(n_span, N_FFT), strides=(HOP * step, step), writeable=False
        )
        if n_span != frames.shape[0]:
            windows = windows[frames - frames[0]]
        spec = np.fft.rfft(windows * _WINDOW, axis=1)  # (F, 201) complex128
        power = spec.real**2 + spec.imag**2  # (F, 201)
        mel = np.dot(power, self._filters_t)  # (F, n_mels)
        raw: np.ndarray = np.log10(np.maximum(mel, 1e-10)).T.astype(np.float32)  # (n_mels, F)
        return raw

    def _padded(self, j: np.ndarray, padded: int) -> np.ndarray:
        """Samples at signal indices j (may be < 0 or >= padded) of the reflect-padded signal."""
        period = 2 * (padded - 1)
        if period > 0:
            j = np.abs(j) % period
            j = np.where(j >= padded, period - j, j)
        else:
            j = np.zeros_like(j)
        vals = np.zeros(j.shape[0], dtype=np.float32)
        inside = j < self._n
        vals[inside] = self._audio[j[inside]]
        return vals
