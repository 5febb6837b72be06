"""Triton flash attention of a block of queries against the cached prefix plus the block itself."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks, _tuning
from .._triton_blocks import LOG2E, attend_block
from ..dispatch import check_launchable

MASK_NONE, MASK_CAUSAL, MASK_BLOCK_CAUSAL = 0, 1, 2
MASK_MODES = {"none": MASK_NONE, "causal": MASK_CAUSAL, "block_causal": MASK_BLOCK_CAUSAL}


@triton.jit  # type: ignore[untyped-decorator]
def _chunk_attention_fwd(  # type: ignore[no-untyped-def]
    Q, K, V, Lens, Out,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    q_len, kv_cap, block_size, scale_log2,
    GROUP: tl.constexpr, MASK: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    """One (query block, query head, sequence); the queries are the last q_len valid positions."""
    pid_m = tl.program_id(0)
    h_q = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    h_kv = h_q // GROUP
    kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), kv_cap)  # the clamp keeps reads in bounds

    i = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query index within the block
    row_ok = i < q_len
    pos = kv_len - q_len + i  # absolute position of each query
    # Limits grow with the position, so the block's last query bounds the keys: hi.
    last = kv_len - q_len + tl.minimum((pid_m + 1) * BLOCK_M, q_len) - 1
    if MASK == 1:
        limit = pos + 1
        hi = last + 1
    elif MASK == 2:
        limit = tl.minimum((pos // block_size + 1) * block_size, kv_len)
        hi = tl.minimum((last // block_size + 1) * block_size, kv_len)
    else:
        limit = tl.zeros([BLOCK_M], dtype=tl.int32) + kv_len
        hi = kv_len

    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_ptrs = Q + b64 * stride_qb + h_q.to(tl.int64) * stride_qh + i[:, None] * stride_qm
    q = tl.load(q_ptrs + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)

    k_base = K + b64 * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + h_kv.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (n < hi)[:, None] & d_ok[None, :]
        k = tl.load(k_base + n[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + n[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
        allowed = n[None, :] < limit[:, None]  # (BLOCK_M, BLOCK_N)
        m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32)

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = Out + b64 * stride_ob + h_q.to(tl.int64) * stride_oh + i[:, None] * stride_om
    tl.store(o_ptrs + d[None, :], o.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    *,
    mask_mode: int,
    block_size: int,
    scale: float,
    block_m: int | None = None,
    block_n: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch on checked inputs: q (B, Hq, Lq, D) are positions [lengths - Lq, lengths)."""
    b, hq, lq, d = q.shape
    cfg = _tuning.chunk_config(head_dim=d, dtype=q.dtype, block_m=block_m, block_n=block_n)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(lq, cfg.block_m), hq, b)
    _chunk_attention_fwd[grid](
        q, k, v, lengths, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        lq, k.shape[2], block_size, scale * LOG2E,
        GROUP=hq // k.shape[1], MASK=mask_mode, HEAD_DIM=d,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=_tuning.next_pow2(d),
        DOT_FP32=q.dtype == torch.bfloat16 and q.device.type != "cuda",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def chunk_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_lens: torch.Tensor | None = None,
    *,
    mask: str = "causal",
    block_size: int | None = None,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    out: torch.Tensor | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Checked launcher of `chunk_attention`; `block_m`, `block_n`, `out` are for tests/tuning."""
    shape = _checks.check_chunk(
        q, k, v, seq_lens, mask=mask, block_size=block_size, check_lengths=check_lengths
    )
    _checks.check_block(block_m, name="block_m")
    _checks.check_block(block_n)
    if out is not None:
        _checks.check_out(out, like=q)
    check_launchable(q.device)
    return flash_attention(
        q, k, v, _checks.full_lengths(seq_lens, q, k),
        mask_mode=MASK_MODES[mask], block_size=block_size or 1,
        scale=scale if scale is not None else shape.head_dim**-0.5,
        block_m=block_m, block_n=block_n, out=out,
    )  # fmt: skip
