"""Safetensors files read through a read-only map, and the pages of tensors read once released."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamasr.errors import ModelFormatError
from streamasr.models.mapped_weights import load_mapped, release_pages
from streamasr.models.whisper_net import WhisperNet

MIB = 1 << 20


def mapped_rss(path: Path) -> int:
    """Bytes of `path` resident in this process's maps of it (/proc/self/smaps)."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            current = line.endswith(str(path))
        elif current and head[0] == "Rss:":
            total += int(head[1]) * 1024
    return total


def test_tensors_equal_what_safetensors_reads(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {
        "f32": torch.randn(7, 5, generator=gen),
        "f16": torch.randn(3, 3, generator=gen).half(),
        "bf16": torch.randn(9, generator=gen).bfloat16(),
        "i64": torch.arange(4),
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    ours, theirs = load_mapped(path), load_file(str(path))
    assert set(ours) == set(theirs)
    for name, want in theirs.items():
        got = ours[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name


def test_released_pages_leave_the_process_and_read_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.randn(4096, 1024), "b": torch.randn(1024)}, str(path))
    state = load_mapped(path)
    want = load_file(str(path))["w"].clone()  # its own map of the file is gone
    assert torch.equal(state["w"], want)  # read: now resident
    assert mapped_rss(path) >= 15 * MIB
    assert release_pages(state["w"], state["b"]) >= 16 * MIB
    assert mapped_rss(path) < MIB
    assert torch.equal(state["w"], want)  # faulted in again from the file
    elsewhere = torch.randn(8)
    assert release_pages(elsewhere.clone(), None) == 0


def test_a_dtype_it_does_not_map_is_read_by_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "f8.safetensors"
    state = {"w": torch.randn(4, 4), "f8": torch.zeros(3).to(torch.float8_e4m3fn)}
    save_file(state, str(path))
    ours = load_mapped(path)
    assert torch.equal(ours["w"], state["w"]) and ours["f8"].dtype == torch.float8_e4m3fn
    assert release_pages(ours["w"]) == 0  # not in a map of ours


def _raw(path: Path, header: object, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_malformed_file_is_a_value_error(tmp_path: Path) -> None:
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    short = tmp_path / "short"
    short.write_bytes(b"\x01\x02")
    cases = [
        short,
        _raw(tmp_path / "past", {"w": {**entry, "data_offsets": [0, 16]}}, b"\0" * 8),
        _raw(tmp_path / "size", {"w": {**entry, "shape": [3]}}, b"\0" * 8),
        _raw(tmp_path / "shape", {"w": {"dtype": "F32", "data_offsets": [0, 8]}}),
        _raw(tmp_path / "list", [1, 2]),
    ]
    for path in cases:
        with pytest.raises(ValueError):
            load_mapped(path)
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "config.json").write_text("{}")
    _raw(tmp_path / "whisper" / "model.safetensors", {"w": {**entry, "shape": [3]}}, b"\0" * 8)
    with pytest.raises(ModelFormatError):
        WhisperNet.from_dir(tmp_path / "whisper")


def test_tiny_en_keeps_only_the_weights_it_reads_resident(tiny_en_dir: Path) -> None:
    """After a decode, the fp16-packed decoder's float32 weights and a bfloat16 encoder's
    float32 ones are out of the process: only the float32 encoder (when it runs in float32)
    and a few pages the decoder reads remain (docs/engine.md, "Memory")."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from streamasr.models.whisper import WhisperModel\n"
        "from streamasr.server.worker import warm_up\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_mapped_weights import mapped_rss\n"
        "d = Path(sys.argv[1])\n"
        "m = WhisperModel.from_dir(d)\n"
        "m.to('cpu', torch.float32, torch.bfloat16 if sys.argv[2] == 'bf16' else None)\n"
        "warm_up(m)\n"
        "enc = sum(p.numel() * 4 for p in m.encoder.parameters())\n"
        "print(mapped_rss(d / 'model.safetensors'), enc)\n"
    )
    for encoder in ("bf16", "f32"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tiny_en_dir), encoder],
            capture_output=True,
            text=True,
            timeout=300,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        resident, encoder_bytes = map(int, out.stdout.split()[-2:])
        allowed = 8 * MIB + (encoder_bytes if encoder == "f32" else 0)
        assert resident < allowed, (encoder, resident, encoder_bytes)
