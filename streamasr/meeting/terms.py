"""The words of a slide worth biasing the recogniser with, and which slides' words apply when."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from streamasr import SAMPLE_RATE

# A word: letters or digits, with inner hyphens, apostrophes, dots or ampersands ("O'Neill",
# "gRPC", "Wi-Fi", "v2.1", "AT&T"); OCR's stray punctuation at its ends is not part of it.
_WORD = re.compile(r"[^\W_](?:[\w'’&.\-]*[^\W_])?")
# A number with its unit or currency: Whisper writes numbers as digits, and the unit's spelling
# ("ms", "GB", "%") is what a transcript gets wrong.
_QUANTITY = re.compile(
    r"(?:[$€£¥]\s?\d[\d,]*(?:\.\d+)?\s?(?:[kKmMbB]n?|million|billion)?)"
    r"|(?:\d[\d,]*(?:\.\d+)?\s?(?:%|‰|ms|µs|ns|s|min|h|Hz|kHz|MHz|GHz|[kKMGTP]i?B|bps|[kMG]bps|"
    r"mm|cm|m|km|mg|g|kg|t|ml|l|°C|°F|x|X|fps|dpi|px|W|kW|MW|V|A|mAh|kWh)\b)"
)
MIN_RARE_LETTERS = 4  # shorter words are nearly all common, or noise from the OCR


def _notable(word: str, rare: Callable[[str], bool]) -> bool:
    """An acronym, a word with a capital or a digit inside ("iPhone", "K8s"), or a word the
    recogniser's vocabulary has no single token for (`rare`): what it is likely to mishear."""
    letters = sum(c.isalpha() for c in word)
    if letters == 0:
        return False
    if sum(c.isupper() for c in word) >= 2 or any(c.isupper() for c in word[1:]):
        return True
    if any(c.isdigit() for c in word) and letters >= 1 and len(word) >= 2:
        return True
    return letters >= MIN_RARE_LETTERS and rare(word)


def extract_terms(text: str, rare: Callable[[str], bool]) -> list[str]:
    """Candidate terms of a slide's text, in reading order, without repeats (case-blind).

    On each line: a run of capitalised or notable words that holds a notable one, trimmed of
    common capitalised words at its ends ("Meeting With Linh Nguyen" gives "Linh Nguyen"); a
    lone notable word; a number with its unit or currency. `rare(word)` says whether the
    recogniser finds a word hard: for Whisper, that its tokenizer splits it."""
    terms: list[str] = []
    for line in text.splitlines():
        quantities = list(_QUANTITY.finditer(line))
        terms.extend(q.group(0).strip() for q in quantities)
        run: list[tuple[str, bool]] = []
        end = 0
        for m in _WORD.finditer(line):
            word = m.group(0)
            if any(q.start() <= m.start() < q.end() for q in quantities):
                continue  # part of a quantity, taken whole above
            if line[end : m.start()].strip():  # punctuation between: a term ends there
                terms.extend(_trimmed(run))
                run = []
            end = m.end()
            notable = _notable(word, rare)
            if notable or word[0].isupper():
                run.append((word, notable))
                continue
            terms.extend(_trimmed(run))
            run = []
        terms.extend(_trimmed(run))
    seen: set[str] = set()
    unique = []
    for term in terms:
        if term.casefold() not in seen:
            seen.add(term.casefold())
            unique.append(term)
    return unique


def _trimmed(run: list[tuple[str, bool]]) -> list[str]:
    """A run without the plain capitalised words at its ends; nothing when none is notable."""
    flags = [notable for _, notable in run]
    if not any(flags):
        return []
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    return [" ".join(word for word, _ in run[first : last + 1])]


def tokenizer_rarity(encode: Callable[[str], list[int]]) -> Callable[[str], bool]:
    """`rare` of a recogniser whose `encode` is its tokenizer: a word (lowercased, after a
    space, as it stands in running text) that takes more than one token."""
    return lambda word: len(encode(" " + word.lower())) > 1


@dataclass(frozen=True)
class TermWindow:
    """Which slides' terms bias the recogniser: those shown in the last `window_s`, the most
    recent first, at most `max_terms` in all (`bench/slides.py` measured the bound)."""

    window_s: float = 300.0  # a slide's words are said while it shows, and for some minutes
    max_terms: int = 16

    def __post_init__(self) -> None:
        if not self.window_s > 0 or self.max_terms < 0:
            raise ValueError(
                f"slide terms: the window must be positive and the number 0 or more, got "
                f"{self.window_s} s and {self.max_terms}"
            )


class SlideTerms:
    """The terms of the slides shown so far, on the stream clock."""

    def __init__(self, window: TermWindow | None = None) -> None:
        self.window = window or TermWindow()
        self._shown: list[tuple[int, tuple[str, ...]]] = []  # (sample, terms), oldest first

    def add(self, sample: int, terms: tuple[str, ...]) -> None:
        self._shown.append((sample, terms))
        self._shown.sort(key=lambda shown: shown[0])

    def current(self, position: int) -> tuple[str, ...]:
        """The terms that apply at stream position `position`."""
        horizon = position - round(self.window.window_s * SAMPLE_RATE)
        self._shown = [s for s in self._shown if s[0] >= horizon]
        picked: list[str] = []
        seen: set[str] = set()
        for sample, terms in reversed(self._shown):
            if sample > position:
                continue  # shown later on the clock (a replayed slide read ahead)
            for term in terms:
                if term.casefold() not in seen and len(picked) < self.window.max_terms:
                    seen.add(term.casefold())
                    picked.append(term)
        return tuple(picked)
