"""Transcript normalisation and word error rate (WER) for comparing hypotheses with references."""

from __future__ import annotations

import re
from collections.abc import Sequence

# fmt: off
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# fmt: on

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`´]")  # typographic forms of '
_DIGIT_GROUPS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # "1,000" -> "1000", so it stays one number
_NOT_WORD = re.compile(r"[^\w\s']|_")  # punctuation and symbols; hyphens split words
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # quotes, not in-word apostrophes


def number_words(n: int) -> list[str]:
    """0..99 as English words: 7 -> ['seven'], 42 -> ['forty', 'two'], 90 -> ['ninety']."""
    if not 0 <= n <= 99:
        raise ValueError(f"only 0..99 are spelled out, got {n}")
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    return [_TENS[tens]] if ones == 0 else [_TENS[tens], _ONES[ones]]


def normalize(text: str) -> list[str]:
    """`text` as lowercase words for WER.

    Punctuation and symbols become spaces (so "well-known" is two words and "10:30" is
    "ten thirty"), apostrophes are kept only inside words ("don't", not "'quoted'"), and a
    whole-word number 0..99 without a leading zero is spelled out ("21" -> "twenty one").
    Larger numbers, ordinals ("1st") and mixed tokens ("mp3") stay as written.
    """
    text = _APOSTROPHES.sub("'", text.lower())
    text = _DIGIT_GROUPS.sub("", text)
    text = _LOOSE_APOSTROPHE.sub(" ", _NOT_WORD.sub(" ", text))
    words: list[str] = []
    for token in text.split():
        if token.isascii() and token.isdigit() and (token == "0" or token[0] != "0"):
            value = int(token)
            if value <= 99:
                words += number_words(value)
                continue
        words.append(token)
    return words


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions."""
    if len(hyp) > len(ref):  # keep the DP row as short as the shorter sequence
        ref, hyp = hyp, ref
    row = list(range(len(hyp) + 1))  # row[j]: distance of ref[:i] to hyp[:j]
    for i, r in enumerate(ref, start=1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            best = min(
                row[j] + 1,  # ref word missing from hyp
                row[j - 1] + 1,  # extra hyp word
                diag + (r != h),  # match or substitution
            )
            diag, row[j] = row[j], best
    return row[-1]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: the word errors of all (ref, hyp) text pairs over all reference words.

    Both sides are normalised first. With no reference words at all, it is 0.0 if the
    hypotheses are empty too and infinite otherwise.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    errors = 0
    ref_words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r = normalize(ref)
        errors += word_errors(r, normalize(hyp))
        ref_words += len(r)
    if ref_words == 0:
        return 0.0 if errors == 0 else float("inf")
    return errors / ref_words
