"""Session events to meetings: finals go to the open meeting's store; long silence ends it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.events import Event, SpeechStarted, SpeechStopped, TranscriptFinal
from streamasr.meeting.slide_sources import ReplaySlides
from streamasr.meeting.slides import ReadSlide, Slide, SlideReader
from streamasr.meeting.sources import AudioSource
from streamasr.meeting.store import MeetingWriter
from streamasr.meeting.terms import SlideTerms

Emit = Callable[[dict[str, Any]], None]
# meeting.ended reason for each way a producer's session can end (`SessionEnded.reason`)
END_REASONS = {"client": "end"}
SLIDE_DRAIN_S = 60.0  # at a meeting's end, how long the slides being read are waited for


class Transcriber(Protocol):
    """Samples in, events out: a `LocalSession`."""

    @property
    def position(self) -> int:
        """Samples on the 16 kHz stream clock received so far."""
        ...

    def feed(self, samples: np.ndarray) -> list[Event]: ...

    def steer(self, keywords: tuple[str, ...]) -> None:
        """Bias the next decodes with `keywords` too (`Session.steer`)."""
        ...

    def flush(self) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class MeetingNotes:
    """Files a session's finals into meeting directories under `out`, as the events come.

    A meeting opens at the first final with text (so noise blips make no empty directories)
    and its clock starts at that utterance's first sample; or at `opened()`, when a producer
    connecting is what starts it. It ends on `cut()`, `closed()`, or once no speech has been
    heard for `silence_timeout_s` of audio (sample clock, not wall clock); the next final then
    opens a new meeting. `emit` gets each final after its fsync. This is the daemon's
    `Recording` for `meeting --listen`; `MeetingRecorder` drives it for the other sources.

    With a `SlideReader`, the slides it has read are filed with the next events (a slide
    opens a meeting as a final does), and their terms (`context`) bias the recogniser.
    """

    def __init__(
        self,
        out: Path,
        emit: Emit,
        silence_timeout_s: float | None = None,
        slides: SlideReader | None = None,
        terms: SlideTerms | None = None,
    ) -> None:
        if silence_timeout_s is not None and silence_timeout_s <= 0:
            raise ValueError(f"silence timeout must be positive, got {silence_timeout_s}")
        self.out = out
        self.emit = emit
        self.timeout_samples = (
            None if silence_timeout_s is None else round(silence_timeout_s * SAMPLE_RATE)
        )
        self.slides = slides
        self.terms = terms or SlideTerms()
        self.writer: MeetingWriter | None = None
        self.meetings: list[Path] = []
        self._speaking = False
        self._last_voice_end = 0

    def show(self, image: bytes, sample: int) -> str | None:
        """A slide a producer sent, shown at stream position `sample`: queued for OCR. Returns
        why it cannot be, or None."""
        if self.slides is None:
            return "this meeting recorder reads no slides (its OCR backend is not available)"
        self.slides.offer(Slide(sample, image, "producer"))
        return None

    def context(self, position: int) -> tuple[str, ...]:
        """The terms of the slides shown lately: keywords for the next decodes."""
        return self.terms.current(position)

    def opened(self, position: int) -> None:
        """Open a meeting now, its clock at stream position `position`, speech or not."""
        if self.writer is None:
            self._open(position)

    def record(self, events: Sequence[object], position: int) -> None:
        """File the finals among `events` (each on disk when this returns); end the meeting
        after `silence_timeout_s` without speech up to stream position `position`."""
        self._file_slides()
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self._speaking = True
            elif isinstance(ev, SpeechStopped):
                self._speaking = False
                self._last_voice_end = ev.sample
            elif isinstance(ev, TranscriptFinal):
                self._record(ev)
        if (
            self.writer is not None
            and self.timeout_samples is not None
            and not self._speaking
            and position - self._last_voice_end >= self.timeout_samples
        ):
            self.end_meeting("silence")

    def cut(self) -> None:
        """End the current meeting; the next speech starts one."""
        self.end_meeting("split")

    def closed(self, reason: str) -> None:
        """The session is over: end the meeting (render its files)."""
        self.end_meeting(END_REASONS.get(reason, reason))

    def _record(self, final: TranscriptFinal) -> None:
        writer = self.writer
        if writer is None:
            if not final.text.strip():
                return
            writer = self._open(final.start_sample)
        record = writer.append(final)  # on disk before anyone is told
        self.emit({**record, "meeting": writer.path.name})

    def _open(self, origin_sample: int) -> MeetingWriter:
        writer = self.writer = MeetingWriter(self.out, origin_sample=origin_sample)
        self.meetings.append(writer.path)
        self.emit({"type": "meeting.started", "dir": str(writer.path)})
        return writer

    def _file_slides(self, drain: bool = False) -> None:
        """Write the slides read so far into the meeting (`drain`: those being read too)."""
        if self.slides is None:
            return
        if drain and not self.slides.wait_idle(SLIDE_DRAIN_S):
            self.emit({"type": "warning", "message": "slides still being read were left out"})
        for read in self.slides.take():
            self._file_slide(read)

    def _file_slide(self, read: ReadSlide) -> None:
        slide = read.slide
        writer = self.writer or self._open(slide.sample)
        record = writer.add_slide(slide.sample, slide.image, read.fmt, read.text, read.terms)
        self.terms.add(slide.sample, read.terms)
        self.emit({**record, "meeting": writer.path.name, "ocr_s": round(read.ocr_s, 3)})

    def end_meeting(self, reason: str) -> None:
        """Close the open meeting's transcript and render it; the session is not touched."""
        if self.writer is not None:
            self._file_slides(drain=reason != "silence")
        writer, self.writer = self.writer, None
        if writer is None:
            return
        writer.close()
        self.emit(
            {
                "type": "meeting.ended",
                "dir": str(writer.path),
                "finals": writer.count,
                "reason": reason,
            }
        )


