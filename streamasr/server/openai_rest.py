"""OpenAI's audio REST API: `POST /v1/audio/transcriptions` and `/v1/audio/translations`.

A file is one session of the engine run faster than real time: VAD segments it, each segment's
final is decoded through the shared scheduler (so it batches with the live streams), and the
finals make the response: `json`, `text`, `srt`, `vtt` or `verbose_json` (segments, and words
with `timestamp_granularities[]=word`); with `stream=true`, Server-Sent Events, one
`transcript.text.delta` per final and `transcript.text.done` with the whole text and `usage`.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import http
import json
import math
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Message, Receive

from streamasr import SAMPLE_RATE
from streamasr.engine.driver import SessionDriver
from streamasr.engine.session import Session
from streamasr.errors import AudioFileError
from streamasr.events import TranscriptFinal
from streamasr.formats import RENDERERS
from streamasr.scripts import unspaced
from streamasr.server.protocol import ProtocolError, SessionStart, check_prompt
from streamasr.server.session_io import ServerContext

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
TRANSLATIONS_PATH = "/v1/audio/translations"
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
FEED_SAMPLES = 30 * SAMPLE_RATE  # a file goes to its session this much audio at a time


class ApiError(Exception):
    """A request this API refuses: the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: http.HTTPStatus,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, self.status.value)


@dataclass(frozen=True)
class AudioRequest:
    """A validated transcription or translation request."""

    upload: UploadFile
    model: str
    language: str
    task: str
    prompt: str
    temperature: float
    response_format: str
    words: bool  # timestamp_granularities[] holds "word"
    segments: bool  # ... "segment" (or verbose_json without any granularity)
    stream: bool


# a session's place for a client address: its release, or why there is none
Admit = Callable[[str | None], Callable[[], None] | str]


class OpenAIAudio:
    """The two endpoints, on the daemon's context (None until the model is loaded)."""

    def __init__(
        self, context: Callable[[], ServerContext | None], admit: Admit, max_upload_bytes: int
    ) -> None:
        self.context = context
        self.admit = admit
        self.max_upload_bytes = max_upload_bytes

    async def transcriptions(self, request: Request) -> Response:
        return await self._handle(request, "transcribe")

    async def translations(self, request: Request) -> Response:
        return await self._handle(request, "translate")

    async def _handle(self, request: Request, task: str) -> Response:
        ctx = self.context()
        if ctx is None:
            return ApiError(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "the model is loading", kind="server_error"
            ).response()
        release = self.admit(request.client.host if request.client else None)
        if isinstance(release, str):
            return ApiError(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                release,
                code="server_busy",
                kind="rate_limit_error",
            ).response()
        form: FormData | None = None
        try:
            form = await self._form(request)
            job = _parse(form, task, ctx)
            samples = await ctx.pool.call(_read_upload, job.upload)
        except ApiError as exc:
            release()
            if form is not None:
                await form.close()
            return exc.response()
        await form.close()
        finals = _transcribe(ctx, samples, job)
        duration = samples.size / SAMPLE_RATE
        if job.stream:
            return StreamingResponse(
                _events(finals, duration, release), media_type="text/event-stream"
            )
        try:
            done = [f async for f in finals]
        finally:
            release()
        return _render(job, done, duration)

    async def _form(self, request: Request) -> FormData:
        """The multipart form, its size within `max_upload_bytes` (413 past it)."""
        limit = self.max_upload_bytes
        too_big = ApiError(
            http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the upload is over this server's limit of {limit} bytes",
            param="file",
            code="upload_too_large",
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        limited = Request(request.scope, _limited(request.receive, limit, too_big))
        try:
            return await limited.form(max_files=1, max_fields=32)
        except HTTPException as exc:  # a malformed multipart body
            raise ApiError(http.HTTPStatus.BAD_REQUEST, str(exc.detail)) from exc


def _limited(receive: Receive, limit: int, too_big: ApiError) -> Receive:
    """`receive` that raises `too_big` once the body passes `limit` bytes."""
    total = 0

    async def wrapped() -> Message:
        nonlocal total
        message = await receive()
        total += len(message.get("body", b""))
        if total > limit:
            raise too_big
        return message

    return wrapped


def _parse(form: FormData, task: str, ctx: ServerContext) -> AudioRequest:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(http.HTTPStatus.BAD_REQUEST, "a `file` upload is required", "file")
    text = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    response_format = text.get("response_format", "json")
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            http.HTTPStatus.BAD_REQUEST,
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
            "response_format",
        )
    language = text.get("language") or ctx.session_config.language
    try:
        ctx.model.info.check_language(language, task)
    except ValueError as exc:
        param = "language" if task in ctx.model.info.tasks else "model"
        raise ApiError(
            http.HTTPStatus.BAD_REQUEST, str(exc), param, "unsupported_language"
        ) from exc
    try:
        temperature = float(text.get("temperature", "0") or "0")
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise ApiError(
            http.HTTPStatus.BAD_REQUEST, "temperature must be a number from 0 to 1", "temperature"
        )
    granularities = set(form.getlist("timestamp_granularities[]")) | set(
        form.getlist("timestamp_granularities")
    )
    unknown = granularities - {"word", "segment"}
    if unknown:
        raise ApiError(
            http.HTTPStatus.BAD_REQUEST,
            "timestamp_granularities may hold word and segment",
            "timestamp_granularities",
        )
    stream = text.get("stream", "false").lower() in ("true", "1")
    if stream and response_format not in ("json", "text"):
        raise ApiError(
            http.HTTPStatus.BAD_REQUEST,
            "stream=true gives events for response_format json or text",
            "stream",
        )
    return AudioRequest(
        upload=upload,
        model=text.get("model", ""),
        language=language,
        task=task,
        prompt=_prompt(text.get("prompt", "")),
        temperature=temperature,
        response_format=response_format,
        words="word" in granularities,
        segments="segment" in granularities or not granularities,
        stream=stream,
    )


