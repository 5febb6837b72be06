"""Placing a model: `--compute`/`--dtype` resolution, and every family running in bfloat16.

The CUDA side runs only where torch sees a GPU; here the same code paths run on the CPU in
bfloat16, which catches every tensor a call makes in the wrong dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import builders
import numpy as np
import pytest
import torch

from streamasr.config import DecodeConfig
from streamasr.errors import InputError
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.audio_llm import AudioLlmAdapter
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one
from streamasr.models.loader import load_model
from streamasr.models.placement import check_compute, resolve_compute, resolve_dtype
from streamasr.models.whisper import WhisperModel
from streamasr.server.config import ConfigError, ServerConfig


def test_compute_and_dtype_specs() -> None:
    for good in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert check_compute(good) == good
    for bad in ("gpu", "cuda:x", "cpu:0", "cuda:", "", "CUDA"):
        with pytest.raises(InputError, match="compute must be"):
            check_compute(bad)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_compute("auto").type == expected
    assert resolve_compute("cpu") == torch.device("cpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, half=torch.float16) is torch.float32
    assert resolve_dtype("auto", cuda, half=torch.bfloat16) is torch.bfloat16
    assert resolve_dtype("float16", cpu, half=torch.bfloat16) is torch.float16
    with pytest.raises(InputError, match="dtype must be"):
        resolve_dtype("half", cpu, half=torch.float16)
    with pytest.raises(ConfigError, match="compute must be"):
        ServerConfig(compute="gpu")
    with pytest.raises(ConfigError, match="dtype must be"):
        ServerConfig(dtype="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing to refuse")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="torch sees no CUDA device"):
        resolve_compute("cuda")
    with pytest.raises(InputError, match="torch sees no CUDA device"):
        load_model("tiny.en", compute="cuda:0")


def window(audio: np.ndarray, pad_frames: int = 100, n_mels: int = 80) -> tuple[np.ndarray, int]:
    buf = LogMelBuffer(n_mels=n_mels)
    buf.append(audio)
    return buf.features(pad_to_frames=buf.num_frames + pad_frames), buf.num_frames


def test_whisper_in_bfloat16(tiny_en_dir: Path, sentences: list[np.ndarray]) -> None:
    """Real tiny.en moved to bfloat16: the window, the chunked encoder and a continuous batch
    with word timings all run, every cache follows the model, and the words match float32."""
    fp32 = WhisperModel.from_dir(tiny_en_dir)
    bf16 = WhisperModel.from_dir(tiny_en_dir).to("cpu", torch.bfloat16)
    assert bf16.dtype is torch.bfloat16 and bf16.vocab_projection.dtype is torch.bfloat16
    feats, n = window(sentences[0])
    cache = bf16.new_encoder_cache()
    assert cache.k.dtype is torch.bfloat16
    requests = [
        TranscribeRequest(feats, n, [], DecodeConfig(), True, []),
        TranscribeRequest(feats, n, [], DecodeConfig(), False, [], cache, n // 2),
    ]
    results = decode_together(bf16, requests)
    assert sorted(results) == [0, 1]
    want = run_one(
        fp32,
        TranscribeRequest(
            feats, num_frames=n, prompt=[], options=DecodeConfig(), word_timestamps=True
        ),
    )
    for result in results.values():
        assert _words(result.text) == _words(want.text)
    assert [w.word for w in results[0].words] == [w.word for w in want.words]
    assert cache.length == n // 2  # the chunked row committed the encoder frames it was told


def test_whisper_with_a_bfloat16_encoder(tiny_en_dir: Path, sentences: list[np.ndarray]) -> None:
    """`auto` on a CPU with native bfloat16: the encoder's layers in bfloat16, attention and
    everything after the encoder in float32; the chunked encoder and a batch run, and the words
    match float32's."""
    fp32 = WhisperModel.from_dir(tiny_en_dir)
    mixed = WhisperModel.from_dir(tiny_en_dir).to("cpu", torch.float32, torch.bfloat16)
    assert mixed.encoder_dtype is torch.bfloat16 and mixed.dtype is torch.float32
    assert {p.dtype for p in mixed.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in mixed.decoder.parameters()} == {torch.float32}
    feats, n = window(sentences[0])
    assert mixed.encode(mixed.mel(feats)).dtype is torch.float32
    cache = mixed.new_encoder_cache()
    requests = [
        TranscribeRequest(feats, n, [], DecodeConfig(), True, []),
        TranscribeRequest(feats, n, [], DecodeConfig(), False, [], cache, n // 2),
    ]
    results = decode_together(mixed, requests)
    want = run_one(
        fp32,
        TranscribeRequest(
            feats, num_frames=n, prompt=[], options=DecodeConfig(), word_timestamps=True
        ),
    )
    for result in results.values():
        assert _words(result.text) == _words(want.text)
    assert cache.length == n // 2 and cache.k.dtype is torch.float32


def test_auto_runs_the_encoder_in_bfloat16_only_on_a_cpu_that_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamasr.models import placement

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: True)
    assert placement.resolve_encoder_dtype("auto", cpu) is torch.bfloat16
    assert placement.resolve_encoder_dtype("float32", cpu) is None  # asked for: all float32
    assert placement.resolve_encoder_dtype("auto", cuda) is None
    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: False)
    assert placement.resolve_encoder_dtype("auto", cpu) is None


def decode_together(model: Any, requests: list[TranscribeRequest]) -> dict[int, DecodeResult]:
    """Every request in one continuous batch; result i is request i's."""
    batch = model.new_step_batch(len(requests))
    results = {}
    for i, r in enumerate(requests):
        done = batch.add(r, i)
        if done is not None:
            results[i] = done
    while batch.size:
        results.update(batch.step())
    return results


def _words(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


@pytest.mark.parametrize("family", ["glmasr", "tinyaudio"])
def test_audio_llms_in_bfloat16(
    family: str, tmp_path_factory: pytest.TempPathFactory, sentences: list[np.ndarray]
) -> None:
    root = tmp_path_factory.mktemp(f"place-{family}")
    glm = builders.build_glmasr(root / "glmasr", std=0.5)
    if family == "glmasr":
        path = glm
    else:
        qwen = builders.build_qwen3(root / "qwen3", std=2.0)
        path = builders.build_tiny_audio(root / "tiny", glmasr_dir=glm, qwen3_dir=qwen, std=2.0)
    model = load_model(str(path), compute="cpu", dtype="bfloat16")
    assert isinstance(model, AudioLlmAdapter)
    assert model.lm.dtype is torch.bfloat16
    assert {p.dtype for p in model.lm.base.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.encoder.module.parameters()} == {torch.bfloat16}
    feats, n = window(sentences[1][:32000], n_mels=model.info.features.n_mels)
    stream = model.new_encoder_cache()
    requests = [
        TranscribeRequest(feats, n, [], DecodeConfig(), False, []),
        TranscribeRequest(feats, n, [], DecodeConfig(), False, [], stream, n // 2),
    ]
    results = decode_together(model, requests)
    assert sorted(results) == [0, 1]
    assert all(len(r.tokens) >= 1 for r in results.values())
    assert stream.lm is not None and stream.lm.k.dtype is torch.bfloat16
