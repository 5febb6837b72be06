"""Whisper's parameters as a plain module tree, read from a transformers-format dir.

The adapter runs its own forward (models/whisper.py, models/whisper_decode.py) and needs only
the layers: convolutions, embeddings, linear layers and layer norms, named as transformers names
them (`model.encoder.layers.0.self_attn.q_proj.weight`, ...) so the same `model.safetensors`
loads into either. Importing transformers' Whisper classes pulls in torch's compiler stack
(dynamo, inductor, sympy): about 170 MB of resident memory a daemon does not use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from streamasr.errors import ModelFormatError
from streamasr.models.mapped_weights import load_mapped, release_pages

TIED_PROJECTION = "proj_out.weight"  # the vocabulary projection: the token embedding, tied


@dataclass(frozen=True)
class WhisperConfig:
    """The fields of a transformers Whisper `config.json` that shape the network."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_layers: int
    decoder_attention_heads: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> WhisperConfig:
        """The shape from a parsed config.json; a Whisper variant this forward does not compute
        (another activation, scaled embeddings, untied projection) is refused."""
        if cfg.get("activation_function", "gelu") != "gelu":
            raise ModelFormatError(
                f"Whisper with activation {cfg['activation_function']!r} is not supported"
            )
        if cfg.get("scale_embedding", False) or not cfg.get("tie_word_embeddings", True):
            raise ModelFormatError("Whisper with scaled or untied embeddings is not supported")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - cfg.keys() if n != "pad_token_id")
        if missing:
            raise ModelFormatError(f"Whisper config.json lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in cfg.items() if k in names})


class Attention(nn.Module):
    """Projections of one multi-head attention; the key projection has no bias."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.scaling = (d // heads) ** -0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = Attention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.activation_fn = nn.GELU()
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)


class DecoderLayer(EncoderLayer):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__(d, heads, ffn)
        self.encoder_attn = Attention(d, heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)


class Encoder(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        d = c.d_model
        self.conv1 = nn.Conv1d(c.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = _embedding(c.max_source_positions, d)
        self.layers = nn.ModuleList(
            EncoderLayer(d, c.encoder_attention_heads, c.encoder_ffn_dim)
            for _ in range(c.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(d)


class Decoder(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        d = c.d_model
        self.embed_tokens = _embedding(c.vocab_size, d, c.pad_token_id)
        self.embed_positions = _embedding(c.max_target_positions, d)
        self.layers = nn.ModuleList(
            DecoderLayer(d, c.decoder_attention_heads, c.decoder_ffn_dim)
            for _ in range(c.decoder_layers)
        )
        self.layer_norm = nn.LayerNorm(d)


def _embedding(n: int, d: int, padding_idx: int | None = None) -> nn.Embedding:
    """An embedding whose weight the file fills: its random init is skipped (on the meta
    device, `normal_` would import torch's compiler stack)."""
    return nn.Embedding(n, d, padding_idx=padding_idx, _weight=torch.empty(n, d))


class _Body(nn.Module):
    def __init__(self, c: WhisperConfig) -> None:
        super().__init__()
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)


class WhisperNet(nn.Module):
    """Encoder and decoder layers under `model.`, as in transformers' state dict."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _Body(config)

    @classmethod
    def from_dir(cls, model_dir: Path) -> WhisperNet:
        """The network of a transformers-format Whisper dir (config.json and its weights);
        every parameter must be in the file, with its shape, and nothing else but the tied
        projection."""
        from safetensors import SafetensorError

        try:
            config = WhisperConfig.from_dict(json.loads((model_dir / "config.json").read_text()))
            state = read_state(model_dir)
        except (OSError, ValueError, TypeError, SafetensorError) as exc:
            raise ModelFormatError(f"cannot load a Whisper model from {model_dir}: {exc}") from exc
        projection = state.pop(TIED_PROJECTION, None)
        with torch.device("meta"):  # no memory for weights that the file's replace
            net = cls(config)
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelFormatError(f"{model_dir}: the weights do not fit Whisper: {exc}") from exc
        embed = net.model.decoder.embed_tokens.weight
        if projection is not None:
            tied = torch.equal(projection, embed)
            release_pages(projection, embed)  # read for this check only
            if not tied:
                raise ModelFormatError(f"{model_dir}: {TIED_PROJECTION} is not the token embedding")
        return net.float().eval()


def read_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers dir: `model.safetensors`, the shards its
    `model.safetensors.index.json` names, or else `pytorch_model.bin`. Safetensors files are
    read through a read-only memory map (models/mapped_weights.py)."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_mapped(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_mapped(model_dir / shard).items()}
    legacy = model_dir / "pytorch_model.bin"
    if legacy.is_file():
        state: dict[str, torch.Tensor] = torch.load(legacy, map_location="cpu", weights_only=True)
        return state
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {model_dir}")
