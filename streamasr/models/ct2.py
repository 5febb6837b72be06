"""Read CTranslate2 `model.bin` files with numpy alone: parse the variables, dequantize them."""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamasr.errors import ModelFormatError, ModelNotFoundError

MAX_BINARY_VERSION = 6  # the newest layout CTranslate2 4.x writes; later ones may change it

# bfloat16 has no numpy dtype: its raw bits are kept in a named 2-byte record so that a reader
# of `Ct2File.variables` can tell them from int16 (`arr.dtype == BFLOAT16`, bits in arr["bits"]).
BFLOAT16 = np.dtype([("bits", "<u2")])

# The dtype byte of binary version >= 4 (CTranslate2's DataType enum).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: BFLOAT16,
}
# Versions < 4 store the item size instead of a dtype, and the element count instead of bytes.
_DTYPES_BY_ITEM_SIZE: dict[int, np.dtype] = {4: _DTYPES[0], 2: _DTYPES[2], 1: _DTYPES[1]}
_INT16_DEFAULT_SCALE = 1000.0  # CTranslate2's global int16 scale, for old files without one


@dataclass(frozen=True)
class Ct2File:
    """The parsed content of a model.bin; arrays are read-only views of the mapped file."""

    version: int  # binary layout version, 1..MAX_BINARY_VERSION
    spec_name: str  # e.g. "WhisperSpec"; "" for version 1 files
    revision: int  # spec revision (1 for version 1 files)
    variables: dict[str, np.ndarray]  # name -> array in its stored dtype, C order
    aliases: dict[str, str]  # alias name -> target variable name


class _Cursor:
    """Bounds-checked little-endian reads from a byte buffer; errors name the file and offset."""

    def __init__(self, buf: memoryview | bytes, path: str) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0

    def _fail(self, what: str, size: int) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path}: truncated or corrupt CTranslate2 file: cannot read {what} "
            f"({size} bytes) at offset {self.pos} of {len(self.buf)}"
        )

    def _take(self, size: int, what: str) -> int:
        start = self.pos
        if size < 0 or start + size > len(self.buf):
            raise self._fail(what, size)
        self.pos = start + size
        return start

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        start = self._take(struct.calcsize("<" + fmt), what)
        return struct.unpack_from("<" + fmt, self.buf, start)

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"the length of {what}")
        start = self._take(n, what)
        raw = bytes(self.buf[start : start + n])
        if n == 0 or raw[-1] != 0:
            raise ModelFormatError(
                f"{self.path}: corrupt CTranslate2 file: {what} at offset {start} "
                "is not NUL-terminated"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(
                f"{self.path}: corrupt CTranslate2 file: {what} at offset {start} is not UTF-8"
            ) from exc

    def array(self, dtype: np.dtype, shape: tuple[int, ...], nbytes: int, what: str) -> np.ndarray:
        count = math.prod(shape)
        if count * dtype.itemsize != nbytes:
            raise ModelFormatError(
                f"{self.path}: corrupt CTranslate2 file: {what} has shape {shape} of "
                f"{dtype.itemsize}-byte items but {nbytes} data bytes"
            )
        start = self._take(nbytes, what)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).reshape(shape)


