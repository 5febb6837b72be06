"""Attention kernels (installed as `streamasr.kernels`): Triton on CUDA, torch references else."""

from __future__ import annotations

if __name__ == "kernels":  # the checkout root is on sys.path: refuse to pose as PyPI's `kernels`
    raise ImportError("this folder installs as streamasr.kernels; import that instead")

from .chunk_attention import Mask, chunk_attention
from .cross_attention import cross_attention
from .decode_attention import decode_attention
from .dispatch import Backend, select_backend, use_backend

__all__ = [
    "Backend",
    "Mask",
    "chunk_attention",
    "cross_attention",
    "decode_attention",
    "select_backend",
    "use_backend",
]
