"""Triton cross-attention: a few queries per sequence against its own ragged encoder states."""

from __future__ import annotations

import torch

from .. import _checks
from ..decode_attention.triton import split_kv_attention
from ..dispatch import check_launchable


def cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    enc_lens: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Checked launcher of `cross_attention`: the split-K decode kernel without the causal mask."""
    shape = _checks.check_cross(
        q, k, v, enc_lens, num_splits=num_splits, check_lengths=check_lengths
    )
    _checks.check_block(block_n)
    if out is not None:
        _checks.check_out(out, like=q)
    check_launchable(q.device)
    return split_kv_attention(
        q, k, v, _checks.full_lengths(enc_lens, q, k), causal=False,
        scale=scale if scale is not None else shape.head_dim**-0.5,
        num_splits=num_splits, block_n=block_n, out=out, workspace=workspace,
    )  # fmt: skip
