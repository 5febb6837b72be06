"""The chunked GLM-ASR encoder on a tiny random tower: exact where it claims to be."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import builders
import pytest
import torch
import torch.nn.functional as F
from streamasr.kernels import chunk_attention, use_backend

from streamasr.models.encoder_cache import Tail
from streamasr.models.glm_encoder import GlmAudioEncoder, apply_rope

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The tower is tiny: a second intra-op thread only waits for the first, and on a shared
    CPU its spinning makes every call many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> GlmAudioEncoder:
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
    module = GlmAsrEncoder(cfg).eval()
    # Large weights make attention peaked, so a frame that sees other frames than it should
    # changes its state far beyond the tolerance.
    builders.scale_weights(module, 0.2, seed=0)
    return GlmAudioEncoder(module)


def random_mel(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 128, frames, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [200, 201])
def test_empty_cache_without_commit_is_the_window_encoder(
    encoder: GlmAudioEncoder, frames: int
) -> None:
    mel = random_mel(frames)
    cache = encoder.new_cache(1500)
    states = encoder.encode_tail(cache, mel, commit_frames=0)
    assert (cache.length, cache.frames_computed) == (0, 101 if frames == 201 else 100)
    torch.testing.assert_close(states, encoder.forward(mel), rtol=0, atol=0)


@torch.inference_mode()
def staged_reference(encoder: GlmAudioEncoder, mel: torch.Tensor, ends: list[int]) -> Any:
    """One pass of the layers over blocks of frames ending at `ends`, RoPE at 0..S-1.

    A frame sees the frames of its own block and of the blocks before it. With blocks of one
    size that is `chunk_attention`'s block-causal mask, which is used then; other block ends
    get an explicit mask. Each block's stem (the convolutions) is computed from the mel that
    existed when the block was the newest audio, as streaming does: its last frame's
    convolution sees zero padding.
    """
    blocks = list(zip([0, *ends[:-1]], ends, strict=True))
    x = torch.cat([encoder._stem(mel[..., : 2 * e])[:, s:e] for s, e in blocks], dim=1)
    block = ends[0]
    uniform = ends == list(range(block, ends[-1] + 1, block))
    limit = torch.tensor([e for s, e in blocks for _ in range(s, e)])  # (S,)
    visible = torch.arange(len(limit))[None, :] < limit[:, None]  # (S, S)
    m = encoder.module
    cos, sin = m.rotary_emb(x, position_ids=torch.arange(x.shape[1])[None])
    for layer in m.layers:
        h = layer.input_layernorm(x)
        attn = layer.self_attn
        q = attn.q_proj(h).view(1, -1, encoder.heads, encoder.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(1, -1, encoder.heads, encoder.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(1, -1, encoder.heads, encoder.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if uniform:
            a = chunk_attention(q, k, v, mask="block_causal", block_size=block, scale=attn.scaling)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=attn.scaling)
        x = x + attn.o_proj(a.transpose(1, 2).reshape(1, x.shape[1], -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return m.norm(x)


def test_committed_states_are_block_causal_attention(encoder: GlmAudioEncoder) -> None:
    """Committing each new block whole is exactly block-causal attention over the stream."""
    block = 24  # encoder frames (0.48 s): six whole 4-frame groups
    mel = random_mel(2 * block * 5, seed=1)
    cache = encoder.new_cache(1500)
    for b in range(5):
        states = encoder.encode_tail(cache, mel[..., : (b + 1) * 2 * block], commit_frames=10**6)
        assert cache.length == cache.frames_computed == (b + 1) * block  # each frame once
    ref = staged_reference(encoder, mel, [block * (b + 1) for b in range(5)])
    torch.testing.assert_close(cache.out[:, : cache.length], ref, rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(states, ref, rtol=ATOL, atol=ATOL)
    # The comparison can tell block-causal from bidirectional attention:
    assert (encoder.forward(mel) - ref).abs().max() > 100 * ATOL


def test_tail_frames_see_the_cached_prefix_and_each_other(encoder: GlmAudioEncoder) -> None:
    """An uncommitted tail is the last block of the staged pass; the cached frames are theirs."""
    mel = random_mel(2 * 60, seed=2)
    cache = encoder.new_cache(1500)
    encoder.encode_tail(cache, mel[..., :80], commit_frames=40)
    tail = encoder.encode_tail(cache, mel, commit_frames=0)  # frames 40..59, not committed
    assert cache.length == 40 and cache.frames_computed == 40 + 20
    torch.testing.assert_close(tail, staged_reference(encoder, mel, [40, 60]), rtol=ATOL, atol=ATOL)
    # Committing frames from 40 on later builds on the same cached 40 frames:
    encoder.encode_tail(cache, mel, commit_frames=60)
    ref = staged_reference(encoder, mel, [40, 60])
    torch.testing.assert_close(cache.out[:, :60], ref, rtol=ATOL, atol=ATOL)


def test_only_whole_groups_of_four_frames_are_committed(encoder: GlmAudioEncoder) -> None:
    mel = random_mel(2 * 120, seed=3)
    cache = encoder.new_cache(1500)
    encoder.encode_tail(cache, mel[..., :120], commit_frames=50)
    assert cache.length == 48  # 50 rounded down to 12 groups
    encoder.encode_tail(cache, mel[..., :150], commit_frames=51)
    assert cache.length == 48
    encoder.encode_tail(cache, mel[..., :151], commit_frames=103)  # 76 frames exist
    assert cache.length == 76
    before = cache.out[:, :76].clone()
    encoder.encode_tail(cache, mel, commit_frames=10**6)
    assert cache.length == 120
    assert torch.equal(cache.out[:, :76], before)  # committed states never change
    again = encoder.encode_tail(cache, mel, commit_frames=120)  # nothing new: no work
    assert cache.frames_computed == 60 + 27 + 28 + 44 and again.shape == (1, 120, 32)


def test_encode_tail_rejects_bad_input(encoder: GlmAudioEncoder) -> None:
    cache = encoder.new_cache(100)
    encoder.encode_tail(cache, random_mel(120), commit_frames=60)
    with pytest.raises(ValueError, match="cached"):
        encoder.encode_tail(cache, random_mel(100), commit_frames=0)
    with pytest.raises(ValueError, match="at most 200"):
        encoder.encode_tail(cache, random_mel(202), commit_frames=0)
    with pytest.raises(ValueError, match="one stream"):
        encoder.encode_tail(cache, torch.zeros(2, 128, 120), commit_frames=0)
    with pytest.raises(ValueError, match="log-mel"):
        encoder.encode_tail(cache, torch.zeros(1, 80, 120), commit_frames=0)
    # A window without a cache, in a shared pass: an empty or batched mel is refused alone.
    for bad in (torch.zeros(1, 128, 0), torch.zeros(2, 128, 120)):
        with pytest.raises(ValueError, match="one window"):
            encoder.encode_tails([Tail(random_mel(120)), Tail(bad)])


def test_tail_attention_on_both_kernel_backends(encoder: GlmAudioEncoder) -> None:
    """The tail's queries over cached plus new keys run on Triton (interpreted on a CPU) too."""
    mel = random_mel(2 * 40, seed=4)
    results = []
    for backend in ("reference", "triton"):
        cache = encoder.new_cache(1500)
        with use_backend(backend):
            encoder.encode_tail(cache, mel[..., :48], commit_frames=24)
            results.append(encoder.encode_tail(cache, mel, commit_frames=0))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)
