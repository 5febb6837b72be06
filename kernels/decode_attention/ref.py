"""Torch reference of decode attention (also the CPU runtime path)."""

from __future__ import annotations

import torch

from .._reference import masked_attention


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """q (B, Hq, Lq, D), the last Lq of seq_lens[b] positions, against k/v (B, Hkv, Lmax, D).

    Query i of sequence b attends keys [0, seq_lens[b] - Lq + i]: causal within the new tokens.
    """
    return masked_attention(q, k_cache, v_cache, seq_lens, mask="causal", scale=scale)
