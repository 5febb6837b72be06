"""Tiny Audio adapter (mazesmazes/tiny-audio): GLM-ASR encoder, our MLP projector, a Qwen3 decoder.

The hub repo holds only the projector weights, the tokenizer (Qwen3's plus `<audio>`) and the
config; the encoder and decoder weights come from their own dirs. They are named, first match
wins, by the environment ($STREAMASR_TINY_AUDIO_ENCODER, $STREAMASR_TINY_AUDIO_DECODER), by a
`streamasr.json` in the Tiny Audio dir ({"audio_model": ..., "text_model": ...}, paths relative
to that dir), or by config.json's `audio_model_id` / `text_model_id` (hub ids, resolved like
`--model`). The output is lowercase without punctuation: that is how the model was trained.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from streamasr.config import DecodeConfig
from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.models.audio_llm import (
    AudioLlmAdapter,
    PromptTemplate,
    instruction_with_bias,
    require_weights,
)
from streamasr.models.causal_lm import CausalLm
from streamasr.models.glm_encoder import MERGE, GlmAudioEncoder
from streamasr.models.resolve import resolve_model_dir

HUB_ID = "mazesmazes/tiny-audio"
AUDIO_TOKEN = "<audio>"
ENV_ENCODER = "STREAMASR_TINY_AUDIO_ENCODER"
ENV_DECODER = "STREAMASR_TINY_AUDIO_DECODER"
POINTER_FILE = "streamasr.json"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # upstream ASRConfig's default
DEFAULT_TRANSCRIBE_PROMPT = "Transcribe the speech to text"  # upstream since 2026-05-01
_PROMPT_CONSTANT = re.compile(r"""^\s*TRANSCRIBE_PROMPT\s*=\s*(["'])(.*?)\1\s*$""", re.MULTILINE)


class RmsNorm(nn.Module):
    """LlamaRMSNorm: x / rms(x) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class MlpAudioProjector(nn.Module):
    """Upstream `MLPAudioProjector` on 4 stacked encoder frames: Linear (no bias), RMSNorm,
    GELU, Linear (no bias), RMSNorm. The last norm came in on 2026-05-06; weights files
    without `norm_2.weight` are the older layout and run without it."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, out_norm: bool) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden, bias=False)
        self.norm = RmsNorm(hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, out_dim, bias=False)
        self.norm_2 = RmsNorm(out_dim) if out_norm else None

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> MlpAudioProjector:
        """Build from `linear_1.weight`, `norm.weight`, `linear_2.weight` [, `norm_2.weight`]."""
        try:
            hidden, in_dim = state["linear_1.weight"].shape
            out_dim = state["linear_2.weight"].shape[0]
        except KeyError as exc:
            raise ModelFormatError(f"Tiny Audio projector weights lack {exc}") from exc
        proj = cls(in_dim, hidden, out_dim, out_norm="norm_2.weight" in state)
        try:
            proj.load_state_dict(dict(state), strict=True)
        except RuntimeError as exc:
            raise ModelFormatError(f"Tiny Audio projector weights do not fit: {exc}") from exc
        return proj.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked frames (B, N, 4 * d_enc) -> (B, N, d_lm)."""
        x = self.linear_2(self.act(self.norm(self.linear_1(x))))
        return x if self.norm_2 is None else self.norm_2(x)


def component_specs(model_dir: Path, config: Mapping[str, Any]) -> tuple[str, str]:
    """The `--model`-style specs of the encoder (GLM-ASR) and decoder (Qwen3) dirs."""
    pointers = _pointers(model_dir)

    def pick(env: str, key: str, config_key: str) -> str:
        if value := os.environ.get(env, "").strip():
            return value
        if isinstance(pointers.get(key), str):
            p = Path(pointers[key]).expanduser()
            return str(p if p.is_absolute() else model_dir / p)
        return str(config.get(config_key) or "")

    return (
        pick(ENV_ENCODER, "audio_model", "audio_model_id"),
        pick(ENV_DECODER, "text_model", "text_model_id"),
    )


def transcribe_prompt(model_dir: Path) -> str:
    """streamasr.json's `transcribe_prompt`, else the constant in the dir's asr_modeling.py."""
    pointers = _pointers(model_dir)
    if isinstance(pointers.get("transcribe_prompt"), str):
        return str(pointers["transcribe_prompt"])
    try:
        m = _PROMPT_CONSTANT.search((model_dir / "asr_modeling.py").read_text(encoding="utf-8"))
    except OSError:
        m = None
    return m.group(2) if m else DEFAULT_TRANSCRIBE_PROMPT


def prompt_template(
    tokenizer: Any, *, system_prompt: str, instruction: str, audio_token_id: int
) -> PromptTemplate:
    """Upstream's prompt: ChatML with `<audio>` x n then " " + instruction, thinking off; with
    a context-biasing slot after the instruction."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelFormatError(
            "the Tiny Audio tokenizer has no chat template: copy the repo's chat_template.jinja "
            "(or a tokenizer_config.json that holds one) into the model dir"
        )

    def render(instruction: str) -> PromptTemplate:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        user = AUDIO_TOKEN + (f" {instruction}" if instruction else "")
        messages.append({"role": "user", "content": user})
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, enable_thinking=False
        )
        ids = out["input_ids"] if isinstance(out, Mapping) else out
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return PromptTemplate.from_example([int(t) for t in ids], audio_token_id, 1)

    return render(instruction).with_bias_slot(render(instruction_with_bias(instruction)))


