"""LocalAgreement commitment rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamasr.engine.stabilizer import Stabilizer, common_prefix


# Token ids >= 100 start a word (stand-ins for tokens with a leading space).
def starts(t: int) -> bool:
    return t >= 100


def test_commits_only_what_two_hypotheses_agree_on_up_to_a_word_start() -> None:
    s = Stabilizer(2, starts)
    assert s.update([100, 1, 101]) == ()
    # agree on [100, 1, 101] but 101's word may still grow: commit up to where 101 starts
    assert s.update([100, 1, 101, 2]) == (100, 1)
    # the previous hypothesis ended inside "101 2": that word may still grow
    assert s.update([100, 1, 101, 2, 102]) == (100, 1)
    assert s.update([100, 1, 101, 2, 102, 3]) == (100, 1, 101, 2)


def test_a_word_still_growing_at_the_end_is_not_committed() -> None:
    s = Stabilizer(2, starts)
    s.update([100, 101])
    assert s.update([100, 101]) == (100,)


def test_disagreeing_hypothesis_keeps_commitment() -> None:
    s = Stabilizer(2, starts)
    s.update([100, 101, 102])
    assert s.update([100, 101, 102]) == (100, 101)
    assert s.update([105, 106]) == (100, 101)  # the model diverged: nothing is taken back


def test_agreement_of_three() -> None:
    s = Stabilizer(3, starts)
    assert s.update([100, 101, 102]) == ()
    assert s.update([100, 101, 102]) == ()
    assert s.update([100, 101, 102]) == (100, 101)


@given(st.lists(st.lists(st.integers(0, 200), max_size=12), min_size=1, max_size=10))
def test_committed_prefix_only_grows_and_is_a_prefix_of_an_agreeing_hypothesis(
    hyps: list[list[int]],
) -> None:
    s = Stabilizer(2, starts)
    prev: tuple[int, ...] = ()
    for h in hyps:
        c = s.update(h)
        assert c[: len(prev)] == prev
        if c != prev:
            assert tuple(h[: len(c)]) == c
        prev = c


def test_common_prefix() -> None:
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([]) == 0
