"""Whisper's special tokens and alignment heads, read from its tokenizer and generation config."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from streamasr.errors import ModelFormatError


@dataclass(frozen=True)
class WhisperTokens:
    eot: int
    sot: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    suppress: tuple[int, ...]  # never generated
    begin_suppress: tuple[int, ...]  # not generated as the first token
    languages: dict[str, int] = field(default_factory=dict)  # code -> token; multilingual only
    tasks: dict[str, int] = field(default_factory=dict)  # "transcribe", "translate" -> token

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)

    def start(self, language: str = "en", task: str = "transcribe") -> tuple[int, ...]:
        """The start-of-transcript sequence: sot [, language, task], no-timestamps. An
        English-only model has neither language nor task tokens."""
        if not self.multilingual:
            return (self.sot, self.no_timestamps)
        if language not in self.languages or task not in self.tasks:
            raise ValueError(f"no language {language!r} or task {task!r} in this vocabulary")
        return (self.sot, self.languages[language], self.tasks[task], self.no_timestamps)


def special_tokens(tokenizer: Any, gen: Any, vocab_size: int) -> WhisperTokens:
    vocab = tokenizer.get_vocab()

    def tid(s: str) -> int:
        if s not in vocab:
            raise ModelFormatError(f"tokenizer lacks the special token {s}")
        return int(vocab[s])

    eot = tid("<|endoftext|>")
    sot = tid("<|startoftranscript|>")
    no_ts = tid("<|notimestamps|>")
    try:
        no_speech = tid("<|nospeech|>")
    except ModelFormatError:
        no_speech = tid("<|nocaptions|>")
    multilingual = bool(getattr(gen, "is_multilingual", vocab_size >= 51865))
    languages = language_tokens(vocab, gen) if multilingual else {}
    tasks = {t: tid(f"<|{t}|>") for t in ("transcribe", "translate")} if multilingual else {}
    suppress = tuple(int(t) for t in (getattr(gen, "suppress_tokens", None) or []))
    begin = getattr(gen, "begin_suppress_tokens", None) or [220, eot]  # 220 is " " in GPT-2 BPE
    specials = [
        tid(s)
        for s in (
            "<|startoftranscript|>",
            "<|startofprev|>",
            "<|startoflm|>",
            "<|translate|>",
            "<|transcribe|>",
        )
    ] + [no_speech, no_ts]
    return WhisperTokens(
        eot=eot,
        sot=sot,
        sot_prev=tid("<|startofprev|>"),
        no_speech=no_speech,
        no_timestamps=no_ts,
        timestamp_begin=no_ts + 1,
        suppress=tuple(sorted(set(suppress) | set(specials))),
        begin_suppress=tuple(int(t) for t in begin),
        languages=languages,
        tasks=tasks,
    )


_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")


def language_tokens(vocab: dict[str, int], gen: Any) -> dict[str, int]:
    """Language code -> token of a multilingual vocabulary, in token order: the generation
    config's `lang_to_id`, else every `<|xx|>` token of the vocabulary."""
    named = getattr(gen, "lang_to_id", None) or {
        t: i for t, i in vocab.items() if _LANGUAGE_TOKEN.fullmatch(t)
    }
    found = {m.group(1): int(i) for t, i in named.items() if (m := _LANGUAGE_TOKEN.fullmatch(t))}
    if "en" not in found:
        raise ModelFormatError("a multilingual Whisper vocabulary without the token <|en|>")
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


def alignment_heads(gen: Any, layers: int, heads_per_layer: int) -> dict[int, list[int]]:
    """Decoder layer -> the cross-attention heads that follow the audio (for word timing)."""
    heads = getattr(gen, "alignment_heads", None)
    if not heads:  # openai's default: every head of the second half of the layers
        heads = [[layer, h] for layer in range(layers // 2, layers) for h in range(heads_per_layer)]
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out
