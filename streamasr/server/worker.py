"""The decode pool: a dedicated thread pool that runs every model call off the event loop."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from streamasr.config import DecodeConfig
from streamasr.models.base import AsrModel

T = TypeVar("T")


class DecodePool:
    """A fixed set of threads shared by all sessions.

    A session awaits each of its calls before making the next, so its calls run strictly in
    order; calls of different sessions queue FIFO, which shares the threads round-robin.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="streamasr-decode")

    async def run(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """`fn(*args)` on a pool thread; returns its result and its wall time in seconds."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(_timed, fn, *args))

    def shutdown(self) -> None:
        """Drop queued calls; a call already running finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (fewer than cores is often faster on a small shared CPU)."""
    if threads is not None:
        import torch  # the models already depend on torch; imported only when asked

        torch.set_num_threads(threads)


def warm_up(model: AsrModel) -> None:
    """One dummy decode with word timings, so the first client does not pay for lazy init."""
    frames = 200  # 2 s
    pad = frames + 100  # what an utterance-mode window of 2 s looks like
    features = np.zeros((model.features.n_mels, pad), dtype=np.float32)  # (n_mels, T)
    model.transcribe(
        features,
        num_frames=frames,
        prompt=[],
        options=DecodeConfig(),
        word_timestamps=True,
    )
