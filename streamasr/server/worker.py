"""The decode pool: a dedicated thread pool that runs the sessions' work off the event loop;
and the model set-up every entry point shares (threads, warm-up, capacity, the heap)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from streamasr.models.base import AsrModel, TranscribeRequest, run_one

T = TypeVar("T")


class DecodePool:
    """A fixed set of threads shared by all sessions.

    A session awaits each of its operations before starting the next, so they run strictly in
    order; those of different sessions queue FIFO, which shares the threads round-robin.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="streamasr-decode")

    async def run(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """`fn(*args)` on a pool thread; returns its result and its wall time in seconds."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(_timed, fn, *args))

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a pool thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def shutdown(self) -> None:
        """Drop queued calls; a call already running finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


MALLOC_ARENAS = 2  # glibc malloc arenas of a long-running process (`limit_native_memory`)
# Shapes whose oneDNN kernels stay cached, in each of the two caches below: one encoder call's
# shapes (about 8: projections, MLP, attention products, convolutions) twice over
ONEDNN_CACHED_SHAPES = 32
# torch's oneDNN (ideep) computation cache, and oneDNN's own primitive cache: each keeps the
# kernels and buffers of up to 1024 shapes by default
NATIVE_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def limit_native_memory(
    arenas: int = MALLOC_ARENAS, cached_shapes: int = ONEDNN_CACHED_SHAPES
) -> bool:
    """Bound the native memory of a process that runs for days; call it first, before any
    thread allocates and before the model's first call.

    - glibc gives every thread that allocates an arena of its own (up to 8 per core), and each
      keeps the peak of what its thread held: with a pool thread per session, 50-90 MB more
      resident memory at 4 streams. `mallopt` caps them at `arenas`.
    - A bfloat16 matrix product or convolution on the CPU runs in oneDNN, which keeps the
      kernels and buffers of each new input shape in two caches of 1024 shapes each: 0.5-1 MB
      a shape. Every utterance length is a new shape to the encoder, so a daemon grew by about
      200 MB an hour and by 1 MB a decode of a new length. Setting their variables before the
      first such call caps them at `cached_shapes` (docs/engine.md, "Memory").

    A variable already in the environment (`MALLOC_ARENA_MAX`, `LRU_CACHE_CAPACITY`,
    `ONEDNN_PRIMITIVE_CACHE_CAPACITY`) wins. False where the C library is not glibc (the
    arenas are left alone then)."""
    for name in NATIVE_CACHE_VARIABLES:
        os.environ.setdefault(name, str(cached_shapes))
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
TRIM_INTERVAL_S = 2.0  # how often the daemon hands freed heap pages back (`trim_heap`)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (found once: `find_library` runs ldconfig)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc has it, other C libraries do not
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> bool:
    """Give the pages of freed memory in the middle of malloc's heaps back to the system.

    glibc returns only the top of a heap on `free`; tensors and arrays of different sizes
    freed below live ones stay resident. At 4 streams that was 0.84 against 0.79 GiB of
    peak RSS, trimmed every 2 s (docs/engine.md, "Memory"). False where the C library is
    not glibc: there is nothing to trim then."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (fewer than cores is often faster on a small shared CPU)."""
    if threads is not None:
        import torch  # the models already depend on torch; imported only when asked

        torch.set_num_threads(threads)


def warm_up(model: AsrModel) -> None:
    """One dummy decode with word timings, so the first client does not pay for lazy init."""
    frames = 200  # 2 s
    pad = frames + 100  # what an utterance-mode window of 2 s looks like
    features = np.zeros((model.info.features.n_mels, pad), dtype=np.float32)  # (n_mels, T)
    run_one(model, TranscribeRequest(features, frames, word_timestamps=True))


# Sessions times the time of one full-window final (as the daemon measures it after its warm-up):
# with tiny.en on 2 cores, 8 real-time clients held a p95 final latency under 1.5 s where a
# final took 0.20-0.21 s (bfloat16 encoder), and 5-6 where it took 0.31 s (float32), which
# this puts at 5; docs/engine.md, "Capacity".
SESSION_FINAL_BUDGET_S = 1.7
MAX_DERIVED_SESSIONS = 256


def time_final(model: AsrModel, tries: int = 3) -> float:
    """Seconds of one final on a full window (encoder pass, a short decode, word timings): the
    fastest of `tries`, so a busy moment of the machine does not count."""
    spec = model.info.features
    features = np.zeros((spec.n_mels, spec.window_frames), dtype=np.float32)
    request = TranscribeRequest(features, spec.window_frames // 10, word_timestamps=True)
    times = []
    for _ in range(tries):
        t0 = time.perf_counter()
        run_one(model, request)
        times.append(time.perf_counter() - t0)
    return min(times)


def estimate_capacity(final_s: float, workers: int = 1) -> int:
    """Real-time streams the daemon can take when one full-window final costs `final_s`
    seconds: the default of `max_sessions`. An estimate for Whisper-like models on the CPU;
    measure with `bench/serve.py` and set `max_sessions` where it matters."""
    if final_s <= 0:
        return MAX_DERIVED_SESSIONS
    streams = workers * SESSION_FINAL_BUDGET_S / final_s
    return max(1, min(MAX_DERIVED_SESSIONS, int(streams + 1e-9)))  # 16.999.. is 17
