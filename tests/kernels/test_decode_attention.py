"""decode_attention: the Triton split-K kernel (on CUDA, else the CPU interpreter) against the
float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from kernel_device import DEVICE
from streamasr.kernels import testing as kt
from streamasr.kernels.decode_attention import decode_attention_ref
from streamasr.kernels.decode_attention.triton import decode_attention_triton, workspace_shape

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def run_poisoned(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    num_splits: int,
    block_n: int | None = 16,
) -> torch.Tensor:
    """The Triton kernel with NaN in its output, its split-K workspace and the caches' tails."""
    out = kt.poisoned(q.shape, dtype=q.dtype, device=q.device)
    work = kt.poisoned(workspace_shape(q, num_splits), dtype=torch.float32, device=q.device)
    result: torch.Tensor = decode_attention_triton(
        q,
        kt.poison_tail(k, seq_lens),
        kt.poison_tail(v, seq_lens),
        seq_lens,
        num_splits=num_splits,
        block_n=block_n,
        out=out,
        workspace=work,
    )
    return result


# Every layout meets every dtype; split-K on and off and Lq 1..3 alternate so that each
# layout and each dtype sees both settings.
CASES = [
    pytest.param(
        layout,
        dtype,
        1 if (i + j) % 2 == 0 else 3,
        1 + (i + 2 * j) % 3,
        id=f"{layout}-{str(dtype)[6:]}",
    )
    for (i, layout), (j, dtype) in itertools.product(enumerate(kt.LAYOUTS), enumerate(DTYPES))
]


@pytest.mark.parametrize(("layout", "dtype", "num_splits", "q_len"), CASES)
def test_matches_reference(
    layout: kt.HeadLayout, dtype: torch.dtype, num_splits: int, q_len: int
) -> None:
    cap = 41  # 3 blocks of 16 keys, the last partial
    q, k, v = kt.random_qkv(
        batch=3, layout=layout, q_len=q_len, kv_len=cap, dtype=dtype, seed=7, device=DEVICE
    )
    # Ragged: the shortest legal length (1 when Lq == 1), the full cache, one in between.
    seq_lens = kt.random_lengths(
        3, low=q_len, high=cap, seed=8, include=(q_len, cap), device=DEVICE
    )
    got = run_poisoned(q, k, v, seq_lens, num_splits=num_splits)
    kt.assert_close(got, kt.in_float64(decode_attention_ref, q, k, v, seq_lens), dtype=dtype)


def test_long_cache_split_k() -> None:
    """A cache of several 64-key blocks per split, with the default block size."""
    layout = kt.HeadLayout(16, 4, 128)
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=1, kv_len=700, dtype=torch.float16, seed=1, device=DEVICE
    )
    seq_lens = torch.tensor([700, 451], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, k, v, seq_lens, num_splits=3, block_n=None)
    kt.assert_close(
        got, kt.in_float64(decode_attention_ref, q, k, v, seq_lens), dtype=torch.float16
    )


def test_splits_past_the_end_write_empty_partials() -> None:
    """More splits than a short sequence has blocks: the empty ones must not poison the mean."""
    q, k, v = kt.random_qkv(
        batch=2,
        layout=kt.LAYOUTS[0],
        q_len=1,
        kv_len=64,
        dtype=torch.float32,
        seed=2,
        device=DEVICE,
    )
    seq_lens = torch.tensor([1, 17], dtype=torch.int64, device=DEVICE)
    got = run_poisoned(q, k, v, seq_lens, num_splits=5)
    kt.assert_close(
        got, kt.in_float64(decode_attention_ref, q, k, v, seq_lens), dtype=torch.float32
    )


def test_many_query_rows_fall_back_to_the_chunk_kernel() -> None:
    """GROUP * Lq above MAX_SPLIT_ROWS (4 * 20 = 80) runs the flash kernel, same causal mask."""
    layout = kt.HeadLayout(16, 4, 128)
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=20, kv_len=45, dtype=torch.float32, seed=3, device=DEVICE
    )
    seq_lens = torch.tensor([20, 45], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, k, v, seq_lens, num_splits=1)
    kt.assert_close(
        got, kt.in_float64(decode_attention_ref, q, k, v, seq_lens), dtype=torch.float32
    )


