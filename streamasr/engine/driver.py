"""Driving a session: its model calls submitted to a runner, the results it waits for handed back.

`SessionDriver` runs a session's operations to their end, on the calling thread (`run`) or in
an asyncio task that awaits each call (`run_async`: the daemon, with no thread waiting for a
model call). `LocalSession` is a session driven on the calling thread, for files, the
microphone, meetings and tests: its calls run in place by default, or on a `Scheduler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig
from streamasr.engine.calls import CallRunner, InPlace, Step
from streamasr.engine.session import Session
from streamasr.events import Event
from streamasr.models.base import AsrModel, DecodeResult

Offload = Callable[..., Awaitable[Step]]  # offload(op, *args): `op(*args)` off the event loop


class SessionDriver:
    """Runs one session's operations: submits each step's calls to the runner, cancels those
    the session no longer wants, and hands it the result of the call it waits for."""

    def __init__(self, session: Session, runner: CallRunner) -> None:
        self.session = session
        self.runner = runner
        self._futures: dict[int, Future[DecodeResult]] = {}

    def submit(self, step: Step) -> tuple[int, Future[DecodeResult]] | None:
        """Run `step`'s calls; the call the session waits for next and its future, or None
        when the operation is done."""
        for call in step.cancelled:
            future = self._futures.pop(call, None)
            if future is not None:
                future.cancel()
        for c in step.calls:
            self._futures[c.id] = self.runner.submit_call(c)
        awaiting = self.session.awaiting
        return None if awaiting is None else (awaiting, self._futures.pop(awaiting))

    def release(self) -> None:
        """The session is over: drop the calls still in flight and the stream's model state."""
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        self.runner.release(self.session.stream)

    def run(self, op: Callable[..., Step], *args: object) -> list[Event]:
        """The events of operation `op(*args)`, its calls waited for on this thread."""
        step = op(*args)
        events = list(step.events)
        while (waiting := self.submit(step)) is not None:
            call, future = waiting
            step = self.session.on_result(call, future.result())
            events += step.events
        return events

    async def run_async(
        self, offload: Offload, op: Callable[..., Step], *args: object
    ) -> list[Event]:
        """`run` in an asyncio task: the session's own work through `offload`, each call
        awaited (cancelling the task cancels the call)."""
        step = await offload(op, *args)
        events = list(step.events)
        while (waiting := self.submit(step)) is not None:
            call, future = waiting
            result = await asyncio.wrap_future(future)
            step = await offload(self.session.on_result, call, result)
            events += step.events
        return events


class LocalSession:
    """A `Session` whose `feed`, `flush` and `close` run its model calls and return events."""

    def __init__(
        self,
        model: AsrModel,
        config: SessionConfig | None = None,
        *,
        runner: CallRunner | None = None,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.session = Session(model, config, sample_rate)
        self.runner = runner if runner is not None else InPlace(model)
        self._driver = SessionDriver(self.session, self.runner)

    @property
    def position(self) -> int:
        """Samples received so far: the stream clock (16 kHz)."""
        return self.session.position

    def feed(self, samples: np.ndarray) -> list[Event]:
        return self._driver.run(self.session.feed, samples)

    def steer(self, keywords: tuple[str, ...]) -> None:
        self.session.steer(keywords)

    def flush(self) -> list[Event]:
        return self._driver.run(self.session.flush)

    def close(self) -> list[Event]:
        try:
            return self._driver.run(self.session.close)
        finally:
            self._driver.release()
