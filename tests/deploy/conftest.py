"""Fixtures of the replica tests: a three-utterance clip, the cut falling in the second."""

from __future__ import annotations

import numpy as np
import pytest
import speech


@pytest.fixture
def clip(sentences: list[np.ndarray]) -> np.ndarray:
    pause = speech.silence(1.2)
    parts = [speech.silence(0.3), sentences[0], pause, sentences[1], pause, sentences[0], pause]
    return np.concatenate(parts)
