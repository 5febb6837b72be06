"""Decode attention: a few new queries per session against its own ragged KV cache."""

from __future__ import annotations

import torch

from .. import _checks
from ..dispatch import select_backend
from .ref import decode_attention_ref


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Attention of the Lq newest tokens of each sequence over its cache; returns (B, Hq, Lq, D).

    q (B, Hq, Lq, D): the queries of positions seq_lens[b] - Lq + i, i < Lq (Lq small: 1-4).
    k_cache, v_cache (B, Hkv, Lmax, D), Hq a multiple of Hkv (GQA), last dim contiguous; the
    first seq_lens[b] positions are valid and already hold the new tokens' keys and values.
    seq_lens (B,) int32/int64 in [Lq, Lmax]. Query i attends keys [0, seq_lens[b] - Lq + i].
    scale defaults to 1/sqrt(D). num_splits: split-K partitions of the keys (Triton backend;
    None picks from the shapes). check_lengths=False skips the value check of seq_lens, which
    costs a device sync; the kernel still never reads past Lmax.
    """
    if select_backend(q.device) == "triton":
        from .triton import decode_attention_triton

        return decode_attention_triton(
            q, k_cache, v_cache, seq_lens,
            scale=scale, num_splits=num_splits, check_lengths=check_lengths,
        )  # fmt: skip
    _checks.check_decode(
        q, k_cache, v_cache, seq_lens, num_splits=num_splits, check_lengths=check_lengths
    )
    return decode_attention_ref(q, k_cache, v_cache, seq_lens, scale=scale)


__all__ = ["decode_attention", "decode_attention_ref"]
