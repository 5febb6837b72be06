"""Our greedy decoder on the real tiny.en gives exactly ctranslate2's tokens on real speech."""

from __future__ import annotations

from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import speech

from streamasr.config import DecodeConfig
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.whisper import WhisperModel

TEXTS = (
    ("en-us", "Could you tell me where the nearest train station is?"),
    ("en-gb", "I will call you back after lunch if that works for you."),
    ("en-us+f3", "Our team finished the project two days ahead of schedule."),
)


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> WhisperModel:
    return WhisperModel.from_dir(tiny_en_dir)


@pytest.mark.parametrize("voice,text", TEXTS)
def test_greedy_tokens_equal_ctranslate2(
    model: WhisperModel, tiny_en_src: Path, tmp_path: Path, voice: str, text: str
) -> None:
    audio = speech.espeak(text, tmp_path, voice=voice)
    mel = LogMelBuffer(80)
    mel.append(np.concatenate([speech.silence(0.3), audio, speech.silence(0.5)]))
    feats = mel.features(pad_to_frames=3000)  # (80, 3000), the same input for both

    ours = run_one(
        model,
        TranscribeRequest(
            feats,
            num_frames=mel.num_frames,
            options=DecodeConfig(max_new_tokens=100, max_repeat_ngram=0),
        ),
    )
    ct = ctranslate2.models.Whisper(
        str(tiny_en_src), device="cpu", compute_type="float32", intra_threads=2
    )
    ref = ct.generate(
        ctranslate2.StorageView.from_array(feats[None]),
        [list(model.tokens.start())],
        beam_size=1,
        max_length=120,
        return_no_speech_prob=True,
    )[0]
    assert list(ours.tokens) == ref.sequences_ids[0]
    assert ours.no_speech_prob == pytest.approx(ref.no_speech_prob, abs=1e-4)
    assert len(ours.text.split()) >= 5
