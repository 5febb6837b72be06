"""Decoder-side hallucination guards shared by every model family: loops and compressibility."""

from __future__ import annotations

import zlib


def compression_ratio(text: str) -> float:
    """len(text bytes) / len(zlib(text bytes)); repetitive text compresses well."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loop_excess(tokens: list[int], max_n: int) -> int:
    """How many tokens at the end of `tokens` are extra copies of a looping n-gram, else 0.

    A loop is an n-gram repeated back to back: 4 times for n = 1 ("no no no" is speech),
    3 times for n <= 4, twice for longer n-grams (a whole phrase said twice in a row is
    Whisper's classic failure on short or noisy windows, rarely real speech). Dropping the
    excess keeps one copy.
    """
    for n in range(1, max_n + 1):
        times = 4 if n == 1 else 3 if n <= 4 else 2
        if len(tokens) < n * times:
            continue
        tail = tokens[-n:]
        if all(
            tokens[len(tokens) - (k + 1) * n : len(tokens) - k * n] == tail for k in range(1, times)
        ):
            return (times - 1) * n
    return 0
