"""Linear layers on the CPU through FBGEMM's fp16-weight GEMM, where fp16 holds the weights exactly.

A decoding step multiplies a few rows (one per stream) by every weight matrix. For that shape
MKL's float32 GEMM is slow on AVX2 CPUs: four rows through tiny.en's vocabulary projection
(384 x 51864) take about 4x as long as one. FBGEMM's fp16-weight GEMM (what
`torch.ao` dynamic fp16 quantization runs) reads half the bytes and keeps its speed at a few
rows; it widens each weight to float32 and accumulates in float32. A weight is packed only when
converting it to fp16 and back changes no element (the embedded model's weights are stored in
fp16), so the result differs from `F.linear` by summation order alone.

Anything else (other devices, dtypes, a weight fp16 cannot hold, a torch built without FBGEMM)
runs `F.linear`. `STREAMASR_FP16_GEMM=0` turns it off (`use_fp16_gemm` in tests and
benchmarks). `bench/steps.py` measures a step both ways.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamasr.models.mapped_weights import release_pages

ENV_VAR = "STREAMASR_FP16_GEMM"
_override: list[bool] = []  # stack of `use_fp16_gemm` values; process-wide


def fp16_gemm_enabled() -> bool:
    """The innermost `use_fp16_gemm` value, else $STREAMASR_FP16_GEMM != "0" (on by default)."""
    if _override:
        return _override[-1]
    return os.environ.get(ENV_VAR, "1").strip() != "0"


@contextmanager
def use_fp16_gemm(enabled: bool) -> Iterator[None]:
    """Turn the fp16-weight GEMM on or off inside the block (process-wide)."""
    _override.append(enabled)
    try:
        yield
    finally:
        _override.pop()


def fp16_exact(weight: torch.Tensor) -> bool:
    """fp16 holds every element of this float32 tensor exactly (one out of its range or NaN
    does not compare equal after the round trip)."""
    if weight.dtype != torch.float32:
        return False
    w = weight.detach()
    return torch.equal(w.half().float(), w)


def pack_fp16(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Any | None:
    """`weight` (out, in) and `bias` packed for `linear_fp16`, or None where that would not be
    exact or this torch lacks the op."""
    if weight.device.type != "cpu" or not fp16_exact(weight):
        return None
    b = None if bias is None else bias.detach().float()
    try:
        return torch.ops.quantized.linear_prepack_fp16(weight.detach(), b)
    except (AttributeError, RuntimeError):  # no FBGEMM in this build
        return None


def linear_fp16(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """`x @ weight.T + bias` for float32 CPU `x` of any leading shape, with a packed weight."""
    out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x, packed)
    return out


class LazyPack:
    """A weight's (and bias's) `pack_fp16`, made on the first float32 CPU call that wants it.

    Packing costs about 20 ns per weight, so a model placed on a GPU, or in another dtype,
    never pays it, and a CPU model pays it once, in its warm-up. Two threads racing on the
    first call both pack; either result is the same. Once packed, the float32 weight is read
    only where the fp16 GEMM is turned off, so its pages of the model file's memory map are
    released (models/mapped_weights.py)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self._packed: Any | None = None
        self._done = False

    @property
    def packed(self) -> Any | None:
        """The packed weight if a call has made it (None before, or where it cannot be)."""
        return self._packed

    def get(self, x: torch.Tensor) -> Any | None:
        """The packed weight for input `x`, or None: use the float32 weight."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or not fp16_gemm_enabled():
            return None
        if not self._done:
            self._packed = pack_fp16(self.weight, self.bias)
            self._done = True
            if self._packed is not None:  # the float32 weight is now only a fallback
                release_pages(self.weight, self.bias)
        return self._packed

    def reset(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Forget the packed copy, after the weights moved or changed dtype."""
        self.weight, self.bias = weight, bias
        self._packed, self._done = None, False


class PackedLinear(nn.Linear):
    """`nn.Linear` sharing another's parameters; float32 CPU calls run `linear_fp16` where
    fp16 holds the weight exactly."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.pack = LazyPack(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.pack.get(x)
        if packed is not None:
            return linear_fp16(x, packed)
        return F.linear(x, self.weight, self.bias)

    def repack(self) -> None:
        """Pack again (lazily) after the weights moved or changed dtype."""
        self.pack.reset(self.weight, self.bias)


def pack_linears(module: nn.Module) -> None:
    """Make every `nn.Linear` under `module` a `PackedLinear`, and have those that already are
    pack again on first use (after the module moved or changed dtype)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                child.repack()
            elif isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
