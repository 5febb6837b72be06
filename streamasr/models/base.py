"""The model-adapter interface of the engine: features in; tokens, text and word timings out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamasr.config import DecodeConfig


@dataclass(frozen=True)
class WordTiming:
    word: str  # decoded text of the word, leading space kept
    start_sample: int  # relative to the first sample of the decoded window
    end_sample: int
    probability: float  # mean probability of the word's tokens


@dataclass(frozen=True)
class DecodeResult:
    tokens: tuple[int, ...]  # text tokens only, no prompt or special tokens
    text: str
    avg_logprob: float  # sum of the decoded tokens' log-probabilities (the end token included,
    # a forced prefix not) / (their number + 1)
    no_speech_prob: float  # probability of the no-speech token at the start of the transcript
    compression_ratio: float  # len(text bytes) / len(zlib(text bytes)); loops compress well
    words: tuple[WordTiming, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


@dataclass(frozen=True)
class FeatureSpec:
    n_mels: int  # log-mel bins the model's front end expects
    window_frames: int  # frames in one model window (3000 = 30 s at 10 ms)
    hop_samples: int = 160


@dataclass
class TranscribeRequest:
    """The arguments of one `transcribe` (cache None) or `transcribe_chunked` call."""

    features: np.ndarray  # (n_mels, T)
    num_frames: int
    prompt: list[int]
    options: DecodeConfig
    word_timestamps: bool
    prefix: list[int]
    cache: Any = None  # the stream's encoder cache: a `transcribe_chunked` call
    commit_frames: int = 0
    draft: list[int] | None = None


class AsrModel(Protocol):
    """A loaded model shared by every session; it must hold no per-session state."""

    name: str
    features: FeatureSpec

    def transcribe(
        self,
        features: np.ndarray,
        *,
        num_frames: int,
        prompt: list[int],
        options: DecodeConfig,
        word_timestamps: bool,
        prefix: list[int] | None = None,
        draft: list[int] | None = None,
    ) -> DecodeResult:
        """Decode one window of normalised log-mel `features` (n_mels, T).

        `num_frames` counts the frames that hold real audio (the rest is padding); `prompt` is
        previous text as tokens, used as context only; `prefix` is forced as the first tokens
        of the transcript (and is part of the result). `draft` is a guess of the tokens after
        the prefix (e.g. the previous hypothesis): a model may verify it in one pass to save
        decoding steps, but the result must be what decoding without it gives.
        """
        ...

    def decode_tokens(self, tokens: list[int]) -> str:
        """Tokens to text, special tokens dropped."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Text to tokens, for prompting with previous text."""
        ...


class ChunkedAsrModel(AsrModel, Protocol):
    """A model whose encoder can run chunk by chunk over cached states of the audio before."""

    def new_encoder_cache(self) -> Any:
        """Fresh per-stream encoder state; the caller owns it and passes it back on each call."""
        ...

    def transcribe_chunked(
        self,
        cache: Any,
        features: np.ndarray,
        *,
        num_frames: int,
        commit_frames: int,
        prompt: list[int],
        options: DecodeConfig,
        word_timestamps: bool,
        prefix: list[int] | None = None,
        draft: list[int] | None = None,
    ) -> DecodeResult:
        """`transcribe` for a stream whose earlier encoder states are in `cache`.

        `features` holds the stream's log-mel from its first frame on. Encoder frames
        (2 mel frames each) before `commit_frames` are stored in `cache` for good; the frames
        after them are recomputed on the next call.
        """
        ...


Added = DecodeResult | Exception | None  # what `StepBatch.add_many` says of one call


class StepBatch(Protocol):
    """Greedy decodes that join and leave between generation steps (continuous batching).

    `add` encodes a request and prefills its prompt; `step` feeds one token to every row and
    returns the rows that finished, each with the tag it was added with. Result of a request
    equals calling the model with it alone, whatever else shares the batch.
    """

    @property
    def size(self) -> int:
        """Rows decoding now; `add` needs `size < capacity`."""
        ...

    capacity: int

    def add(self, request: TranscribeRequest, tag: Any) -> DecodeResult | None:
        """Start decoding `request`; its result when it is done at once (else from `step`)."""
        ...

    def encode_each(self, requests: list[TranscribeRequest]) -> list[Any]:
        """The rows of `requests` encoded in one pass, else each alone: per request its row or
        the error that failed it alone. Touches no row of the batch, so it may run on another
        thread while the batch steps."""
        ...

    def add_row(self, row: Any, tag: Any) -> DecodeResult | None:
        """Prefill an encoded row into a free slot; its result when it is done at once."""
        ...

    def add_many(self, calls: list[tuple[TranscribeRequest, Any]]) -> list[Added]:
        """`add` of each (request, tag), in shared model calls where the batch can; per call,
        its result, None (decoding) or the exception that failed it alone."""
        ...

    def step(self) -> list[tuple[Any, DecodeResult]]:
        """One token for every row; the rows that finished leave, with their results."""
        ...

    def clear(self) -> list[Any]:
        """Drop every row (e.g. after a failed step); returns their tags."""
        ...


def step_batch(model: AsrModel, capacity: int) -> StepBatch | None:
    """The model's continuous batch of `capacity` rows, or None if it has none."""
    factory = getattr(model, "new_step_batch", None)
    return factory(capacity) if callable(factory) else None


def supports_chunked(model: AsrModel) -> bool:
    return callable(getattr(model, "transcribe_chunked", None)) and callable(
        getattr(model, "new_encoder_cache", None)
    )


def looks_like_hallucination(result: DecodeResult, options: DecodeConfig) -> bool:
    """Whisper's own gate: silence-like (no-speech and low confidence) or looping text."""
    silent = (
        result.no_speech_prob > options.no_speech_threshold
        and result.avg_logprob < options.logprob_threshold
    )
    return silent or result.compression_ratio > options.compression_ratio_threshold
