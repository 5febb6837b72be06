"""CTranslate2 Whisper dir to transformers Whisper dir: weights, configs and tokenizer."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamasr.errors import ModelFormatError
from streamasr.models.ct2 import Ct2File, config_scalars, dequantize, read_ct2

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")  # not encoder/layer_norm
_PROJECTION = "decoder/projection/weight"  # an alias of the embeddings when they are tied
_GELU = 3  # CTranslate2 ActivationType.GELU
_TIMESTAMP = re.compile(r"^<\|\d+\.\d\d\|>$")
# Scalars whose value the transformers Whisper architecture cannot express otherwise.
_REQUIRED_SCALARS = {
    "decoder/activation": _GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}


@dataclass(frozen=True)
class WhisperShape:
    """Sizes of a Whisper model, read off the tensor shapes and rank-0 scalars of a CT2 file."""

    d_model: int
    n_mels: int
    vocab_size: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_source_positions: int  # encoder frames per 30 s window (after the stride-2 conv)
    max_target_positions: int  # decoder context in tokens
    scale_embedding: bool
    tied: bool  # proj_out shares the token embedding matrix


def infer_shape(weights: dict[str, np.ndarray], scalars: dict[str, int | float]) -> WhisperShape:
    """Whisper sizes from dequantized weights; ModelFormatError if a key tensor is missing."""

    def dim(name: str, axis: int) -> int:
        if name not in weights or weights[name].ndim <= axis:
            raise ModelFormatError(f"not a CTranslate2 Whisper model: no tensor {name!r}")
        return int(weights[name].shape[axis])

    for name, want in _REQUIRED_SCALARS.items():
        if name in scalars and scalars[name] != want:
            raise ModelFormatError(
                f"unsupported Whisper variant: {name} is {scalars[name]}, expected {want}"
            )
    layers: dict[str, set[int]] = {"encoder": set(), "decoder": set()}
    for name in weights:
        if m := _LAYER.match(name):
            layers[m[1]].add(int(m[2]))
    for side, found in layers.items():
        if found != set(range(len(found))) or not found:
            raise ModelFormatError(f"{side} layers are not numbered 0..n-1: {sorted(found)}")
    d_model = dim("encoder/conv1/weight", 0)
    heads = {side: int(scalars.get(f"{side}/num_heads", d_model // 64)) for side in layers}
    if any(h <= 0 or d_model % h for h in heads.values()):
        raise ModelFormatError(f"d_model {d_model} is not divisible by the head counts {heads}")
    return WhisperShape(
        d_model=d_model,
        n_mels=dim("encoder/conv1/weight", 1),
        vocab_size=dim("decoder/embeddings/weight", 0),
        encoder_layers=len(layers["encoder"]),
        decoder_layers=len(layers["decoder"]),
        encoder_heads=heads["encoder"],
        decoder_heads=heads["decoder"],
        encoder_ffn=dim("encoder/layer_0/ffn/linear_0/weight", 0),
        decoder_ffn=dim("decoder/layer_0/ffn/linear_0/weight", 0),
        max_source_positions=dim("encoder/position_encodings/encodings", 0),
        max_target_positions=dim("decoder/position_encodings/encodings", 0),
        scale_embedding=bool(scalars.get("decoder/scale_embeddings", 0)),
        tied=_PROJECTION not in weights,
    )


class _StateDict:
    """Moves CT2 tensors into transformers names, tracking that each is used exactly once."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.used: set[str] = set()
        self.out: dict[str, np.ndarray] = {}

    def take(self, name: str) -> np.ndarray:
        if name not in self.weights:
            raise ModelFormatError(f"CTranslate2 Whisper tensor {name!r} is missing")
        if name in self.used:
            raise ModelFormatError(f"CTranslate2 tensor {name!r} mapped twice")
        self.used.add(name)
        return self.weights[name]

    def put(self, name: str, value: np.ndarray) -> None:
        if name in self.out:
            raise ModelFormatError(f"transformers parameter {name!r} filled twice")
        self.out[name] = np.ascontiguousarray(value, dtype=np.float32)

    def copy(self, src: str, dst: str) -> None:
        self.put(dst, self.take(src))

    def linear(self, src: str, dst: str) -> None:
        self.copy(f"{src}/weight", f"{dst}.weight")
        self.copy(f"{src}/bias", f"{dst}.bias")

    def norm(self, src: str, dst: str) -> None:
        self.copy(f"{src}/gamma", f"{dst}.weight")
        self.copy(f"{src}/beta", f"{dst}.bias")

    def fused(self, src: str, dsts: list[str], d_model: int) -> None:
        """Split a fused [n*d, d] projection; the k part has no bias in transformers."""
        weight, bias = self.take(f"{src}/weight"), self.take(f"{src}/bias")
        if weight.shape != (len(dsts) * d_model, d_model) or bias.shape != (len(dsts) * d_model,):
            raise ModelFormatError(
                f"{src} has shape {weight.shape}, expected "
                f"({len(dsts) * d_model}, {d_model}) for {dsts}"
            )
        for i, dst in enumerate(dsts):
            rows = slice(i * d_model, (i + 1) * d_model)
            self.put(f"{dst}.weight", weight[rows])
            if dst.endswith("k_proj"):
                # Exact even if nonzero (a key bias shifts all logits of a query equally), but
                # a nonzero one means the rows are not in q, k, v order.
                if np.any(bias[rows] != 0):
                    raise ModelFormatError(f"{src}/bias: the k part is not zero")
            else:
                self.put(f"{dst}.bias", bias[rows])


