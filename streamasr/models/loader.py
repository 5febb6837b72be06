"""Turn a `--model` value into a loaded model: the family, read from the dir's config, picks the
loader from a small registry (`FAMILIES`), so a new family is one entry."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from streamasr.errors import ModelFormatError
from streamasr.models.base import AsrModel
from streamasr.models.placement import resolve_compute, resolve_dtype, resolve_encoder_dtype
from streamasr.models.resolve import resolve_model_dir

DEFAULT_MODEL = "tiny.en"


def model_family(model_dir: Path) -> str:
    """The `model_type` of a transformers-format dir, e.g. 'whisper'."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{model_dir}/config.json is missing or not JSON: {exc}") from exc
    return str(cfg.get("model_type", ""))


@dataclass(frozen=True)
class Family:
    """How to load one `model_type`: `load(dir, name, device, dtype spec)` places the model."""

    title: str
    load: Callable[[Path, str, torch.device, str], AsrModel]


def _whisper(model_dir: Path, name: str, device: torch.device, dtype: str) -> AsrModel:
    from streamasr.models.whisper import WhisperModel

    whisper = WhisperModel.from_dir(model_dir, name=name)
    placed = resolve_dtype(dtype, device, half=torch.float16)
    return whisper.to(device, placed, resolve_encoder_dtype(dtype, device))


def _glmasr(model_dir: Path, name: str, device: torch.device, dtype: str) -> AsrModel:
    from streamasr.models.glmasr import GlmAsrAdapter

    glm = GlmAsrAdapter.from_dir(model_dir, name=name)
    return glm.to(device, resolve_dtype(dtype, device, half=torch.bfloat16))


def _tinyaudio(model_dir: Path, name: str, device: torch.device, dtype: str) -> AsrModel:
    from streamasr.models.tinyaudio import TinyAudioAdapter  # the adapter checks the projector

    tiny = TinyAudioAdapter.from_dir(model_dir, name=name)
    return tiny.to(device, resolve_dtype(dtype, device, half=torch.bfloat16))


FAMILIES: dict[str, Family] = {
    "whisper": Family("Whisper", _whisper),
    "glmasr": Family("GLM-ASR-Nano-2512", _glmasr),
    "asr_model": Family("Tiny Audio", _tinyaudio),  # Tiny Audio's custom config
}
SUPPORTED = ", ".join(f"{key} ({f.title})" for key, f in FAMILIES.items())


def load_model(
    spec: str = DEFAULT_MODEL, *, compute: str = "auto", dtype: str = "auto"
) -> AsrModel:
    """Resolve `spec` (a name, a dir or a hub id), load it with the loader of its family and
    place it on `compute` in `dtype` (models/placement.py; `auto`: CUDA when torch sees it)."""
    device = resolve_compute(compute)
    model_dir = resolve_model_dir(spec)
    family = model_family(model_dir)
    entry = FAMILIES.get(family)
    if entry is None:
        raise ModelFormatError(f"{spec}: model family {family!r} is not supported ({SUPPORTED})")
    return entry.load(model_dir, spec, device, dtype)