def _pointers(model_dir: Path) -> dict[str, Any]:
    path = model_dir / POINTER_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    return data


def _resolve_component(spec: str, model_dir: Path, what: str, env: str, key: str) -> Path:
    if not spec:
        raise ModelFormatError(f"{model_dir}: config.json names no {what} model")
    try:
        return resolve_model_dir(spec)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"Tiny Audio needs the {what} weights: {exc}\nThen point the Tiny Audio dir at them: "
            f'write {model_dir / POINTER_FILE} with {{"{key}": "<that dir>"}} or set {env}.'
        ) from exc


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # it warns that config.json is no tokenizer's
    try:
        tok: Any = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    if AUDIO_TOKEN not in tok.get_vocab():  # as upstream's _init_tokenizer
        tok.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]})
    return tok


def _projector(
    weights: Mapping[str, torch.Tensor], encoder: GlmAudioEncoder, model_dir: Path
) -> MlpAudioProjector:
    prefix = "projector."
    proj = MlpAudioProjector.from_state_dict(
        {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    )
    if proj.linear_1.in_features != MERGE * encoder.hidden_size:
        raise ModelFormatError(
            f"{model_dir}: the projector takes {proj.linear_1.in_features} inputs, "
            f"not {MERGE} stacked {encoder.hidden_size}-d encoder frames"
        )
    return proj


class TinyAudioAdapter(AudioLlmAdapter):
    """Tiny Audio behind the AsrModel interface, plus upstream's list-of-arrays convenience."""

    @classmethod
    def from_dir(cls, model_dir: Path, *, name: str | None = None) -> TinyAudioAdapter:
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        if config.get("projector_type", "mlp") != "mlp" or config.get("use_lora"):
            raise ModelFormatError(
                f"{model_dir}: only Tiny Audio's MLP projector without LoRA is supported"
            )
        require_weights(model_dir, HUB_ID, "the Tiny Audio projector")
        enc_spec, dec_spec = component_specs(model_dir, config)
        enc_dir = _resolve_component(enc_spec, model_dir, "GLM-ASR", ENV_ENCODER, "audio_model")
        dec_dir = _resolve_component(dec_spec, model_dir, "Qwen3", ENV_DECODER, "text_model")
        require_weights(enc_dir, "zai-org/GLM-ASR-Nano-2512", "the GLM-ASR encoder")
        require_weights(dec_dir, "Qwen/Qwen3-0.6B", "the Qwen3 decoder")
        encoder = GlmAudioEncoder.from_glmasr_dir(enc_dir)
        try:
            weights = load_file(str(model_dir / "model.safetensors"))
            lm: Any = AutoModelForCausalLM.from_pretrained(
                str(dec_dir), dtype=torch.float32, trust_remote_code=False
            )
            tok = _tokenizer(model_dir)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot load Tiny Audio from {model_dir}: {exc}") from exc
        projector = _projector(weights, encoder, model_dir)
        lm_prefix = "language_model."
        tuned = {k[len(lm_prefix) :]: v for k, v in weights.items() if k.startswith(lm_prefix)}
        if tuned:  # a fine-tuned decoder (freeze_language_model false) ships its own weights
            lm.load_state_dict(tuned, strict=False)
        audio_id = int(tok.convert_tokens_to_ids(AUDIO_TOKEN))
        template = prompt_template(
            tok,
            system_prompt=str(config.get("system_prompt", DEFAULT_SYSTEM_PROMPT) or ""),
            instruction=transcribe_prompt(model_dir),
            audio_token_id=audio_id,
        )
        vocab = int(lm.lm_head.out_features)
        limit = len(tok) if vocab > len(tok) else None  # upstream resizes the embeddings to it
        eos = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return cls(
            name=name or model_dir.name,
            encoder=encoder,
            projector=projector,
            lm=CausalLm(lm.eval().model, lm.lm_head, vocab_limit=limit),
            tokenizer=tok,
            template=template,
            eos_ids=[int(t) for t in eos if isinstance(t, int) and t != tok.unk_token_id],
        )

    def transcribe_batch(
        self, audios: Sequence[np.ndarray], options: DecodeConfig | None = None
    ) -> list[str]:
        """Texts of 16 kHz mono float arrays of any (mixed) lengths, 30 s windows each."""
        from streamasr.engine.offline import transcribe_offline

        texts = []
        for i, audio in enumerate(audios):
            x = np.asarray(audio)
            if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
                raise ValueError(
                    f"audio {i}: expected 1-D float samples at 16 kHz, got {x.dtype} {x.shape}"
                )
            finals = transcribe_offline(self, x.astype(np.float32, copy=False), options)
            texts.append(" ".join(f.text for f in finals))
        return texts
