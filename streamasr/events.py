"""Typed transcript events and their JSON form: sample indices inside, seconds on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from streamasr import SAMPLE_RATE


def seconds(sample: int) -> float:
    """Sample index on the engine clock to seconds from stream start, rounded for the wire."""
    return round(sample / SAMPLE_RATE, 3)


def language_fields(language: str | None, probability: float | None) -> dict[str, Any]:
    return {
        "language": language,
        "language_probability": None if probability is None else round(probability, 4),
    }


@dataclass(frozen=True)
class Word:
    word: str  # the word as decoded, with its leading space if any
    start_sample: int
    end_sample: int
    probability: float  # mean probability of the word's tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "word": self.word,
            "start": seconds(self.start_sample),
            "end": seconds(self.end_sample),
            "probability": round(self.probability, 4),
        }


@dataclass(frozen=True)
class SpeechStarted:
    sample: int  # first sample of the utterance, pre-roll included
    type: str = field(default="speech.started", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "t": seconds(self.sample)}


@dataclass(frozen=True)
class SpeechStopped:
    sample: int  # end of the last voiced frame of the utterance
    type: str = field(default="speech.stopped", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "t": seconds(self.sample)}


@dataclass(frozen=True)
class TranscriptPartial:
    segment_id: int
    text: str  # the whole current hypothesis of the segment
    stable_text: str  # the prefix of `text` the stabilizer has committed
    start_sample: int
    end_sample: int
    language: str | None = None  # ISO code of the language decoded; None: the model cannot tell
    language_probability: float | None = None  # when the language was detected
    type: str = field(default="transcript.partial", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "segment_id": self.segment_id,
            "text": self.text,
            "stable_text": self.stable_text,
            "start": seconds(self.start_sample),
            "end": seconds(self.end_sample),
            **language_fields(self.language, self.language_probability),
        }


@dataclass(frozen=True)
class TranscriptFinal:
    segment_id: int
    text: str
    start_sample: int
    end_sample: int
    words: tuple[Word, ...] = ()
    fallback: bool = False  # every decode was rejected by the hallucination gate: the text is
    # what the partials had shown (their committed text), with no word timings
    language: str | None = None  # as in TranscriptPartial
    language_probability: float | None = None
    type: str = field(default="transcript.final", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "segment_id": self.segment_id,
            "text": self.text,
            "start": seconds(self.start_sample),
            "end": seconds(self.end_sample),
            "words": [w.to_dict() for w in self.words],
            "fallback": self.fallback,
            **language_fields(self.language, self.language_probability),
        }


@dataclass(frozen=True)
class ErrorEvent:
    code: str  # stable machine-readable code, e.g. "bad_audio"
    message: str
    fatal: bool = False
    type: str = field(default="error", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "code": self.code, "message": self.message, "fatal": self.fatal}


@dataclass(frozen=True)
class WarningEvent:
    """Not an error: the server tells the client how it is coping (e.g. behind real time)."""

    code: str  # "behind_real_time", "caught_up" or "bias_cut"
    message: str
    lag_s: float  # how long ago the audio being processed now arrived
    type: str = field(default="warning", init=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "lag": round(self.lag_s, 2),
        }


Event = SpeechStarted | SpeechStopped | TranscriptPartial | TranscriptFinal | ErrorEvent


def shifted(event: Any, samples: int, segments: int) -> Any:
    """`event` on a clock that starts `samples` later and with segments numbered from
    `segments`: a session that continues another (a resumed one); other messages unchanged."""
    if isinstance(event, SpeechStarted | SpeechStopped):
        return replace(event, sample=event.sample + samples)
    if isinstance(event, TranscriptPartial):
        return replace(
            event,
            segment_id=event.segment_id + segments,
            start_sample=event.start_sample + samples,
            end_sample=event.end_sample + samples,
        )
    if isinstance(event, TranscriptFinal):
        words = tuple(
            replace(w, start_sample=w.start_sample + samples, end_sample=w.end_sample + samples)
            for w in event.words
        )
        return replace(
            event,
            segment_id=event.segment_id + segments,
            start_sample=event.start_sample + samples,
            end_sample=event.end_sample + samples,
            words=words,
        )
    return event
