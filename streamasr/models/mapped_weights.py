"""Tensors of a safetensors file read through a read-only memory map, and `release_pages`, which
takes the pages of tensors read once (to pack or to cast them) out of the process again.

A tensor of the file is a view of the map: nothing is copied, and a page is read from the page
cache when first touched. From then on it counts in the process's resident memory (RssFile)
as long as the map exists, which is as long as any tensor of the file does. Whisper's decoder
weights are read once, to pack them as fp16 (models/packed_linear.py), and a bfloat16
encoder's once, to cast them; the float32 tensors stay as the fallback of other paths.
`release_pages` drops such a tensor's pages from the process (`madvise(MADV_DONTNEED)`): the
tensor stays valid, and a later read faults its pages in again from the page cache.

The map is shared and read-only, so dropping its pages can never lose a write: writing to one
of its tensors faults instead (torch warns that the buffer is not writable; the warning is
silenced here). The map keeps the file it was opened on: a model dir converted again is
renamed into place (models/convert.py), which leaves a running process's map as it was.
Tensors in any other memory are left alone by `release_pages`.
"""

from __future__ import annotations

import json
import mmap
import struct
import threading
import warnings
import weakref
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER = 100_000_000  # bytes; the format's own bound
_DONTNEED: int | None = getattr(mmap, "MADV_DONTNEED", None)  # None: `release_pages` does nothing

# The live maps: (first address, end address, the map). An entry whose map is gone is skipped.
_maps: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []
_lock = threading.Lock()


def load_mapped(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at `path`, as views of one read-only map of it.

    A file with a dtype not in `DTYPES`, or a tensor not aligned to its element size, is read
    by safetensors' own loader instead (its tensors are then not released by `release_pages`).
    A malformed header raises ValueError."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 8:
            raise ValueError(f"{path}: {size} bytes is too short for a safetensors file")
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path}: a header of {n} bytes does not fit the file")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the header is not a JSON object")
        header.pop("__metadata__", None)
        start = 8 + n
        specs = [(name, *_spec(path, name, entry, size - start)) for name, entry in header.items()]
        mappable = [(name, t, shape, a, b) for name, t, shape, a, b in specs if t is not None]
        misaligned = any((start + a) % t.itemsize for _, t, _, a, _ in mappable)
        if len(mappable) < len(specs) or misaligned:
            from safetensors.torch import load_file

            return load_file(str(path))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > start else None
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given buffer is not writable")
        if mm is not None:
            _register(mm)
        for name, dtype, shape, a, b in mappable:
            count = (b - a) // dtype.itemsize
            if count == 0 or mm is None:
                out[name] = torch.empty(shape, dtype=dtype)
                continue
            flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=start + a)
            out[name] = flat.view(shape)
    return out


def _spec(
    path: Path, name: str, entry: object, data_bytes: int
) -> tuple[torch.dtype | None, list[int], int, int]:
    """(dtype or None where unknown, shape, first byte, end byte) of one header entry."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {name}: not a tensor entry: {entry!r}")
    try:
        shape = [int(d) for d in entry["shape"]]
        a, b = (int(x) for x in entry["data_offsets"])
        dtype = DTYPES.get(entry["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {name}: not a tensor entry: {entry!r}") from exc
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= a <= b <= data_bytes or (dtype is not None and b - a != numel * dtype.itemsize):
        raise ValueError(f"{path}: {name}: its offsets {a}..{b} do not fit its shape or the file")
    return dtype, shape, a, b


def _register(mm: mmap.mmap) -> None:
    base = torch.frombuffer(mm, dtype=torch.uint8, count=1).data_ptr()
    with _lock:
        _maps[:] = [m for m in _maps if m[2]() is not None]
        _maps.append((base, base + len(mm), weakref.ref(mm)))


def release_pages(*tensors: torch.Tensor | None) -> int:
    """Drop from the process the pages of those `tensors` that live in a map of `load_mapped`
    (the pages they share with neighbours too: those fault in again if read). Returns the
    bytes given back, as counted by the whole pages released; 0 for tensors elsewhere."""
    released = 0
    if _DONTNEED is None:
        return 0
    with _lock:
        maps = [(lo, hi, mm) for lo, hi, ref in _maps if (mm := ref()) is not None]
    for t in tensors:
        if t is None or t.device.type != "cpu" or t.layout != torch.strided:
            continue
        storage = t.untyped_storage()
        first = storage.data_ptr()
        end = first + storage.nbytes()
        for lo, hi, mm in maps:
            if lo <= first and end <= hi and not mm.closed:
                a = (first - lo) // mmap.PAGESIZE * mmap.PAGESIZE
                b = min(-(-(end - lo) // mmap.PAGESIZE) * mmap.PAGESIZE, hi - lo)
                if b > a:
                    mm.madvise(_DONTNEED, a, b - a)
                    released += b - a
                break
    return released
