"""LocalAgreement-n: commit the token prefix that the last n hypotheses of a segment agree on."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by every sequence."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


class Stabilizer:
    """Tracks one segment's hypotheses and the committed (stable) token prefix.

    A token is committed once `agreement` consecutive hypotheses agree on it, and only up to a
    word boundary that every one of them shows: the word after a committed prefix must start
    in each hypothesis (a following token that begins with a space, or with a whole character
    of a script written without spaces: `scripts.starts_word`), so a word still growing at the
    end of the audio is never committed. Committed tokens never change.
    """

    def __init__(self, agreement: int, starts_word: Callable[[int], bool]) -> None:
        self.agreement = agreement
        self._starts_word = starts_word
        self._recent: deque[tuple[int, ...]] = deque(maxlen=agreement)
        self.committed: tuple[int, ...] = ()

    def reset(self) -> None:
        self._recent.clear()
        self.committed = ()

    def update(self, tokens: Sequence[int]) -> tuple[int, ...]:
        """Add a hypothesis (which should extend `committed`); return the committed prefix."""
        hyp = tuple(tokens)
        if hyp[: len(self.committed)] != self.committed:
            # The model moved away from what we committed: keep the commitment, start over.
            self._recent.clear()
            return self.committed
        self._recent.append(hyp)
        if len(self._recent) < self.agreement:
            return self.committed
        n = common_prefix(list(self._recent))
        # Back off to a boundary where every hypothesis starts a new word right after.
        while n > len(self.committed) and not all(
            len(h) > n and self._starts_word(h[n]) for h in self._recent
        ):
            n -= 1
        if n > len(self.committed):
            self.committed = hyp[:n]
        return self.committed
