"""Real tiny.en through the Triton kernels (interpreted on CPU): the same greedy tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import speech
import torch
from streamasr.kernels import use_backend
from streamasr.kernels.chunk_attention import triton as chunk_triton
from streamasr.kernels.cross_attention import triton as cross_triton
from streamasr.kernels.decode_attention import triton as decode_triton

from streamasr.config import DecodeConfig
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import TranscribeRequest
from streamasr.models.whisper import WhisperModel


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> WhisperModel:
    return WhisperModel.from_dir(tiny_en_dir, name="tiny.en")


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, int]]:
    d = tmp_path_factory.mktemp("kern")
    out = []
    for text in ("Bring an umbrella, it may rain later.", "The bus leaves at noon."):
        buf = LogMelBuffer(n_mels=80)
        buf.append(speech.espeak(text, d))
        out.append((buf.features(pad_to_frames=buf.covered_frames + 50), buf.covered_frames))
    return out


def requests(windows: list[tuple[np.ndarray, int]]) -> list[TranscribeRequest]:
    return [
        TranscribeRequest(f, n, [], DecodeConfig(), word_timestamps=True, prefix=[])
        for f, n in windows
    ]


def test_kernels_and_reference_give_the_same_tokens(
    model: WhisperModel,
    windows: list[tuple[np.ndarray, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launches = {"chunk": 0, "decode": 0, "cross": 0}
    for name, module, fn in (
        ("chunk", chunk_triton, "chunk_attention_triton"),
        ("decode", decode_triton, "decode_attention_triton"),
        ("cross", cross_triton, "cross_attention_triton"),
    ):
        original = getattr(module, fn)

        def counted(*args: object, _o: object = original, _n: str = name, **kw: object) -> object:
            launches[_n] += 1
            return _o(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(module, fn, counted)
    with use_backend("reference"):
        ref = model.run(requests(windows))
    assert launches == {"chunk": 0, "decode": 0, "cross": 0}
    with use_backend("triton"), torch.inference_mode():
        tri = model.run(requests(windows))  # a ragged batch of two
    assert all(n > 0 for n in launches.values()), launches
    for r, t in zip(ref, tri, strict=True):
        assert len(r.tokens) >= 5
        assert t.tokens == r.tokens
        assert [w.word for w in t.words] == [w.word for w in r.words]
