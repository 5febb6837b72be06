"""DTW word timing helpers."""

from __future__ import annotations

import numpy as np

from streamasr.models.timing import dtw_path, median_filter, split_words, word_boundaries


def test_dtw_follows_the_cheap_diagonal_band() -> None:
    cost = np.ones((3, 9))
    for i in range(3):
        cost[i, 3 * i : 3 * i + 3] = 0.0
    rows, cols = dtw_path(cost)
    assert rows[0] == 0 and cols[0] == 0 and rows[-1] == 2 and cols[-1] == 8
    assert np.all(np.diff(rows) >= 0) and np.all(np.diff(cols) >= 0)
    assert cost[rows, cols].sum() == 0.0


def test_median_filter_removes_a_spike() -> None:
    x = np.zeros((1, 9))
    x[0, 4] = 10.0
    assert median_filter(x, 3)[0, 4] == 0.0


def test_split_words_joins_subwords_and_punctuation() -> None:
    pieces = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: "."}
    words, groups = split_words([1, 2, 3, 4, 5], lambda ts: "".join(pieces[t] for t in ts))
    assert words == [" Hello,", " world."]
    assert groups == [[1, 2], [3, 4, 5]]


def test_word_boundaries_are_monotonic_sample_ranges() -> None:
    matrix = np.full((3, 30), -1.0)
    for i in range(3):
        matrix[i, 10 * i : 10 * i + 10] = 1.0
    bounds = word_boundaries(matrix, [[0], [1, 2]], frame_samples=320)
    assert bounds[0] == (0, 10 * 320)
    assert bounds[1][0] == 10 * 320 and bounds[1][1] == 30 * 320
