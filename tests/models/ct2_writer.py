"""Test-only writer of CTranslate2 model.bin files (binary version 6), the inverse of read_ct2."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from streamasr.models.ct2 import BFLOAT16

DTYPE_CODES = {
    np.dtype("<f4"): 0,
    np.dtype("i1"): 1,
    np.dtype("<i2"): 2,
    np.dtype("<i4"): 3,
    np.dtype("<f2"): 4,
    BFLOAT16: 5,
}


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values truncated to bfloat16, as the BFLOAT16 record dtype read_ct2 returns."""
    bits = (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
    return bits.view(BFLOAT16)


def bf16_values(values: np.ndarray) -> np.ndarray:
    """The float32 numbers that `bf16_bits(values)` stands for."""
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return (raw & np.uint32(0xFFFF0000)).view(np.float32)


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    version: int = 6,
    spec_name: str = "WhisperSpec",
    revision: int = 3,
) -> bytes:
    """The bytes of a model.bin holding `variables` (stored in their own dtypes) and aliases.

    Versions < 4 store (item size, element count) instead of (dtype, bytes), versions < 3
    have no aliases and version 1 has no spec name and revision.
    """
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [_string(spec_name), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(variables)))
    for name, value in variables.items():
        data = np.ascontiguousarray(value).tobytes()
        out.append(_string(name))
        out.append(struct.pack(f"<B{value.ndim}I", value.ndim, *value.shape))
        if version >= 4:
            out.append(struct.pack("<BI", DTYPE_CODES[value.dtype], len(data)))
        else:
            out.append(struct.pack("<BI", value.dtype.itemsize, value.size))
        out.append(data)
    if version >= 3:
        aliases = aliases or {}
        out.append(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            out.append(_string(alias) + _string(target))
    return b"".join(out)


def write_ct2(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    version: int = 6,
) -> Path:
    """Write `ct2_bytes(variables, aliases, version=version)` to `path` and return it."""
    path.write_bytes(ct2_bytes(variables, aliases, version=version))
    return path


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 per-row quantization as CTranslate2 does it: (w_q, scale) with w ~ w_q / scale."""
    peak = np.abs(weight).max(axis=1)
    scale = (127.0 / np.where(peak > 0, peak, 1.0)).astype(np.float32)
    return np.rint(weight * scale[:, None]).astype(np.int8), scale


def _fuse(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=0)


def whisper_variables(
    state: dict[str, np.ndarray], *, heads: int, encoder_layers: int, decoder_layers: int
) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec variables (float32, plus rank-0 scalars) from a transformers
    Whisper state dict: the inverse of the mapping in NOTES-models.md section 1."""
    v: dict[str, np.ndarray] = {}

    def linear(ct: str, hf: str) -> None:
        v[f"{ct}/weight"], v[f"{ct}/bias"] = state[f"{hf}.weight"], state[f"{hf}.bias"]

    def norm(ct: str, hf: str) -> None:
        v[f"{ct}/gamma"], v[f"{ct}/beta"] = state[f"{hf}.weight"], state[f"{hf}.bias"]

    def layer(side: str, i: int) -> None:
        ct, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
        att = f"{hf}.self_attn"
        zeros = np.zeros_like(state[f"{att}.q_proj.bias"])
        v[f"{ct}/self_attention/linear_0/weight"] = _fuse(
            [state[f"{att}.{p}_proj.weight"] for p in "qkv"]
        )
        v[f"{ct}/self_attention/linear_0/bias"] = _fuse(
            [state[f"{att}.q_proj.bias"], zeros, state[f"{att}.v_proj.bias"]]
        )
        linear(f"{ct}/self_attention/linear_1", f"{att}.out_proj")
        norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        if side == "decoder":
            cross = f"{hf}.encoder_attn"
            linear(f"{ct}/attention/linear_0", f"{cross}.q_proj")
            v[f"{ct}/attention/linear_1/weight"] = _fuse(
                [state[f"{cross}.k_proj.weight"], state[f"{cross}.v_proj.weight"]]
            )
            v[f"{ct}/attention/linear_1/bias"] = _fuse([zeros, state[f"{cross}.v_proj.bias"]])
            linear(f"{ct}/attention/linear_2", f"{cross}.out_proj")
            norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        linear(f"{ct}/ffn/linear_0", f"{hf}.fc1")
        linear(f"{ct}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")

    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    v["encoder/position_encodings/encodings"] = state["model.encoder.embed_positions.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    v["decoder/embeddings/weight"] = state["model.decoder.embed_tokens.weight"]
    v["decoder/position_encodings/encodings"] = state["model.decoder.embed_positions.weight"]
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(encoder_layers):
        layer("encoder", i)
    for i in range(decoder_layers):
        layer("decoder", i)
    v = {k: np.ascontiguousarray(a, dtype=np.float32) for k, a in v.items()}
    v["encoder/num_heads"] = np.array(heads, dtype="<i2")
    v["decoder/num_heads"] = np.array(heads, dtype="<i2")
    v["decoder/activation"] = np.array(3, dtype="i1")  # GELU
    v["decoder/pre_norm"] = np.array(1, dtype="i1")
    v["decoder/scale_embeddings"] = np.array(0, dtype="i1")
    return dict(sorted(v.items()))


PROJECTION_ALIAS = {"decoder/projection/weight": "decoder/embeddings/weight"}
