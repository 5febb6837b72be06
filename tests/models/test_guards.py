"""The loop detector's thresholds and the compression ratio."""

from __future__ import annotations

import random

import pytest

from streamasr.models.guards import compression_ratio, loop_excess

NO, COMMA, VERY = 645, 11, 845  # " no", ",", " very" in Whisper's English vocabulary


def guarded(stream: list[int]) -> list[int]:
    """Feed `stream` one token at a time as the decoders do; stop where the guard fires."""
    out: list[int] = []
    for token in stream:
        out.append(token)
        excess = loop_excess(out)
        if excess:
            return out[:-excess]
    return out


def test_single_tokens_need_four_copies() -> None:
    assert loop_excess([5, 7, 7, 7], 16) == 0  # "no no no" is speech
    assert loop_excess([5, 7, 7, 7, 7], 16) == 3


def test_short_ngrams_need_three_copies_and_long_ones_two() -> None:
    assert loop_excess([1, 2, 1, 2], 16) == 0
    assert loop_excess([1, 2, 1, 2, 1, 2], 16) == 4
    phrase = [10, 11, 12, 13, 14]
    assert loop_excess([9, *phrase, *phrase], 16) == 5
    assert loop_excess([9, *phrase, *phrase], 4) == 0  # longer than max_n: not looked for
    assert loop_excess([9, *phrase, *phrase], 0) == 0  # 0: no guard


@pytest.mark.parametrize("n", [5, 20, 40])
def test_a_phrase_of_any_length_said_again_keeps_the_first_copy(n: int) -> None:
    rng = random.Random(n)
    lead = [rng.randrange(1000, 2000) for _ in range(7)]
    phrase = [rng.randrange(2000, 3000) for _ in range(n)]
    # two and a half copies, as a model that does not see where the audio ends says it
    stream = [*lead, *phrase, *phrase, *phrase[: n // 2]]
    assert guarded(stream) == [*lead, *phrase]
    assert loop_excess([*lead, *phrase, *phrase]) == n
    # one token different in the second copy: not a loop
    other = [*phrase[:-1], 999]
    assert guarded([*lead, *phrase, *other]) == [*lead, *phrase, *other]


def test_legitimate_repetitions_are_kept() -> None:
    no_no_no = [NO, COMMA, NO, COMMA, NO, 13]  # " no, no, no."
    very_very = [257, VERY, VERY, 890]  # " a very very long"
    for stream in (no_no_no, very_very, [*very_very, *no_no_no]):
        assert guarded(stream) == stream


def test_compression_ratio() -> None:
    assert compression_ratio("") == 0.0
    assert compression_ratio("la " * 100) > 2.4 > compression_ratio("A plain sentence of words.")
