"""Model calls as data: what a session asks of the model, and who runs it.

A `Session` never calls the model. Each of its operations returns a `Step`: the events it
produced and the `ModelCall`s it wants run. A driver submits each call to a `CallRunner` (the
model itself, in place, or the daemon's `Scheduler`, which batches the calls of every stream)
and hands the session the result of the call it waits for (`Session.awaiting`) through
`Session.on_result`. The runner owns the model-side state of each stream, its encoder cache,
keyed by the stream; the session owns the text side (VAD, features, committed tokens).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from streamasr.events import Event
from streamasr.models.base import AsrModel, DecodeResult, TranscribeRequest, run_one


@dataclass(frozen=True)
class ModelCall:
    """One decode a session asks for. With `chunked`, the runner runs it over the encoder cache
    of (`stream`, `utterance`): a new utterance of the stream starts from an empty cache."""

    id: int  # unique within its session
    request: TranscribeRequest  # its `cache` is the runner's to fill
    stream: int
    utterance: int
    chunked: bool = False
    background: bool = False  # the session goes on without it (an early final)
    final: bool = False  # its result is an utterance's final: the scheduler runs it before partials


@dataclass
class Step:
    """What one session operation produced: events, calls to run, calls no longer wanted."""

    events: list[Event] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # ids of earlier background calls


class CallRunner(Protocol):
    """Runs the model calls of sessions and holds their streams' model-side state."""

    def submit_call(self, call: ModelCall) -> Future[DecodeResult]:
        """Start `call`; its future may be cancelled until it runs."""
        ...

    def release(self, stream: int) -> None:
        """The stream ended: drop its model-side state."""
        ...


class StreamCaches:
    """The encoder cache of each stream of a model with a chunked encoder, keyed by stream.

    A stream has at most one chunked call in flight (its session waits for each), so a cache
    is never used by two calls at once."""

    def __init__(self, model: AsrModel) -> None:
        self._model = model
        self._held: dict[int, tuple[int, Any]] = {}  # stream -> (utterance, cache)
        self._lock = threading.Lock()

    def get(self, stream: int) -> Any:
        """The stream's cache, or None."""
        held = self._held.get(stream)
        return None if held is None else held[1]

    def request(self, call: ModelCall) -> TranscribeRequest:
        """The model request of `call`, over its stream's cache when it is chunked."""
        if not call.chunked:
            return call.request
        with self._lock:
            held = self._held.get(call.stream)
            if held is None:
                cache = self._model.new_encoder_cache()
            else:
                cache = held[1]
                if held[0] != call.utterance:
                    cache.reset()
            self._held[call.stream] = (call.utterance, cache)
        return replace(call.request, cache=cache)

    def release(self, stream: int) -> None:
        with self._lock:
            self._held.pop(stream, None)


class InPlace:
    """A `CallRunner` that runs each call at once, on the thread that submits it."""

    def __init__(self, model: AsrModel) -> None:
        self.model = model
        self.caches = StreamCaches(model)

    def submit_call(self, call: ModelCall) -> Future[DecodeResult]:
        future: Future[DecodeResult] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(run_one(self.model, self.caches.request(call)))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def release(self, stream: int) -> None:
        self.caches.release(stream)
