"""GPU benchmark of the attention kernels against a device copy and torch SDPA (markdown table).

    python bench/attention_kernels.py [--op decode|chunk|cross|all] [--dtype fp16|bf16|all]
                                      [--quick] [--warmup N] [--iters N]

For each shape, on one GPU, in one run:

- ours: median over --iters launches of the Triton kernel (CUDA events around each launch; L2
  is flushed by zeroing a 256 MiB buffer before every launch, so small caches are read from
  HBM as in a real decode step that has run the rest of the model in between);
- GB/s: the bytes the op must move (Q and K/V read once, O written; the split-K workspace and
  any re-reads from L2 are not counted) over ours, and "% copy": that bandwidth as a share of
  a device-to-device `copy_` moving the same number of bytes (half read, half written),
  timed the same way;
- SDPA: `torch.nn.functional.scaled_dot_product_attention` on the same shapes under
  `sdpa_kernel` with the flash backend where the shape allows it (no mask, or the causal mask
  when there is no prefix), else the efficient backend with a boolean mask; the backend that
  ran is named. Every sequence has the full length here, since SDPA has no ragged lengths.
  "max err" is max |ours - SDPA| over the output, a sanity check of the run.

Decode: batch 1..256, cache 256..8k, Lq = 1, the four head layouts (6/6x64, 20/20x64,
16/4x128, 16/8x128), fp16 and bf16. Chunk: Whisper/GLM encoder chunks (20/20x64, 100 new
frames against prefixes of 0..1400, mask none and block_causal) and decoder prefills
(16/4x128, 16/8x128, causal from position 0). Cross: Whisper decoding, 6/6x64 and 20/20x64,
one query against 1500 encoder states. On a machine without CUDA it prints why and exits 0.

`--compile-only 90` needs no GPU: it compiles the kernels for sm_90 with the installed triton
and prints ptxas's registers, stack (spills) and shared memory per kernel variant.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from streamasr.kernels import testing as kt

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FLUSH_BYTES = 256 << 20


@dataclass(frozen=True)
class Case:
    """One benchmarked shape: the op, its inputs and the SDPA call that matches it."""

    op: str
    layout: kt.HeadLayout
    dtype: torch.dtype
    batch: int
    q_len: int
    keys: int  # valid keys per sequence (all sequences full)
    note: str  # mask, prefix
    ours: Callable[[], torch.Tensor]
    sdpa: Callable[[], torch.Tensor]
    sdpa_backends: list[str]  # tried in order; the first that accepts the shape is timed
    nbytes: int


@dataclass
class Timer:
    """CUDA-event timing with an L2 flush before every launch."""

    warmup: int
    iters: int
    flush: torch.Tensor

    def median_ms(self, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        events = []
        for _ in range(self.iters):
            self.flush.zero_()
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return float(statistics.median(s.elapsed_time(e) for s, e in events))


def _inputs(
    layout: kt.HeadLayout, dtype: torch.dtype, batch: int, q_len: int, keys: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (B, Hq, Lq, D), k, v (B, Hkv, keys, D) drawn on the GPU."""
    hq, hkv, d = layout.q_heads, layout.kv_heads, layout.head_dim
    q = torch.randn(batch, hq, q_len, d, device="cuda", dtype=dtype)
    k = torch.randn(batch, hkv, keys, d, device="cuda", dtype=dtype)
    v = torch.randn(batch, hkv, keys, d, device="cuda", dtype=dtype)
    return q, k, v


def _nbytes(q: torch.Tensor, k: torch.Tensor) -> int:
    """Q read + O written + K and V read, once each."""
    return 2 * q.numel() * q.element_size() + 2 * k.numel() * k.element_size()


