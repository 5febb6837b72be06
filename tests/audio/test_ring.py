"""SampleRing: absolute addressing, bounded capacity, trimming, against a plain-array model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamasr.audio.ring import SampleRing


def _ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)  # sample value == its index


def test_absolute_addressing_across_wraps() -> None:
    ring = SampleRing(max_samples=1000)
    pos = 0
    for n in [300, 450, 700, 1, 999, 250]:
        ring.append(_ramp(pos, n))
        pos += n
        assert ring.end_sample == pos
        assert ring.start_sample == max(0, pos - 1000)
        np.testing.assert_array_equal(
            ring.slice(ring.start_sample, pos), _ramp(ring.start_sample, len(ring))
        )
    np.testing.assert_array_equal(ring.slice(pos - 10, pos - 5), _ramp(pos - 10, 5))


def test_append_larger_than_capacity_keeps_the_newest() -> None:
    ring = SampleRing(max_samples=100, start_sample=50)
    ring.append(_ramp(50, 350))
    assert (ring.start_sample, ring.end_sample) == (300, 400)
    np.testing.assert_array_equal(ring.slice(300, 400), _ramp(300, 100))


def test_slice_outside_kept_range_raises() -> None:
    ring = SampleRing(max_samples=100)
    ring.append(_ramp(0, 250))
    with pytest.raises(ValueError, match="outside"):
        ring.slice(149, 200)
    with pytest.raises(ValueError, match="outside"):
        ring.slice(200, 251)
    with pytest.raises(ValueError, match="reversed"):
        ring.slice(220, 210)
    assert ring.slice(250, 250).shape == (0,)


def test_trim_before_and_reset() -> None:
    ring = SampleRing(max_samples=1000)
    ring.append(_ramp(0, 500))
    ring.trim_before(200)
    assert ring.start_sample == 200
    ring.trim_before(100)  # already gone: no-op
    assert ring.start_sample == 200
    with pytest.raises(ValueError):
        ring.slice(199, 300)
    with pytest.raises(ValueError, match="past end_sample"):
        ring.trim_before(501)
    ring.trim_before(500)
    assert len(ring) == 0
    ring.append(_ramp(500, 10))
    np.testing.assert_array_equal(ring.slice(500, 510), _ramp(500, 10))
    ring.reset(7)
    assert (ring.start_sample, ring.end_sample) == (7, 7)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SampleRing(max_samples=0)
    with pytest.raises(ValueError):
        SampleRing(max_samples=10).append(np.zeros((2, 2), dtype=np.float32))


def test_growth_is_geometric_and_bounded() -> None:
    ring = SampleRing(max_samples=200_000)
    caps = set()
    for i in range(500):
        ring.append(_ramp(i * 1000, 1000))
        caps.add(ring._buf.shape[0])
    assert max(caps) == 200_000
    assert len(caps) <= 6  # 16384 -> 32768 -> ... -> 200000: a handful of reallocations


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 700)),
        st.tuples(st.just("trim"), st.floats(0.0, 1.0)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(max_samples=st.integers(1, 2000), operations=ops)
def test_matches_plain_array_model(max_samples: int, operations: list[tuple[str, float]]) -> None:
    ring = SampleRing(max_samples=max_samples)
    start = end = 0  # the model: samples [start, end) kept, value == index
    for op, arg in operations:
        if op == "append":
            n = int(arg)
            ring.append(_ramp(end, n))
            end += n
            start = max(start, end - max_samples)
        else:
            start = max(start, start + int(arg * (end - start)))
            ring.trim_before(start)
        assert (ring.start_sample, ring.end_sample) == (start, end)
        np.testing.assert_array_equal(ring.slice(start, end), _ramp(start, end - start))
