"""Backend selection: the Triton kernels on CUDA when triton imports, else the torch references."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Literal

import torch

Backend = Literal["auto", "triton", "reference"]
Resolved = Literal["triton", "reference"]

ENV_VAR = "STREAMASR_KERNELS"
BACKENDS: tuple[Backend, ...] = ("auto", "triton", "reference")

_override: list[Backend] = []  # stack of `use_backend` names; process-wide, for tests
_warned_fallback = False


def _parse(name: str, *, source: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def configured_backend() -> Backend:
    """The innermost `use_backend` name, else $STREAMASR_KERNELS, else "auto"."""
    if _override:
        return _override[-1]
    return _parse(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", source=ENV_VAR)


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside the block (process-wide; meant for tests and benchmarks)."""
    _override.append(_parse(name, source="use_backend(name)"))
    try:
        yield
    finally:
        _override.pop()


@cache
def triton_available() -> bool:
    """Whether `import triton` works (the optional `streamasr[gpu]` extra); tried once."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def select_backend(device: torch.device) -> Resolved:
    """The backend that serves tensors on `device` under the configured policy.

    auto: Triton for CUDA tensors when triton imports; the reference otherwise, with one
    warning per process when CUDA tensors have to fall back. triton: always Triton (CPU tensors
    then need TRITON_INTERPRET=1); an error when triton is missing. reference: always torch.
    """
    global _warned_fallback
    name = configured_backend()
    if name == "reference":
        return "reference"
    if name == "triton":
        if not triton_available():
            raise RuntimeError(
                f"{ENV_VAR}=triton but triton cannot be imported; pip install 'streamasr[gpu]'"
            )
        return "triton"
    if device.type != "cuda":
        return "reference"
    if triton_available():
        return "triton"
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "triton is not installed: attention runs on the torch reference, which is slower "
            "on GPU (pip install 'streamasr[gpu]')",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (TRITON_INTERPRET=1), so CPU tensors can launch."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_launchable(device: torch.device) -> None:
    """Triton launches on CUDA tensors, or on CPU tensors under its interpreter."""
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {device}")
