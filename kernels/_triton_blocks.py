"""Triton building blocks shared by the attention kernels: the online-softmax step."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # softmax runs in base 2: exp(x) == exp2(x * log2(e))


@triton.jit  # type: ignore[untyped-decorator]
def attend_block(  # type: ignore[no-untyped-def]
    q, k, v, m_i, l_i, acc, allowed, scale_log2, DOT_FP32: tl.constexpr
):
    """Fold one block of keys k and values v (BLOCK_N, BLOCK_D) into the running softmax.

    q (BLOCK_M, BLOCK_D); m_i, l_i (BLOCK_M,) running max (log2 units) and sum; acc
    (BLOCK_M, BLOCK_D) fp32; allowed (BLOCK_M, BLOCK_N) the mask. DOT_FP32 upcasts the dot
    operands after rounding them to the input dtype: the CPU interpreter cannot multiply
    bfloat16 (triton-lang/triton#11584); on the GPU it is off.
    """
    if DOT_FP32:
        k = k.to(tl.float32)
    # "ieee" only affects fp32 inputs (exact fp32 instead of TF32); fp16/bf16 use tensor cores.
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2  # (BLOCK_M, BLOCK_N)
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no allowed key keeps m = -inf; subtract 0 then, not -inf (NaN).
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(v.dtype)
    if DOT_FP32:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return m_new, l_i, acc
