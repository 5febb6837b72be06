"""Torch reference of cross-attention (also the CPU runtime path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._reference import masked_attention


def cross_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    enc_lens: torch.Tensor | None = None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """q (B, H, Lq, D) against each sequence's first enc_lens[b] encoder states k/v (B, H, S, D)."""
    if enc_lens is None:  # every key valid: no mask to build
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return masked_attention(q, k, v, enc_lens, mask="none", scale=scale)
