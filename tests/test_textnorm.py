"""Text normalisation for WER, word-level Levenshtein, and corpus WER."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamasr.textnorm import normalize, number_words, wer, word_errors

words = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  lots   of\tspace\n", "lots of space"),
        ("I don't know, it's fine.", "i don't know it's fine"),
        ("I don\u2019t", "i don't"),  # typographic apostrophe
        ("'quoted' and the dogs' bowls", "quoted and the dogs bowls"),
        ("a well-known e-mail", "a well known e mail"),
        ("I have 3 cats and 21 dogs", "i have three cats and twenty one dogs"),
        ("0, 10, 19, 20, 90, 99", "zero ten nineteen twenty ninety ninety nine"),
        ("meet at 10:30", "meet at ten thirty"),
        ("100 or 1,000 or 07", "100 or 1000 or 07"),
        ("the 1st mp3", "the 1st mp3"),
        ("snake_case", "snake case"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected.split()


def test_number_words_covers_0_to_99_and_rejects_the_rest() -> None:
    spelled = [" ".join(number_words(n)) for n in range(100)]
    assert len(set(spelled)) == 100
    assert spelled[45] == "forty five"
    for bad in (-1, 100):
        with pytest.raises(ValueError):
            number_words(bad)


@pytest.mark.parametrize(
    ("ref", "hyp", "errors"),
    [
        ("", "", 0),
        ("a b c", "a b c", 0),
        ("a b c", "", 3),  # three deletions
        ("", "a b", 2),  # two insertions
        ("a b c", "a x c", 1),  # one substitution
        ("a b c d", "a c d", 1),
        ("a b c", "b c d", 2),  # shift: a deletion and an insertion
        ("kitten sitting on the mat", "sitting on a mat", 2),
    ],
)
def test_word_errors_known_cases(ref: str, hyp: str, errors: int) -> None:
    assert word_errors(ref.split(), hyp.split()) == errors


@given(words, words)
def test_word_errors_is_a_bounded_symmetric_distance(a: list[str], b: list[str]) -> None:
    d = word_errors(a, b)
    assert d == word_errors(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert (d == 0) == (a == b)


@given(words, words, words)
def test_word_errors_triangle_inequality(a: list[str], b: list[str], c: list[str]) -> None:
    assert word_errors(a, c) <= word_errors(a, b) + word_errors(b, c)


@given(st.lists(st.text(max_size=40), max_size=5))
def test_wer_of_a_text_with_itself_is_zero(texts: list[str]) -> None:
    assert wer(texts, texts) == 0.0


def test_wer_pools_errors_over_all_reference_words() -> None:
    refs = ["The cat sat.", "On the mat, today!"]
    hyps = ["the cat sat", "on a mat"]  # one substitution, one deletion; 7 reference words
    assert wer(refs, hyps) == pytest.approx(2 / 7)
    assert wer(["I have 2 dogs"], ["i have two dogs"]) == 0.0


def test_wer_edge_cases() -> None:
    assert wer([], []) == 0.0
    assert wer([""], [""]) == 0.0
    assert math.isinf(wer([""], ["hello"]))
    assert wer(["one two"], ["three four five six"]) == 2.0  # insertions can push WER past 1
    with pytest.raises(ValueError):
        wer(["a"], [])
