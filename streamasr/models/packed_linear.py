"""Linear layers on the CPU through FBGEMM's fp16-weight GEMM, where fp16 holds the weights exactly.

A decoding step multiplies a few rows (one per stream) by every weight matrix. For that shape
MKL's float32 GEMM is slow on AVX2 CPUs: four rows through tiny.en's vocabulary projection
(384 x 51864) take about 4x as long as one. FBGEMM's fp16-weight GEMM (what
`torch.ao` dynamic fp16 quantization runs) reads half the bytes and keeps its speed at a few
rows; it widens each weight to float32 and accumulates in float32. A weight is packed only when
converting it to fp16 and back changes no element (the embedded model's weights are stored in
fp16), so the result differs from `F.linear` by summation order alone.

Anything else (other devices, dtypes, a weight fp16 cannot hold, a torch built without FBGEMM)
runs `F.linear` as before. `bench/streams.py` shows the effect on whole streams.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def fp16_exact(weight: torch.Tensor) -> bool:
    """fp16 holds every element of this float32 tensor exactly (and it has no inf or NaN)."""
    if weight.dtype != torch.float32:
        return False
    half = weight.detach().half()
    return bool(torch.isfinite(half).all()) and torch.equal(half.float(), weight.detach())


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


class PackedLinear(nn.Linear):
    """`nn.Linear` sharing another's parameters; float32 CPU calls run `linear_fp16`."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.packed = pack_fp16(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return linear_fp16(x, self.packed)
        return F.linear(x, self.weight, self.bias)

    def repack(self) -> None:
        """Pack again after the weights moved or changed dtype (None off the CPU)."""
        self.packed = pack_fp16(self.weight, self.bias)


def pack_linears(module: nn.Module) -> int:
    """Make every `nn.Linear` under `module` a `PackedLinear` (repacking those that already
    are) for the module's current device and dtype; returns how many have a packed weight."""
    packed = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                child.repack()
            elif isinstance(child, nn.Linear):
                child = PackedLinear(child)
                setattr(parent, name, child)
            else:
                continue
            packed += child.packed is not None
    return packed
