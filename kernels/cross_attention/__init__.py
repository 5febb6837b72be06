"""Cross-attention: a few decoder queries per session against its own encoder states."""

from __future__ import annotations

import torch

from .. import _checks
from ..dispatch import select_backend
from .ref import cross_attention_ref


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    enc_lens: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Unmasked attention over each sequence's valid encoder states; returns (B, H, Lq, D).

    q (B, H, Lq, D); k, v (B, Hkv, S_max, D) the encoder states' keys and values (Whisper:
    Hkv == H), last dim contiguous. enc_lens (B,) int32/int64 in [1, S_max]: the valid states
    of each sequence; None: all S_max. scale defaults to 1/sqrt(D). num_splits as in
    `decode_attention`; check_lengths=False skips the value check of enc_lens (a device sync).
    """
    if select_backend(q.device) == "triton":
        from .triton import cross_attention_triton

        return cross_attention_triton(
            q, k, v, enc_lens,
            scale=scale, num_splits=num_splits, check_lengths=check_lengths,
        )  # fmt: skip
    _checks.check_cross(q, k, v, enc_lens, num_splits=num_splits, check_lengths=check_lengths)
    return cross_attention_ref(q, k, v, enc_lens, scale=scale)


__all__ = ["cross_attention", "cross_attention_ref"]
