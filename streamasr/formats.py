"""Render final transcripts as plain text, SRT or WebVTT."""

from __future__ import annotations

from collections.abc import Iterable

from streamasr import SAMPLE_RATE
from streamasr.events import TranscriptFinal


def _clock(sample: int, sep: str) -> str:
    ms = round(sample * 1000 / SAMPLE_RATE)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_text(finals: Iterable[TranscriptFinal]) -> str:
    return "".join(f"{f.text}\n" for f in finals if f.text)


def to_srt(finals: Iterable[TranscriptFinal]) -> str:
    cues = [f for f in finals if f.text]
    return "".join(
        f"{i}\n{_clock(f.start_sample, ',')} --> {_clock(f.end_sample, ',')}\n{f.text}\n\n"
        for i, f in enumerate(cues, start=1)
    )


def to_vtt(finals: Iterable[TranscriptFinal]) -> str:
    body = "".join(
        f"{_clock(f.start_sample, '.')} --> {_clock(f.end_sample, '.')}\n{f.text}\n\n"
        for f in finals
        if f.text
    )
    return "WEBVTT\n\n" + body


RENDERERS = {"text": to_text, "srt": to_srt, "vtt": to_vtt}
