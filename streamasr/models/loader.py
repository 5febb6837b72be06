"""Turn a `--model` value into a loaded model adapter; the family comes from the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from streamasr.errors import ModelFormatError
from streamasr.models.base import AsrModel
from streamasr.models.placement import resolve_compute, resolve_dtype, resolve_encoder_dtype
from streamasr.models.resolve import resolve_model_dir

if TYPE_CHECKING:
    from streamasr.models.audio_llm import AudioLlmAdapter

DEFAULT_MODEL = "tiny.en"


def model_family(model_dir: Path) -> str:
    """The `model_type` of a transformers-format dir, e.g. 'whisper'."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{model_dir}/config.json is missing or not JSON: {exc}") from exc
    return str(cfg.get("model_type", ""))


SUPPORTED = "whisper, glmasr (GLM-ASR-Nano-2512), asr_model (Tiny Audio)"


def load_model(
    spec: str = DEFAULT_MODEL, *, compute: str = "auto", dtype: str = "auto"
) -> AsrModel:
    """Resolve `spec` (a name, a dir or a hub id), load it with the adapter of its family and
    place it on `compute` in `dtype` (models/placement.py; `auto`: CUDA when torch sees it)."""
    device = resolve_compute(compute)
    model_dir = resolve_model_dir(spec)
    family = model_family(model_dir)
    if family == "whisper":
        from streamasr.models.whisper import WhisperModel

        whisper = WhisperModel.from_dir(model_dir, name=spec)
        placed = resolve_dtype(dtype, device, half=torch.float16)
        return whisper.to(device, placed, resolve_encoder_dtype(dtype, device))
    if family == "glmasr":
        from streamasr.models.glmasr import GlmAsrAdapter

        llm: AudioLlmAdapter = GlmAsrAdapter.from_dir(model_dir, name=spec)
    elif family == "asr_model":  # Tiny Audio's custom config; the adapter checks the projector
        from streamasr.models.tinyaudio import TinyAudioAdapter

        llm = TinyAudioAdapter.from_dir(model_dir, name=spec)
    else:
        raise ModelFormatError(f"{spec}: model family {family!r} is not supported ({SUPPORTED})")
    return llm.to(device, resolve_dtype(dtype, device, half=torch.bfloat16))
