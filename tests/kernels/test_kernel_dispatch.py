"""Backend selection, the public ops through either backend, and the launchers' input checks."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from kernel_device import DEVICE
from streamasr.kernels import (
    chunk_attention,
    cross_attention,
    decode_attention,
    dispatch,
    select_backend,
    use_backend,
)
from streamasr.kernels import testing as kt

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only a device name: nothing is allocated on it


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def test_auto_picks_the_reference_for_cpu_tensors() -> None:
    assert dispatch.configured_backend() == "auto"
    assert select_backend(CPU) == "reference"


def test_auto_picks_triton_for_cuda_tensors_when_it_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert select_backend(CUDA) == "triton"


def test_auto_without_triton_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setattr(dispatch, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="triton is not installed"):
        assert select_backend(CUDA) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_backend(CUDA) == "reference"


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert select_backend(CUDA) == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "Triton")
    assert select_backend(CPU) == "triton"
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="STREAMASR_KERNELS must be one of"):
        select_backend(CPU)


def test_forcing_triton_without_triton_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with use_backend("triton"), pytest.raises(RuntimeError, match="cannot be imported"):
        select_backend(CUDA)


def test_use_backend_nests_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with use_backend("triton"):
        assert dispatch.configured_backend() == "triton"
        with use_backend("auto"):
            assert dispatch.configured_backend() == "auto"
        assert dispatch.configured_backend() == "triton"
    assert dispatch.configured_backend() == "reference"
    with pytest.raises(ValueError, match="use_backend"), use_backend("fast"):
        pass


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        dispatch.check_launchable(CPU)


def test_the_package_imports_and_runs_without_triton() -> None:
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from streamasr.kernels import decode_attention, dispatch\n"
        "q = torch.randn(1, 2, 1, 16); k = torch.randn(1, 2, 5, 16)\n"
        "out = decode_attention(q, k, k, torch.tensor([5]))\n"
        "assert out.shape == (1, 2, 1, 16) and not dispatch.triton_available()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=120)


def _decode(backend: str) -> torch.Tensor:
    q, k, v = kt.random_qkv(
        batch=2,
        layout=kt.HeadLayout(16, 8, 128),
        q_len=2,
        kv_len=30,
        dtype=torch.float16,
        seed=31,
        device=DEVICE,
    )
    with use_backend(backend):
        out: torch.Tensor = decode_attention(q, k, v, torch.tensor([2, 30], device=DEVICE))
    return out


def _chunk(backend: str) -> torch.Tensor:
    q, k, v = kt.random_qkv(
        batch=2,
        layout=kt.HeadLayout(6, 6, 64),
        q_len=9,
        kv_len=25,
        dtype=torch.float32,
        seed=32,
        device=DEVICE,
    )
    with use_backend(backend):
        out: torch.Tensor = chunk_attention(
            q, k, v, torch.tensor([9, 25], device=DEVICE), mask="block_causal", block_size=4
        )
    return out


def _cross(backend: str) -> torch.Tensor:
    q, k, v = kt.random_qkv(
        batch=2,
        layout=kt.HeadLayout(6, 6, 64),
        q_len=1,
        kv_len=25,
        dtype=torch.bfloat16,
        seed=33,
        device=DEVICE,
    )
    with use_backend(backend):
        out: torch.Tensor = cross_attention(q, k, v, torch.tensor([25, 3], device=DEVICE))
    return out


@pytest.mark.parametrize("op", [_decode, _chunk, _cross], ids=["decode", "chunk", "cross"])
def test_public_ops_agree_across_backends(op: Callable[[str], torch.Tensor]) -> None:
    reference, triton = op("reference"), op("triton")
    assert triton.dtype == reference.dtype
    kt.assert_close(triton, reference.cpu().double(), dtype=reference.dtype)


def _qkv(**changes: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Valid decode inputs, q (2, 4, 1, 16), k/v (2, 2, 8, 16), lengths (2,), then `changes`."""
    q, k, v = kt.random_qkv(
        batch=2, layout=kt.HeadLayout(4, 2, 16), q_len=1, kv_len=8, dtype=torch.float32, seed=0
    )
    args = {"q": q, "k": k, "v": v, "lens": torch.tensor([8, 3])} | changes
    return args["q"], args["k"], args["v"], args["lens"]


BAD_INPUTS = {
    "rank": (_qkv(q=torch.zeros(2, 4, 16)), "rank 4"),
    "batch": (_qkv(q=torch.zeros(3, 4, 1, 16)), "batch mismatch"),
    "head_dim": (_qkv(q=torch.zeros(2, 4, 1, 32)), "head_dim mismatch"),
    "groups": (_qkv(q=torch.zeros(2, 3, 1, 16)), "multiple of k/v heads"),
    "dtype": (_qkv(q=torch.zeros(2, 4, 1, 16, dtype=torch.float64)), "unsupported dtype"),
    "mixed": (_qkv(k=torch.zeros(2, 2, 8, 16, dtype=torch.float16)), "share a dtype"),
    "stride": (_qkv(k=torch.zeros(2, 2, 16, 8).transpose(2, 3)), "contiguous in its last dim"),
    "too long": (_qkv(lens=torch.tensor([9, 3])), r"must lie in \[1, 8\]"),
    "too short": (_qkv(lens=torch.tensor([0, 3])), r"must lie in \[1, 8\]"),
    "lens shape": (_qkv(lens=torch.tensor([8])), r"shape \(2,\)"),
    "lens dtype": (_qkv(lens=torch.tensor([8.0, 3.0])), "int32 or int64"),
}


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_value_error(backend: str, case: str) -> None:
    (q, k, v, lens), message = BAD_INPUTS[case]
    with use_backend(backend), pytest.raises(ValueError, match=message):
        decode_attention(q, k, v, lens)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_op_specific_checks(backend: str) -> None:
    q, k, v, lens = _qkv()
    unknown_mask: Any = "sliding"
    with use_backend(backend):
        with pytest.raises(ValueError, match="Lq|queries|lie in"):
            decode_attention(torch.zeros(2, 4, 4, 16), k, v, torch.tensor([3, 8]))
        with pytest.raises(ValueError, match="num_splits"):
            decode_attention(q, k, v, lens, num_splits=0)
        with pytest.raises(ValueError, match="mask must be one of"):
            chunk_attention(q, k, v, mask=unknown_mask)
        with pytest.raises(ValueError, match="needs a block_size"):
            chunk_attention(q, k, v, mask="block_causal")
        with pytest.raises(ValueError, match="fewer than"):
            chunk_attention(torch.zeros(2, 4, 9, 16), k, v)
        with pytest.raises(ValueError, match="enc_lens"):
            cross_attention(q, k, v, torch.tensor([0, 8]))
