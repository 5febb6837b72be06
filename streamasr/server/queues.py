"""Per-connection bounded queues and their named policies, plus the arrival clock for latency.

- `Inbox` (client -> decoder), policy **pause-reading**: audio waits here for the decoder, up to
  `max_samples`; a reader that would go over waits, so the server stops reading that socket and
  TCP flow control slows the sender down. Nothing is dropped, and no other session waits. A
  flush takes a tenth of the room (each one can cost a final decode), so a flood of flushes
  pauses reading too: at most ten wait.
  Small frames are joined as they queue, so the queue holds few arrays however tiny the
  client's frames are.
- `ReadPacer` (client -> server), policy **pace-reading**: at most `rate` messages a second are
  read from one client (a burst of `burst`), so a flood of tiny frames costs the event loop a
  bounded share; the rest wait in the socket, as TCP pushes back on the sender.
- `Outbox` (server -> client), policy **merge-partials, never drop finals**: a queued partial is
  dropped as soon as a newer partial or the final of its segment is queued; if the queue still
  holds more than `limit` messages, `put` says so and the connection closes 1008 "client too slow".
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.events import TranscriptFinal, TranscriptPartial
from streamasr.server.protocol import End, Flush, Reply, ServerMessage

Command = Flush | End
JOIN_SAMPLES = 4096  # queued audio arrays under this size take the next frame's samples


class Inbox:
    """Audio and commands of one session in arrival order; queued audio is bounded."""

    def __init__(self, max_samples: int) -> None:
        if max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        self.max_samples = max_samples
        self._items: deque[np.ndarray | Command] = deque()
        self._samples = 0  # audio samples queued
        self._cond = asyncio.Condition()

    @property
    def queued_samples(self) -> int:
        return self._samples

    async def put_audio(self, samples: np.ndarray) -> None:
        """Queue samples, first waiting while the queue is full (pause-reading)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._samples < self.max_samples)
            last = self._items[-1] if self._items else None
            if isinstance(last, np.ndarray) and last.size < JOIN_SAMPLES:
                self._items[-1] = np.concatenate([last, samples])
            else:
                self._items.append(samples)
            self._samples += samples.size
            self._cond.notify_all()

    @property
    def flush_samples(self) -> int:
        """The room one queued flush takes."""
        return max(1, self.max_samples // 10)

    async def put_command(self, command: Command) -> None:
        """Queue a flush or an end behind the audio already queued. An end never waits; a
        flush waits for room (each is answered, so none is merged with another)."""
        async with self._cond:
            if isinstance(command, Flush):
                await self._cond.wait_for(lambda: self._samples < self.max_samples)
                self._samples += self.flush_samples
            self._items.append(command)
            self._cond.notify_all()

    async def get(self) -> np.ndarray | Command:
        """The next command, or all the audio queued before it as one array."""
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._items))
            if not isinstance(self._items[0], np.ndarray):
                command = self._items.popleft()
                if isinstance(command, Flush):
                    self._samples -= self.flush_samples
                    self._cond.notify_all()
                return command
            chunks: list[np.ndarray] = []
            while self._items and isinstance(self._items[0], np.ndarray):
                chunks.append(self._items.popleft())  # type: ignore[arg-type]
            self._samples -= sum(c.size for c in chunks)
            self._cond.notify_all()
            return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


@dataclass(frozen=True)
class CloseRequest:
    """Close the connection once everything queued before it has been sent."""

    code: int
    reason: str


Outgoing = ServerMessage | CloseRequest | Reply


class Outbox:
    """Messages waiting to be sent to one client, oldest first (merge-partials policy)."""

    def __init__(self, limit: int, on_drop: Callable[[], None] | None = None) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self._on_drop = on_drop
        self._items: deque[Outgoing] = deque()
        self._ready = asyncio.Event()
        self.closed = False  # a CloseRequest is queued: later messages are discarded

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Outgoing) -> bool:
        """Queue `message`; False when the queue is over its limit even after merging partials."""
        if self.closed:
            return True
        if isinstance(message, TranscriptPartial | TranscriptFinal):
            self._drop_partials(message.segment_id)
        self._items.append(message)
        self.closed = isinstance(message, CloseRequest)
        self._ready.set()
        return len(self._items) <= self.limit

    async def get(self) -> Outgoing:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def _drop_partials(self, segment_id: int) -> None:
        stale = [
            m
            for m in self._items
            if isinstance(m, TranscriptPartial) and m.segment_id == segment_id
        ]
        for m in stale:
            self._items.remove(m)
            if self._on_drop is not None:
                self._on_drop()


class ReadPacer:
    """A token bucket for reading one client's messages: `rate` a second, `burst` at once."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be positive and burst at least 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._t = now

    def take(self, now: float) -> float:
        """Count one message read at `now`; the seconds to wait before reading the next."""
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate) - 1
        self._t = now
        return max(0.0, -self._tokens / self.rate)


class ArrivalClock:
    """When the audio up to each point of the 16 kHz stream clock reached the server.

    Frames that arrive within `JOIN_S` of the first of them share one entry, stamped with the
    last one's time, so the clock holds at most one entry per `JOIN_S` however small the
    frames; entries older than `keep_s` of audio are dropped in batches.
    """

    JOIN_S = 0.01

    def __init__(self, sample_rate: int, keep_s: float = 60.0) -> None:
        self.sample_rate = sample_rate
        self._keep = int(keep_s * SAMPLE_RATE)
        self._received = 0  # samples at `sample_rate` received so far
        self._ends: list[int] = []  # stream-clock sample reached by each entry, ascending
        self._times: list[float] = []  # arrival time of each entry's last frame (loop clock, s)
        self._opened = -1.0  # arrival time of the first frame of the last entry

    def __len__(self) -> int:
        return len(self._ends)

    @property
    def received(self) -> int:
        """The stream clock (16 kHz samples) of all the audio received."""
        return self._received * SAMPLE_RATE // self.sample_rate

    def mark(self, n_samples: int, t: float) -> None:
        """`n_samples` more samples (at the client's rate) arrived at time `t`."""
        self._received += n_samples
        end = self.received
        if self._ends and t - self._opened < self.JOIN_S:
            self._ends[-1], self._times[-1] = end, t
            return
        self._ends.append(end)
        self._times.append(t)
        self._opened = t
        if self._ends[0] < end - 2 * self._keep:  # forget audio older than `keep_s`
            cut = bisect.bisect_left(self._ends, end - self._keep)
            del self._ends[:cut], self._times[:cut]

    def time_of(self, sample: int) -> float | None:
        """Arrival time of the frame that brought the stream clock to `sample`, if still known."""
        i = bisect.bisect_left(self._ends, sample)
        return self._times[i] if i < len(self._times) else None
