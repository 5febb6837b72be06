"""Draft verification in Whisper decoding: fewer steps, never a different result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech

from streamasr.config import DecodeConfig
from streamasr.features.logmel import LogMelBuffer
from streamasr.models import whisper_decode
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one
from streamasr.models.whisper import WhisperModel

# Decodes the window with (prefix, draft, options); returns the result and its decoder passes.
Decode = Callable[..., tuple[DecodeResult, int]]


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


@pytest.fixture
def decode(
    model: WhisperModel, window: tuple[np.ndarray, int], monkeypatch: pytest.MonkeyPatch
) -> Decode:
    """`run`, counting the decoder passes: the prefill (`decode_step`) and every one-token
    step after it (`whisper_decode._step`). Each pass needs the one before it, so the count is
    the decode's sequential latency, which is what a draft exists to cut."""
    passes = 0

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal passes
            passes += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(model, "decode_step", counted(model.decode_step))
    monkeypatch.setattr(whisper_decode, "_step", counted(whisper_decode._step))

    def go(
        prefix: list[int], draft: list[int] | None, options: DecodeConfig | None = None
    ) -> tuple[DecodeResult, int]:
        nonlocal passes
        passes = 0
        return run(model, window, prefix, draft, options), passes

    return go


def agreed(draft: list[int], tokens: tuple[int, ...]) -> int:
    """How many leading draft tokens are the decoded ones: the passes the draft should save."""
    n = 0
    for guess, token in zip(draft, tokens, strict=False):
        if guess != token:
            break
        n += 1
    return n


def assert_same(a: DecodeResult, b: DecodeResult, what: str = "") -> None:
    assert a.tokens == b.tokens, what
    assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4), what
    assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=1e-5), what
    assert [w.word for w in a.words] == [w.word for w in b.words], what
    for wa, wb in zip(a.words, b.words, strict=True):
        assert abs(wa.start_sample - wb.start_sample) <= 320, what
        assert abs(wa.end_sample - wb.end_sample) <= 320, what


def test_any_draft_gives_the_undrafted_result(model: WhisperModel, decode: Decode) -> None:
    plain, plain_passes = decode([], None)
    truth = list(plain.tokens)
    assert len(truth) >= 8
    # One prefill, then one step per further token and one for the end token.
    assert plain_passes == len(truth) + 1
    garbage = model.encode_text(" purple elephants dance on the moon tonight")
    drafts = {
        "exact": truth,
        "first half": truth[: len(truth) // 2],
        "right then wrong": truth[:4] + garbage,
        "wrong from the start": garbage,
        "too long": truth + garbage,
    }
    for name, draft in drafts.items():
        result, passes = decode([], draft)
        assert_same(result, plain, name)
        # Every right draft token saves one sequential pass; a wrong one costs none.
        assert passes == plain_passes - agreed(draft, plain.tokens), name
    assert decode([], truth)[1] == 1  # a right draft: the prefill pass alone


def test_draft_after_a_forced_prefix(model: WhisperModel, decode: Decode) -> None:
    plain, _ = decode([], None)
    prefix = list(plain.tokens[:3])
    forced, forced_passes = decode(prefix, None)
    assert forced_passes > 1
    drafted, passes = decode(prefix, list(plain.tokens[3:]))
    assert_same(drafted, forced)
    assert passes == 1  # the rest of the text was drafted right
    wrong, passes = decode(prefix, model.encode_text(" no"))
    assert_same(wrong, forced)
    assert passes == forced_passes


def test_draft_respects_the_token_budget(decode: Decode) -> None:
    tight = DecodeConfig(max_new_tokens=5)
    plain, plain_passes = decode([], None, tight)
    full, _ = decode([], None)
    assert len(plain.tokens) == 5
    drafted, passes = decode([], list(full.tokens), tight)
    assert_same(drafted, plain)
    # The draft's first five tokens are kept; the end token is forced by the budget.
    assert plain_passes == 6 and passes == 1
