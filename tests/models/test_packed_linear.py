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
from streamasr.models import packed_linear
from streamasr.models.base import TranscribeRequest
from streamasr.models.glmasr import GlmAsrAdapter
from streamasr.models.packed_linear import PackedLinear, fp16_exact, pack_linears
from streamasr.models.whisper import WhisperModel
from streamasr.models.whisper_decode import greedy_batch

pytestmark = pytest.mark.skipif(
    packed_linear.pack_fp16(torch.ones(2, 2)) is None, reason="this torch has no FBGEMM"
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
    assert packed.packed is not None and packed.weight is lin.weight and packed.bias is lin.bias
    for shape in ((1, 96), (4, 96), (3, 5, 96)):
        x = torch.randn(shape)
        want = F.linear(x.double(), lin.weight.double(), lin.bias.double())
        got = packed(x)
        assert got.shape == want.shape and got.dtype is torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_only_exact_float32_cpu_weights_are_packed() -> None:
    lin = nn.Linear(8, 4, bias=False)
    assert not fp16_exact(lin.weight)  # random float32 needs more than fp16's 11 bits
    packed = PackedLinear(lin)
    assert packed.packed is None
    x = torch.randn(2, 8)
    assert torch.equal(packed(x), F.linear(x, lin.weight))
    with torch.no_grad():
        lin.weight.fill_(1e5)  # beyond fp16's range
    assert not fp16_exact(lin.weight)

    exact = PackedLinear(fp16_linear(8, 4, seed=1)).to(torch.bfloat16)
    exact.repack()
    assert exact.packed is None  # not float32: F.linear in the module's dtype
    assert exact(torch.randn(2, 8, dtype=torch.bfloat16)).dtype is torch.bfloat16


def test_pack_linears_swaps_in_place_and_repacks() -> None:
    net = nn.Sequential(fp16_linear(8, 16, seed=2), nn.ReLU(), nn.Sequential(nn.Linear(16, 4)))
    first = net[0].weight
    assert pack_linears(net) == 1  # the nested random one stays unpacked
    assert isinstance(net[0], PackedLinear) and isinstance(net[2][0], PackedLinear)
    assert net[0].weight is first
    x = torch.randn(3, 8)
    torch.testing.assert_close(
        net(x), F.linear(F.relu(F.linear(x, first, net[0].bias)), net[2][0].weight, net[2][0].bias)
    )
    net.to(torch.bfloat16)
    assert pack_linears(net) == 0


def sentence_windows(sentences: list[np.ndarray]) -> list[TranscribeRequest]:
    from test_placement import window

    requests = []
    for audio in sentences[:3]:
        feats, n = window(audio)
        requests.append(TranscribeRequest(feats, n, [], DecodeConfig(), True, []))
    return requests


def test_tiny_en_tokens_equal_unpacked(
    tiny_en_dir: Path, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded tiny.en's weights are fp16 at rest: its decoder and vocabulary projection
    are packed, and greedy tokens and word timings are those of the float32 GEMMs."""
    packed = WhisperModel.from_dir(tiny_en_dir)
    assert packed.vocab_packed is not None
    layer = packed.decoder.layers[0]
    assert isinstance(layer.fc1, PackedLinear) and layer.fc1.packed is not None
    monkeypatch.setattr("streamasr.models.whisper.pack_fp16", lambda *a: None)
    monkeypatch.setattr(packed_linear, "pack_fp16", lambda *a: None)
    plain = WhisperModel.from_dir(tiny_en_dir)
    assert plain.vocab_packed is None and plain.decoder.layers[0].fc1.packed is None
    requests = sentence_windows(sentences)
    got = greedy_batch(packed, [packed.decode_row(r) for r in requests])
    want = greedy_batch(plain, [plain.decode_row(r) for r in requests])
    for g, w in zip(got, want, strict=True):
        assert g.tokens == w.tokens and g.text.strip()
        assert [x.word for x in g.words] == [x.word for x in w.words]
        assert g.avg_logprob == pytest.approx(w.avg_logprob, abs=1e-4)


def test_audio_llm_decoder_tokens_equal_unpacked(
    tmp_path: Path, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GLM-ASR decoder with fp16-exact weights is packed (lm_head too) and decodes the same
    tokens as with packing off."""
    model_dir = builders.build_glmasr(tmp_path / "glm", fp16_weights=True)
    packed = GlmAsrAdapter.from_dir(model_dir)
    assert isinstance(packed.lm.lm_head, PackedLinear) and packed.lm.lm_head.packed is not None
    assert packed.lm.base.layers[0].mlp.up_proj.packed is not None
    monkeypatch.setattr(packed_linear, "pack_fp16", lambda *a: None)
    plain = GlmAsrAdapter.from_dir(model_dir)
    assert plain.lm.lm_head.packed is None
    mel = LogMelBuffer(n_mels=128)
    mel.append(sentences[0])
    feats = mel.features(pad_to_frames=mel.num_frames + 100)
    options = DecodeConfig(max_repeat_ngram=0)  # plain greedy: every step's token counts
    got, want = (
        m.transcribe(
            feats, num_frames=mel.num_frames, prompt=[], options=options, word_timestamps=False
        )
        for m in (packed, plain)
    )
    assert got.tokens == want.tokens and len(got.tokens) > 3
