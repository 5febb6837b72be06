"""The GLM-ASR encoder and the Llama / Qwen3 decoder on `streamasr.kernels`, both backends.

Tiny random transformers modules (no tokenizer, no files) keep the Triton runs short: on a CPU
they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

import pytest
import torch
from streamasr.kernels import use_backend

from streamasr.models.causal_lm import CausalLm
from streamasr.models.glm_encoder import GlmAudioEncoder

BACKENDS = ("reference", "triton")
ATOL = 1e-4  # fp32: the kernels' online softmax rounds differently from SDPA


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the Triton launchers' calls, so a test can tell which backend really ran."""
    seen: Counter[str] = Counter()
    for op in ("chunk_attention", "decode_attention"):
        module = importlib.import_module(f"streamasr.kernels.{op}.triton")
        name = f"{op}_triton"
        original = getattr(module, name)

        def counted(*args: Any, _op: str = op, _fn: Any = original, **kwargs: Any) -> Any:
            seen[_op] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return seen


def _decoder(kind: str) -> Any:
    """A 2-layer Llama or Qwen3 LM with 4 query heads over 2 KV heads of 16 dims, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    sizes = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**sizes)).eval()
    return Qwen3ForCausalLM(Qwen3Config(**sizes, tie_word_embeddings=True)).eval()


def _run_decoder(lm: CausalLm, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits (B, T, V) of `ids` (B, T): one prefill of `prefill` tokens, then one-token steps."""
    x = lm.base.embed_tokens(ids)  # (B, T, d)
    cache = lm.new_cache(ids.shape[1], batch=ids.shape[0])
    out = [lm.forward(x[:, :prefill], cache, logits_from=0)]
    out += [lm.forward(x[:, t : t + 1], cache) for t in range(prefill, ids.shape[1])]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_decoder_logits_equal_transformers_on_both_backends(
    kind: str, launches: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hf = _decoder(kind)
    lm = CausalLm(hf.model, hf.lm_head)
    assert lm.qk_norm == (kind == "qwen3")
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits  # (2, 13, 96): one causal pass, GQA repeated inside
    shapes: list[tuple[int, ...]] = []
    causal_lm = importlib.import_module("streamasr.models.causal_lm")
    decode = causal_lm.decode_attention

    def spy(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        shapes.append((q.shape[1], k.shape[1]))
        out: torch.Tensor = decode(q, k, *args, **kwargs)
        return out

    monkeypatch.setattr(causal_lm, "decode_attention", spy)
    for backend in BACKENDS:
        with use_backend(backend):
            got = _run_decoder(lm, ids, prefill=9)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)
    # 2 layers x 4 steps per backend; the cache is read with its 2 KV heads, never repeated
    assert shapes == [(4, 2)] * 16
    assert launches == {"chunk_attention": 2, "decode_attention": 8}  # the triton run only


def test_encoder_states_equal_transformers_on_both_backends(launches: Counter[str]) -> None:
    from transformers import GlmAsrConfig, GlmAsrEncoder

    cfg = GlmAsrConfig(
        audio_config={
            "model_type": "glmasr_encoder",
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_mel_bins": 128,
        }
    ).audio_config
    torch.manual_seed(0)
    module = GlmAsrEncoder(cfg).eval()
    encoder = GlmAudioEncoder(module)
    mel = torch.randn(2, 128, 74, generator=torch.Generator().manual_seed(2))  # 37 states
    with torch.no_grad():
        expected = module(mel).last_hidden_state  # (2, 37, 32)
    for backend in BACKENDS:
        with use_backend(backend):
            got = encoder.forward(mel)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=ATOL)
    assert launches == {"chunk_attention": 2}  # one per layer, in the triton run only