def test_strided_views_of_a_layered_cache() -> None:
    """k/v as KVCache hands them out: one layer of (layers, B, H, Lmax, D), q from a transpose."""
    layout = kt.LAYOUTS[0]
    b, lq, cap, d = 2, 2, 37, layout.head_dim
    g = kt.generator(4)
    cache_k = torch.randn(3, b, layout.kv_heads, cap, d, generator=g).to(DEVICE)
    cache_v = torch.randn(3, b, layout.kv_heads, cap, d, generator=g).to(DEVICE)
    q = torch.randn(b, lq, layout.q_heads, d, generator=g).to(DEVICE).transpose(1, 2)  # a view
    seq_lens = torch.tensor([cap, 9], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, cache_k[1], cache_v[1], seq_lens, num_splits=2)
    want = kt.in_float64(decode_attention_ref, q, cache_k[1], cache_v[1], seq_lens)
    kt.assert_close(got, want, dtype=torch.float32)


def test_scale() -> None:
    q, k, v = kt.random_qkv(
        batch=1,
        layout=kt.LAYOUTS[0],
        q_len=1,
        kv_len=20,
        dtype=torch.float32,
        seed=5,
        device=DEVICE,
    )
    seq_lens = torch.tensor([20], dtype=torch.int32, device=DEVICE)
    got = decode_attention_triton(q, k, v, seq_lens, scale=1.0, block_n=16)
    want = kt.in_float64(decode_attention_ref, q, k, v, seq_lens, scale=1.0)
    kt.assert_close(got, want, dtype=torch.float32)


def test_reference_is_causal_within_the_new_tokens() -> None:
    """The SDPA reference against a per-query loop: query i attends keys [0, len - Lq + i]."""
    q, k, v = kt.random_qkv(
        batch=2, layout=kt.HeadLayout(4, 2, 16), q_len=3, kv_len=9, dtype=torch.float64, seed=6
    )
    seq_lens = torch.tensor([3, 8])
    got = decode_attention_ref(q, k, v, seq_lens)
    for b, h, i in itertools.product(range(2), range(4), range(3)):
        n = int(seq_lens[b]) - 3 + i + 1
        keys, values = k[b, h // 2, :n], v[b, h // 2, :n]  # (n, D)
        weights = torch.softmax(q[b, h, i] @ keys.T / 4.0, dim=-1)  # scale 1/sqrt(16)
        torch.testing.assert_close(got[b, h, i], weights @ values)


def test_reference_never_reads_past_a_sequence_length() -> None:
    """The CPU path too: NaN in a shorter sequence's unwritten tail must not reach its output."""
    q, k, v = kt.random_qkv(
        batch=3, layout=kt.LAYOUTS[0], q_len=1, kv_len=20, dtype=torch.float32, seed=3
    )
    seq_lens = torch.tensor([1, 20, 9])
    clean = decode_attention_ref(q, k, v, seq_lens)
    got = decode_attention_ref(
        q, kt.poison_tail(k, seq_lens), kt.poison_tail(v, seq_lens), seq_lens
    )
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, clean)


def test_one_new_token_per_sequence_is_what_each_gives_alone() -> None:
    """A decoding step: one query per row, every row at its own position. Each row's output is
    the very bits of that row run alone."""
    lens = [1, 57, 57, 200, 448, 9]
    q, k, v = kt.random_qkv(
        batch=len(lens), layout=kt.LAYOUTS[0], q_len=1, kv_len=448, dtype=torch.float32, seed=4
    )
    seq_lens = torch.tensor(lens)
    got = decode_attention_ref(q, k, v, seq_lens)
    for b in range(len(lens)):
        alone = decode_attention_ref(q[b : b + 1], k[b : b + 1], v[b : b + 1], seq_lens[b : b + 1])
        assert torch.equal(got[b : b + 1], alone)