def decode_cases(dtypes: list[torch.dtype], quick: bool) -> Iterator[Case]:
    from streamasr.kernels.decode_attention.triton import (
        decode_attention_triton,
        resolve_num_splits,
    )

    batches = (1, 16, 256) if quick else (1, 4, 16, 64, 256)
    caches = (256, 4096) if quick else (256, 1024, 4096, 8192)
    for layout in kt.LAYOUTS:
        for dtype in dtypes:
            for batch in batches:
                for cache in caches:
                    q, k, v = _inputs(layout, dtype, batch, 1, cache)
                    lens = torch.full((batch,), cache, dtype=torch.int32, device="cuda")
                    gqa = layout.q_heads != layout.kv_heads
                    splits = resolve_num_splits(q, k, None)
                    yield Case(
                        "decode", layout, dtype, batch, 1, cache, f"causal, {splits} splits",
                        ours=partial(decode_attention_triton, q, k, v, lens, check_lengths=False),
                        sdpa=partial(F.scaled_dot_product_attention, q, k, v, enable_gqa=gqa),
                        sdpa_backends=["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
                        nbytes=_nbytes(q, k),
                    )  # fmt: skip


def cross_cases(dtypes: list[torch.dtype], quick: bool) -> Iterator[Case]:
    from streamasr.kernels.cross_attention.triton import cross_attention_triton

    batches = (1, 16, 128) if quick else (1, 4, 16, 64, 128)
    for layout in kt.LAYOUTS[:2]:  # the Whisper decoders
        for dtype in dtypes:
            for batch in batches:
                q, k, v = _inputs(layout, dtype, batch, 1, 1500)
                lens = torch.full((batch,), 1500, dtype=torch.int32, device="cuda")
                yield Case(
                    "cross", layout, dtype, batch, 1, 1500, "none",
                    ours=partial(cross_attention_triton, q, k, v, lens, check_lengths=False),
                    sdpa=partial(F.scaled_dot_product_attention, q, k, v),
                    sdpa_backends=["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
                    nbytes=_nbytes(q, k),
                )  # fmt: skip


def chunk_cases(dtypes: list[torch.dtype], quick: bool) -> Iterator[Case]:
    from streamasr.kernels.chunk_attention.triton import chunk_attention_triton

    encoder = kt.LAYOUTS[1]  # 20/20x64
    for dtype in dtypes:
        for batch in (1, 8) if quick else (1, 8, 32):
            for prefix in (0, 1400) if quick else (0, 500, 1400):
                q, k, v = _inputs(encoder, dtype, batch, 100, prefix + 100)
                lens = torch.full((batch,), prefix + 100, dtype=torch.int32, device="cuda")
                for mask, size in (("none", None), ("block_causal", 50)):
                    allowed = _block_causal(prefix, 100, 50) if mask == "block_causal" else None
                    yield Case(
                        "chunk", encoder, dtype, batch, 100, prefix + 100,
                        f"{mask}, prefix {prefix}",
                        ours=partial(
                            chunk_attention_triton, q, k, v, lens,
                            mask=mask, block_size=size, check_lengths=False,
                        ),
                        sdpa=partial(F.scaled_dot_product_attention, q, k, v, attn_mask=allowed),
                        sdpa_backends=["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
                        nbytes=_nbytes(q, k),
                    )  # fmt: skip
        for layout in kt.LAYOUTS[2:]:
            for batch, q_len in ((1, 256), (1, 1024), (8, 256)):
                q, k, v = _inputs(layout, dtype, batch, q_len, q_len)
                lens = torch.full((batch,), q_len, dtype=torch.int32, device="cuda")
                yield Case(
                    "chunk", layout, dtype, batch, q_len, q_len, "causal, prefix 0",
                    ours=partial(
                        chunk_attention_triton, q, k, v, lens, mask="causal", check_lengths=False
                    ),
                    sdpa=partial(
                        F.scaled_dot_product_attention, q, k, v, is_causal=True, enable_gqa=True
                    ),
                    sdpa_backends=["FLASH_ATTENTION", "EFFICIENT_ATTENTION"],
                    nbytes=_nbytes(q, k),
                )  # fmt: skip


def _block_causal(prefix: int, q_len: int, block: int) -> torch.Tensor:
    """(Lq, prefix + Lq) boolean mask of block_causal, for SDPA."""
    pos = prefix + torch.arange(q_len, device="cuda")
    limit = torch.clamp((pos // block + 1) * block, max=prefix + q_len)
    return torch.arange(prefix + q_len, device="cuda").view(1, -1) < limit.view(-1, 1)


def _sdpa_context(name: str) -> AbstractContextManager[object]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


def time_sdpa(case: Case, timer: Timer) -> tuple[float | None, str, float | None]:
    """SDPA on the first backend that takes the shape: median ms, backend, max |ours - SDPA|."""
    for name in case.sdpa_backends:
        try:
            with _sdpa_context(name), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # each rejecting backend warns why
                expected = case.sdpa()
                err = (case.ours().float() - expected.float()).abs().max().item()
                return timer.median_ms(case.sdpa), name.split("_")[0].lower(), err
        except RuntimeError:  # "No available kernel": this backend rejects the shape
            continue
    return None, "n/a", None


def copy_ms(nbytes: int, timer: Timer) -> float:
    """Median ms of a device-to-device copy that reads nbytes / 2 and writes nbytes / 2."""
    src = torch.empty(max(1, nbytes // 2), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return timer.median_ms(lambda: dst.copy_(src))


def row(case: Case, timer: Timer) -> str:
    ours = timer.median_ms(case.ours)
    copy = copy_ms(case.nbytes, timer)
    sdpa, backend, err = time_sdpa(case, timer)
    gbps = case.nbytes / ours / 1e6
    sdpa_cols = f"{sdpa * 1e3:.1f} ({backend}) | {sdpa / ours:.2f}x" if sdpa else "n/a | n/a"
    err_col = f"{err:.1e}" if err is not None else "n/a"
    dtype = str(case.dtype).removeprefix("torch.")
    return (
        f"| {case.op} | {case.layout} | {dtype} | {case.batch} | {case.q_len} | {case.keys} "
        f"| {case.note} | {ours * 1e3:.1f} | {gbps:.0f} | {100 * copy / ours:.0f}% "
        f"| {sdpa_cols} | {err_col} |"
    )


HEADER = (
    "| op | layout | dtype | B | Lq | keys | mask | ours us | GB/s | % copy | SDPA us "
    "| SDPA / ours | max err |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def compile_only(arch: int) -> int:
    """Compile kernel variants for sm_<arch> without a GPU; print ptxas's resource use.

    Checks that the installed triton builds every kernel (dtypes, head dims, tile shapes the
    launchers choose) and shows registers, spills and shared memory before anything is timed.
    """
    os.environ.pop("TRITON_INTERPRET", None)  # before the kernels' import: triton.jit reads it
    import triton
    from streamasr.kernels import _tuning
    from streamasr.kernels.chunk_attention.triton import _chunk_attention_fwd
    from streamasr.kernels.decode_attention.triton import _split_kv_partial
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"

    def build(fn: Any, dtype: str, constexprs: dict[str, Any], cfg: _tuning.BlockConfig) -> str:
        signature: dict[str, str] = {}
        values: dict[tuple[int, ...], Any] = {}
        for i, param in enumerate(fn.params):
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                values[(i,)] = constexprs[param.name]
            elif param.name in ("Q", "K", "V", "Out"):
                signature[param.name] = "*" + dtype
            elif param.name in ("Lens", "Work"):
                signature[param.name] = "*i32" if param.name == "Lens" else "*fp32"
            else:
                signature[param.name] = "fp32" if param.name == "scale_log2" else "i32"
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        kernel = triton.compile(ASTSource(fn, signature, values), target=target, options=options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True
            ).stdout
        found = dict(re.findall(r"(REG|STACK):(\d+)", usage))
        return f"{found.get('REG', '?')} | {found.get('STACK', '?')} | {kernel.metadata.shared}"

    print(f"triton {triton.__version__}, sm_{arch}, compile only\n")
    print("| kernel | dtype | D | BLOCK_M | BLOCK_N | warps | registers | stack | shared |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype, d in itertools.product(("fp16", "bf16", "fp32"), (64, 128)):
        torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        variants: list[tuple[str, Any, _tuning.BlockConfig, dict[str, Any]]] = []
        for rows in (1, 64):  # MHA decode; GQA 16/4 with 16 new tokens
            cfg = _tuning.split_kv_config(rows=rows, head_dim=d)
            const = {"GROUP": rows, "CAUSAL": True, "NUM_SPLITS": 4}
            variants.append(("split-K decode", _split_kv_partial, cfg, const))
        cfg = _tuning.chunk_config(head_dim=d, dtype=torch_dtype)
        variants.append(("chunk causal", _chunk_attention_fwd, cfg, {"GROUP": 4, "MASK": 1}))
        for name, fn, cfg, const in variants:
            tiles = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_D": d}
            const |= tiles | {"HEAD_DIM": d, "DOT_FP32": False}
            usage = build(fn, dtype, const, cfg)
            print(
                f"| {name} | {dtype} | {d} | {cfg.block_m} | {cfg.block_n} | {cfg.num_warps} "
                f"| {usage} |",
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--op", choices=["decode", "chunk", "cross", "all"], default="all")
    parser.add_argument("--dtype", choices=[*DTYPES, "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="a smaller sweep")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument(
        "--compile-only",
        type=int,
        metavar="ARCH",
        help="no GPU needed: compile the kernels for sm_ARCH (e.g. 90) and print resource use",
    )
    args = parser.parse_args(argv)
    if args.compile_only:
        return compile_only(args.compile_only)
    if not torch.cuda.is_available():
        print(
            "bench/attention_kernels.py times Triton kernels on a CUDA GPU; none is available here."
        )
        return 0
    try:
        import triton
    except ImportError:
        print(
            "bench/attention_kernels.py needs triton: pip install 'streamasr[gpu]'", file=sys.stderr
        )
        return 1
    dtypes = list(DTYPES.values()) if args.dtype == "all" else [DTYPES[args.dtype]]
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    timer = Timer(args.warmup, args.iters, flush)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, triton {triton.__version__}\n")
    print(HEADER)
    makers = {"decode": decode_cases, "chunk": chunk_cases, "cross": cross_cases}
    for op, make in makers.items():
        if args.op in (op, "all"):
            for case in make(dtypes, args.quick):
                print(row(case, timer), flush=True)
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
