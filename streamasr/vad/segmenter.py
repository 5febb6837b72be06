"""webrtcvad frame decisions on a fixed sample grid, turned into utterance start/end events."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from streamasr import SAMPLE_RATE
from streamasr.config import VadConfig

END_PAD_FRAMES = 1
"""An utterance ends this many VAD frames after the end of its last voiced frame (clamped to the
audio seen): webrtcvad tends to call the soft tail of a word unvoiced one frame early."""

SILENCE_PEAK_LSB = 1
"""A frame whose int16 samples all lie within +-SILENCE_PEAK_LSB is unvoiced whatever webrtcvad
says: in modes 0 and 1, after quiet speech, webrtcvad calls digital zeros speech for as long as
they last (measured with espeak-ng speech at -30 dBFS peak), which would glue utterances together.
The frame is still passed to webrtcvad so its noise model sees the same audio."""


@dataclass(frozen=True)
class UtteranceStart:
    start_sample: int  # first sample of the utterance, pre-roll included


@dataclass(frozen=True)
class UtteranceEnd:
    end_sample: int  # one past the last sample of the utterance
    cut: bool  # True when cut at max length; an UtteranceStart at the same sample follows


VadEvent = UtteranceStart | UtteranceEnd


def _ms_to_frames(ms: int, frame_ms: int) -> int:
    return max(1, math.ceil(ms / frame_ms))


class VadSegmenter:
    """Speech segmentation of one 16 kHz stream.

    Audio is split into `frame_ms` frames on a grid fixed at sample 0; the partial frame at the
    end of a `feed` waits for the next call, so the events are identical for any chunking of
    the same audio. Frames are quantised to int16 for webrtcvad; digitally silent frames are
    unvoiced (see SILENCE_PEAK_LSB).

    - start: an utterance opens once `start_ms` of voiced frames lie in the last
      `start_window_ms`; it starts `preroll_ms` before the first voiced frame of that window,
      clamped at 0 and at the end of the previous utterance.
    - stop: it closes after `stop_ms` of consecutive unvoiced frames; it ends END_PAD_FRAMES
      frames after its last voiced frame.
    - max length: when it reaches `max_utterance_ms` it is cut in the middle of its quietest
      frame (lowest RMS) that starts at least `min_cut_ms` after the utterance start and no
      later than its last voiced frame; UtteranceEnd(cut=True) and UtteranceStart at that
      sample come out together, so no audio is lost.
    """

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        c = self.config
        self.frame_samples = c.frame_ms * SAMPLE_RATE // 1000
        self._window_frames = max(1, c.start_window_ms // c.frame_ms)
        self._start_frames = min(_ms_to_frames(c.start_ms, c.frame_ms), self._window_frames)
        self._stop_frames = _ms_to_frames(c.stop_ms, c.frame_ms)
        self._preroll_samples = c.preroll_ms * SAMPLE_RATE // 1000
        self._max_samples = c.max_utterance_ms * SAMPLE_RATE // 1000
        self._min_cut_samples = c.min_cut_ms * SAMPLE_RATE // 1000
        self._vad = webrtcvad.Vad(c.aggressiveness)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next sample fed is sample 0 again."""
        self._pending = np.zeros(0, dtype=np.float32)  # samples after the last whole frame
        self._frame_index = 0  # index of the next whole frame on the grid
        self._window: deque[tuple[int, bool]] = deque(maxlen=self._window_frames)
        # RMS of the latest frames, (frame index, rms): enough to search one whole utterance
        max_frames = self._max_samples // self.frame_samples + self._window_frames + 2
        self._energy: deque[tuple[int, float]] = deque(maxlen=max_frames)
        self._in_speech = False
        self._utt_start = 0  # start_sample of the open utterance
        self._last_voiced = -1  # frame index of the last voiced frame of the open utterance
        self._unvoiced_run = 0  # consecutive unvoiced frames in the open utterance
        self._prev_end = 0  # end_sample of the previous utterance

    def set_stop_ms(self, stop_ms: int) -> None:
        """Close utterances after `stop_ms` of unvoiced audio from now on (the open one too)."""
        self._stop_frames = _ms_to_frames(stop_ms, self.config.frame_ms)

    @property
    def position(self) -> int:
        """Samples fed so far (the stream clock), including a partial frame still waiting."""
        return self._frame_index * self.frame_samples + self._pending.shape[0]

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open."""
        return self._in_speech

    @property
    def trailing_unvoiced_ms(self) -> int:
        """How long the open utterance has been unvoiced at its end (0 when voiced or closed)."""
        return self._unvoiced_run * self.config.frame_ms if self._in_speech else 0

    @property
    def pending_end(self) -> int | None:
        """The end the open utterance gets if no voiced frame follows; None while voiced/closed."""
        if not self._in_speech or self._unvoiced_run == 0:
            return None
        return max(self._voiced_end(), self._utt_start)

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume (n,) float32 samples at 16 kHz; returns the events decided by whole frames."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
        buf = np.concatenate((self._pending, x)) if self._pending.shape[0] else x
        n_frames = buf.shape[0] // self.frame_samples
        frames = buf[: n_frames * self.frame_samples].reshape(n_frames, self.frame_samples)
        self._pending = buf[n_frames * self.frame_samples :].copy()
        if n_frames == 0:
            return []
        pcm = np.clip(np.rint(frames * 32768.0), -32768, 32767).astype("<i2")  # (F, frame)
        rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))  # (F,)
        silent = np.abs(pcm.astype(np.int32)).max(axis=1) <= SILENCE_PEAK_LSB  # (F,)
        events: list[VadEvent] = []
        for k in range(n_frames):
            voiced = self._vad.is_speech(pcm[k].tobytes(), SAMPLE_RATE) and not silent[k]
            events += self._step(bool(voiced), float(rms[k]))
        return events

    def flush(self) -> list[VadEvent]:
        """Close an open utterance now (end of stream or forced final).

        The partial frame still waiting is kept, so feeding may go on afterwards on the same grid.
        """
        if not self._in_speech:
            return []
        end = min(self._voiced_end(), self.position)
        return [self._close(max(end, self._utt_start), cut=False)]

    # ---------------------------------------------------------------- internals
    def _step(self, voiced: bool, rms: float) -> list[VadEvent]:
        k = self._frame_index
        self._frame_index += 1
        self._energy.append((k, rms))
        self._window.append((k, voiced))
        if not self._in_speech:
            return self._maybe_open()
        if voiced:
            self._last_voiced = k
            self._unvoiced_run = 0
        else:
            self._unvoiced_run += 1
            if self._unvoiced_run >= self._stop_frames:
                # the clamp only matters after a fallback cut (see _cut)
                return [self._close(max(self._voiced_end(), self._utt_start), cut=False)]
        if self._frame_index * self.frame_samples - self._utt_start >= self._max_samples:
            return self._cut()
        return []

    def _maybe_open(self) -> list[VadEvent]:
        voiced = [k for k, v in self._window if v]
        if len(voiced) < self._start_frames:
            return []
        first = voiced[0] * self.frame_samples - self._preroll_samples
        self._in_speech = True
        self._utt_start = max(first, self._prev_end, 0)
        self._last_voiced = voiced[-1]
        self._unvoiced_run = self._frame_index - 1 - voiced[-1]
        return [UtteranceStart(self._utt_start)]

    def _voiced_end(self) -> int:
        return (self._last_voiced + 1 + END_PAD_FRAMES) * self.frame_samples

    def _close(self, end_sample: int, *, cut: bool) -> UtteranceEnd:
        self._in_speech = False
        self._prev_end = end_sample
        self._window.clear()  # a new utterance needs fresh voiced frames
        return UtteranceEnd(end_sample, cut)

    def _cut(self) -> list[VadEvent]:
        fs = self.frame_samples
        lo = self._utt_start + self._min_cut_samples
        candidates = [
            (rms, k) for k, rms in self._energy if lo <= k * fs and k <= self._last_voiced
        ]
        if candidates:
            k_cut = min(candidates)[1]  # quietest; the earliest among equals
            cut_sample = k_cut * fs + fs // 2
        else:  # no voiced frame late enough (only if stop_ms > max - min_cut): cut here
            cut_sample = self._frame_index * fs
        self._utt_start = cut_sample
        self._prev_end = cut_sample
        return [UtteranceEnd(cut_sample, cut=True), UtteranceStart(cut_sample)]
