"""Tiny random-weight GLM-ASR, Qwen3 and Tiny Audio dirs laid out like their hub repos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# The chat template that transformers' GLM-ASR conversion script ships with the processor.
GLMASR_CHAT_TEMPLATE = """{%- macro to_text(content) -%}
{%- if content is string -%}
{{- content -}}
{%- elif content is iterable and content is not mapping -%}
{%- for item in content -%}
{%- if item is mapping and item.type == 'text' and item.text is defined -%}
{{- item.text -}}
{%- elif item is mapping and (item.type == 'audio' or 'audio' in item) -%}
<|begin_of_audio|><|pad|><|end_of_audio|><|user|>
{% elif item is string -%}
{{- item -}}
{%- endif -%}
{%- endfor -%}
{%- else -%}
{{- content -}}
{%- endif -%}
{%- endmacro -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}
<|system|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'user' -%}
<|user|>
{{ to_text(m.content) | trim }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{{ to_text(m.content) | trim }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{% endif -%}"""

# Qwen3's ChatML template, cut down to what a transcription request uses (system, user,
# generation prompt, and the empty think block that enable_thinking=False adds).
QWEN3_CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

GLMASR_SPECIALS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|pad|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
]
QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition needs a careful audio front end.",
    "Please transcribe this audio into text",
    "Transcribe the speech to text",
    "You are a helpful assistant.",
    "I left my keys on the kitchen table this morning.",
    "she sells sea shells by the sea shore while the waves roll in",
    "numbers like 1234 and 5678, names like Alice and Bob, places like Paris",
]


def train_tokenizer(specials: list[str], vocab_size: int = 320) -> Any:
    """A byte-level BPE trained on a few sentences, `specials` first (ids 0..len-1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def _fast(tok: Any, **specials: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def scale_weights(model: torch.nn.Module, std: float, seed: int) -> None:
    """Random weights large enough that the greedy output depends on the input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def tiny_random_whisper() -> Any:
    """A random 2+2-layer, 64-wide Whisper with tiny.en's vocabulary, weights ~N(0, 0.25)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg).eval()
    scale_weights(model, 0.25, seed=0)  # large enough that the output depends on the input
    return model


def build_glmasr(d: Path, *, seed: int = 0, std: float = 0.25, fp16_weights: bool = False) -> Path:
    """A 2+2-layer GLM-ASR (encoder width 32, Llama decoder width 64, GQA 4:2) with processor;
    `fp16_weights`: every weight rounded to a value fp16 holds (stored in float32)."""
    from transformers import (
        GenerationConfig,
        GlmAsrConfig,
        GlmAsrForConditionalGeneration,
        GlmAsrProcessor,
        WhisperFeatureExtractor,
    )

    tok = _fast(
        train_tokenizer(GLMASR_SPECIALS),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in GLMASR_SPECIALS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    cfg = GlmAsrConfig(
        audio_config={
            "model_type": "glmasr_encoder",
            "hidden_size": 32,
            "intermediate_size": 128,  # must stay 4 x hidden_size: the projector stacks 4 frames
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_mel_bins": 128,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 2048,
            "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        audio_token_id=ids["<|pad|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GlmAsrForConditionalGeneration(cfg).eval()
    scale_weights(model, std, seed)
    if fp16_weights:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(d)
    processor = GlmAsrProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tok,
        chat_template=GLMASR_CHAT_TEMPLATE,
    )
    processor.save_pretrained(d)
    return d


def build_qwen3(d: Path, *, seed: int = 1, std: float = 0.25, extra_vocab: int = 16) -> Path:
    """A 2-layer Qwen3 (width 64, GQA 4:2, head_dim 16) whose vocab has padding rows, as
    Qwen3-0.6B's 151936 rows exceed its tokenizer's 151669 tokens."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _fast(
        train_tokenizer(QWEN3_SPECIALS),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    cfg = Qwen3Config(
        vocab_size=len(tok) + extra_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    scale_weights(model, std, seed)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def build_tiny_audio(
    d: Path,
    *,
    glmasr_dir: Path,
    qwen3_dir: Path,
    seed: int = 2,
    std: float = 0.25,
    hidden: int = 96,
    pointer: str = "streamasr.json",
) -> Path:
    """A Tiny Audio dir: config, projector weights, tokenizer with <audio>, preprocessor config.

    `pointer` says how the dir names its encoder and decoder: "streamasr.json" writes that
    file; "config" puts the local paths straight into config.json's *_model_id fields.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

    d.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(qwen3_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<audio>"]})
    tok.save_pretrained(d)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(d)
    enc_dim = AutoConfig.from_pretrained(glmasr_dir).audio_config.hidden_size
    llm_dim = AutoConfig.from_pretrained(qwen3_dir).hidden_size
    gen = torch.Generator().manual_seed(seed)
    weights = {
        "projector.linear_1.weight": torch.randn(hidden, 4 * enc_dim, generator=gen) * std,
        "projector.norm.weight": 1.0 + torch.randn(hidden, generator=gen) * std,
        "projector.linear_2.weight": torch.randn(llm_dim, hidden, generator=gen) * std,
        "projector.norm_2.weight": 1.0 + torch.randn(llm_dim, generator=gen) * std,
    }
    save_file(weights, str(d / "model.safetensors"))
    local = pointer == "config"
    config = {
        "model_type": "asr_model",
        "architectures": ["ASRModel"],
        "audio_model_id": str(glmasr_dir) if local else "zai-org/GLM-ASR-Nano-2512",
        "text_model_id": str(qwen3_dir) if local else "Qwen/Qwen3-0.6B",
        "system_prompt": "You are a helpful assistant.",
        "projector_type": "mlp",
        "projector_pool_stride": 4,
        "projector_hidden_dim": hidden,
        "encoder_dim": enc_dim,
        "llm_dim": llm_dim,
        "encoder_conv_layers": [[1, 3, 1], [1, 3, 2]],
        "use_lora": False,
        "freeze_language_model": True,
    }
    (d / "config.json").write_text(json.dumps(config, indent=1))
    if pointer == "streamasr.json":
        pointers = {"audio_model": str(glmasr_dir), "text_model": str(qwen3_dir)}
        (d / "streamasr.json").write_text(json.dumps(pointers, indent=1))
    return d


# ---------------------------------------------------------------- helpers both families' tests use
def speech_file(d: Path, utterance: Any, name: str = "speech.wav") -> tuple[Path, Any]:
    """`utterance` between 0.4 s and 0.8 s of silence, cut to whole 10 ms hops, as a 16-bit wav.

    Whole hops because the engine counts n // 160 real mel frames and the feature extractor
    ceil(n / 160): they give the same audio token count only then (docs/models.md).
    Returns the path and the samples as read back (16-bit rounding included).
    """
    import numpy as np
    import soundfile as sf

    from streamasr import SAMPLE_RATE
    from streamasr.audio.files import load_audio

    audio = np.concatenate([np.zeros(6400), utterance, np.zeros(12800)]).astype(np.float32)
    audio = audio[: len(audio) // 160 * 160]
    path = d / name
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path, load_audio(path)


def run_cli(*args: str) -> Any:
    """`python -m streamasr.cli ARGS` as a user runs it; offline hub access."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "streamasr.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: its kernels/ folder must not be importable
    )


def stream_finals(
    model: Any, audio: Any, chunk: int = 800, keywords: tuple[str, ...] = ()
) -> list[Any]:
    """The finals of a full-window `Session` fed `audio` in `chunk`-sample pieces, each
    decoding its utterance's audio alone (no lead-in), biased towards `keywords`.

    Partials every 2 s keep the test fast; the final is a free decode that does not use them.
    """
    from streamasr.config import SessionConfig
    from streamasr.engine.driver import LocalSession
    from streamasr.events import TranscriptFinal

    config = SessionConfig(
        encode_window="full",
        final_window="full",
        final_lead_ms=0,
        step_ms=2000,
        keywords=keywords,
    )
    session = LocalSession(model, config)
    events = []
    for i in range(0, len(audio), chunk):
        events += session.feed(audio[i : i + chunk])
    events += session.close()
    return [e for e in events if isinstance(e, TranscriptFinal)]


def offline_window(
    model: Any, audio: Any, options: Any = None, prefix: Any = None, bias: Any = None
) -> Any:
    """Our decode of one <= 30 s piece of audio, padded to the full window as the engine does."""
    from streamasr.config import DecodeConfig
    from streamasr.features.logmel import LogMelBuffer
    from streamasr.models.base import TranscribeRequest, run_one

    mel = LogMelBuffer(n_mels=model.info.features.n_mels)
    mel.append(audio)
    request = TranscribeRequest(
        mel.features(pad_to_frames=model.info.features.window_frames),
        num_frames=mel.num_frames,
        options=options or DecodeConfig(),
        prefix=list(prefix or []),
        bias=list(bias or []),
    )
    return run_one(model, request)


def default_budget(num_samples: int) -> int:
    """The new-token budget of a window under the default DecodeConfig (audio_llm.decode)."""
    from streamasr.config import DecodeConfig

    opts = DecodeConfig()
    frames = num_samples // 160
    return min(opts.max_new_tokens, 8 + int(opts.max_tokens_per_second * frames / 100))
