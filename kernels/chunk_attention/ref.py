"""Torch reference of chunk attention (also the CPU runtime path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._reference import masked_attention


def chunk_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None = None,
    *,
    mask: str = "causal",
    block_size: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, Lq, D) at positions [seq_lens[b] - Lq, seq_lens[b]) against k/v (B, Hkv, Lk, D).

    seq_lens (B,) is prefix plus block per sequence, Lk for all when None. Masks: causal (query
    at position p sees keys <= p), block_causal (keys in blocks <= p // block_size), none.
    """
    if seq_lens is None:
        if mask == "none":  # every key valid and visible: no mask to build
            return F.scaled_dot_product_attention(
                q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
            )
        seq_lens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int64, device=q.device)
    return masked_attention(q, k, v, seq_lens, mask=mask, block_size=block_size, scale=scale)
