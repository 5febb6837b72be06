"""Where a model runs: `--compute auto|cpu|cuda[:N]` and `--dtype auto|float32|float16|bfloat16`.

`auto` picks the first CUDA device when torch sees one, else the CPU. On the CPU models run in
float32 (MKL has no fast half-precision path); on CUDA, `auto` picks the dtype the family was
trained and shipped in: float16 for Whisper, bfloat16 for the audio-LLMs. Attention on CUDA
tensors runs the Triton kernels (docs/kernels.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from streamasr.errors import InputError

if TYPE_CHECKING:  # torch is imported when a model is placed, not when the CLI parses flags
    import torch

COMPUTE_CHOICES = ("auto", "cpu", "cuda")  # and cuda:N
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def check_compute(spec: str) -> str:
    """`spec` if it names a compute device we can place a model on; InputError if not."""
    base, colon, index = spec.partition(":")
    if base not in COMPUTE_CHOICES or (colon and (base != "cuda" or not index.isdigit())):
        raise InputError(f"compute must be auto, cpu, cuda or cuda:N; not {spec!r}")
    return spec


def check_dtype(spec: str) -> str:
    if spec not in DTYPE_CHOICES:
        raise InputError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; not {spec!r}")
    return spec


def resolve_compute(spec: str = "auto") -> torch.device:
    """The torch device of `spec`; a clear error if it asks for CUDA that torch cannot see."""
    import torch

    check_compute(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"compute {spec!r}: torch sees no CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use --compute cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"compute {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


def resolve_dtype(spec: str, device: torch.device, *, half: torch.dtype) -> torch.dtype:
    """The dtype of `spec` on `device`; `auto` is float32 on the CPU and `half` on CUDA."""
    import torch

    check_dtype(spec)
    if spec == "auto":
        return half if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, spec)
    return dtype


def resolve_encoder_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """The dtype a model's audio encoder runs in when it differs from the model's: with `auto`
    on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX), bfloat16, which encodes a
    30 s Whisper window in 183 ms against 257 on 2 cores and scored the held-out set as float32
    did (docs/engine.md, "Encoder precision"). None: the model's dtype."""
    import torch

    if spec != "auto" or device.type != "cpu" or not cpu_has_native_bf16():
        return None
    return torch.bfloat16


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bfloat16 in hardware (x86 flags avx512_bf16 or amx_bf16, Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return "avx512_bf16" in flags or "amx_bf16" in flags


def add_placement_args(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """`--compute` and `--dtype` (None when not given and `defaults` is False)."""

    def compute(spec: str) -> str:  # argparse names the type in its error: "invalid compute value"
        return check_compute(spec)

    parser.add_argument(
        "--compute",
        type=compute,
        default="auto" if defaults else None,
        help="where the model runs: auto (CUDA when torch sees it, else the CPU), cpu, cuda, "
        "cuda:N",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto" if defaults else None,
        help="weights' dtype: auto (float32 on the CPU; on CUDA float16 for Whisper, bfloat16 "
        "for GLM-ASR and Tiny Audio), float32, float16, bfloat16",
    )
