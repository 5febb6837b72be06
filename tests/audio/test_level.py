"""Level boosting: up toward the target, capped, never down."""

from __future__ import annotations

import numpy as np
import pytest

from streamasr.audio.level import boost_to_peak


def peak_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.abs(x).max()))


def test_quiet_audio_reaches_the_target_peak() -> None:
    x = np.sin(np.linspace(0, 100, 1600)).astype(np.float32) * 10 ** (-30 / 20)
    assert peak_dbfs(boost_to_peak(x, target_dbfs=-6, max_gain_db=30)) == pytest.approx(
        -6, abs=1e-3
    )


def test_gain_is_capped_and_loud_audio_is_untouched() -> None:
    x = np.full(10, 10 ** (-60 / 20), dtype=np.float32)
    assert peak_dbfs(boost_to_peak(x, target_dbfs=-6, max_gain_db=24)) == pytest.approx(
        -36, abs=1e-3
    )
    loud = np.full(10, 0.9, dtype=np.float32)
    assert boost_to_peak(loud, target_dbfs=-6, max_gain_db=24) is loud
    silent = np.zeros(10, dtype=np.float32)
    assert boost_to_peak(silent, target_dbfs=-6, max_gain_db=24) is silent
