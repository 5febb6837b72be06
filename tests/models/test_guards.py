"""The loop detector's thresholds and the compression ratio."""

from __future__ import annotations

from streamasr.models.guards import compression_ratio, loop_excess


def test_single_tokens_need_four_copies() -> None:
    assert loop_excess([5, 7, 7, 7], 16) == 0  # "no no no" is speech
    assert loop_excess([5, 7, 7, 7, 7], 16) == 3


def test_short_ngrams_need_three_copies_and_long_ones_two() -> None:
    assert loop_excess([1, 2, 1, 2], 16) == 0
    assert loop_excess([1, 2, 1, 2, 1, 2], 16) == 4
    phrase = [10, 11, 12, 13, 14]
    assert loop_excess([9, *phrase, *phrase], 16) == 5
    assert loop_excess([9, *phrase, *phrase], 4) == 0  # longer than max_n: not looked for


def test_compression_ratio() -> None:
    assert compression_ratio("") == 0.0
    assert compression_ratio("la " * 100) > 2.4 > compression_ratio("A plain sentence of words.")
