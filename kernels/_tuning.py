"""Launch parameters of the attention kernels: block sizes and the split-K heuristic."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

# Rows (query heads of one KV group x new tokens) that one split-K program keeps in registers;
# beyond this the decode and cross ops use the chunk (flash) kernel instead.
MAX_SPLIT_ROWS = 64
MIN_KEYS_PER_SPLIT = 256  # below this a split's fixed cost (launch, combine) outweighs its work
WAVES = 2  # aim for about this many programs per SM so that ragged sequences even out


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and launch options of one kernel."""

    block_m: int  # query rows per program (padded to at least 16 for tl.dot)
    block_n: int  # keys per inner-loop step
    num_warps: int
    num_stages: int


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def split_kv_config(*, rows: int, head_dim: int, block_n: int | None = None) -> BlockConfig:
    """Decode/cross stage-1 tiles: every query row of one KV head against BLOCK_N keys."""
    block_m = max(16, next_pow2(rows))
    n = block_n if block_n is not None else 64
    warps = 4 if head_dim <= 64 else 8 if block_m >= 64 else 4
    return BlockConfig(block_m=block_m, block_n=n, num_warps=warps, num_stages=2)


def chunk_config(
    *, head_dim: int, dtype: torch.dtype, block_m: int | None = None, block_n: int | None = None
) -> BlockConfig:
    """Chunk (flash) kernel tiles; fp32 halves both, which keeps it from spilling (ptxas, sm_90)."""
    m = block_m if block_m is not None else (32 if dtype == torch.float32 else 64)
    n = block_n if block_n is not None else (32 if dtype == torch.float32 else 64)
    warps = 4 if head_dim <= 64 else 8
    return BlockConfig(block_m=m, block_n=n, num_warps=warps, num_stages=2)


def default_num_splits(*, batch: int, kv_heads: int, kv_len: int, num_sms: int) -> int:
    """Split-K count for decode/cross: enough programs to fill the GPU, none too short.

    `kv_len` is the cache capacity, not the per-sequence lengths (reading those would cost a
    device sync); splits past a sequence's end exit after writing an empty partial.
    """
    programs = batch * kv_heads
    wanted = -(-WAVES * num_sms // programs)
    useful = -(-kv_len // MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, useful, 64))


@cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
