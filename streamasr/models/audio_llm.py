"""The audio-LLM adapter core that GLM-ASR and Tiny Audio share: encoder, projector, prompt, greedy.

One window of normalised log-mel goes through the GLM-ASR encoder; the projector turns each 4
encoder frames into one embedding; those replace the audio placeholder tokens of the model's
chat prompt; then greedy decoding with an explicit KV cache runs until an end token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamasr.config import DecodeConfig
from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.models.base import DecodeResult, FeatureSpec
from streamasr.models.causal_lm import CausalLm
from streamasr.models.glm_encoder import GlmAudioEncoder, audio_token_count, stack_frames
from streamasr.models.guards import compression_ratio, loop_excess
from streamasr.models.resolve import hub_instructions

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one run of audio placeholder tokens, as the model's processor builds it."""

    before: tuple[int, ...]  # ids up to and including the token that opens the audio
    audio_token: int
    after: tuple[int, ...]  # ids after the audio, through the assistant turn's opening

    @classmethod
    def from_example(cls, ids: Sequence[int], audio_token: int, count: int) -> PromptTemplate:
        """Split a processor-built prompt that holds exactly `count` contiguous audio tokens."""
        at = [i for i, t in enumerate(ids) if t == audio_token]
        if len(at) != count or (at and at[-1] - at[0] != count - 1):
            raise ModelFormatError(
                f"expected {count} contiguous audio tokens ({audio_token}) in the prompt, "
                f"found {len(at)}"
            )
        start = at[0] if at else len(ids)
        return cls(tuple(ids[:start]), audio_token, tuple(ids[start + count :]))

    def ids(self, n_audio: int) -> list[int]:
        return [*self.before, *[self.audio_token] * n_audio, *self.after]


def require_weights(model_dir: Path, repo_id: str, what: str) -> None:
    """Raise ModelNotFoundError, with fetch instructions, when `model_dir` holds no weights."""
    if not any(next(model_dir.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ModelNotFoundError(
            f"{model_dir} has a config but no weights ({what}).\n" + hub_instructions(repo_id)
        )


class AudioLlmAdapter:
    """Encoder -> projector -> causal LM. Shared by all sessions; per-call state is local."""

    def __init__(
        self,
        *,
        name: str,
        encoder: GlmAudioEncoder,
        projector: Callable[[torch.Tensor], torch.Tensor],
        lm: CausalLm,
        tokenizer: Any,
        template: PromptTemplate,
        eos_ids: Sequence[int],
        window_frames: int = 3000,
    ) -> None:
        self.name = name
        self.encoder = encoder
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.template = template
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        if not self.eos_ids:
            raise ModelFormatError(f"{name}: the generation config names no end token")
        self.features = FeatureSpec(n_mels=encoder.n_mels, window_frames=window_frames)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_tokens(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    @torch.inference_mode()
    def audio_embeddings(self, features: np.ndarray, num_frames: int) -> torch.Tensor:
        """The projected audio tokens (n, d_lm) of one window for `num_frames` real frames.

        The whole window is encoded (bidirectional: real frames see the padding, as in
        transformers, where the processor pads every window to 30 s); only the first
        n = audio_token_count(num_frames) tokens are kept, as the processor counts them. That
        count equals the processor's when `num_frames` is its mask count, ceil(samples / 160)
        (`glm_encoder.mel_frames_for`); samples // 160 is one token short for some lengths.
        """
        if features.ndim != 2 or features.shape[0] != self.features.n_mels:
            raise ValueError(
                f"expected log-mel ({self.features.n_mels}, T), got shape {features.shape}"
            )
        if not 0 <= num_frames <= features.shape[1]:
            raise ValueError(f"num_frames {num_frames} outside 0..{features.shape[1]}")
        n = audio_token_count(num_frames)
        mel = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]
        mel = mel.to(device=self.lm.device, dtype=self.lm.dtype)  # (1, n_mels, T)
        states = self.encoder.forward(mel)  # (1, ceil(T/2), d_enc)
        tokens = self.projector(stack_frames(states))  # (1, groups, d_lm)
        return tokens[0, :n]

    @torch.inference_mode()
    def transcribe(
        self,
        features: np.ndarray,
        *,
        num_frames: int,
        prompt: list[int],
        options: DecodeConfig,
        word_timestamps: bool,
        prefix: list[int] | None = None,
        draft: list[int] | None = None,  # not used: decoding without it gives the same result
    ) -> DecodeResult:
        """Greedy transcript of one window. `prompt` (previous text) is not used: the chat
        prompt these models were trained on has no slot for it. No word timings."""
        del prompt, word_timestamps
        audio = self.audio_embeddings(features, num_frames)
        return self.decode(audio, num_frames=num_frames, options=options, prefix=prefix or [])

    def prompt_embeddings(self, audio: torch.Tensor, extra: Sequence[int]) -> torch.Tensor:
        """Embeddings (T, d) of the chat prompt with `audio` (n, d) spliced in, then `extra`."""
        ids = [*self.template.ids(audio.shape[0]), *extra]
        is_audio = torch.tensor(ids, device=self.lm.device) == self.template.audio_token
        # The placeholder's own row may not exist (Tiny Audio shrinks the vocab): look up 0.
        x = self.lm.embed([0 if a else t for t, a in zip(ids, is_audio.tolist(), strict=True)])
        x[is_audio] = audio.to(x.dtype)
        return x

    @torch.inference_mode()
    def decode(
        self, audio: torch.Tensor, *, num_frames: int, options: DecodeConfig, prefix: list[int]
    ) -> DecodeResult:
        """Greedy decoding after the prompt with `audio` (n, d) spliced in, continuing `prefix`."""
        x = self.prompt_embeddings(audio, prefix)  # (T, d)
        head = x.shape[0] - len(prefix)
        by_length = 8 + int(options.max_tokens_per_second * num_frames / 100)
        budget = max(0, min(options.max_new_tokens, by_length, self.lm.max_positions - x.shape[0]))
        cache = self.lm.new_cache(x.shape[0] + budget)
        logits = self.lm.forward(x[None], cache, logits_from=head - 1)[0]  # (len(prefix)+1, V)
        lp = logits.float().log_softmax(-1)
        sum_logprob = float(sum(lp[i, t] for i, t in enumerate(prefix)))
        out = list(prefix)
        step_lp = lp[-1]
        for step in range(budget):
            token = int(step_lp.argmax())
            sum_logprob += float(step_lp[token])
            if token in self.eos_ids:
                break
            out.append(token)
            excess = loop_excess(out[len(prefix) :], options.max_repeat_ngram)
            if excess:
                del out[-excess:]  # keep one copy of the looping n-gram
                break
            if step + 1 < budget:
                step_x = self.lm.embed([token])[None]  # (1, 1, d)
                step_lp = self.lm.forward(step_x, cache)[0, -1].float().log_softmax(-1)
        text = self.decode_tokens(out)
        return DecodeResult(
            tokens=tuple(out),
            text=text,
            avg_logprob=sum_logprob / (len(out) + 1),
            no_speech_prob=0.0,  # these models have no no-speech token
            compression_ratio=compression_ratio(text),
        )
