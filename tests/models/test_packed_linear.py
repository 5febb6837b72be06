"""fp16-packed CPU linear layers: used only where exact, equal to `F.linear` up to rounding, and
the same greedy tokens as unpacked weights on real tiny.en and on an audio-LLM decoder."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from streamasr.config import DecodeConfig
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.glmasr import GlmAsrAdapter
from streamasr.models.packed_linear import (
    PackedLinear,
    fp16_exact,
    pack_fp16,
    pack_linears,
    use_fp16_gemm,
)
from streamasr.models.whisper import WhisperModel
from streamasr.models.whisper_decode import greedy_batch

pytestmark = pytest.mark.skipif(
    pack_fp16(torch.ones(2, 2)) is None, reason="this torch has no FBGEMM"
)


def fp16_linear(k: int, n: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(lin.weight.half().float())
        lin.bias.normal_()  # not fp16-exact: the bias is added in float32
    return lin


def test_packed_equals_linear_up_to_rounding() -> None:
    lin = fp16_linear(96, 333, seed=0)
    packed = PackedLinear(lin)
    assert packed.weight is lin.weight and packed.bias is lin.bias
    assert packed.pack.packed is None  # packed on the first call, not before
    for shape in ((1, 96), (4, 96), (3, 5, 96)):
        x = torch.randn(shape)
        want = F.linear(x.double(), lin.weight.double(), lin.bias.double())
        got = packed(x)
        assert got.shape == want.shape and got.dtype is torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert packed.pack.packed is not None
    with use_fp16_gemm(False):  # the switch: the float32 GEMM, exactly
        x = torch.randn(4, 96)
        assert torch.equal(packed(x), F.linear(x, lin.weight, lin.bias))


def test_only_exact_float32_cpu_weights_are_packed() -> None:
    lin = nn.Linear(8, 4, bias=False)
    assert not fp16_exact(lin.weight)  # random float32 needs more than fp16's 11 bits
    packed = PackedLinear(lin)
    x = torch.randn(2, 8)
    assert torch.equal(packed(x), F.linear(x, lin.weight))
    assert packed.pack.packed is None
    with torch.no_grad():
        lin.weight.fill_(1e5)  # beyond fp16's range
    assert not fp16_exact(lin.weight)
    lin.weight.data[0, 0] = float("nan")
    assert not fp16_exact(lin.weight)

    exact = PackedLinear(fp16_linear(8, 4, seed=1)).to(torch.bfloat16)
    exact.repack()
    out = exact(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype is torch.bfloat16 and exact.pack.packed is None  # F.linear in bfloat16


def test_pack_linears_swaps_in_place_and_repacks() -> None:
    net = nn.Sequential(fp16_linear(8, 16, seed=2), nn.ReLU(), nn.Sequential(nn.Linear(16, 4)))
    first = net[0].weight
    pack_linears(net)
    assert isinstance(net[0], PackedLinear) and isinstance(net[2][0], PackedLinear)
    assert net[0].weight is first
    x = torch.randn(3, 8)
    torch.testing.assert_close(
        net(x), F.linear(F.relu(F.linear(x, first, net[0].bias)), net[2][0].weight, net[2][0].bias)
    )
    assert net[0].pack.packed is not None and net[2][0].pack.packed is None  # random: not exact
    net.to(torch.bfloat16)
    pack_linears(net)
    assert net[0].pack.packed is None
    net(x.bfloat16())
    assert net[0].pack.packed is None


def sentence_windows(sentences: list[np.ndarray]) -> list[TranscribeRequest]:
    from test_placement import window

    requests = []
    for audio in sentences[:3]:
        feats, n = window(audio)
        requests.append(TranscribeRequest(feats, n, [], DecodeConfig(), True, []))
    return requests


def test_tiny_en_tokens_equal_unpacked(tiny_en_dir: Path, sentences: list[np.ndarray]) -> None:
    """The embedded tiny.en's weights are fp16 at rest: its decoder and vocabulary projection
    are packed, and greedy tokens and word timings are those of the float32 GEMMs."""
    model = WhisperModel.from_dir(tiny_en_dir)
    requests = sentence_windows(sentences)
    got = greedy_batch(model, model.decode_rows(requests))
    assert model.vocab_pack.packed is not None
    layer = model.decoder.layers[0]
    assert isinstance(layer.fc1, PackedLinear) and layer.fc1.pack.packed is not None
    with use_fp16_gemm(False):
        want = greedy_batch(model, model.decode_rows(requests))
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w.tokens and g.text.strip()
        assert [x.word for x in g.words] == [x.word for x in w.words]
        assert g.avg_logprob == pytest.approx(w.avg_logprob, abs=1e-4)
    model.to("cpu", torch.bfloat16)
    assert model.vocab_pack.packed is None and layer.fc1.pack.packed is None


def test_audio_llm_decoder_tokens_equal_unpacked(
    tmp_path: Path, sentences: list[np.ndarray]
) -> None:
    """A GLM-ASR decoder with fp16-exact weights is packed (lm_head too) and decodes the same
    tokens as with packing off."""
    model = GlmAsrAdapter.from_dir(builders.build_glmasr(tmp_path / "glm", fp16_weights=True))
    mel = LogMelBuffer(n_mels=128)
    mel.append(sentences[0])
    feats = mel.features(pad_to_frames=mel.num_frames + 100)
    options = DecodeConfig(max_repeat_ngram=0)  # plain greedy: every step's token counts

    def decode() -> tuple[int, ...]:
        return run_one(
            model,
            TranscribeRequest(
                feats, num_frames=mel.num_frames, prompt=[], options=options, word_timestamps=False
            ),
        ).tokens

    got = decode()
    assert isinstance(model.lm.lm_head, PackedLinear) and model.lm.lm_head.pack.packed is not None
    assert model.lm.base.layers[0].mlp.up_proj.pack.packed is not None
    with use_fp16_gemm(False):
        want = decode()
    assert got == want and len(got) > 3
