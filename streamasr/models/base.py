"""The model-adapter interface of the engine: features in; tokens, text and word timings out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

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
    language: str | None = None  # the language decoded in; None: the model cannot tell
    language_probability: float | None = None  # of `language`, when it was detected

    @property
    def is_empty(self) -> bool:
        return not self.text.strip()


@dataclass(frozen=True)
class FeatureSpec:
    n_mels: int  # log-mel bins the model's front end expects
    window_frames: int  # frames in one model window (3000 = 30 s at 10 ms)
    hop_samples: int = 160


Encoder = Literal["window", "chunked"]


@dataclass(frozen=True)
class ModelInfo:
    """What a model is and can do, declared as data: the engine reads this, never probes for
    methods. Every model has the window encoder; "chunked" in `encoders` means it has
    `new_encoder_cache` and takes requests over a stream's cache."""

    name: str
    features: FeatureSpec
    encoders: tuple[Encoder, ...] = ("window",)  # the first is what `encoder: auto` picks
    continuous_batching: bool = False  # `new_step_batch` gives a `StepBatch`
    languages: tuple[str, ...] | None = ("en",)  # codes a request may ask for; None: any
    # (a prompt-driven model that transcribes what it hears and cannot be steered or asked)
    tasks: tuple[str, ...] = ("transcribe",)  # "translate": any language into English
    continues_text: bool = False  # a decode continues a forced prefix of earlier text as it
    # continues previous text: a final may continue the previous final (`final_join_ms`)

    @property
    def detects_language(self) -> bool:
        """Language "auto" detects among several languages (else it is the only one)."""
        return self.languages is not None and len(self.languages) > 1

    def check_language(self, language: str, task: str = "transcribe") -> None:
        """Raise ValueError unless a request may ask for `language` ("auto" or a code) and
        `task`."""
        if task not in self.tasks:
            raise ValueError(f"model {self.name} has no task {task!r} ({', '.join(self.tasks)})")
        if language == "auto" or self.languages is None or language in self.languages:
            return
        raise ValueError(
            f"model {self.name} does not speak language {language!r} "
            f"(it speaks {', '.join(self.languages)}, or auto)"
        )

    def __post_init__(self) -> None:
        if not self.encoders or any(e not in ("window", "chunked") for e in self.encoders):
            raise ValueError(f"{self.name}: unknown encoders {self.encoders}")
        if "window" not in self.encoders:
            raise ValueError(f"{self.name}: every model has the window encoder")


@dataclass
class TranscribeRequest:
    """One decode: a window of log-mel, or with `cache`, a stream's audio over its cached
    encoder states (a chunked request, for a model with the chunked encoder)."""

    features: np.ndarray  # (n_mels, T) normalised log-mel; T <= the window
    num_frames: int  # frames that hold real audio; the rest is padding
    prompt: list[int] = field(default_factory=list)  # previous text, used as context only
    options: DecodeConfig = field(default_factory=DecodeConfig)
    word_timestamps: bool = False
    prefix: list[int] = field(default_factory=list)  # forced first tokens (part of the result)
    cache: Any = None  # the stream's encoder cache (`AsrModel.new_encoder_cache`)
    commit_frames: int = 0  # with `cache`: mel frames before this are cached for good
    draft: list[int] | None = None  # a guess of the tokens after the prefix; see `AsrModel.run`
    language: str = "auto"  # a code of `ModelInfo.languages`, or "auto": detect it
    task: str = "transcribe"  # or "translate" (into English), where `ModelInfo.tasks` has it
    prior_language: str | None = None  # the language of `prompt`: "auto" keeps it unless another
    # is clearly more probable (`DecodeConfig.language_switch_margin`); a decode in any other
    # language drops the prompt, so one language's text never steers another's
    bias: list[int] = field(default_factory=list)  # the session's prompt and keywords, always at
    # the head of the context whatever its language (context biasing; a model without a text
    # context ignores it)


class AsrModel(Protocol):
    """A loaded model shared by every session; it must hold no per-session state."""

    info: ModelInfo

    def run(self, requests: list[TranscribeRequest]) -> list[DecodeResult]:
        """Decode every request, in one batch where the model can. Result i equals running
        request i alone, whatever else shares the batch.

        A request with a `cache` reads the stream's features from its first frame on: encoder
        frames (2 mel frames each) before `commit_frames` are stored in the cache for good, the
        frames after them are recomputed on the next request. A `draft` may be verified in one
        pass to save decoding steps; the result is what decoding without it gives. One bad
        request may fail the whole call: the caller then runs the requests one by one.
        """
        ...

    def new_encoder_cache(self) -> Any:
        """Fresh per-stream encoder state ("chunked" in `info.encoders` only); the caller owns
        it and passes it back in each request of the stream."""
        ...

    def new_step_batch(self, capacity: int) -> StepBatch:
        """A continuous batch of `capacity` rows (`info.continuous_batching` only)."""
        ...

    def decode_tokens(self, tokens: list[int]) -> str:
        """Tokens to text, special tokens dropped."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Text to tokens, for prompting with previous text."""
        ...


def pick_language(probs: dict[str, float], prior: str | None, margin: float) -> tuple[str, float]:
    """The detected language and its probability: the most probable one, unless it is less
    than `margin` more probable than `prior`, which is then kept."""
    best = max(probs, key=probs.__getitem__)
    if prior in probs and probs[best] - probs[prior] < margin:
        best = prior
    return best, probs[best]


def run_one(model: AsrModel, request: TranscribeRequest) -> DecodeResult:
    """One request, run alone on the calling thread."""
    return model.run([request])[0]


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


def looks_like_hallucination(result: DecodeResult, options: DecodeConfig) -> bool:
    """Whisper's own gate: silence-like (no-speech and low confidence) or looping text."""
    silent = (
        result.no_speech_prob > options.no_speech_threshold
        and result.avg_logprob < options.logprob_threshold
    )
    return silent or result.compression_ratio > options.compression_ratio_threshold
