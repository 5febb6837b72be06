"""Slot bookkeeping of a continuous batch: rows join at the end and leave from anywhere.

Rows sit in slots 0..size-1 of the batch's tensors, so a step always runs over one leading
slice. When a row leaves, the last row moves into its slot (`_move`, which the model's batch
implements for its own tensors): one row's copy per departure instead of a gather per step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

from streamasr.models.base import Added, DecodeResult, TranscribeRequest


class _Ends(Protocol):
    done: bool  # the row has ended: its result is ready


Row = TypeVar("Row")
State = TypeVar("State", bound=_Ends)
Result = TypeVar("Result")


class SlotBatch(Generic[Row, State]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a batch needs at least one slot, got {capacity}")
        self.capacity = capacity
        self.rows: list[Row] = []
        self.states: list[State] = []
        self.tags: list[Any] = []

    @property
    def size(self) -> int:
        return len(self.rows)

    def _free_slot(self) -> int:
        if self.size >= self.capacity:
            raise RuntimeError(f"the batch is full ({self.capacity} rows)")
        return self.size

    def encode(self, requests: list[TranscribeRequest]) -> list[Row]:
        """The rows of `requests`: their windows (or streams' tails) encoded in one pass."""
        raise NotImplementedError

    def add_row(self, row: Row, tag: Any) -> DecodeResult | None:
        """Prefill an encoded row into a free slot; its result if it is done at once."""
        raise NotImplementedError

    def add(self, request: TranscribeRequest, tag: Any) -> DecodeResult | None:
        return self.add_row(self.encode([request])[0], tag)

    def encode_each(self, requests: list[TranscribeRequest]) -> list[Row | Exception]:
        """The rows of `requests` encoded in one pass. A pass that fails has committed no
        stream's state, so then each request is encoded alone: per request its row, or the
        error that failed it alone."""
        try:
            return list(self.encode(requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
        out: list[Row | Exception] = []
        for r in requests:
            try:
                out.append(self.encode([r])[0])
            except Exception as exc:
                out.append(exc)
        return out

    def add_many(self, calls: list[tuple[TranscribeRequest, Any]]) -> list[Added]:
        """The calls encoded in one pass (`encode_each`), then each row prefilled: only a call
        that fails alone fails."""
        encoded = self.encode_each([r for r, _ in calls])
        return [
            row if isinstance(row, Exception) else attempt(partial(self.add_row, row, tag))
            for row, (_, tag) in zip(encoded, calls, strict=True)
        ]

    def _join(self, row: Row, state: State, tag: Any) -> None:
        """Row `row` has been prefilled into slot `size`: it is part of the batch now."""
        self.rows.append(row)
        self.states.append(state)
        self.tags.append(tag)

    def _leave(self, result: Callable[[Row, State], Result]) -> list[tuple[Any, Result]]:
        """Remove the rows that are done, compacting the others; their tags and results."""
        out = []
        for j in reversed(range(self.size)):  # the last slot is never a finished row below
            if not self.states[j].done:
                continue
            out.append((self.tags[j], result(self.rows[j], self.states[j])))
            last = self.size - 1
            if j != last:
                self._move(last, j)
                self.rows[j], self.states[j], self.tags[j] = (
                    self.rows[last],
                    self.states[last],
                    self.tags[last],
                )
            self.rows.pop()
            self.states.pop()
            self.tags.pop()
        return out

    def _move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s tensors into slot `dst`."""
        raise NotImplementedError

    def clear(self) -> list[Any]:
        tags = self.tags
        self.rows, self.states, self.tags = [], [], []
        return tags


def attempt(call: Callable[[], DecodeResult | None]) -> Added:
    """The call's result, or the exception it raised."""
    try:
        return call()
    except Exception as exc:
        return exc
