"""streamasr: streaming real-time speech recognition."""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000
"""The engine's one sample clock: every time inside the package is a sample index at this rate."""
