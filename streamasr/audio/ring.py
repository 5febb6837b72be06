"""A bounded ring of float32 samples addressed by absolute sample index on the stream clock."""

from __future__ import annotations

import numpy as np

_MIN_CAPACITY = 16_384  # samples (~1 s at 16 kHz) allocated up front


class SampleRing:
    """The last `max_samples` samples of a stream, addressed by absolute sample index.

    Samples [start_sample, end_sample) are kept. Sample s lives at physical index
    s % capacity of a circular buffer whose capacity doubles (never past max_samples) when the
    kept audio outgrows it, so `append` is amortised O(len(x)). When more than `max_samples`
    would be kept, the oldest samples are dropped.
    """

    def __init__(self, max_samples: int, start_sample: int = 0) -> None:
        if max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self.max_samples = int(max_samples)
        self._buf = np.zeros(min(_MIN_CAPACITY, self.max_samples), dtype=np.float32)
        self._start = int(start_sample)
        self._end = int(start_sample)

    @property
    def start_sample(self) -> int:
        """Index of the oldest sample kept."""
        return self._start

    @property
    def end_sample(self) -> int:
        """Index one past the newest sample: the number of samples appended since stream start."""
        return self._end

    def __len__(self) -> int:
        return self._end - self._start

    def reset(self, start_sample: int = 0) -> None:
        """Forget every sample; the next sample appended gets index `start_sample`."""
        if start_sample < 0:
            raise ValueError(f"start_sample must be >= 0, got {start_sample}")
        self._start = self._end = int(start_sample)

    def append(self, x: np.ndarray) -> None:
        """Append (n,) samples at end_sample, dropping the oldest beyond max_samples."""
        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {a.shape}")
        n = a.shape[0]
        if n == 0:
            return
        new_end = self._end + n
        if n > self.max_samples:
            a = a[n - self.max_samples :]  # only the newest max_samples can be kept
        new_start = max(self._start, new_end - self.max_samples)
        self._reserve(new_end - new_start, new_start)
        self._write(new_end - a.shape[0], a)
        self._start, self._end = new_start, new_end

    def slice(self, start_sample: int, end_sample: int) -> np.ndarray:
        """A copy of samples [start_sample, end_sample) as (end - start,) float32.

        Raises ValueError when the range is reversed or not entirely kept.
        """
        if start_sample > end_sample:
            raise ValueError(f"reversed range [{start_sample}, {end_sample})")
        if start_sample < self._start or end_sample > self._end:
            raise ValueError(
                f"samples [{start_sample}, {end_sample}) are outside the kept range "
                f"[{self._start}, {self._end})"
            )
        cap = self._buf.shape[0]
        n = end_sample - start_sample
        i = start_sample % cap
        if i + n <= cap:
            return self._buf[i : i + n].copy()
        return np.concatenate((self._buf[i:], self._buf[: i + n - cap]))

    def trim_before(self, sample: int) -> None:
        """Drop samples before `sample` (no-op if already dropped); ValueError past end_sample."""
        if sample > self._end:
            raise ValueError(f"cannot trim to {sample}: past end_sample {self._end}")
        self._start = max(self._start, int(sample))

    # ---------------------------------------------------------------- internals
    def _reserve(self, n_keep: int, new_start: int) -> None:
        """Grow the buffer to hold n_keep samples; re-lay out the samples kept from new_start."""
        cap = self._buf.shape[0]
        if n_keep <= cap:
            return
        new_cap = min(self.max_samples, max(2 * cap, n_keep))
        kept = self.slice(new_start, self._end) if new_start < self._end else None
        self._buf = np.zeros(new_cap, dtype=np.float32)
        if kept is not None:
            self._write(new_start, kept)

    def _write(self, start_sample: int, a: np.ndarray) -> None:
        cap = self._buf.shape[0]
        i = start_sample % cap
        n = a.shape[0]
        first = min(n, cap - i)
        self._buf[i : i + first] = a[:first]
        if first < n:
            self._buf[: n - first] = a[first:]
