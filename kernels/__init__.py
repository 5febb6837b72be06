"""Attention kernels (installed as `streamasr.kernels`): Triton on CUDA, torch references else."""

from __future__ import annotations

# With the checkout root on sys.path this folder is also importable as a top-level `kernels`,
# the name of a PyPI package that transformers probes for by importing it. Under that name it
# stays an empty module with no version, which the probe rejects, and nothing else is loaded.
if __name__ != "kernels":
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
