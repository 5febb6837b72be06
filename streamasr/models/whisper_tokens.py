"""Whisper's special tokens and alignment heads, read from its tokenizer and generation config."""

from __future__ import annotations

from dataclasses import dataclass
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
    sot_sequence: tuple[int, ...]  # sot [, language, task], no-timestamps
    suppress: tuple[int, ...]  # never generated
    begin_suppress: tuple[int, ...]  # not generated as the first token


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
    sot_seq = (sot, tid("<|en|>"), tid("<|transcribe|>"), no_ts) if multilingual else (sot, no_ts)
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
        sot_sequence=sot_seq,
        suppress=tuple(sorted(set(suppress) | set(specials))),
        begin_suppress=tuple(int(t) for t in begin),
    )


def alignment_heads(gen: Any, layers: int, heads_per_layer: int) -> dict[int, list[int]]:
    """Decoder layer -> the cross-attention heads that follow the audio (for word timing)."""
    heads = getattr(gen, "alignment_heads", None)
    if not heads:  # openai's default: every head of the second half of the layers
        heads = [[layer, h] for layer in range(layers // 2, layers) for h in range(heads_per_layer)]
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out
