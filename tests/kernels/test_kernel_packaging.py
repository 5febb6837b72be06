"""`kernels/` ships as `streamasr.kernels` and never as a top-level `kernels` module."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def packages_on_disk() -> set[str]:
    """Every folder with an __init__.py under streamasr/ and kernels/, by its installed name."""
    found = set()
    for top, name in (("streamasr", "streamasr"), ("kernels", "streamasr.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *parts)))
    return found


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"streamasr.kernels": "kernels"}
    listed = set(config["packages"])
    missing = packages_on_disk() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert not any(p == "kernels" or p.startswith("kernels.") for p in listed)


def test_installed_under_streamasr_only() -> None:
    code = (
        "import importlib.util\n"
        "from streamasr.kernels.decode_attention import ref\n"
        "assert ref.__file__.endswith('kernels/decode_attention/ref.py'), ref.__file__\n"
        # transformers depends on PyPI's `kernels`: a top-level `kernels` may exist, never ours
        "from pathlib import Path\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "ours = spec and (Path(spec.submodule_search_locations[0]) / 'decode_attention').exists()\n"
        "assert not ours, spec\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=120)
