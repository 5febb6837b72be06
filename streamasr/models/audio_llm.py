"""The audio-LLM adapter core that GLM-ASR and Tiny Audio share: encoder, projector, prompt, greedy.

One window of normalised log-mel goes through the GLM-ASR encoder; the projector turns each 4
encoder frames into one embedding; those replace the audio placeholder tokens of the model's
chat prompt; then greedy decoding with an explicit KV cache runs until an end token.

Streaming (chunked requests): the encoder runs chunk by chunk over cached states and
commits whole 4-frame groups, so committed audio tokens never change. They enter the decoder
prompt as they are committed: a stream keeps the decoder's keys and values of the prompt up to
its last committed audio token, which is exact to reuse because the decoder is causal, and
each call feeds only the newly committed tokens into it, then the rest of the prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamasr.config import DecodeConfig
from streamasr.engine.kv_cache import KVCache
from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.models.audio_llm_decode import LlmRow, LlmStepBatch, greedy_rows
from streamasr.models.base import DecodeResult, FeatureSpec, ModelInfo, TranscribeRequest
from streamasr.models.causal_lm import CausalLm
from streamasr.models.encoder_cache import EncoderCache, Tail
from streamasr.models.glm_encoder import (
    MERGE,
    GlmAudioEncoder,
    audio_token_count,
    encoder_frames,
    stack_frames,
)
from streamasr.models.resolve import hub_instructions

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# Context biasing of an audio-LLM: the session's `bias_text` follows the instruction as one
# more sentence of the user's turn, "... into text. Context: Today we talked about A and B."
BIAS_INTRO = "Context:"


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one run of audio placeholder tokens, as the model's processor builds it."""

    before: tuple[int, ...]  # ids up to and including the token that opens the audio
    audio_token: int
    after: tuple[int, ...]  # ids after the audio, through the assistant turn's opening
    bias_at: int | None = None  # where in `after` the instruction ends (None: no slot found)
    bias_intro: tuple[int, ...] = ()  # ids that open a context sentence after the instruction

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

    def with_bias_slot(self, longer: PromptTemplate) -> PromptTemplate:
        """This prompt, with context biasing placed where `longer`, the same prompt built with
        `instruction_with_bias`, differs from it; unchanged when they differ in
        more than that one run of ids (the model's chat template moved something else)."""
        at = 0
        while at < min(len(self.after), len(longer.after)) and self.after[at] == longer.after[at]:
            at += 1
        rest = self.after[at:]
        intro = longer.after[at : len(longer.after) - len(rest)]
        if self.before != longer.before or not intro or longer.after[at + len(intro) :] != rest:
            return self
        return dataclasses.replace(self, bias_at=at, bias_intro=tuple(intro))

    def after_ids(self, bias: Sequence[int] = ()) -> list[int]:
        """The ids after the audio: with `bias` (a session's prompt and keywords, `bias_text`)
        as a context sentence at the end of the instruction, where this model has a slot."""
        if not bias or self.bias_at is None:
            return list(self.after)
        at = self.bias_at
        return [*self.after[:at], *self.bias_intro, *bias, *self.after[at:]]

    def ids(self, n_audio: int, bias: Sequence[int] = ()) -> list[int]:
        return [*self.before, *[self.audio_token] * n_audio, *self.after_ids(bias)]


def instruction_with_bias(instruction: str) -> str:
    """The instruction followed by `BIAS_INTRO`, as the model's template is rendered to find
    its context slot (see `PromptTemplate.with_bias_slot`)."""
    text = instruction.rstrip()
    if not text:
        return BIAS_INTRO
    return f"{text}{'' if text.endswith(('.', '!', '?')) else '.'} {BIAS_INTRO}"