def _map_layer(sd: _StateDict, side: str, i: int, d_model: int) -> None:
    src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    sd.fused(
        f"{src}/self_attention/linear_0",
        [f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")],
        d_model,
    )
    sd.linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
    sd.norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
    if side == "decoder":
        sd.linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        sd.fused(
            f"{src}/attention/linear_1",
            [f"{dst}.encoder_attn.{p}" for p in ("k_proj", "v_proj")],
            d_model,
        )
        sd.linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        sd.norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
    sd.linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
    sd.linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    sd.norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")


def map_weights(weights: dict[str, np.ndarray], shape: WhisperShape) -> dict[str, np.ndarray]:
    """transformers state dict (float32) from dequantized CT2 weights; every tensor used once.

    With tied embeddings `proj_out.weight` is left out: transformers ties it on load.
    """
    sd = _StateDict(weights)
    for conv in ("conv1", "conv2"):
        sd.linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd.copy("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight")
    sd.norm("encoder/layer_norm", "model.encoder.layer_norm")
    sd.copy("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    sd.copy("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight")
    sd.norm("decoder/layer_norm", "model.decoder.layer_norm")
    if not shape.tied:
        sd.copy(_PROJECTION, "proj_out.weight")
    for i in range(shape.encoder_layers):
        _map_layer(sd, "encoder", i, shape.d_model)
    for i in range(shape.decoder_layers):
        _map_layer(sd, "decoder", i, shape.d_model)
    unused = sorted(set(weights) - sd.used)
    if unused:
        raise ModelFormatError(f"CTranslate2 tensors with no transformers counterpart: {unused}")
    return sd.out


def _check_aliases(ct2: Ct2File) -> None:
    for alias, target in ct2.aliases.items():
        if alias.endswith("_scale"):
            alias, target = alias[: -len("_scale")], target[: -len("_scale")]
        if (alias, target) != (_PROJECTION, "decoder/embeddings/weight"):
            raise ModelFormatError(f"unexpected CTranslate2 alias {alias!r} -> {target!r}")


def _check_against_model(config: Any, state: dict[str, np.ndarray]) -> None:
    """Every parameter of the transformers model is filled, with the right shape, once."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("proj_out.weight", None)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or extra or wrong:
        raise ModelFormatError(
            f"conversion does not match transformers Whisper: missing {missing}, "
            f"unexpected {extra}, wrong shape {wrong}"
        )


def _whisper_config(shape: WhisperShape, tokens: dict[str, int], ct2_config: dict[str, Any]) -> Any:
    from transformers import WhisperConfig

    eot = tokens["<|endoftext|>"]
    return WhisperConfig(
        # the same lists as the generation config; WhisperConfig's default [220, 50256] holds
        # tiny.en's end-of-text, but 50256 is an ordinary token in the multilingual vocabulary
        suppress_tokens=_ints(ct2_config, "suppress_ids", []),
        begin_suppress_tokens=_ints(ct2_config, "suppress_ids_begin", [220, eot]),
        vocab_size=shape.vocab_size,
        num_mel_bins=shape.n_mels,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.encoder_heads,
        decoder_attention_heads=shape.decoder_heads,
        encoder_ffn_dim=shape.encoder_ffn,
        decoder_ffn_dim=shape.decoder_ffn,
        max_source_positions=shape.max_source_positions,
        max_target_positions=shape.max_target_positions,
        scale_embedding=shape.scale_embedding,
        tie_word_embeddings=shape.tied,
        activation_function="gelu",
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
    )


def _ints(config: dict[str, Any], key: str, default: list[int]) -> list[int]:
    value = config.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ModelFormatError(f"CTranslate2 config.json: {key} is not a list of ints")
    return value


def _alignment_heads(config: dict[str, Any]) -> list[list[int]] | None:
    heads = config.get("alignment_heads") or None
    ok = heads is None or (
        isinstance(heads, list)
        and all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) for x in h)
            for h in heads
        )
    )
    if not ok:
        raise ModelFormatError("CTranslate2 config.json: alignment_heads is not [[layer, head]]")
    return heads


def _generation_config(
    shape: WhisperShape, tokens: dict[str, int], ct2_config: dict[str, Any]
) -> Any:
    from transformers import GenerationConfig

    make: Any = GenerationConfig  # untyped in transformers
    eot = tokens["<|endoftext|>"]
    multilingual = shape.vocab_size >= 51865  # openai's rule: .en models have 51864 tokens
    extra: dict[str, Any] = {}
    if multilingual:  # never on .en models: lang_to_id there switches on language detection
        lang_ids = set(_ints(ct2_config, "lang_ids", []))
        extra["lang_to_id"] = {t: i for t, i in tokens.items() if i in lang_ids}
        extra["task_to_id"] = {t: tokens[f"<|{t}|>"] for t in ("transcribe", "translate")}
    gen = make(
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=shape.max_target_positions,
        suppress_tokens=_ints(ct2_config, "suppress_ids", []),
        begin_suppress_tokens=_ints(ct2_config, "suppress_ids_begin", [220, eot]),
        alignment_heads=_alignment_heads(ct2_config),
        no_timestamps_token_id=tokens["<|notimestamps|>"],
        prev_sot_token_id=tokens["<|startofprev|>"],
        max_initial_timestamp_index=50,  # 1 s, openai's default
        return_timestamps=False,
        is_multilingual=multilingual,
        **extra,
    )
    gen._from_model_config = False  # else generate() rebuilds it from the model config
    return gen


def build_tokenizer(src_dir: Path, vocab_size: int, max_length: int) -> Any:
    """A WhisperTokenizer from CT2's tokenizer.json: every added token special, plus timestamps.

    transformers finds the timestamp range as `all_special_ids[-1] + 1`, so the specials must
    all be registered and end with <|notimestamps|>.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import WhisperTokenizer

    try:
        raw = json.loads((src_dir / "tokenizer.json").read_text(encoding="utf-8"))
        backend = Tokenizer.from_file(str(src_dir / "tokenizer.json"))
        lines = (src_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise ModelFormatError(f"cannot read the tokenizer files in {src_dir}: {exc}") from exc
    if lines and lines[-1] == "":
        lines.pop()
    try:
        specials = sorted(raw["added_tokens"], key=lambda t: int(t["id"]))
        names = [str(t["content"]) for t in specials]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{src_dir}/tokenizer.json: malformed added_tokens") from exc
    base = backend.get_vocab_size()
    if (
        len(lines) != vocab_size
        or base > vocab_size
        or any(backend.id_to_token(i) != lines[i] for i in range(base))
    ):
        raise ModelFormatError(
            f"{src_dir}: vocabulary.txt ({len(lines)} lines) does not match tokenizer.json "
            f"({base} tokens) and the model's {vocab_size} embeddings"
        )
    if not names or names[-1] != "<|notimestamps|>" or specials[-1]["id"] != base - 1:
        raise ModelFormatError(
            f"{src_dir}: tokenizer.json's added tokens do not end the "
            "vocabulary with <|notimestamps|>"
        )
    stamps = lines[base:]
    if not all(_TIMESTAMP.match(s) for s in stamps):
        raise ModelFormatError(f"{src_dir}: vocabulary.txt has non-timestamp tokens past {base}")
    backend.add_tokens([AddedToken(s, special=False, normalized=False) for s in stamps])
    eot = "<|endoftext|>"
    return WhisperTokenizer(
        tokenizer_object=backend,
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        extra_special_tokens=names,
        model_max_length=max_length,
    )


def _read_source(src_dir: Path) -> tuple[Ct2File, dict[str, Any]]:
    if not (src_dir / "model.bin").is_file():
        raise ModelFormatError(f"{src_dir} is not a CTranslate2 model dir: it has no model.bin")
    ct2 = read_ct2(src_dir / "model.bin")
    if ct2.spec_name != "WhisperSpec":
        raise ModelFormatError(f"{src_dir}/model.bin holds a {ct2.spec_name!r}, not a WhisperSpec")
    try:
        ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        ct2_config = {}
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {src_dir}/config.json: {exc}") from exc
    if not isinstance(ct2_config, dict):
        raise ModelFormatError(f"{src_dir}/config.json is not a JSON object")
    return ct2, ct2_config


def _write(src_dir: Path, out: Path) -> None:
    """Write the whole transformers dir into `out` (an empty scratch dir)."""
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    ct2, ct2_config = _read_source(src_dir)
    _check_aliases(ct2)
    weights = dequantize(ct2.variables)
    shape = infer_shape(weights, config_scalars(ct2.variables))
    state = map_weights(weights, shape)
    del weights
    tokenizer = build_tokenizer(src_dir, shape.vocab_size, shape.max_target_positions)
    tokens = {t: int(i) for t, i in tokenizer.get_vocab().items() if t.startswith("<|")}
    needed = ["<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>", "<|notimestamps|>"]
    if shape.vocab_size >= 51865:
        needed += ["<|transcribe|>", "<|translate|>"]
    if missing := [t for t in needed if t not in tokens]:
        raise ModelFormatError(f"{src_dir}/tokenizer.json lacks the special tokens {missing}")
    config = _whisper_config(shape, tokens, ct2_config)
    _check_against_model(config, state)
    config.save_pretrained(out)
    _generation_config(shape, tokens, ct2_config).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    extractor: Any = WhisperFeatureExtractor  # untyped in transformers
    extractor(feature_size=shape.n_mels).save_pretrained(out)


def convert_ct2_whisper(src_dir: Path, dst_dir: Path, *, overwrite: bool = False) -> Path:
    """Convert the CTranslate2 Whisper dir `src_dir` into a transformers dir at `dst_dir`.

    The result is built in a scratch dir beside `dst_dir` and renamed into place, so `dst_dir`
    is either absent or complete. An existing `dst_dir` is returned untouched unless
    `overwrite`; this also settles a race between two processes converting the same model.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if dst_dir.exists() and not overwrite:
        return dst_dir
    dst_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dst_dir.name}.", suffix=".tmp", dir=dst_dir.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary cache dir
    try:
        _write(src_dir, scratch)
        if overwrite and dst_dir.exists():
            old = scratch.with_suffix(".old")
            dst_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(scratch, dst_dir)
        except OSError:
            if not dst_dir.is_dir():
                raise
            # Another process finished the same conversion first: keep its copy.
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dst_dir
