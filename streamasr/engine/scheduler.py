"""Inference threads for every stream: the model calls of all sessions batched into shared ones.

Sessions are sans-I/O toward the model: they return `ModelCall`s (`engine/calls.py`), and
their drivers submit them here (`submit_call`), each answered through a future. The scheduler
owns each stream's model-side state, its encoder cache. A session waits for at most one call
at a time, so arrival order is round-robin between sessions; an early final runs beside it.

With a model that has a continuous batch (`ModelInfo.continuous_batching`: a `StepBatch`), an
inference thread admits queued calls between decoding steps, up to `max_batch` rows: the windows
of the calls that join together are encoded in one pass and each prompt is prefilled, every
step feeds one token to every row, and a row leaves with its result as soon as it ends. A short
partial never waits for another stream's long final to finish decoding, and no step is spent on
finished rows. When the batch is empty, the first call waits at most `budget_ms` for others to
join it. Other models get whole batches: up to `max_batch` queued calls run as one `AsrModel.run`.

Finals go first: a call whose result is an utterance's final (`ModelCall.final`) is taken before
every waiting partial, and a pass (an encoder pass, a whole batch) takes either finals or
partials, never both, so a final never waits for partials' windows to be encoded with its own.
A partial only shows sooner; a final is what the speaker waits for after they stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from streamasr.engine.calls import ModelCall, StreamCaches
from streamasr.models.base import AsrModel, DecodeResult, StepBatch, TranscribeRequest, run_one
from streamasr.models.slots import attempt

log = logging.getLogger(__name__)

_Queued = tuple[TranscribeRequest, Future[DecodeResult], float]  # request, future, queued at

CONGESTED_WAIT_S = 0.05  # calls waiting this long on average: the inference threads are saturated
WAIT_SMOOTHING = 0.2  # weight of the newest call in the moving average of waits


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8  # calls decoded together at most; more wait for a free row
    budget_ms: float = 5.0  # how long a first call waits for others to join an empty batch
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
    passes: int = 0  # batched model passes: decoding steps, or whole batches
    calls: int = 0  # calls answered
    busy_s: float = 0.0  # wall time spent inside model calls, summed over the threads
    rows: int = 0  # calls summed over the passes: rows / passes is the mean batch
    largest_batch: int = 0  # most calls in one pass
    cancelled: int = 0  # calls dropped before they ran (early finals the speaker made useless)


class Scheduler:
    """Owns the inference threads. Models with `continuous_batching` get it; the calls of other
    models run in whole batches (`AsrModel.run`)."""

    def __init__(self, model: AsrModel, config: SchedulerConfig | None = None) -> None:
        self.model = model
        self.config = config or SchedulerConfig()
        self.stats = SchedulerStats()
        self._finals: deque[_Queued] = deque()  # taken before any of the partials
        self._partials: deque[_Queued] = deque()
        self.wait_s = 0.0  # moving average of how long a call waits before it runs
        self._cv = threading.Condition()
        self._closed = False
        self._stats_lock = threading.Lock()
        self.caches = StreamCaches(model)
        self.threads = self.config.workers  # inference threads running (encoders included)
        self._threads = [
            threading.Thread(target=self._run, name=f"streamasr-infer-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: TranscribeRequest, *, final: bool = False) -> Future[DecodeResult]:
        """Queue a decode; a `final` one runs before the partials queued."""
        future: Future[DecodeResult] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            (self._finals if final else self._partials).append((request, future, time.monotonic()))
            self._cv.notify()
        return future

    def submit_call(self, call: ModelCall) -> Future[DecodeResult]:
        """A session's call, over its stream's encoder cache when it is chunked."""
        return self.submit(self.caches.request(call), final=call.final)

    def release(self, stream: int) -> None:
        """The stream ended: drop its encoder cache."""
        self.caches.release(stream)

    def snapshot(self) -> SchedulerStats:
        """A consistent copy of the statistics."""
        with self._stats_lock:
            return replace(self.stats)

    @property
    def queued(self) -> int:
        return len(self._finals) + len(self._partials)

    def close(self) -> None:
        """Stop the threads after the calls already queued."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join()

    # ---------------------------------------------------------------- inference thread
    @property
    def congested(self) -> bool:
        """Calls wait for an inference thread: the model is busy most of the time."""
        return self.wait_s > CONGESTED_WAIT_S

    def _take(
        self, room: int, *, wait: bool
    ) -> list[tuple[TranscribeRequest, Future[DecodeResult]]]:
        """Up to `room` queued calls, finals first, each kind oldest first: the finals if any
        wait, else the partials. Calls cancelled while queued are dropped. With `wait`, block for
        a first live call (and up to `budget_ms` for more to join it); [] then means closed and
        drained."""
        with self._cv:
            while True:
                if wait:
                    while not self.queued and not self._closed:
                        self._cv.wait()
                    deadline = time.monotonic() + self.config.budget_ms / 1000
                    while 0 < self.queued < room and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._cv.wait(left):
                            break
                taken = self._pop_live(self._finals, room) or self._pop_live(self._partials, room)
                if taken or not wait or not self.queued and self._closed:
                    break
            now = time.monotonic()
            for _, _, queued_at in taken:
                self.wait_s += WAIT_SMOOTHING * (now - queued_at - self.wait_s)
            return [(r, f) for r, f, _ in taken]

    def _pop_live(self, queue: deque[_Queued], room: int) -> list[_Queued]:
        """Pop up to `room` calls of `queue` that are not cancelled, marking them running."""
        taken: list[_Queued] = []
        while queue and len(taken) < room:
            call = queue.popleft()
            if call[1].set_running_or_notify_cancel():  # False: cancelled while queued
                taken.append(call)
            else:
                with self._stats_lock:
                    self.stats.cancelled += 1
        return taken

    def _record(self, seconds: float, passes: int, calls: int, rows: int) -> None:
        with self._stats_lock:
            self.stats.busy_s += seconds
            self.stats.passes += passes
            self.stats.calls += calls
            self.stats.rows += rows if passes else 0
            self.stats.largest_batch = max(self.stats.largest_batch, rows)

    def _run(self) -> None:
        if self.model.info.continuous_batching:
            self._run_continuous(self.model.new_step_batch(self.config.max_batch))
            return
        while batch_calls := self._take(self.config.max_batch, wait=True):
            t0 = time.perf_counter()
            self._execute(batch_calls)
            self._record(time.perf_counter() - t0, 1, len(batch_calls), len(batch_calls))

    def _run_continuous(self, batch: StepBatch) -> None:
        """Two threads per batch: this one admits encoded rows and steps them, a second one
        encodes the queued calls meanwhile. A 30 s window's encoder pass (a quarter of a
        second for tiny.en on two cores) then never stalls the steps of the other rows, and
        the steps' small matrix products leave cores to the encoder."""
        lane = _Lane()
        encoder = threading.Thread(
            target=self._encode_loop,
            args=(batch, lane),
            name=f"{threading.current_thread().name}-encode",
            daemon=True,
        )
        with self._stats_lock:
            self.threads += 1
        encoder.start()
        try:
            self._step_loop(batch, lane)
        finally:
            encoder.join()

    def _encode_loop(self, batch: StepBatch, lane: _Lane) -> None:
        """Take queued calls while the batch has room for them, encode them in one pass, and
        hand the rows (or each call's error) to the stepping thread."""
        try:
            while True:
                with lane.cv:
                    while len(lane.ready) + batch.size >= batch.capacity and not self._closed:
                        lane.cv.wait()
                    room = max(1, batch.capacity - batch.size - len(lane.ready))
                calls = self._take(room, wait=True)
                if not calls:
                    return  # closed and drained
                t0 = time.perf_counter()
                encoded = batch.encode_each([r for r, _ in calls])
                self._record(time.perf_counter() - t0, 0, 0, 0)
                with lane.cv:
                    lane.ready.extend((e, f) for e, (_, f) in zip(encoded, calls, strict=True))
                    lane.cv.notify_all()
        finally:
            with lane.cv:
                lane.encoder_done = True
                lane.cv.notify_all()

    def _step_loop(self, batch: StepBatch, lane: _Lane) -> None:
        """Admit encoded rows between decoding steps; answer each call as soon as it is done."""
        while True:
            with lane.cv:
                while not lane.ready and batch.size == 0:
                    if lane.encoder_done:
                        return  # closed, and nothing queued, encoding or decoding
                    lane.cv.wait()
                n = min(len(lane.ready), batch.capacity - batch.size)
                joining = [lane.ready.popleft() for _ in range(n)]
            t0 = time.perf_counter()
            answered = 0
            for outcome, future in joining:
                if not isinstance(outcome, Exception):  # a call that cannot prefill fails alone
                    outcome = attempt(partial(batch.add_row, outcome, future))
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                elif outcome is not None:
                    future.set_result(outcome)
                answered += outcome is not None
            rows = batch.size
            if rows:
                try:
                    done = batch.step()
                except Exception as exc:  # a failed step leaves no row's state to go on from
                    log.exception("a decoding step failed; failing its %d calls", rows)
                    done = []
                    for future in batch.clear():
                        future.set_exception(exc)
                        answered += 1
                for future, result in done:
                    future.set_result(result)
                answered += len(done)
            if joining or answered:
                with lane.cv:
                    lane.cv.notify_all()  # rows joined or left: room for the encoder
            self._record(time.perf_counter() - t0, 1 if rows else 0, answered, rows)

    def _execute(self, batch: list[tuple[TranscribeRequest, Future[DecodeResult]]]) -> None:
        requests = [r for r, _ in batch]
        if len(batch) > 1:
            try:
                for (_, future), result in zip(batch, self.model.run(requests), strict=True):
                    future.set_result(result)
                return
            except Exception:  # one bad call must not fail the others: retry each alone
                log.exception("a batched model call failed; running its calls one by one")
        for request, future in batch:
            if future.done():
                continue
            try:
                future.set_result(run_one(self.model, request))
            except Exception as exc:
                future.set_exception(exc)


class _Lane:
    """Encoded rows on their way from a batch's encoding thread to its stepping thread."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.ready: deque[tuple[Any, Future[DecodeResult]]] = deque()  # (row or error, future)
        self.encoder_done = False
