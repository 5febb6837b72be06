"""Random-weight models of a real model's size, built offline, for load and GPU benchmarks.

    python bench/streams.py --model random-glm-nano ...

`random-glm-nano` has GLM-ASR-Nano-2512's architecture (docs/models.md; transformers'
`GlmAsrConfig` defaults): a 32-layer audio encoder of width 1280 (20 heads x 64, MLP 5120), the
projector 5120 -> 4096 -> 2048 and a 28-layer Llama decoder (hidden 2048, MLP 6144, 16 q / 4 kv
heads x 128, vocab 59264, untied LM head): 2.26 B parameters. Its tokenizer is a word-level
stand-in with the same 59264 ids: the end tokens (59246, 59253, 59255) and the audio token
(59260) at the real ids, the words of the prompt, and words w<id> elsewhere.

The weights are transformers' default initialisation except two changes that keep decodes as
long as the token budget allows, as a worst case: the token embeddings are N(0, 1) (with the
default N(0, 0.02) greedy decoding repeats one token, which the loop guard stops after four),
so each token's successor depends on the token; and the LM head rows of the special tokens are
zero, so no decode ends early on an end token. Decodes then run to the token budget, 8 + 8
per audio second (at most 128), more tokens than real speech yields: throughput measured with
this model errs low. Its transcripts are nonsense (WER near 100 %).

The dir is written once into the model cache (`$STREAMASR_CACHE_DIR`, default
~/.cache/streamasr; bfloat16 weights, 4.5 GB) and then loaded like any local GLM-ASR dir
through `streamasr.models.loader.load_model`, so no network is needed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from streamasr.models.glmasr import CHAT_TEMPLATE
from streamasr.models.resolve import cache_root

RANDOM_GLM_NANO = "random-glm-nano"
RANDOM_MODELS = (RANDOM_GLM_NANO,)
VERSION = 1  # bump when the built dir changes, so stale caches are rebuilt

VOCAB = 59264
FIRST_SPECIAL = 59246
# GLM-ASR-Nano-2512's special tokens from id 59246 on. The end tokens `<|endoftext|>` (59246),
# `<|user|>` (59253), `<|observation|>` (59255) and the audio token `<|pad|>` (59260) are at their
# real ids; the others only fill the range.
SPECIALS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|pad|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|spare|>",
]
END_TOKENS = ["<|endoftext|>", "<|user|>", "<|observation|>"]
PROMPT_WORDS = ["Please", "transcribe", "this", "audio", "into", "text"]


def is_random_model(spec: str) -> bool:
    return spec in RANDOM_MODELS


def random_model_dir(spec: str, *, build_on: str = "auto") -> Path:
    """The cached dir of the random model `spec`, built on a miss (on CUDA when torch sees it
    and `build_on` is auto or cuda: the initialisation takes seconds there, a minute on CPU)."""
    if spec != RANDOM_GLM_NANO:
        raise ValueError(f"unknown random model {spec!r}; known: {', '.join(RANDOM_MODELS)}")
    dst = cache_root() / f"{spec}-v{VERSION}"
    if (dst / "config.json").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in dst.parent.glob(f".{spec}-*"):  # a build that was killed half-way
        shutil.rmtree(stale, ignore_errors=True)
    device = "cuda" if build_on != "cpu" and torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec}-", dir=dst.parent))
    try:
        build_glm_nano(scratch, device=device)
        if device == "cuda":
            torch.cuda.empty_cache()  # the float32 build's blocks: the loaded model needs less
        if dst.exists():  # a concurrent build won; keep it
            shutil.rmtree(scratch)
        else:
            scratch.rename(dst)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    print(f"built {spec} on {device} in {time.perf_counter() - t0:.0f} s: {dst}", flush=True)
    return dst


def glm_nano_tokenizer() -> Any:
    """A word-level tokenizer with GLM-ASR-Nano's 59264 ids and its special tokens' ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", *PROMPT_WORDS]
    vocab = {w: i for i, w in enumerate(words)}
    vocab |= {f"w{i}": i for i in range(len(words), FIRST_SPECIAL)}
    vocab |= {s: FIRST_SPECIAL + i for i, s in enumerate(SPECIALS)}
    assert len(vocab) == VOCAB, len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)  # already in the vocab: they keep their ids
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def build_glm_nano(d: Path, *, device: str = "cpu") -> Path:
    """Write a random-weight GLM-ASR of GLM-ASR-Nano-2512's size, with processor, into `d`."""
    from transformers import (
        GenerationConfig,
        GlmAsrConfig,
        GlmAsrForConditionalGeneration,
        GlmAsrProcessor,
        WhisperFeatureExtractor,
    )
    from transformers.utils import logging as hf_logging

    tok = glm_nano_tokenizer()
    ids = {s: int(tok.convert_tokens_to_ids(s)) for s in SPECIALS}
    assert ids["<|pad|>"] == 59260 and [ids[s] for s in END_TOKENS] == [59246, 59253, 59255]
    eos = [ids[s] for s in END_TOKENS]
    cfg = GlmAsrConfig(
        audio_config={"model_type": "glmasr_encoder"},  # 32 x 1280, 20 heads, MLP 5120, 128 mels
        text_config={
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
        },
        audio_token_id=ids["<|pad|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = GlmAsrForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)  # successors depend on the token
        model.get_output_embeddings().weight[FIRST_SPECIAL:] = 0.0  # logit 0: never the argmax
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model.save_pretrained(d)
    del model
    processor = GlmAsrProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(d)
    return d
