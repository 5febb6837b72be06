"""A weightless stand-in model: its transcript is a pure function of the audio length."""

from __future__ import annotations

import dataclasses

from streamasr.models.base import (
    DecodeResult,
    FeatureSpec,
    ModelInfo,
    TranscribeRequest,
    WordTiming,
)

FRAMES_PER_WORD = 40  # one word per 0.4 s of audio


class FakeModel:
    """Says one word per 0.4 s of audio in the window: " w0 w1 w2 ..." (token i is word i)."""

    info = ModelInfo(
        name="fake", features=FeatureSpec(n_mels=80, window_frames=3000), continues_text=True
    )

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def run(self, requests: list[TranscribeRequest]) -> list[DecodeResult]:
        return [self.decode(r) for r in requests]

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        """One request; its draft is not used (decoding without it gives the same result)."""
        features, num_frames = request.features, request.num_frames
        prompt, prefix, word_timestamps = request.prompt, request.prefix, request.word_timestamps
        if features.shape[0] != 80 or features.shape[1] < num_frames:
            raise ValueError(f"bad features {features.shape} for {num_frames} frames")
        self.calls.append(
            {
                "frames": num_frames,
                "prompt": list(prompt),
                "bias": list(request.bias),
                "prefix": prefix,
                "words": word_timestamps,
            }
        )
        n = num_frames // FRAMES_PER_WORD
        tokens = tuple(range(n))
        words = (
            tuple(WordTiming(f" w{i}", i * 6400, (i + 1) * 6400, 0.9) for i in tokens)
            if word_timestamps
            else ()
        )
        text = self.decode_tokens(list(tokens))
        return DecodeResult(tokens, text, -0.1, 0.01, 1.0, words)

    def encode_text(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode_tokens(self, tokens: list[int]) -> str:
        return "".join(f" w{t}" for t in tokens)


class MultilingualFakeModel(FakeModel):
    """FakeModel that speaks en and es, translates, and decodes in the language it is asked
    for (es when asked for auto); `asked` records each decode's language and task."""

    info = dataclasses.replace(
        FakeModel.info, name="multi", languages=("en", "es"), tasks=("transcribe", "translate")
    )

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str]] = []

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        self.asked.append((request.language, request.task))
        language = "es" if request.language == "auto" else request.language
        return dataclasses.replace(super().decode(request), language=language)
