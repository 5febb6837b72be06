"""Meeting tests use the weightless FakeModel of tests/engine."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # fake_model
