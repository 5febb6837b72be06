"""chunk_attention: the Triton flash kernel (on CUDA, else the CPU interpreter) against the
float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from kernel_device import DEVICE
from streamasr.kernels import testing as kt
from streamasr.kernels.chunk_attention import chunk_attention_ref
from streamasr.kernels.chunk_attention.triton import chunk_attention_triton

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MASKS = (("causal", None), ("block_causal", 12), ("none", None))


def run_poisoned(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None,
    *,
    mask: str,
    block_size: int | None,
) -> torch.Tensor:
    """The Triton kernel, 16x16 tiles, with NaN in its output and past each valid length."""
    out = kt.poisoned(q.shape, dtype=q.dtype, device=q.device)
    full = torch.full((q.shape[0],), k.shape[2], device=k.device)
    lengths = seq_lens if seq_lens is not None else full
    result: torch.Tensor = chunk_attention_triton(
        q,
        kt.poison_tail(k, lengths),
        kt.poison_tail(v, lengths),
        seq_lens,
        mask=mask,
        block_size=block_size,
        block_m=16,
        block_n=16,
        out=out,
    )
    return result


# Every layout meets every mask; the dtypes rotate so that each layout and each mask sees two.
CASES = [
    pytest.param(layout, mask, size, DTYPES[(i + j) % 3], id=f"{layout}-{mask}")
    for (i, layout), (j, (mask, size)) in itertools.product(enumerate(kt.LAYOUTS), enumerate(MASKS))
]


@pytest.mark.parametrize(("layout", "mask", "block_size", "dtype"), CASES)
def test_matches_reference(
    layout: kt.HeadLayout, mask: str, block_size: int | None, dtype: torch.dtype
) -> None:
    q_len, cap = 19, 50  # two query tiles of 16, the second partial; up to 31 cached keys
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=q_len, kv_len=cap, dtype=dtype, seed=11, device=DEVICE
    )
    # Ragged prefixes: none (the first chunk) and one that is not a multiple of any tile.
    seq_lens = torch.tensor([q_len, q_len + 26], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, k, v, seq_lens, mask=mask, block_size=block_size)
    want = kt.in_float64(chunk_attention_ref, q, k, v, seq_lens, mask=mask, block_size=block_size)
    kt.assert_close(got, want, dtype=dtype)


def test_without_lengths_the_whole_cache_is_the_sequence() -> None:
    layout = kt.LAYOUTS[0]
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=5, kv_len=23, dtype=torch.float16, seed=12, device=DEVICE
    )
    got = run_poisoned(q, k, v, None, mask="block_causal", block_size=8)
    want = kt.in_float64(chunk_attention_ref, q, k, v, mask="block_causal", block_size=8)
    kt.assert_close(got, want, dtype=torch.float16)


def test_default_tiles() -> None:
    """The launch configuration production uses (64-row tiles) on a prompt prefill."""
    layout = kt.HeadLayout(16, 8, 128)
    q, k, v = kt.random_qkv(
        batch=1, layout=layout, q_len=70, kv_len=70, dtype=torch.bfloat16, seed=13, device=DEVICE
    )
    got = chunk_attention_triton(q, k, v, mask="causal")
    want = kt.in_float64(chunk_attention_ref, q, k, v, mask="causal")
    kt.assert_close(got, want, dtype=torch.bfloat16)


def naive_limits(seq_lens: list[int], q_len: int, mask: str, block_size: int) -> list[list[int]]:
    """Keys [0, limit) per (sequence, query), written out from the definitions."""
    limits = []
    for n in seq_lens:
        prefix = n - q_len
        row = []
        for i in range(q_len):
            p = prefix + i
            if mask == "causal":
                row.append(p + 1)
            elif mask == "block_causal":
                row.append(min((p // block_size + 1) * block_size, n))
            else:
                row.append(n)
        limits.append(row)
    return limits


@pytest.mark.parametrize("mask", ["causal", "block_causal", "none"])
def test_reference_masks(mask: str) -> None:
    """The SDPA reference against a per-query loop over the keys each query may see."""
    q_len, seq_lens = 5, [5, 11]
    q, k, v = kt.random_qkv(
        batch=2,
        layout=kt.HeadLayout(4, 2, 16),
        q_len=q_len,
        kv_len=12,
        dtype=torch.float64,
        seed=14,
    )
    size = 4 if mask == "block_causal" else None
    got = chunk_attention_ref(q, k, v, torch.tensor(seq_lens), mask=mask, block_size=size)
    limits = naive_limits(seq_lens, q_len, mask, 4)
    for b, h, i in itertools.product(range(2), range(4), range(q_len)):
        n = limits[b][i]
        keys, values = k[b, h // 2, :n], v[b, h // 2, :n]  # (n, D)
        weights = torch.softmax(q[b, h, i] @ keys.T / 4.0, dim=-1)
        torch.testing.assert_close(got[b, h, i], weights @ values)