def _prompt(prompt: str) -> str:
    try:
        return check_prompt(prompt)
    except ProtocolError as exc:
        raise ApiError(http.HTTPStatus.BAD_REQUEST, exc.message, "prompt") from exc


def _read_upload(upload: UploadFile) -> np.ndarray:
    from streamasr.audio.files import read_audio

    try:
        return read_audio(upload.file, upload.filename or "file", any_format=True)
    except AudioFileError as exc:
        raise ApiError(http.HTTPStatus.BAD_REQUEST, str(exc), "file", "invalid_audio") from exc


async def _transcribe(
    ctx: ServerContext, samples: np.ndarray, job: AudioRequest
) -> AsyncIterator[TranscriptFinal]:
    """The finals of one file: a session without partials, its model calls on the scheduler."""
    options = SessionStart(language=job.language, task=job.task, partials=False, prompt=job.prompt)
    config = options.session_config(ctx.session_config)
    session = Session(ctx.model, config, SAMPLE_RATE)
    driver = SessionDriver(session, ctx.scheduler)
    try:
        for i in range(0, samples.size, FEED_SAMPLES):
            chunk = samples[i : i + FEED_SAMPLES]
            for event in await driver.run_async(ctx.pool.call, session.feed, chunk):
                if isinstance(event, TranscriptFinal) and event.text:
                    yield event
        for event in await driver.run_async(ctx.pool.call, session.close):
            if isinstance(event, TranscriptFinal) and event.text:
                yield event
    finally:
        driver.release()


def join_texts(texts: list[str]) -> str:
    """Finals as one text: a space between them, none between two characters of a script
    written without spaces."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (unspaced(out[-1]) and unspaced(text[0])):
            out += " "
        out += text
    return out


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration)}


async def _events(
    finals: AsyncIterator[TranscriptFinal], duration: float, release: Callable[[], None]
) -> AsyncIterator[str]:
    texts: list[str] = []
    try:
        async for final in finals:
            delta = join_texts([*texts, final.text])[len(join_texts(texts)) :]
            texts.append(final.text)
            yield _sse({"type": "transcript.text.delta", "delta": delta, "logprobs": None})
        done = {"type": "transcript.text.done", "text": join_texts(texts), "logprobs": None}
        yield _sse({**done, "usage": _usage(duration)})
    finally:
        release()


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def _language_name(code: str | None) -> str:
    """OpenAI's verbose_json names the language in English words ("english")."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return str(LANGUAGES.get(code or "", code or "unknown"))


def _render(job: AudioRequest, finals: list[TranscriptFinal], duration: float) -> Response:
    text = join_texts([f.text for f in finals])
    if job.response_format == "text":
        return PlainTextResponse(text + "\n" if text else "")
    if job.response_format in ("srt", "vtt"):
        return PlainTextResponse(RENDERERS[job.response_format](finals))
    if job.response_format == "json":
        return JSONResponse({"text": text, "usage": _usage(duration)})
    languages = [f.language for f in finals if f.language]
    body: dict[str, Any] = {
        "task": job.task,
        "language": _language_name(
            max(set(languages), key=languages.count)
            if languages
            else (job.language if job.language != "auto" else None)
        ),
        "duration": round(duration, 3),
        "text": text,
        "usage": _usage(duration),
    }
    if job.segments:
        body["segments"] = [_segment(i, f) for i, f in enumerate(finals)]
    if job.words:
        body["words"] = [
            {
                "word": w.word.strip(),
                "start": round(w.start_sample / SAMPLE_RATE, 3),
                "end": round(w.end_sample / SAMPLE_RATE, 3),
            }
            for f in finals
            for w in f.words
        ]
    return JSONResponse(body)


def _segment(index: int, final: TranscriptFinal) -> dict[str, Any]:
    """A verbose_json segment: one final. `avg_logprob` is the mean log-probability of its
    words (of their tokens' mean probability); decoding is greedy, so `temperature` is 0."""
    text = final.text.strip()
    probs = [w.probability for w in final.words if w.probability > 0]
    data = text.encode()
    return {
        "id": index,
        "start": round(final.start_sample / SAMPLE_RATE, 3),
        "end": round(final.end_sample / SAMPLE_RATE, 3),
        "text": text,
        "temperature": 0.0,
        "avg_logprob": float(np.mean(np.log(probs))) if probs else None,
        "compression_ratio": len(data) / len(zlib.compress(data)) if data else None,
    }
