"""The query of a Deepgram `/v1/listen` handshake: validated options, or Deepgram's 400."""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response

from streamasr.audio.resample import MAX_RATE, MIN_RATE
from streamasr.models.base import ModelInfo
from streamasr.server.protocol import MAX_KEYWORD_CHARS, MAX_KEYWORDS, AudioFormat

# Deepgram's encoding -> streamasr's PCM encoding
ENCODINGS = {
    "linear16": "pcm_s16le",
    "linear32": "pcm_f32le",
    "mulaw": "pcm_mulaw",
    "alaw": "pcm_alaw",
}


class BadRequest(ValueError):
    """A query this endpoint refuses with Deepgram's 400."""


def bad_request(message: str, request_id: str) -> Response:
    """Deepgram's refusal of a handshake: the JSON body, and the reason in `dg-error` too (the
    SDKs show only the status)."""
    header = re.sub(r"[^\x20-\x7e]", "?", message)[:200]  # a header is latin-1, one line
    body = {
        "err_code": "Bad Request",
        "err_msg": f"Bad Request: {message}",
        "request_id": request_id,
    }
    headers = {"dg-error": header, "dg-request-id": request_id, "Cache-Control": "no-cache"}
    return JSONResponse(body, 400, headers=headers)


@dataclass(frozen=True)
class ListenOptions:
    """A validated `/v1/listen` query."""

    audio: AudioFormat | None  # None: a WAV stream, its format read from the header
    language: str | None = None  # a code of the model, "auto" (multi), None: the server's default
    interim_results: bool = False  # send is_final=false results (the partials)
    vad_events: bool = False  # send SpeechStarted
    utterance_end_ms: int | None = None  # set: send UtteranceEnd
    endpointing: bool = True  # false: speech_final stays false
    punctuate: bool = False  # punctuate or smart_format: the model's text as it is
    keywords: tuple[str, ...] = ()  # keywords (their ":boost" dropped) and keyterm

    @classmethod
    def from_query(cls, query: QueryParams, model: ModelInfo) -> ListenOptions:
        """Raise BadRequest for a value Deepgram would refuse or streamasr cannot serve."""
        endpointing = query.get("endpointing", "true").lower()
        if endpointing not in ("true", "false"):
            _integer(query, "endpointing", 0, None)  # milliseconds: checked, the VAD decides
        utterance_end_ms = None
        if "utterance_end_ms" in query:
            utterance_end_ms = _integer(query, "utterance_end_ms", 0, None)
        return cls(
            audio=_audio_format(query),
            language=_language(query.get("language"), model),
            interim_results=_flag(query, "interim_results"),
            vad_events=_flag(query, "vad_events"),
            utterance_end_ms=utterance_end_ms,
            endpointing=endpointing != "false",
            punctuate=_flag(query, "punctuate") or _flag(query, "smart_format"),
            keywords=_keywords(query),
        )


def _audio_format(query: QueryParams) -> AudioFormat | None:
    encoding = query.get("encoding")
    if encoding is None:
        return None  # containerized: read the WAV header; sample_rate and channels are not read
    if encoding not in ENCODINGS:
        supported = ", ".join(ENCODINGS)
        raise BadRequest(
            f"encoding {encoding[:40]!r} is not supported; use one of {supported}, or no "
            "encoding (with no sample_rate) for a WAV stream"
        )
    if "sample_rate" not in query:
        raise BadRequest("sample_rate is required with encoding")
    rate = _integer(query, "sample_rate", MIN_RATE, MAX_RATE)
    channels = _integer(query, "channels", 1, 2) if "channels" in query else 1
    if channels > 1 and _flag(query, "multichannel"):
        raise BadRequest("multichannel is not supported: leave it off to mix the channels")
    return AudioFormat(ENCODINGS[encoding], rate, channels)


def _language(tag: str | None, model: ModelInfo) -> str | None:
    if tag is None:
        return None  # the server's default
    if tag.lower() == "multi":
        return "auto"
    code = re.split(r"[-_]", tag.lower(), maxsplit=1)[0]
    if not re.fullmatch(r"[a-z]{2,3}", code):
        raise BadRequest(f"language {tag[:40]!r} is not a language tag (en, en-US, multi)")
    try:
        model.check_language(code)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return code


def _flag(query: QueryParams, name: str) -> bool:
    value = query.get(name, "false").lower()
    if value not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false, not {value[:40]!r}")
    return value == "true"


def _integer(query: QueryParams, name: str, low: int, high: int | None) -> int:
    value = query.get(name, "")
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value[:40]!r}") from None
    if number < low or (high is not None and number > high):
        bounds = f"{low}..{high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} {number} is out of range ({bounds})")
    return number


def _keywords(query: QueryParams) -> tuple[str, ...]:
    """`keyterm`s and `keywords` (`word:boost`; the boost is not used), for context biasing."""
    boosted = (re.sub(r":-?[0-9.]+$", "", k) for k in query.getlist("keywords"))
    terms = [*query.getlist("keyterm"), *boosted]
    terms = [t.strip() for t in terms if t.strip()]
    if len(terms) > MAX_KEYWORDS or any(len(t) > MAX_KEYWORD_CHARS for t in terms):
        raise BadRequest(
            f"at most {MAX_KEYWORDS} keywords and keyterms of {MAX_KEYWORD_CHARS} characters"
        )
    return tuple(dict.fromkeys(terms))
