"""Decoder-side hallucination guards shared by every model family: loops and compressibility."""

from __future__ import annotations

import zlib


def compression_ratio(text: str) -> float:
    """len(text bytes) / len(zlib(text bytes)); repetitive text compresses well."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loop_excess(tokens: list[int], max_n: int | None = None) -> int:
    """How many tokens at the end of `tokens` are extra copies of a looping n-gram, else 0.

    A loop is an n-gram repeated back to back: 4 times for n = 1 ("no no no" is speech),
    3 times for n <= 4, twice for longer n-grams of any length up to `max_n` (None: any). A
    whole phrase said twice in a row is Whisper's classic failure when it does not see where
    the audio ends, and rarely real speech. Dropping the excess keeps the first copy.

    Checked after every new token, so only n-grams ending in it count; an n is tried only if
    the token n places back is the same (cheap: a few comparisons per step for most n).
    """
    size = len(tokens)
    limit = size // 2 if max_n is None else min(max_n, size // 2)
    for n in range(1, limit + 1):
        if tokens[-1 - n] != tokens[-1]:  # copies of the n-gram end with the same token
            continue
        times = 4 if n == 1 else 3 if n <= 4 else 2
        if size < n * times:
            continue
        tail = tokens[-n:]
        if all(tokens[size - (k + 1) * n : size - k * n] == tail for k in range(1, times)):
            return (times - 1) * n
    return 0
