"""Word timing from cross-attention: normalise alignment heads, DTW, split tokens into words."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import numpy as np

from streamasr.scripts import is_punctuation, starts_word


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment of rows (tokens) to columns (frames) with minimal total `cost` (N, M).

    Steps are diagonal, down or right. Returns (row_indices, col_indices) along the path.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 from above, 2 from left
    for i in range(1, n + 1):
        row = cost[i - 1]
        prev = acc[i - 1]
        cur = acc[i]
        tr = trace[i]
        for j in range(1, m + 1):
            c0, c1, c2 = float(prev[j - 1]), float(prev[j]), float(cur[j - 1])
            if c0 <= c1 and c0 <= c2:
                best, step = c0, 0
            elif c1 <= c2:
                best, step = c1, 1
            else:
                best, step = c2, 2
            cur[j] = row[j - 1] + best
            tr[j] = step
    i, j = n, m
    rows: list[int] = []
    cols: list[int] = []
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd `width` along the last axis, reflect-padded."""
    if width <= 1 or x.shape[-1] < width:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    out: np.ndarray = np.median(windows, axis=-1)
    return out


def alignment_matrix(qk: np.ndarray, num_frames: int, medfilt_width: int = 7) -> np.ndarray:
    """Cross-attention logits (heads, tokens, enc_frames) to a (tokens, frames) similarity matrix.

    Softmax over the frames that hold audio, standardise per frame across tokens, median-filter
    along time, then average the heads.
    """
    w = qk[:, :, :num_frames].astype(np.float64)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    mean = w.mean(axis=-2, keepdims=True)
    std = w.std(axis=-2, keepdims=True) + 1e-10
    w = (w - mean) / std
    w = median_filter(w, medfilt_width)
    matrix: np.ndarray = w.mean(axis=0)
    return matrix


def split_words(
    tokens: Sequence[int], decode: Callable[[list[int]], str]
) -> tuple[list[str], list[list[int]]]:
    """Group tokens into words.

    A word starts at a token whose text begins with a space, or with a whole character of a
    script written without spaces (`scripts.starts_word`: each such character, or token of
    them, is a word of its own); punctuation joins the word before it.
    Tokens that decode to an incomplete UTF-8 sequence are merged with the next token.
    """
    words: list[str] = []
    groups: list[list[int]] = []
    pending: list[int] = []
    for tok in tokens:
        pending.append(tok)
        piece = decode(pending)
        if "\ufffd" in piece and len(pending) < 4:
            continue
        starts = starts_word(piece) or not words
        stripped = piece.strip()
        is_punct = is_punctuation(stripped) or (
            stripped != "" and all(ch in string.punctuation for ch in stripped)
        )
        if starts and not (is_punct and words and not piece.startswith(" ")):
            words.append(piece)
            groups.append(list(pending))
        else:
            words[-1] += piece
            groups[-1].extend(pending)
        pending = []
    if pending:
        if words:
            words[-1] += decode(pending)
            groups[-1].extend(pending)
        else:
            words.append(decode(pending))
            groups.append(list(pending))
    return words, groups


def word_boundaries(
    matrix: np.ndarray, groups: Sequence[Sequence[int]], frame_samples: int
) -> list[tuple[int, int]]:
    """DTW the (tokens, frames) matrix; return each word's (start_sample, end_sample)."""
    n_tokens = sum(len(g) for g in groups)
    if n_tokens == 0 or matrix.shape[1] == 0:
        return [(0, 0) for _ in groups]
    rows, cols = dtw_path(-matrix[:n_tokens])
    # The first frame each token is aligned to is where that token starts.
    jumps = np.concatenate([[True], np.diff(rows) > 0])
    token_start = cols[jumps]  # (n_tokens,)
    last = int(cols[-1]) + 1
    bounds: list[tuple[int, int]] = []
    idx = 0
    for g in groups:
        s = int(token_start[idx])
        idx += len(g)
        e = int(token_start[idx]) if idx < n_tokens else last
        bounds.append((s * frame_samples, max(e, s) * frame_samples))
    return bounds
