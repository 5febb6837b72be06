"""GLM-ASR-Nano-2512 adapter: transformers' GlmAsr weights and processor, our encoder and decoder.

Checked against transformers 5.17 and 5.23 (docs/models.md): the processor pads each 30 s
window's audio to 3000 mel frames and counts n = (ceil(L / 2) - 4) // 4 + 1 audio tokens for L
real frames; the encoder sees the whole padded window with no mask; the projector stacks 4
encoder frames (Linear 5120 -> 4096, GELU, Linear 4096 -> 2048); the first n projected frames
replace the `<|pad|>` tokens of the chat prompt; a Llama decoder (16 q / 4 kv heads) decodes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamasr import SAMPLE_RATE
from streamasr.errors import ModelFormatError
from streamasr.models.audio_llm import (
    AudioLlmAdapter,
    PromptTemplate,
    instruction_with_bias,
    require_weights,
)
from streamasr.models.causal_lm import CausalLm
from streamasr.models.glm_encoder import HOP_SAMPLES, GlmAudioEncoder, audio_tokens_for_samples

log = logging.getLogger(__name__)

HUB_ID = "zai-org/GLM-ASR-Nano-2512"
# The template transformers' conversion script gives the processor; used only when a dir's
# processor has none (a download that skipped chat_template.jinja).
CHAT_TEMPLATE = (
    "{%- macro to_text(content) -%}{%- if content is string -%}{{- content -}}"
    "{%- elif content is iterable and content is not mapping -%}{%- for item in content -%}"
    "{%- if item is mapping and item.type == 'text' and item.text is defined -%}"
    "{{- item.text -}}"
    "{%- elif item is mapping and (item.type == 'audio' or 'audio' in item) -%}"
    "<|begin_of_audio|><|pad|><|end_of_audio|><|user|>\n"
    "{% elif item is string -%}{{- item -}}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{- content -}}{%- endif -%}{%- endmacro -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}<|system|>\n{{ to_text(m.content) | trim }}"
    "{%- elif m.role == 'user' -%}<|user|>\n{{ to_text(m.content) | trim }}"
    "{%- elif m.role == 'assistant' -%}<|assistant|>\n{{ to_text(m.content) | trim }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{% endif -%}"
)
_TEMPLATE_SECONDS = 1  # the dummy request whose prompt gives the template: 1 s -> 12 tokens


def glmasr_parts(hf: Any) -> tuple[Any, Any, Any, Any]:
    """(audio_tower, projector, decoder base model, lm_head) of a GlmAsrForConditionalGeneration.

    From transformers 5.10 the parts sit in a `GlmAsrModel` wrapper (`hf.model.audio_tower`,
    `hf.model.language_model` a LlamaModel, `hf.lm_head`); before, on `hf` itself with
    `hf.language_model` a LlamaForCausalLM holding its own lm_head. Both are accepted.
    """
    inner = hf.model if hasattr(hf, "model") and hasattr(hf.model, "audio_tower") else hf
    lm = inner.language_model
    if hasattr(lm, "lm_head"):  # the pre-5.10 layout
        return inner.audio_tower, inner.multi_modal_projector, lm.model, lm.lm_head
    return inner.audio_tower, inner.multi_modal_projector, lm, hf.lm_head


def prompt_template(processor: Any, audio_token_id: int) -> PromptTemplate:
    """The processor's own prompt for a dummy 1 s request, split around its audio tokens."""
    if not getattr(processor, "chat_template", None):
        log.warning("the GLM-ASR processor has no chat template; using transformers' default")
        processor.chat_template = CHAT_TEMPLATE
    dummy = np.zeros(_TEMPLATE_SECONDS * SAMPLE_RATE, dtype=np.float32)
    count = audio_tokens_for_samples(len(dummy))

    def render(prompt: str | None) -> PromptTemplate:
        ids = processor.apply_transcription_request(dummy, prompt=prompt)["input_ids"][0]
        return PromptTemplate.from_example(ids.tolist(), audio_token_id, count)

    instruction = str(getattr(processor, "default_transcription_prompt", "") or "")
    plain = render(None)
    if not instruction:
        return plain
    return plain.with_bias_slot(render(instruction_with_bias(instruction)))


def _check_feature_extractor(fe: Any, n_mels: int) -> int:
    """The window length in frames; raise unless the extractor is the one our front end equals."""
    got = (fe.feature_size, fe.sampling_rate, fe.hop_length, fe.n_fft)
    if got != (n_mels, SAMPLE_RATE, HOP_SAMPLES, 400):
        raise ModelFormatError(
            f"GLM-ASR feature extractor (n_mels, rate, hop, n_fft) = {got}; streamasr's front "
            f"end computes ({n_mels}, {SAMPLE_RATE}, {HOP_SAMPLES}, 400)"
        )
    return int(fe.nb_max_frames)


class GlmAsrAdapter(AudioLlmAdapter):
    """GLM-ASR-Nano-2512 (or any `glmasr` checkpoint) behind the AsrModel interface."""

    hf: Any
    processor: Any

    @classmethod
    def from_dir(cls, model_dir: Path, *, name: str | None = None) -> GlmAsrAdapter:
        from transformers import AutoProcessor, GlmAsrForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        require_weights(model_dir, HUB_ID, "GLM-ASR")
        try:
            hf: Any = GlmAsrForConditionalGeneration.from_pretrained(
                str(model_dir), dtype=torch.float32
            )
            processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                str(model_dir), trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot load GLM-ASR from {model_dir}: {exc}") from exc
        tower, projector, base, lm_head = glmasr_parts(hf.eval())
        encoder = GlmAudioEncoder(tower)
        window = _check_feature_extractor(processor.feature_extractor, encoder.n_mels)
        audio_token = int(hf.config.audio_token_id)
        eos = hf.generation_config.eos_token_id
        adapter = cls(
            name=name or model_dir.name,
            encoder=encoder,
            projector=projector,
            lm=CausalLm(base, lm_head),
            tokenizer=processor.tokenizer,
            template=prompt_template(processor, audio_token),
            eos_ids=[eos] if isinstance(eos, int) else list(eos or []),
            window_frames=window,
        )
        adapter.hf, adapter.processor = hf, processor
        return adapter
