"""StreamResampler and AudioInput: streaming equals one-shot, rate checks, atomic rejects."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from streamasr.audio.pcm import decode_pcm
from streamasr.audio.resample import AudioInput, StreamResampler
from streamasr.errors import AudioFormatError

RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000]


def _signal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(n)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    in_rate=st.sampled_from(RATES),
    n=st.integers(0, 20_000),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=12),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_one_shot(in_rate: int, n: int, cuts: list[float], seed: int) -> None:
    x = _signal(n, seed)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    r = StreamResampler(in_rate)
    parts = [r.process(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    y = np.concatenate([*parts, r.flush()])
    ref = x if in_rate == 16000 else soxr.resample(x, in_rate, 16000)
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
    assert abs(len(y) - n * 16000 / in_rate) <= 1


@pytest.mark.parametrize("in_rate", [8000, 44100, 48000])
def test_flush_resets_for_a_new_signal(in_rate: int) -> None:
    x = _signal(in_rate // 2, 1)
    r = StreamResampler(in_rate)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(first, second)


def test_same_rate_is_passthrough() -> None:
    x = _signal(1000, 2)
    r = StreamResampler(16000, 16000)
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().shape == (0,)


@pytest.mark.parametrize("rate", [0, 7999, 48001, 96000, -16000])
def test_rates_outside_range_are_rejected(rate: int) -> None:
    with pytest.raises(AudioFormatError, match="outside"):
        StreamResampler(rate)
    with pytest.raises(AudioFormatError):
        AudioInput("pcm_s16le", rate, 1)


def test_bad_format_is_rejected_up_front() -> None:
    with pytest.raises(AudioFormatError):
        AudioInput("pcm_u8", 16000, 1)
    with pytest.raises(AudioFormatError):
        AudioInput("pcm_s16le", 16000, 3)


def _s16_stereo_bytes(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, size=(n, 2), dtype=np.int16).astype("<i2").tobytes()


def test_audio_input_is_decode_then_resample() -> None:
    data = _s16_stereo_bytes(48000, 3)
    inp = AudioInput("pcm_s16le", 48000, 2)
    out = np.concatenate([inp.push(data[i : i + 3840]) for i in range(0, len(data), 3840)])
    out = np.concatenate([out, inp.flush()])
    ref = soxr.resample(decode_pcm(data, encoding="pcm_s16le", channels=2), 48000, 16000)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    assert len(out) == 16000


def test_rejected_chunk_leaves_state_untouched() -> None:
    data = _s16_stereo_bytes(4410, 4)
    clean, dirty = AudioInput("pcm_s16le", 44100, 2), AudioInput("pcm_s16le", 44100, 2)
    half = len(data) // 2
    a = [clean.push(data[:half]), clean.push(data[half:]), clean.flush()]
    b = [dirty.push(data[:half])]
    with pytest.raises(AudioFormatError):
        dirty.push(b"\x01\x02\x03")  # not a whole stereo s16 frame
    b += [dirty.push(data[half:]), dirty.flush()]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
