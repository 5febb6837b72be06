"""cross_attention: the Triton split-K kernel without the causal mask against the reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from kernel_device import DEVICE
from streamasr.kernels import testing as kt
from streamasr.kernels.cross_attention import cross_attention_ref
from streamasr.kernels.cross_attention.triton import cross_attention_triton
from streamasr.kernels.decode_attention.triton import workspace_shape


def run_poisoned(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enc_lens: torch.Tensor, *, num_splits: int
) -> torch.Tensor:
    out = kt.poisoned(q.shape, dtype=q.dtype, device=q.device)
    work = kt.poisoned(workspace_shape(q, num_splits), dtype=torch.float32, device=q.device)
    result: torch.Tensor = cross_attention_triton(
        q,
        kt.poison_tail(k, enc_lens),
        kt.poison_tail(v, enc_lens),
        enc_lens,
        num_splits=num_splits,
        block_n=16,
        out=out,
        workspace=work,
    )
    return result


WHISPER = (kt.HeadLayout(6, 6, 64), kt.HeadLayout(20, 20, 64))
CASES = [
    pytest.param(layout, dtype, splits, q_len, id=f"{layout}-{str(dtype)[6:]}-s{splits}-q{q_len}")
    for layout, (dtype, splits, q_len) in itertools.product(
        WHISPER,
        [(torch.float32, 1, 1), (torch.float16, 3, 2), (torch.bfloat16, 2, 1)],
    )
]


@pytest.mark.parametrize(("layout", "dtype", "num_splits", "q_len"), CASES)
def test_matches_reference(
    layout: kt.HeadLayout, dtype: torch.dtype, num_splits: int, q_len: int
) -> None:
    s_max = 45
    q, k, v = kt.random_qkv(
        batch=3, layout=layout, q_len=q_len, kv_len=s_max, dtype=dtype, seed=21, device=DEVICE
    )
    enc_lens = kt.random_lengths(3, low=1, high=s_max, seed=22, include=(1, s_max), device=DEVICE)
    got = run_poisoned(q, k, v, enc_lens, num_splits=num_splits)
    kt.assert_close(got, kt.in_float64(cross_attention_ref, q, k, v, enc_lens), dtype=dtype)


def test_grouped_heads() -> None:
    layout = kt.HeadLayout(16, 4, 128)
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=3, kv_len=40, dtype=torch.float16, seed=23, device=DEVICE
    )
    enc_lens = torch.tensor([40, 7], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, k, v, enc_lens, num_splits=2)
    want = kt.in_float64(cross_attention_ref, q, k, v, enc_lens)
    kt.assert_close(got, want, dtype=torch.float16)


def test_a_long_prompt_uses_the_flash_kernel() -> None:
    """Lq beyond MAX_SPLIT_ROWS (a prompt prefill): the chunk kernel without a mask."""
    layout = kt.LAYOUTS[0]
    q, k, v = kt.random_qkv(
        batch=2, layout=layout, q_len=70, kv_len=30, dtype=torch.float32, seed=24, device=DEVICE
    )
    enc_lens = torch.tensor([30, 13], dtype=torch.int32, device=DEVICE)
    got = run_poisoned(q, k, v, enc_lens, num_splits=1)
    kt.assert_close(got, kt.in_float64(cross_attention_ref, q, k, v, enc_lens), dtype=torch.float32)


def test_reference_ignores_states_past_the_length() -> None:
    q, k, v = kt.random_qkv(
        batch=2, layout=kt.HeadLayout(2, 2, 16), q_len=2, kv_len=10, dtype=torch.float64, seed=25
    )
    enc_lens = torch.tensor([10, 4])
    got = cross_attention_ref(q, k, v, enc_lens)
    for b, h, i in itertools.product(range(2), range(2), range(2)):
        n = int(enc_lens[b])
        weights = torch.softmax(q[b, h, i] @ k[b, h, :n].T / 4.0, dim=-1)
        torch.testing.assert_close(got[b, h, i], weights @ v[b, h, :n])


def test_reference_gives_each_sequence_what_it_gives_alone() -> None:
    """Rows of mixed lengths (a final's 1500 encoder frames beside partials' short windows, two
    neighbours of equal length): each row's output is the very bits of that row run alone, so a
    batched decode equals decoding alone; unwritten NaN tails stay unread."""
    lens = [1500, 150, 150, 330, 1500]
    q, k, v = kt.random_qkv(
        batch=len(lens), layout=kt.HeadLayout(6, 6, 64), q_len=1, kv_len=1500,
        dtype=torch.float32, seed=8,
    )  # fmt: skip
    enc_lens = torch.tensor(lens)
    got = cross_attention_ref(q, kt.poison_tail(k, enc_lens), kt.poison_tail(v, enc_lens), enc_lens)
    assert torch.isfinite(got).all()
    for b, n in enumerate(lens):
        alone = cross_attention_ref(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n])
        assert torch.equal(got[b : b + 1], alone)
