"""Input checks shared by the attention ops: ranks, shapes, dtypes, strides and lengths."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_HEAD_DIM = 16  # tl.dot needs K >= 16
MAX_HEAD_DIM = 256  # one (rows, head_dim) fp32 accumulator per program must fit in registers
MAX_SPLITS = 256
LENGTH_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of one attention call, read from q (B, Hq, Lq, D) and k/v (B, Hkv, Lk, D)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int  # capacity of the key axis; the valid length per sequence may be shorter
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.q_heads // self.kv_heads


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionShape:
    """Check q (B, Hq, Lq, D) and k, v (B, Hkv, Lk, D); return their sizes or raise ValueError."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, H, L, D), got shape {tuple(t.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; expected one of {SUPPORTED_DTYPES}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    b, hq, lq, d = q.shape
    if k.shape[0] != b:
        raise ValueError(f"batch mismatch: q has {b}, k/v have {k.shape[0]}")
    if k.shape[3] != d:
        raise ValueError(f"head_dim mismatch: q has {d}, k/v have {k.shape[3]}")
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {d}")
    hkv, lk = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q heads ({hq}) must be a multiple of k/v heads ({hkv})")
    if b == 0 or lq == 0 or lk == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k/v {tuple(k.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")
    return AttentionShape(b, hq, hkv, lq, lk, d)


def check_length_tensor(
    lengths: torch.Tensor,
    *,
    name: str,
    batch: int,
    low: int,
    high: int,
    device: torch.device,
    check_values: bool,
) -> None:
    """Check a (B,) integer tensor of valid lengths; with `check_values`, that low <= each <= high.

    The value check reads the tensor on the host: one device sync, which callers on a hot path
    (or under CUDA graphs) skip with `check_values=False`.
    """
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(lengths).__name__}")
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.dtype not in LENGTH_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {lengths.dtype}")
    if lengths.device != device:
        raise ValueError(f"{name} is on {lengths.device}, the inputs on {device}")
    if check_values:
        lo, hi = torch.stack([lengths.min(), lengths.max()]).tolist()
        if lo < low or hi > high:
            raise ValueError(f"{name} must lie in [{low}, {high}], got values in [{lo}, {hi}]")


def check_num_splits(num_splits: int | None) -> None:
    """Check an explicit split-K count (None lets the launcher choose)."""
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")


def check_out(out: torch.Tensor, *, like: torch.Tensor) -> None:
    """Check a caller-provided output tensor against q (same shape, dtype, device)."""
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out must be {tuple(like.shape)} {like.dtype} on {like.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    if out.stride(3) != 1:
        raise ValueError(f"out must be contiguous in its last dim, got strides {out.stride()}")


def check_block(block: int | None, *, name: str = "block_n") -> None:
    """Check a tile-size override: a power of two in [16, 256] (tl.dot needs >= 16)."""
    if block is not None and (block < 16 or block > 256 or block & (block - 1)):
        raise ValueError(f"{name} must be a power of two in [16, 256], got {block}")


MASKS = ("causal", "block_causal", "none")


def check_mask(mask: str, block_size: int | None) -> None:
    """Check a chunk-attention mask name and its block size (needed by block_causal only)."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}; got {mask!r}")
    if mask == "block_causal" and (block_size is None or block_size < 1):
        raise ValueError(f"block_causal needs a block_size >= 1, got {block_size}")
    if mask != "block_causal" and block_size is not None:
        raise ValueError(f"block_size applies to block_causal only, not to {mask!r}")


def full_lengths(lengths: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`lengths`, or k's capacity Lk for every sequence when None."""
    if lengths is not None:
        return lengths
    return torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)


def check_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    num_splits: int | None,
    check_lengths: bool,
) -> AttentionShape:
    """All input checks of `decode_attention`: seq_lens in [Lq, Lmax]."""
    shape = check_qkv(q, k, v)
    _lengths(seq_lens, "seq_lens", shape, low=shape.q_len, device=q.device, values=check_lengths)
    check_num_splits(num_splits)
    return shape


def check_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None,
    *,
    mask: str,
    block_size: int | None,
    check_lengths: bool,
) -> AttentionShape:
    """All input checks of `chunk_attention`: seq_lens in [Lq, Lk], or Lk >= Lq when None."""
    shape = check_qkv(q, k, v)
    check_mask(mask, block_size)
    if seq_lens is not None:
        _lengths(
            seq_lens, "seq_lens", shape, low=shape.q_len, device=q.device, values=check_lengths
        )
    elif shape.kv_len < shape.q_len:
        raise ValueError(f"k/v hold {shape.kv_len} positions, fewer than the {shape.q_len} queries")
    return shape


def check_cross(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    enc_lens: torch.Tensor | None,
    *,
    num_splits: int | None,
    check_lengths: bool,
) -> AttentionShape:
    """All input checks of `cross_attention`: enc_lens in [1, S_max]."""
    shape = check_qkv(q, k, v)
    if enc_lens is not None:
        _lengths(enc_lens, "enc_lens", shape, low=1, device=q.device, values=check_lengths)
    check_num_splits(num_splits)
    return shape


def _lengths(
    lengths: torch.Tensor,
    name: str,
    shape: AttentionShape,
    *,
    low: int,
    device: torch.device,
    values: bool,
) -> None:
    check_length_tensor(
        lengths, name=name, batch=shape.batch, low=low, high=shape.kv_len, device=device,
        check_values=values,
    )  # fmt: skip
