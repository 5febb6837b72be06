"""decode_pcm: exact round trips, stereo downmix, and rejection of malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamasr.audio.pcm import decode_pcm
from streamasr.errors import AudioFormatError

int16_arrays = hnp.arrays(np.int16, st.integers(0, 2000))
unit_floats = st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_infinity=False)
float32_arrays = hnp.arrays(np.float32, st.integers(0, 2000), elements=unit_floats)


@given(int16_arrays)
def test_s16_round_trip(x: np.ndarray) -> None:
    y = decode_pcm(x.astype("<i2").tobytes(), encoding="pcm_s16le", channels=1)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, x.astype(np.float32) / 32768.0)
    assert np.all(np.abs(y) <= 1.0)


@given(float32_arrays)
def test_f32_round_trip(x: np.ndarray) -> None:
    y = decode_pcm(x.astype("<f4").tobytes(), encoding="pcm_f32le", channels=1)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


@given(hnp.arrays(np.int16, st.tuples(st.integers(0, 1000), st.just(2))))
def test_s16_stereo_is_averaged(frames: np.ndarray) -> None:
    y = decode_pcm(frames.astype("<i2").tobytes(), encoding="pcm_s16le", channels=2)
    expected = frames.astype(np.float64).mean(axis=1) / 32768.0
    assert y.shape == (frames.shape[0],)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-7)


@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 1000), st.just(2)), elements=unit_floats))
def test_f32_stereo_is_averaged(frames: np.ndarray) -> None:
    y = decode_pcm(frames.astype("<f4").tobytes(), encoding="pcm_f32le", channels=2)
    np.testing.assert_allclose(y, frames.astype(np.float64).mean(axis=1), rtol=0, atol=1e-7)


@given(
    st.sampled_from([("pcm_s16le", 1), ("pcm_s16le", 2), ("pcm_f32le", 1), ("pcm_f32le", 2)]),
    st.binary(max_size=64),
)
def test_partial_frames_are_rejected(fmt: tuple[str, int], data: bytes) -> None:
    encoding, channels = fmt
    frame_bytes = (2 if encoding == "pcm_s16le" else 4) * channels
    if len(data) % frame_bytes == 0:
        data += b"\x00"
    with pytest.raises(AudioFormatError, match=f"^{len(data)} bytes"):
        decode_pcm(data, encoding=encoding, channels=channels)


def test_unknown_encoding_and_channels() -> None:
    with pytest.raises(AudioFormatError, match="encoding"):
        decode_pcm(b"\x00\x00", encoding="mulaw", channels=1)
    for channels in (0, 3, 6):
        with pytest.raises(AudioFormatError, match="channels"):
            decode_pcm(b"", encoding="pcm_s16le", channels=channels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_rejected(bad: float) -> None:
    data = np.array([0.1, bad, 0.2], dtype="<f4").tobytes()
    with pytest.raises(AudioFormatError, match="NaN or infinite"):
        decode_pcm(data, encoding="pcm_f32le", channels=1)


def test_f32_is_clipped_to_unit_range() -> None:
    data = np.array([1.5, -2.0, 0.25], dtype="<f4").tobytes()
    np.testing.assert_array_equal(
        decode_pcm(data, encoding="pcm_f32le", channels=1), [1.0, -1.0, 0.25]
    )


def test_empty_input_is_empty_output() -> None:
    y = decode_pcm(b"", encoding="pcm_s16le", channels=2)
    assert y.shape == (0,) and y.dtype == np.float32


def test_g711_matches_the_itu_tables() -> None:
    """Codes of ITU-T G.711 with their linear values (16-bit scale)."""
    mulaw = decode_pcm(bytes([0xFF, 0x7F, 0x80, 0x00, 0xEF]), encoding="pcm_mulaw", channels=1)
    assert (mulaw * 32768).tolist() == [0, 0, 32124, -32124, 132]
    alaw = decode_pcm(bytes([0xD5, 0x55, 0xAA, 0x2A]), encoding="pcm_alaw", channels=1)
    assert (alaw * 32768).tolist() == [8, -8, 32256, -32256]
    stereo = decode_pcm(bytes([0x80, 0x00]), encoding="pcm_mulaw", channels=2)
    assert stereo.tolist() == [0.0]  # +32124 and -32124 average to 0


def test_g711_matches_the_stdlib_decoder_on_every_code() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the stdlib reference, until Python 3.13
    codes = bytes(range(256))
    for encoding, expand in (("pcm_mulaw", audioop.ulaw2lin), ("pcm_alaw", audioop.alaw2lin)):
        want = np.frombuffer(expand(codes, 2), "<i2") / 32768
        assert np.array_equal(decode_pcm(codes, encoding=encoding, channels=1), want)
