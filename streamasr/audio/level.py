"""Level normalisation: boost quiet audio toward a target peak before feature extraction."""

from __future__ import annotations

import numpy as np


def boost_to_peak(x: np.ndarray, *, target_dbfs: float, max_gain_db: float) -> np.ndarray:
    """`x` scaled up so its peak reaches `target_dbfs`, by at most `max_gain_db`; never down.

    Whisper's log-mel has an absolute offset ((log10 + 4) / 4), so quiet speech (peaks near
    -30 dBFS) lands in a range the model saw less of; boosting it recovers the accuracy of
    normal-level speech. The cap keeps near-silence from being blown up into loud noise.
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0.0:
        return x
    gain = min(10.0 ** (target_dbfs / 20.0) / peak, 10.0 ** (max_gain_db / 20.0))
    return (x * gain).astype(np.float32) if gain > 1.0 else x