def require_weights(model_dir: Path, repo_id: str, what: str) -> None:
    """Raise ModelNotFoundError, with fetch instructions, when `model_dir` holds no weights."""
    if not any(next(model_dir.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ModelNotFoundError(
            f"{model_dir} has a config but no weights ({what}).\n" + hub_instructions(repo_id)
        )


class AudioLlmStream:
    """Per-stream state of chunked requests; the caller owns it and passes it back.

    `encoder` holds the committed encoder frames; `audio` (max_tokens, d_lm) the audio tokens
    projected from them (`n_audio` = encoder.length // 4); `lm` the decoder's keys and values
    of the prompt up to and including audio token `lm_audio` - 1. Between calls `lm.length`
    is len(template.before) + lm_audio, or 0 before the first call.
    """

    def __init__(
        self, encoder: EncoderCache, *, max_tokens: int, width: int, dtype: torch.dtype
    ) -> None:
        self.encoder = encoder
        self.audio = torch.empty((max_tokens, width), dtype=dtype, device=encoder.out.device)
        self.n_audio = 0
        self.lm: KVCache | None = None  # allocated on first use: it is the larger part
        self.lm_audio = 0
        self.prefix_fed = 0  # positions run into `lm` since the last reset (each one once)

    @property
    def length(self) -> int:
        """Committed encoder frames."""
        return self.encoder.length

    @property
    def frames_computed(self) -> int:
        return self.encoder.frames_computed

    def reset(self) -> None:
        self.encoder.reset()
        self.n_audio = self.lm_audio = self.prefix_fed = 0
        if self.lm is not None:
            self.lm.reset()


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
        self.encoder = encoder
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.template = template
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        if not self.eos_ids:
            raise ModelFormatError(f"{name}: the generation config names no end token")
        self.info = ModelInfo(
            name=name,
            features=FeatureSpec(n_mels=encoder.n_mels, window_frames=window_frames),
            encoders=("window", "chunked"),
            continuous_batching=True,
            languages=None,  # the chat prompt asks for a transcript in whatever is spoken
        )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> AudioLlmAdapter:
        """Move encoder, projector and decoder to `device`, `dtype`; calls follow them."""
        parts = (self.encoder.module, self.projector, self.lm.base, self.lm.lm_head)
        for part in parts:
            if not isinstance(part, torch.nn.Module):
                raise TypeError(f"cannot move a {type(part).__name__} to {device}")
            part.to(device=device, dtype=dtype)
        self.lm.place()
        return self

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_tokens(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def _mel(self, features: np.ndarray, num_frames: int) -> torch.Tensor:
        """Checked log-mel (n_mels, T) as a (1, n_mels, T) tensor on the model's device."""
        if features.ndim != 2 or features.shape[0] != self.info.features.n_mels:
            raise ValueError(
                f"expected log-mel ({self.info.features.n_mels}, T), got shape {features.shape}"
            )
        if not 0 <= num_frames <= features.shape[1]:
            raise ValueError(f"num_frames {num_frames} outside 0..{features.shape[1]}")
        mel = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]
        return mel.to(device=self.lm.device, dtype=self.lm.dtype)

    @torch.inference_mode()
    def audio_embeddings(self, features: np.ndarray, num_frames: int) -> torch.Tensor:
        """The projected audio tokens (n, d_lm) of one window for `num_frames` real frames.

        The whole window is encoded (bidirectional: real frames see the padding, as in
        transformers, where the processor pads every window to 30 s); only the first
        n = audio_token_count(num_frames) tokens are kept, as the processor counts them. That
        count equals the processor's when `num_frames` is its mask count, ceil(samples / 160)
        (`glm_encoder.mel_frames_for`); samples // 160 is one token short for some lengths.
        """
        states = self.encoder.forward(self._mel(features, num_frames))  # (1, ceil(T/2), d_enc)
        return self._window_tokens(states, num_frames)

    def _window_tokens(self, states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The audio tokens (n, d_lm) of a window's encoder states (1, S, d_enc)."""
        tokens = self.projector(stack_frames(states))  # (1, groups, d_lm)
        return tokens[0, : audio_token_count(num_frames)]

    def prompt_embeddings(self, audio: torch.Tensor, bias: Sequence[int] = ()) -> torch.Tensor:
        """Embeddings (T, d) of the chat prompt with `audio` (n, d) spliced in and `bias` in
        its context slot."""
        t = self.template
        return self._embed([*t.before], audio, t.after_ids(bias))

    def _embed(self, before: list[int], audio: torch.Tensor, after: list[int]) -> torch.Tensor:
        # The placeholder's own row may not exist (Tiny Audio shrinks the vocab): it is never
        # looked up, the audio embeddings stand in its place.
        parts = [self.lm.embed(before), audio.to(self.lm.dtype), self.lm.embed(after)]
        return torch.cat(parts)  # (T, d)

    @torch.inference_mode()
    def decode(
        self,
        audio: torch.Tensor,
        *,
        num_frames: int,
        options: DecodeConfig,
        prefix: list[int],
        draft: list[int] | None = None,
    ) -> DecodeResult:
        """Greedy decoding after the prompt with `audio` (n, d) spliced in, continuing `prefix`.

        The whole prompt is prefilled from scratch: no state of any stream is used.
        """
        row = LlmRow(
            self.prompt_embeddings(audio), num_frames, options, list(prefix), list(draft or [])
        )
        return greedy_rows(self.lm, [row], self.eos_ids, self.decode_tokens)[0]

    # ---------------------------------------------------------------- streaming
    def new_encoder_cache(self) -> AudioLlmStream:
        """Empty per-stream state for chunked requests, room for one window."""
        frames = encoder_frames(self.info.features.window_frames)
        return AudioLlmStream(
            self.encoder.new_cache(frames),
            max_tokens=frames // MERGE,
            width=self.lm.hidden_size,
            dtype=self.lm.dtype,
        )

    def _stream_tokens(
        self, stream: AudioLlmStream, states: torch.Tensor, g0: int, num_frames: int
    ) -> torch.Tensor:
        """A stream's audio tokens (n, d_lm) from its encoder `states` (`encode_tail`), `g0`
        groups having been committed before: the committed groups' tokens are read from the
        stream, the rest projected; the newly committed groups' tokens are stored."""
        tail = self.projector(stack_frames(states[:, g0 * MERGE :]))[0]  # (groups - g0, d_lm)
        g1 = stream.encoder.length // MERGE
        stream.audio[g0:g1] = tail[: g1 - g0]
        stream.n_audio = g1
        return torch.cat([stream.audio[:g0], tail])[: audio_token_count(num_frames)]

    def _stream_row(self, r: TranscribeRequest, audio: torch.Tensor) -> LlmRow:
        """Row of a chunked request with audio tokens `audio`: its stream's cached
        prompt prefix, then the rest."""
        stream: AudioLlmStream = r.cache
        draft = list(r.draft or [])
        after = self.template.after_ids(r.bias)
        extra = len(r.prefix) + len(draft) + r.options.max_new_tokens + 2
        lm = self._extend_prefix(stream, audio, len(after) + extra)
        head = self._embed([], audio[stream.lm_audio :], after)
        return LlmRow(head, r.num_frames, r.options, list(r.prefix), draft, cache=lm)

    def _extend_prefix(self, stream: AudioLlmStream, audio: torch.Tensor, extra: int) -> KVCache:
        """Feed the decoder the prompt up to the last committed audio token of `audio` (n, d)
        that it has not seen; return the stream's decoder cache, with room for the prompt up
        to its audio and `extra` positions more."""
        n = audio.shape[0]
        before = list(self.template.before)
        m = max(min(stream.n_audio, n if self.template.after else n - 1), 0)  # one must follow
        room = len(before) + len(stream.audio) + extra
        lm = stream.lm = self.lm.reserve(stream.lm, room)
        if stream.lm_audio > m:  # this prompt holds fewer tokens than the prefix: forget those
            lm.trim(len(before) + m)
            stream.lm_audio = m
        new = self._embed(before if lm.length == 0 else [], audio[stream.lm_audio : m], [])
        if new.shape[0]:
            self.lm.forward(new[None], lm, logits_from=new.shape[0])  # nobody reads its logits
            stream.prefix_fed += new.shape[0]
        stream.lm_audio = m
        return lm

    @torch.inference_mode()
    def run(self, requests: list[TranscribeRequest]) -> list[DecodeResult]:
        """`AsrModel.run`: the windows and tails are encoded in one pass and each prompt
        prefilled on its own; the decoding steps of all of them run batched. `prompt`
        (previous text) is not used: the chat prompt these models were trained on has no slot
        for it; `bias` (context biasing) follows the instruction. No word timings."""
        return greedy_rows(self.lm, self._rows(requests), self.eos_ids, self.decode_tokens)

    def new_step_batch(self, capacity: int) -> LlmStepBatch:
        """A continuous batch: calls join and leave between decoding steps (`StepBatch`)."""
        return LlmStepBatch(self.lm, capacity, self.eos_ids, self.decode_tokens, self._rows)

    @torch.inference_mode()
    def _rows(self, requests: list[TranscribeRequest]) -> list[LlmRow]:
        """The rows to decode of window (cache None) and chunked requests,
        their windows and streams' tails through the encoder in one pass (`encode_tails`)."""
        for r in requests:
            self.info.check_language(r.language, r.task)
        streams: list[AudioLlmStream | None] = [r.cache for r in requests]
        tails = [
            Tail(self._mel(r.features, r.num_frames), s.encoder if s else None, r.commit_frames)
            for r, s in zip(requests, streams, strict=True)
        ]
        committed = [s.encoder.length // MERGE if s else 0 for s in streams]  # groups, before
        rows = []
        for r, s, g0, states in zip(
            requests, streams, committed, self.encoder.encode_tails(tails), strict=True
        ):
            if s is not None:
                rows.append(self._stream_row(r, self._stream_tokens(s, states, g0, r.num_frames)))
                continue
            audio = self._window_tokens(states, r.num_frames)
            rows.append(
                LlmRow(
                    self.prompt_embeddings(audio, r.bias),
                    r.num_frames,
                    r.options,
                    list(r.prefix),
                    list(r.draft or []),
                )
            )
        return rows
