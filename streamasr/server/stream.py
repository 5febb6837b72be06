"""The engine side of one connection: its own resampler and `Session`, run in the worker pool."""

from __future__ import annotations

import numpy as np

from streamasr.audio.resample import StreamResampler
from streamasr.config import SessionConfig
from streamasr.engine.session import Session
from streamasr.events import Event
from streamasr.models.base import AsrModel


class AudioStream:
    """Samples at the client's rate in, events out. Not thread-safe: one call at a time."""

    def __init__(self, model: AsrModel, config: SessionConfig, sample_rate: int) -> None:
        self._resampler = StreamResampler(sample_rate)
        self.session = Session(model, config)

    @property
    def position(self) -> int:
        """Samples on the 16 kHz stream clock that reached the session so far."""
        return self.session.position

    def feed(self, samples: np.ndarray) -> list[Event]:
        """(n,) float32 mono at the client's rate; a decode may run inside."""
        return self.session.feed(self._resampler.process(samples))

    def flush(self) -> list[Event]:
        """Finalise the pending speech now; the stream goes on."""
        return self.session.flush()

    def close(self) -> list[Event]:
        """Feed the resampler's tail, then finalise for good."""
        tail = self._resampler.flush()
        events = self.session.feed(tail) if tail.size else []
        return events + self.session.close()
