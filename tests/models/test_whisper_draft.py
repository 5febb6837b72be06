"""Draft verification in Whisper decoding: fewer steps, never a different result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import speech

from streamasr.config import DecodeConfig
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one
from streamasr.models.whisper import WhisperModel


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> WhisperModel:
    return WhisperModel.from_dir(tiny_en_dir, name="tiny.en")


@pytest.fixture(scope="module")
def window(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    clip = speech.espeak(
        "Remember to water the plants while I am away.", tmp_path_factory.mktemp("draft")
    )
    buf = LogMelBuffer(n_mels=80)
    buf.append(clip)
    return buf.features(pad_to_frames=buf.num_frames + 100), buf.covered_frames


def run(
    model: WhisperModel,
    window: tuple[np.ndarray, int],
    prefix: list[int],
    draft: list[int] | None,
    options: DecodeConfig | None = None,
) -> DecodeResult:
    feats, n = window
    return run_one(
        model,
        TranscribeRequest(
            feats,
            num_frames=n,
            options=options or DecodeConfig(),
            word_timestamps=True,
            prefix=prefix,
            draft=draft,
        ),
    )


def assert_same(a: DecodeResult, b: DecodeResult) -> None:
    assert a.tokens == b.tokens
    assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)
    assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-5)
    assert [w.word for w in a.words] == [w.word for w in b.words]
    for wa, wb in zip(a.words, b.words, strict=True):
        assert abs(wa.start_sample - wb.start_sample) <= 320
        assert abs(wa.end_sample - wb.end_sample) <= 320


def test_any_draft_gives_the_undrafted_result(
    model: WhisperModel, window: tuple[np.ndarray, int]
) -> None:
    plain = run(model, window, [], None)
    truth = list(plain.tokens)
    assert len(truth) >= 8
    garbage = model.encode_text(" purple elephants dance on the moon tonight")
    drafts = {
        "exact": truth,
        "first half": truth[: len(truth) // 2],
        "right then wrong": truth[:4] + garbage,
        "wrong from the start": garbage,
        "too long": truth + garbage,
    }
    for name, draft in drafts.items():
        assert_same(run(model, window, [], draft), plain), name


def test_draft_after_a_forced_prefix(model: WhisperModel, window: tuple[np.ndarray, int]) -> None:
    plain = run(model, window, [], None)
    prefix = list(plain.tokens[:3])
    forced = run(model, window, prefix, None)
    assert_same(run(model, window, prefix, list(plain.tokens[3:])), forced)
    assert_same(run(model, window, prefix, model.encode_text(" no")), forced)


def test_draft_respects_the_token_budget(
    model: WhisperModel, window: tuple[np.ndarray, int]
) -> None:
    tight = DecodeConfig(max_new_tokens=5)
    plain = run(model, window, [], None, tight)
    full = run(model, window, [], None)
    assert len(plain.tokens) == 5
    assert_same(run(model, window, [], list(full.tokens), tight), plain)
