"""Whisper's weights read into our own module tree, without transformers' model classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import tiny_random_whisper
from safetensors.torch import load_file, save_file

from streamasr.errors import ModelFormatError
from streamasr.models.whisper_net import WhisperNet


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random Whisper saved by transformers, and its state dict."""
    d = tmp_path_factory.mktemp("whispernet")
    model = tiny_random_whisper()
    model.save_pretrained(d)
    return d, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _copy(src: Path, dst: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    if state is not None:
        save_file(state, str(dst / "model.safetensors"))
    return dst


def test_every_parameter_is_the_saved_one(saved: tuple[Path, dict[str, torch.Tensor]]) -> None:
    d, state = saved
    net = WhisperNet.from_dir(d)
    ours = net.state_dict()
    assert set(ours) == set(state) - {"proj_out.weight"}
    for name, value in ours.items():
        assert value.dtype == torch.float32 and torch.equal(value, state[name]), name


def test_sharded_and_legacy_weights_load_the_same(
    saved: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    d, _ = saved
    tensors = load_file(str(d / "model.safetensors"))
    names = sorted(tensors)
    sharded = _copy(d, tmp_path / "sharded")
    halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    legacy = _copy(d, tmp_path / "legacy")
    torch.save(tensors, legacy / "pytorch_model.bin")
    want = WhisperNet.from_dir(d).state_dict()
    for other in (sharded, legacy):
        got = WhisperNet.from_dir(other).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_weights_that_do_not_fit_are_refused(
    saved: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    d, _ = saved
    tensors = load_file(str(d / "model.safetensors"))
    missing = dict(tensors)
    del missing["model.encoder.layers.1.fc2.bias"]
    extra = {**tensors, "model.encoder.adapter.weight": torch.zeros(2)}
    untied = {**tensors, "proj_out.weight": torch.zeros(51864, 64)}
    cases = {"missing": missing, "extra": extra, "untied": untied}
    for name, state in cases.items():
        with pytest.raises(ModelFormatError):
            WhisperNet.from_dir(_copy(d, tmp_path / name, state))
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        WhisperNet.from_dir(_copy(d, tmp_path / "empty"))
    config = json.loads((d / "config.json").read_text())
    gelu_new = _copy(d, tmp_path / "act", tensors)
    (gelu_new / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(ModelFormatError, match="activation"):
        WhisperNet.from_dir(gelu_new)


def test_loading_tiny_en_leaves_torch_compiler_and_transformers_whisper_unimported() -> None:
    """They cost the daemon about 170 MB of resident memory (docs/engine.md, "Memory")."""
    code = (
        "import sys\n"
        "from streamasr.models.loader import load_model\n"
        "load_model('tiny.en')\n"
        "heavy = ['torch._dynamo', 'sympy', 'transformers.models.whisper.modeling_whisper']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
