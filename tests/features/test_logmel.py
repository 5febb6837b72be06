"""LogMelBuffer equals transformers' WhisperFeatureExtractor for any chunking and both paddings."""

from __future__ import annotations

import numpy as np
import pytest
import speech
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from streamasr.features.logmel import MAX_SAMPLES, LogMelBuffer, mel_filters

ATOL = 1e-4
SR = 16000


@pytest.fixture(scope="module")
def extractors() -> dict[int, WhisperFeatureExtractor]:
    return {n: WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


def reference(
    fe: WhisperFeatureExtractor, x: np.ndarray, *, padded: bool, max_length: int | None = None
) -> np.ndarray:
    padding = "max_length" if padded else "longest"
    out = fe(x, sampling_rate=SR, padding=padding, max_length=max_length, return_tensors="np")
    return np.asarray(out.input_features[0])


def buffered(x: np.ndarray, n_mels: int, chunk: int) -> LogMelBuffer:
    mel = LogMelBuffer(n_mels)
    for part in speech.chunks(x, chunk):
        mel.append(part)
    return mel


@pytest.fixture(scope="module")
def utterance(sentences: list[np.ndarray]) -> np.ndarray:
    """Speech with digital silence inside and around it (~8 s)."""
    a, b = sentences
    return np.concatenate(
        [speech.silence(0.3), a, speech.silence(0.7), 0.05 * b, speech.silence(0.2)]
    )


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filters_equal_transformers(n_mels: int) -> None:
    ref = mel_filter_bank(201, n_mels, 0.0, 8000.0, SR, norm="slaney", mel_scale="slaney")
    np.testing.assert_allclose(mel_filters(n_mels), ref.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("chunk_ms", [10, 37, 1000])
def test_equals_extractor(
    extractors: dict[int, WhisperFeatureExtractor],
    utterance: np.ndarray,
    n_mels: int,
    chunk_ms: int,
) -> None:
    fe = extractors[n_mels]
    mel = buffered(utterance, n_mels, chunk_ms * SR // 1000)
    assert mel.num_samples == len(utterance) and mel.num_frames == len(utterance) // 160
    padded = mel.features(pad_to_frames=3000)
    assert padded.shape == (n_mels, 3000) and padded.dtype == np.float32
    np.testing.assert_allclose(padded, reference(fe, utterance, padded=True), rtol=0, atol=ATOL)
    longest = mel.features()
    assert longest.shape == (n_mels, mel.num_frames)
    np.testing.assert_allclose(longest, reference(fe, utterance, padded=False), rtol=0, atol=ATOL)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_between_appends(
    extractors: dict[int, WhisperFeatureExtractor], utterance: np.ndarray, n_mels: int
) -> None:
    """features() mid-stream (as a session calls it for partials) equals the prefix's."""
    fe = extractors[n_mels]
    mel = LogMelBuffer(n_mels)
    pos = 0
    for end in (250, 3217, 16000, 16159, 40000, len(utterance)):
        mel.append(utterance[pos:end])
        pos = end
        prefix = utterance[:end]
        np.testing.assert_allclose(
            mel.features(3000), reference(fe, prefix, padded=True), rtol=0, atol=ATOL
        )
        np.testing.assert_allclose(
            mel.features(), reference(fe, prefix, padded=False), rtol=0, atol=ATOL
        )


@pytest.mark.parametrize("n", [201, 250, 360, 479, 1000])
def test_short_segments(
    extractors: dict[int, WhisperFeatureExtractor], utterance: np.ndarray, n: int
) -> None:
    x = utterance[SR : SR + n]
    for chunk in (37, n):
        mel = buffered(x, 80, chunk)
        np.testing.assert_allclose(
            mel.features(3000), reference(extractors[80], x, padded=True), atol=ATOL, rtol=0
        )
        np.testing.assert_allclose(
            mel.features(), reference(extractors[80], x, padded=False), atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("short_by", [0, 1, 100, 199, 200, 201, 333])
def test_full_window_end_reflection(
    extractors: dict[int, WhisperFeatureExtractor], utterance: np.ndarray, short_by: int
) -> None:
    """A segment (nearly) filling 30 s: the end reflection folds audio into the tail frames."""
    x = np.resize(utterance, MAX_SAMPLES - short_by)
    mel = buffered(x, 80, 16000)
    np.testing.assert_allclose(
        mel.features(3000), reference(extractors[80], x, padded=True), atol=ATOL, rtol=0
    )


def test_silence_and_empty(extractors: dict[int, WhisperFeatureExtractor]) -> None:
    mel = LogMelBuffer(80)
    np.testing.assert_array_equal(mel.features(3000), np.full((80, 3000), -1.5, np.float32))
    assert mel.features().shape == (80, 0)
    x = speech.silence(1.0)
    mel.append(x)
    np.testing.assert_allclose(
        mel.features(3000), reference(extractors[80], x, padded=True), atol=ATOL, rtol=0
    )


def test_other_pad_lengths(
    extractors: dict[int, WhisperFeatureExtractor], utterance: np.ndarray
) -> None:
    x = utterance[: 3 * SR]
    mel = buffered(x, 80, 800)
    fe = extractors[80]
    for frames in (300, 301, 1500):
        ref = reference(fe, x, padded=True, max_length=frames * 160)
        np.testing.assert_allclose(mel.features(frames), ref, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="does not cover"):
        mel.features(299)


def test_reset_and_overflow(utterance: np.ndarray) -> None:
    mel = LogMelBuffer(80)
    mel.append(np.resize(utterance, MAX_SAMPLES - 10))
    before = mel.features()
    with pytest.raises(ValueError, match="30 s"):
        mel.append(np.zeros(11, dtype=np.float32))
    np.testing.assert_array_equal(mel.features(), before)  # unchanged by the rejected append
    mel.append(np.zeros(10, dtype=np.float32))
    assert mel.num_samples == MAX_SAMPLES
    mel.reset()
    assert (mel.num_samples, mel.num_frames) == (0, 0)
    a = buffered(utterance[:SR], 80, 160)
    mel.append(utterance[:SR])
    np.testing.assert_array_equal(mel.features(3000), a.features(3000))


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 48_000), max_size=15), seed=st.integers(0, 2**16))
def test_any_split_equals_one_append(cuts: list[int], seed: int) -> None:
    x = (np.random.default_rng(seed).standard_normal(48_000) * 0.1).astype(np.float32)
    whole = LogMelBuffer(80)
    whole.append(x)
    split = LogMelBuffer(80)
    bounds = sorted({0, len(x), *cuts})
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        split.append(x[a:b])
    np.testing.assert_allclose(split.features(3000), whole.features(3000), rtol=0, atol=1e-6)
    np.testing.assert_allclose(split.features(), whole.features(), rtol=0, atol=1e-6)
