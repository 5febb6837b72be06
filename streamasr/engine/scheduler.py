"""Inference threads for every stream: the model calls of all sessions batched into shared ones.

Sessions stay synchronous and sans-I/O. Each runs on its own caller thread and calls the model
through `ScheduledModel`, which queues the call and blocks until the inference thread has run
it. An inference thread takes the queued calls in arrival order, up to `max_batch` at a time,
waiting at most `budget_ms` after the first for others to join, and runs them as one
`transcribe_many`. A session has at most one call in flight, so FIFO order is round-robin
between sessions: no session waits more than one batch behind another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamasr.config import DecodeConfig
from streamasr.models.base import (
    AsrModel,
    DecodeResult,
    FeatureSpec,
    TranscribeRequest,
    supports_chunked,
)

log = logging.getLogger(__name__)

CONGESTED_WAIT_S = 0.05  # calls waiting this long on average: the inference threads are saturated
WAIT_SMOOTHING = 0.2  # weight of the newest call in the moving average of waits


class BatchModel(AsrModel, Protocol):
    def transcribe_many(self, requests: list[TranscribeRequest]) -> list[DecodeResult]: ...


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8  # calls run together at most; more wait for the next batch
    budget_ms: float = 5.0  # how long a first call waits for others to join its batch
    workers: int = 1  # inference threads, each running its own batch; on a small CPU, two
    # threads of one-thread batches keep both cores busy where one two-thread batch does not

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.budget_ms < 0:
            raise ValueError(f"budget_ms must not be negative, got {self.budget_ms}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class SchedulerStats:
    batches: int = 0
    calls: int = 0
    busy_s: float = 0.0  # wall time spent inside model calls, summed over the threads
    largest_batch: int = 0


class Scheduler:
    """Owns the inference thread. `model` must implement `transcribe_many`, or calls run singly."""

    def __init__(self, model: AsrModel, config: SchedulerConfig | None = None) -> None:
        self.model = model
        self.config = config or SchedulerConfig()
        self.stats = SchedulerStats()
        self._queue: deque[tuple[TranscribeRequest, Future[DecodeResult], float]] = deque()
        self.wait_s = 0.0  # moving average of how long a call waits before it runs
        self._cv = threading.Condition()
        self._closed = False
        self._stats_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"streamasr-infer-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: TranscribeRequest) -> Future[DecodeResult]:
        future: Future[DecodeResult] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._queue.append((request, future, time.monotonic()))
            self._cv.notify()
        return future

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop the threads after the calls already queued."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()

    def model_proxy(self) -> ScheduledModel:
        """The shared model as sessions see it: every call goes through this scheduler."""
        if supports_chunked(self.model):
            return ScheduledChunkedModel(self)
        return ScheduledModel(self)

    # ---------------------------------------------------------------- inference thread
    @property
    def congested(self) -> bool:
        """Calls wait for an inference thread: the model is busy most of the time."""
        return self.wait_s > CONGESTED_WAIT_S

    def _take(self) -> list[tuple[TranscribeRequest, Future[DecodeResult]]]:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return []
            deadline = time.monotonic() + self.config.budget_ms / 1000
            while len(self._queue) < self.config.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cv.wait(left):
                    break
            n = min(self.config.max_batch, len(self._queue))
            taken = [self._queue.popleft() for _ in range(n)]
            now = time.monotonic()
            for _, _, queued_at in taken:
                self.wait_s += WAIT_SMOOTHING * (now - queued_at - self.wait_s)
            return [(r, f) for r, f, _ in taken]

    def _run(self) -> None:
        while batch := self._take():
            t0 = time.perf_counter()
            self._execute(batch)
            with self._stats_lock:
                self.stats.busy_s += time.perf_counter() - t0
                self.stats.batches += 1
                self.stats.calls += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _execute(self, batch: list[tuple[TranscribeRequest, Future[DecodeResult]]]) -> None:
        requests = [r for r, _ in batch]
        batched = getattr(self.model, "transcribe_many", None)
        if batched is not None and len(batch) > 1:
            try:
                for (_, future), result in zip(batch, batched(requests), strict=True):
                    future.set_result(result)
                return
            except Exception:  # one bad call must not fail the others: retry each alone
                log.exception("a batched model call failed; running its calls one by one")
        for request, future in batch:
            if future.done():
                continue
            try:
                future.set_result(_call_one(self.model, request))
            except Exception as exc:
                future.set_exception(exc)


def _call_one(model: Any, r: TranscribeRequest) -> DecodeResult:
    args = dict(
        num_frames=r.num_frames,
        prompt=r.prompt,
        options=r.options,
        word_timestamps=r.word_timestamps,
        prefix=r.prefix,
        draft=r.draft,
    )
    if r.cache is None:
        return model.transcribe(r.features, **args)  # type: ignore[no-any-return]
    return model.transcribe_chunked(  # type: ignore[no-any-return]
        r.cache, r.features, commit_frames=r.commit_frames, **args
    )


class ScheduledModel:
    """The shared model as one session sees it: each call goes through the scheduler."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._model: Any = scheduler.model
        self.name: str = self._model.name
        self.features: FeatureSpec = self._model.features
        self.preferred_encoder: str = getattr(self._model, "preferred_encoder", "window")

    def decode_tokens(self, tokens: list[int]) -> str:
        return str(self._model.decode_tokens(tokens))

    def encode_text(self, text: str) -> list[int]:
        return list(self._model.encode_text(text))

    def transcribe(
        self,
        features: np.ndarray,
        *,
        num_frames: int,
        prompt: list[int],
        options: DecodeConfig,
        word_timestamps: bool,
        prefix: list[int] | None = None,
        draft: list[int] | None = None,
    ) -> DecodeResult:
        request = TranscribeRequest(
            features,
            num_frames,
            list(prompt),
            options,
            word_timestamps,
            list(prefix or []),
            draft=draft,
        )
        return self._scheduler.submit(request).result()


class ScheduledChunkedModel(ScheduledModel):
    """`ScheduledModel` of a model with a chunked encoder."""

    def new_encoder_cache(self) -> Any:
        return self._model.new_encoder_cache()

    def transcribe_chunked(
        self,
        cache: Any,
        features: np.ndarray,
        *,
        num_frames: int,
        commit_frames: int,
        prompt: list[int],
        options: DecodeConfig,
        word_timestamps: bool,
        prefix: list[int] | None = None,
        draft: list[int] | None = None,
    ) -> DecodeResult:
        request = TranscribeRequest(
            features,
            num_frames,
            list(prompt),
            options,
            word_timestamps,
            list(prefix or []),
            cache,
            commit_frames,
            draft,
        )
        return self._scheduler.submit(request).result()
