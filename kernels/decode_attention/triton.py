"""Triton split-K (flash-decoding) attention of a few queries per sequence; decode and cross."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _checks, _tuning
from .._triton_blocks import LOG2E, attend_block
from ..dispatch import check_launchable


@triton.jit  # type: ignore[untyped-decorator]
def _split_kv_partial(  # type: ignore[no-untyped-def]
    Q, K, V, Lens, Out, Work,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_wb, stride_wh, stride_wm, stride_ws,
    q_len, kv_cap, scale_log2,
    GROUP: tl.constexpr, CAUSAL: tl.constexpr, NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    """One (sequence, KV head, split): all GROUP * q_len query rows against the split's keys.

    Writes the normalized output directly when NUM_SPLITS == 1, else a partial (output, lse)
    to Work (B, Hq, Lq, NUM_SPLITS, D + 1) for `_split_kv_combine`.
    """
    b = tl.program_id(0)
    h_kv = tl.program_id(1)
    split = tl.program_id(2)
    b64 = b.to(tl.int64)
    kv_len = tl.minimum(tl.load(Lens + b).to(tl.int32), kv_cap)  # the clamp keeps reads in bounds

    rows = tl.arange(0, BLOCK_M)  # row r: query head h_kv * GROUP + r // q_len, query r % q_len
    row_ok = rows < GROUP * q_len
    h_q = h_kv * GROUP + rows // q_len
    i = rows % q_len
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    # keys [0, limit) per row; a causal query i sits at position kv_len - q_len + i
    limit = kv_len - q_len + i + 1 if CAUSAL else tl.zeros([BLOCK_M], dtype=tl.int32) + kv_len

    q_ptrs = Q + b64 * stride_qb + h_q[:, None] * stride_qh + i[:, None] * stride_qm + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    if DOT_FP32:
        q = q.to(tl.float32)

    # Splits are whole blocks wide so that every load but a sequence's last is full.
    per_split = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, kv_len)
    k_base = K + b64 * stride_kb + h_kv.to(tl.int64) * stride_kh
    v_base = V + b64 * stride_vb + h_kv.to(tl.int64) * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + n[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + n[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
        allowed = n_ok[None, :] & (n[None, :] < limit[:, None])  # (BLOCK_M, BLOCK_N)
        m_i, l_i, acc = attend_block(q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # no allowed key in this split: output 0, lse -inf
    o = acc / l_safe[:, None]
    out_mask = row_ok[:, None] & d_ok[None, :]
    if NUM_SPLITS == 1:
        o_ptrs = Out + b64 * stride_ob + h_q[:, None] * stride_oh + i[:, None] * stride_om
        tl.store(o_ptrs + d[None, :], o.to(Out.dtype.element_ty), mask=out_mask)
    else:
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # (BLOCK_M,) log2 units
        w = Work + b64 * stride_wb + h_q * stride_wh + i * stride_wm + split * stride_ws
        tl.store(w[:, None] + d[None, :], o, mask=out_mask)
        tl.store(w + HEAD_DIM, lse, mask=row_ok)


@triton.jit  # type: ignore[untyped-decorator]
def _split_kv_combine(  # type: ignore[no-untyped-def]
    Work, Out,
    stride_wb, stride_wh, stride_wm, stride_ws,
    stride_ob, stride_oh, stride_om,
    HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One (sequence, query head, query): the lse-weighted mean of the splits' partial outputs."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    i = tl.program_id(2)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < NUM_SPLITS
    d_ok = d < HEAD_DIM
    w = Work + b.to(tl.int64) * stride_wb + h * stride_wh + i * stride_wm + s * stride_ws
    lse = tl.load(w + HEAD_DIM, mask=s_ok, other=float("-inf"))  # (BLOCK_S,)
    o = tl.load(w[:, None] + d[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0)
    weight = tl.exp2(lse - tl.max(lse, 0))  # every query has a key, so the max is finite
    out = tl.sum(weight[:, None] * o, 0) / tl.sum(weight, 0)  # (BLOCK_D,)
    o_ptrs = Out + b.to(tl.int64) * stride_ob + h * stride_oh + i * stride_om + d
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=d_ok)


def workspace_shape(q: torch.Tensor, num_splits: int) -> tuple[int, int, int, int, int]:
    """Shape of the fp32 split-K workspace for q (B, Hq, Lq, D): (B, Hq, Lq, splits, D + 1)."""
    b, h, lq, d = q.shape
    return (b, h, lq, num_splits, d + 1)


def resolve_num_splits(q: torch.Tensor, k: torch.Tensor, num_splits: int | None) -> int:
    """`num_splits`, or the heuristic's choice for these shapes on q's device."""
    if num_splits is not None:
        return num_splits
    return _tuning.default_num_splits(
        batch=q.shape[0], kv_heads=k.shape[1], kv_len=k.shape[2], num_sms=_tuning.sm_count(q.device)
    )


def split_kv_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    *,
    causal: bool,
    scale: float,
    num_splits: int | None,
    block_n: int | None,
    out: torch.Tensor | None,
    workspace: torch.Tensor | None,
) -> torch.Tensor:
    """Launch on checked inputs: q (B, Hq, Lq, D) against the first lengths[b] keys of k/v.

    Too many query rows per KV head for one program (GROUP * Lq > MAX_SPLIT_ROWS) go to the
    chunk (flash) kernel, which computes the same masks.
    """
    b, hq, lq, d = q.shape
    hkv, cap = k.shape[1], k.shape[2]
    group = hq // hkv
    if group * lq > _tuning.MAX_SPLIT_ROWS:
        from ..chunk_attention.triton import MASK_CAUSAL, MASK_NONE, flash_attention

        mode = MASK_CAUSAL if causal else MASK_NONE
        return flash_attention(q, k, v, lengths, mask_mode=mode, block_size=1, scale=scale, out=out)
    cfg = _tuning.split_kv_config(rows=group * lq, head_dim=d, block_n=block_n)
    splits = resolve_num_splits(q, k, num_splits)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    work = out  # unused by the kernel when there is one split
    if splits > 1:
        shape = workspace_shape(q, splits)
        work = workspace if workspace is not None else q.new_empty(shape, dtype=torch.float32)
        if work.shape != shape or work.dtype != torch.float32 or work.device != q.device:
            raise ValueError(f"workspace must be {shape} float32 on {q.device}")
    w_strides = work.stride()[:4] if splits > 1 else (0, 0, 0, 0)
    block_d = _tuning.next_pow2(d)
    _split_kv_partial[(b, hkv, splits)](
        q, k, v, lengths, out, work,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *w_strides,
        lq, cap, scale * LOG2E,
        GROUP=group, CAUSAL=causal, NUM_SPLITS=splits, HEAD_DIM=d,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        DOT_FP32=_dot_in_fp32(q),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    if splits > 1:
        _split_kv_combine[(b, hq, lq)](
            work, out, *w_strides, *out.stride()[:3],
            HEAD_DIM=d, NUM_SPLITS=splits,
            BLOCK_S=_tuning.next_pow2(splits), BLOCK_D=block_d,
            num_warps=4,
        )  # fmt: skip
    return out


def _dot_in_fp32(q: torch.Tensor) -> bool:
    """bf16 on the CPU interpreter: upcast dot operands (see `attend_block`)."""
    return q.dtype == torch.bfloat16 and q.device.type != "cuda"


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
    check_lengths: bool = True,
) -> torch.Tensor:
    """Checked launcher of `decode_attention`; `block_n`, `out`, `workspace` are for tests/tuning.

    `workspace` is the fp32 split-K buffer of `workspace_shape(q, num_splits)`, preallocated
    by callers that launch often (or poisoned by tests).
    """
    shape = _checks.check_decode(
        q, k_cache, v_cache, seq_lens, num_splits=num_splits, check_lengths=check_lengths
    )
    _checks.check_block(block_n)
    if out is not None:
        _checks.check_out(out, like=q)
    check_launchable(q.device)
    return split_kv_attention(
        q, k_cache, v_cache, seq_lens, causal=True,
        scale=scale if scale is not None else shape.head_dim**-0.5,
        num_splits=num_splits, block_n=block_n, out=out, workspace=workspace,
    )  # fmt: skip
