"""Chunk attention: a block of queries against the cached prefix plus the block itself."""

from __future__ import annotations

from typing import Literal

import torch

from .. import _checks
from ..dispatch import select_backend
from .ref import chunk_attention_ref

Mask = Literal["causal", "block_causal", "none"]


def chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None = None,
    *,
    mask: Mask = "causal",
    block_size: int | None = None,
    scale: float | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Attention of a block of Lq queries over prefix + block; returns (B, Hq, Lq, D).

    q (B, Hq, Lq, D): positions [seq_lens[b] - Lq, seq_lens[b]), i.e. [prefix, prefix + Lq).
    k, v (B, Hkv, Lk, D), Hq a multiple of Hkv, last dim contiguous; the first seq_lens[b]
    positions (prefix + block) are valid. seq_lens (B,) int32/int64 in [Lq, Lk]; None: all Lk.
    mask: "causal" (the query at position p sees keys <= p), "block_causal" (keys in blocks
    <= p // block_size, blocks counted from position 0: the chunked encoder, where a chunk
    sees all of itself and the cached prefix), "none" (every valid key).
    check_lengths=False skips the value check of seq_lens (a device sync).
    """
    if select_backend(q.device) == "triton":
        from .triton import chunk_attention_triton

        return chunk_attention_triton(
            q, k, v, seq_lens,
            mask=mask, block_size=block_size, scale=scale, check_lengths=check_lengths,
        )  # fmt: skip
    _checks.check_chunk(
        q, k, v, seq_lens, mask=mask, block_size=block_size, check_lengths=check_lengths
    )
    return chunk_attention_ref(q, k, v, seq_lens, mask=mask, block_size=block_size, scale=scale)


__all__ = ["Mask", "chunk_attention", "chunk_attention_ref"]