class MeetingRecorder(MeetingNotes):
    """`MeetingNotes` of a `Transcriber` it feeds itself: the microphone or a file."""

    def __init__(
        self,
        session: Transcriber,
        out: Path,
        emit: Emit,
        silence_timeout_s: float | None = None,
        slides: SlideReader | None = None,
        terms: SlideTerms | None = None,
        *,
        replay: ReplaySlides | None = None,
    ) -> None:
        super().__init__(out, emit, silence_timeout_s, slides, terms)
        self.session = session
        self.replay = replay

    def feed(self, samples: np.ndarray) -> list[Event]:
        """Feed audio; returns the session's events, each final already on disk."""
        if self.replay is not None and self.slides is not None:
            self._replay_slides()
        return self._filed(self.session.feed(samples))

    def _replay_slides(self) -> None:
        """A replay's slides due by now are read before the audio goes on, so a replay is
        the same however fast it runs (live, OCR runs beside the audio instead)."""
        assert self.replay is not None and self.slides is not None
        due = self.replay.due(self.session.position)
        if not due:
            return
        for slide in due:
            self.slides.offer(slide)
        self.slides.wait_idle()
        self._file_slides()
        self.session.steer(self.context(self.session.position))

    def open_meeting(self) -> None:
        """Open a meeting now, its clock at the current stream position, speech or not."""
        self.opened(self.session.position)

    def flush(self) -> list[Event]:
        """Finalise pending speech; the meeting goes on."""
        return self._filed(self.session.flush())

    def split(self) -> list[Event]:
        """Finalise pending speech and end the current meeting; the next speech starts one."""
        events = self._filed(self.session.flush())
        self.cut()
        return events

    def close(self, reason: str = "end") -> list[Event]:
        """Finalise pending speech for good and end the meeting (render its files)."""
        events = self._filed(self.session.close())
        self.end_meeting(reason)
        return events

    def _filed(self, events: list[Event]) -> list[Event]:
        self.record(events, self.session.position)
        self.session.steer(self.context(self.session.position))
        return events


def run_meeting(source: AudioSource, recorder: MeetingRecorder) -> None:
    """Record until the source ends or SIGTERM/SIGINT; SIGUSR1 ends the current meeting."""
    requests: dict[str, bool] = {"stop": False, "split": False}

    def on_stop(signum: int, frame: FrameType | None) -> None:
        requests["stop"] = True
        source.stop()

    def on_split(signum: int, frame: FrameType | None) -> None:
        requests["split"] = True

    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGTERM, on_stop),
            (signal.SIGINT, on_stop),
            (signal.SIGUSR1, on_split),
        )
    }
    try:
        for chunk in source.chunks():
            recorder.feed(chunk)
            if requests["split"]:
                requests["split"] = False
                recorder.split()
            if requests["stop"]:
                break
        recorder.close()  # finalise the last utterance, render the transcript files
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
