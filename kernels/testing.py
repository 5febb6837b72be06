"""Kernel test and bench helpers: random inputs, float64 references, poison, tolerances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# (atol, rtol) against a float64 reference run on the same (rounded) inputs. The kernels
# accumulate in fp32; fp16/bf16 lose precision where the probabilities are rounded to the input
# dtype before the P @ V product and where the output is rounded.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 2e-2),
}


@dataclass(frozen=True)
class HeadLayout:
    """Query heads, key/value heads and head_dim of one attention site."""

    q_heads: int
    kv_heads: int
    head_dim: int

    def __str__(self) -> str:
        return f"{self.q_heads}q{self.kv_heads}kv{self.head_dim}d"


# The attention sites of the supported models (q heads, kv heads, head_dim).
LAYOUTS = (
    HeadLayout(6, 6, 64),  # Whisper tiny.en decoder self/cross
    HeadLayout(20, 20, 64),  # Whisper large-v3 decoder, GLM-ASR encoder
    HeadLayout(16, 4, 128),  # GLM-ASR decoder (Llama)
    HeadLayout(16, 8, 128),  # Qwen3 decoder
)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_qkv(
    *,
    batch: int,
    layout: HeadLayout,
    q_len: int,
    kv_len: int,
    dtype: torch.dtype,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D), standard normal, drawn on the CPU then moved."""
    g = generator(seed)
    hq, hkv, d = layout.q_heads, layout.kv_heads, layout.head_dim
    q = torch.randn(batch, hq, q_len, d, generator=g)
    k = torch.randn(batch, hkv, kv_len, d, generator=g)
    v = torch.randn(batch, hkv, kv_len, d, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def random_lengths(
    batch: int,
    *,
    low: int,
    high: int,
    seed: int,
    include: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B,) int32 lengths in [low, high]; the first len(include) are the given values."""
    g = generator(seed)
    lengths = torch.randint(low, high + 1, (batch,), generator=g, dtype=torch.int32)
    for i, n in enumerate(include[:batch]):
        lengths[i] = n
    return lengths.to(device)


def in_float64(fn: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
    """Call `fn` with every floating-point tensor argument cast to float64 (on the CPU)."""

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.cpu()
            return x.double() if x.is_floating_point() else x
        return x

    return fn(*(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})


def poisoned(
    shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A NaN-filled tensor: handed to a kernel as its output, any element it skips stays NaN."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)


def poison_tail(t: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A copy of k or v (B, H, L, D) with NaN past each sequence's valid length.

    A kernel that reads (rather than merely masks) a key or value past the length returns NaN.
    """
    out = t.clone()
    positions = torch.arange(t.shape[2], device=t.device)
    beyond = positions.view(1, -1) >= lengths.view(-1, 1).to(t.device)  # (B, L)
    out[beyond.unsqueeze(1).expand(-1, t.shape[1], -1)] = float("nan")
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype) -> None:
    """Compare a kernel's output with a float64 reference under `TOLERANCES[dtype]`; no NaN."""
    if torch.isnan(actual).any():
        bad = torch.isnan(actual).nonzero()[:5].tolist()
        raise AssertionError(f"NaN in the output (unwritten or poisoned reads), e.g. at {bad}")
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.cpu().double(), expected, atol=atol, rtol=rtol)