def read_ct2(path: str | Path) -> Ct2File:
    """Parse a CTranslate2 model.bin (a file, or a model dir holding one); memory-mapped."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            buf: memoryview | bytes = (
                memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)) if size else b""
            )
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"CTranslate2 model file {path} does not exist") from exc
    except OSError as exc:
        raise ModelFormatError(f"cannot read CTranslate2 model file {path}: {exc}") from exc
    return parse_ct2(buf, str(path))


def parse_ct2(buf: memoryview | bytes, origin: str = "<bytes>") -> Ct2File:
    """Parse model.bin content held in memory; arrays are views of `buf`. `origin` names it."""
    return _parse(_Cursor(buf, origin))


def _parse(cur: _Cursor) -> Ct2File:
    version = cur.u32("the binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise ModelFormatError(
            f"{cur.path}: unsupported CTranslate2 binary version {version} "
            f"(this reader knows 1..{MAX_BINARY_VERSION})"
        )
    spec_name, revision = "", 1
    if version >= 2:
        spec_name = cur.string("the spec name")
        revision = cur.u32("the spec revision")
    n_variables = cur.u32("the variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(n_variables):
        name = cur.string(f"the name of variable {index}")
        if name in variables:
            raise ModelFormatError(f"{cur.path}: variable {name!r} appears twice")
        variables[name] = _variable(cur, version, name)
    aliases: dict[str, str] = {}
    if version >= 3:
        n_aliases = cur.u32("the alias count")
        for index in range(n_aliases):
            alias = cur.string(f"alias {index}")
            aliases[alias] = cur.string(f"the target of alias {alias!r}")
    if cur.pos != len(cur.buf):
        raise ModelFormatError(
            f"{cur.path}: corrupt CTranslate2 file: {len(cur.buf) - cur.pos} unexpected "
            f"bytes after the end at offset {cur.pos}"
        )
    return Ct2File(version, spec_name, revision, variables, aliases)


def _variable(cur: _Cursor, version: int, name: str) -> np.ndarray:
    rank = cur.u8(f"the rank of {name!r}")
    shape = cur.unpack(f"{rank}I", f"the shape of {name!r}") if rank else ()
    code = cur.u8(f"the dtype of {name!r}")
    size = cur.u32(f"the size of {name!r}")
    table = _DTYPES if version >= 4 else _DTYPES_BY_ITEM_SIZE
    dtype = table.get(code)
    if dtype is None:
        raise ModelFormatError(
            f"{cur.path}: variable {name!r} has an unknown dtype code {code} "
            f"(binary version {version})"
        )
    nbytes = size if version >= 4 else size * dtype.itemsize
    return cur.array(dtype, shape, nbytes, f"the data of {name!r}")


def _scale_for(name: str, weight: np.ndarray, variables: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 scale of an integer weight, shaped to broadcast over it."""
    scale = variables.get(name + "_scale")
    if scale is None:
        if weight.dtype == np.int16:
            return np.asarray(_INT16_DEFAULT_SCALE, dtype=np.float32)
        raise ModelFormatError(f"integer variable {name!r} has no {name}_scale companion")
    scale = scale.astype(np.float32)
    if scale.ndim == 0:
        return scale
    if weight.ndim == 0 or scale.shape != (weight.shape[0],):
        raise ModelFormatError(
            f"{name}_scale has shape {scale.shape}; {name!r} of shape {weight.shape} "
            "needs one scale per row"
        )
    return scale.reshape((-1,) + (1,) * (weight.ndim - 1))


def _from_int(name: str, value: np.ndarray, variables: dict[str, np.ndarray]) -> np.ndarray:
    scale = _scale_for(name, value, variables)
    if np.isnan(scale).any() or (scale <= 0).any():  # +inf is fine: an all-zero row
        raise ModelFormatError(f"{name}_scale holds zero, negative or NaN scales")
    with np.errstate(over="ignore"):
        weight: np.ndarray = np.divide(value.astype(np.float32), scale, dtype=np.float32)
    if not np.isfinite(weight).all():
        raise ModelFormatError(f"{name} dequantizes to non-finite values")
    return weight


def to_float32(array: np.ndarray) -> np.ndarray:
    """Cast one float array (f32, f16 or bfloat16 bits) to float32 without quantization logic."""
    if array.dtype == BFLOAT16:
        bits = array["bits"].astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32)
    return array.astype(np.float32)


def dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All weights (rank >= 1) as float32: int8/int16 divided by their `_scale`, floats cast.

    Rank-0 variables are config scalars (see `config_scalars`) and the `_scale` companions
    are consumed here; neither appears in the result.
    """
    weights: dict[str, np.ndarray] = {}
    scales_used: set[str] = set()
    for name, value in variables.items():
        if value.ndim == 0:
            continue
        if value.dtype.kind == "i":
            weights[name] = _from_int(name, value, variables)
            scales_used.add(name + "_scale")
        else:
            weights[name] = to_float32(value)
    for name in scales_used:
        weights.pop(name, None)
    return weights


def config_scalars(variables: dict[str, np.ndarray]) -> dict[str, int | float]:
    """The rank-0 variables (head counts, activation, flags) as Python numbers."""
    out: dict[str, int | float] = {}
    for name, value in variables.items():
        if value.ndim != 0 or (name.endswith("_scale") and name[: -len("_scale")] in variables):
            continue
        if value.dtype.kind in "iu":
            out[name] = int(value)
        else:
            out[name] = float(to_float32(value))
    return out
