"""The chunked Whisper encoder on real tiny.en: exact where it claims to be, accurate on speech."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
import torch
from streamasr.kernels import chunk_attention

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.engine.session import Session
from streamasr.events import Event, TranscriptFinal, TranscriptPartial
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.whisper import WhisperModel
from streamasr.textnorm import wer

# Sentences and voices that no other test and no benchmark text uses.
UTTERANCES = (
    ("en-us", "The library opens at nine and closes at six on weekdays."),
    ("en-gb", "Our train was delayed by twenty minutes this morning."),
    ("en-us", "She painted the kitchen a pale shade of green."),
)


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> WhisperModel:
    return WhisperModel.from_dir(tiny_en_dir, name="tiny.en")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("chunked")
    return [speech.espeak(text, d, voice=voice) for voice, text in UTTERANCES]


def mel_of(audio: np.ndarray, pad_to: int | None = None) -> torch.Tensor:
    buf = LogMelBuffer(n_mels=80)
    buf.append(audio)
    return torch.from_numpy(buf.features(pad_to_frames=pad_to)).unsqueeze(0)  # (1, 80, T)


def test_empty_cache_without_commit_is_the_window_encoder(
    model: WhisperModel, clips: list[np.ndarray]
) -> None:
    mel = mel_of(clips[0], pad_to=400)
    cache = model.new_encoder_cache()
    states, cross = model.encode_tail(cache, mel, commit_frames=0)
    assert cache.length == 0
    torch.testing.assert_close(states, model.encode(mel), rtol=0, atol=0)
    for (k, v), (k_ref, v_ref) in zip(cross, model.cross_kv(model.encode(mel)), strict=True):
        torch.testing.assert_close(k, k_ref, rtol=0, atol=0)
        torch.testing.assert_close(v, v_ref, rtol=0, atol=0)


def block_causal_reference(model: WhisperModel, audio: np.ndarray, block: int) -> torch.Tensor:
    """One pass of the encoder layers under a block-causal mask.

    Each block's stem (the convolutions) is computed from the mel that existed when the block
    was the newest audio, as streaming does: its last frame's convolution sees zero padding.
    """
    n_blocks = len(audio) // (block * 320)
    stems = []
    for b in range(n_blocks):
        mel = mel_of(audio[: (b + 1) * block * 320])
        stems.append(model._stem(mel)[:, b * block : (b + 1) * block])
    x = torch.cat(stems, dim=1)
    enc = model.encoder
    x = x + enc.embed_positions.weight[: x.shape[1]]
    for layer in enc.layers:
        h = layer.self_attn_layer_norm(x)
        q, k, v = model._attend(layer.self_attn, h, model.n_heads_enc)
        a = chunk_attention(q, k, v, mask="block_causal", block_size=block, scale=1.0)
        x = x + layer.self_attn.out_proj(a.transpose(1, 2).flatten(2))
        h = layer.final_layer_norm(x)
        x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
    out: torch.Tensor = enc.layer_norm(x)
    return out


@torch.inference_mode()
def test_committed_states_are_block_causal_attention(
    model: WhisperModel, clips: list[np.ndarray]
) -> None:
    """Committing each new block whole is exactly block-causal attention over the stream."""
    block = 25  # encoder frames: 0.5 s
    audio = clips[1]
    n_blocks = len(audio) // (block * 320)
    assert n_blocks >= 4
    cache = model.new_encoder_cache()
    # The log-mel's clamp floor follows the loudest frame so far; fix it with a loud first
    # frame so that the mel of every prefix agrees with the final one.
    audio = audio.copy()
    audio[:160] = 0.9 * np.sign(np.sin(np.arange(160)))
    for b in range(n_blocks):
        mel = mel_of(audio[: (b + 1) * block * 320])
        states, _ = model.encode_tail(cache, mel, commit_frames=(b + 1) * block)
        assert cache.length == (b + 1) * block
        assert cache.frames_computed == (b + 1) * block  # every frame was computed once
    ref = block_causal_reference(model, audio, block)
    torch.testing.assert_close(cache.out[:, : cache.length], ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(states, ref, rtol=1e-4, atol=1e-4)


def test_encode_tail_rejects_a_mel_shorter_than_the_cache(
    model: WhisperModel, clips: list[np.ndarray]
) -> None:
    cache = model.new_encoder_cache()
    model.encode_tail(cache, mel_of(clips[0][: SAMPLE_RATE * 2]), commit_frames=100)
    with pytest.raises(ValueError, match="cached"):
        model.encode_tail(cache, mel_of(clips[0][:SAMPLE_RATE]), commit_frames=0)
    with pytest.raises(ValueError, match="even"):
        model.encode_tail(cache, mel_of(clips[0])[..., :221], commit_frames=0)


def stream(model: WhisperModel, audio: np.ndarray, config: SessionConfig) -> list[Event]:
    session = LocalSession(model, config)
    events: list[Event] = []
    for start in range(0, len(audio), 800):
        events += session.feed(audio[start : start + 800])
    return events + session.close()


@pytest.fixture(scope="module")
def conversation(clips: list[np.ndarray]) -> np.ndarray:
    parts = [speech.silence(0.5)]
    for clip in clips:
        parts += [clip, speech.silence(1.0)]
    return np.concatenate(parts)


def finals(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, TranscriptFinal)]


def test_polished_finals_equal_the_window_mode_finals(
    model: WhisperModel, conversation: np.ndarray
) -> None:
    window = stream(model, conversation, SessionConfig(encoder="window"))
    chunked = stream(model, conversation, SessionConfig(encoder="chunked", polish_final=True))
    assert finals(chunked) == finals(window)
    assert len(finals(window)) == len(UTTERANCES)


def test_chunked_stream_transcribes_speech_from_cached_states(
    model: WhisperModel, conversation: np.ndarray
) -> None:
    """Without the polish pass both partials and finals come from the cached encoder."""
    config = SessionConfig(encoder="chunked", polish_final=False, chunk_ms=500, lookahead_ms=200)
    events = stream(model, conversation, config)
    refs = [text for _, text in UTTERANCES]
    assert wer(refs, finals(events)) <= 0.15
    last_partials: dict[int, str] = {}
    for e in events:
        if isinstance(e, TranscriptPartial):
            last_partials[e.segment_id] = e.text
    assert len(last_partials) == len(UTTERANCES)
    assert wer(refs, [last_partials[k] for k in sorted(last_partials)]) <= 0.4


def test_chunked_update_cost_does_not_grow_with_the_utterance(
    model: WhisperModel, clips: list[np.ndarray]
) -> None:
    """Each update computes the uncommitted tail only: at most chunk + lookahead + step + pad."""
    config = SessionConfig(encoder="chunked", chunk_ms=500, lookahead_ms=200, window_pad_ms=200)
    session = LocalSession(model, config)

    def cache() -> Any:  # the stream's encoder cache, held by the runner
        return session.runner.caches.get(session.session.stream)  # type: ignore[attr-defined]

    long_speech = np.concatenate([clips[0], clips[1], clips[2]])  # ~10 s, one utterance
    per_update = []
    for start in range(0, len(long_speech), 800):
        before = 0 if cache() is None else cache().frames_computed
        session.feed(long_speech[start : start + 800])
        computed = 0 if cache() is None else cache().frames_computed - before
        if computed:
            per_update.append(computed)
    bound = (500 + 200 + config.step_ms + 200) // 20 + 2
    assert len(per_update) >= 15
    assert max(per_update) <= bound
    assert cache().length >= 300  # most of the 10 s is committed
    session.close()
    assert cache() is None  # the stream ended: the runner dropped its cache


def test_config_rejects_bad_chunk_settings() -> None:
    with pytest.raises(ValueError, match="encoder"):
        SessionConfig(encoder="streaming")
    with pytest.raises(ValueError, match="chunk_ms"):
        SessionConfig(chunk_ms=30)
    with pytest.raises(ValueError, match="lookahead_ms"):
        SessionConfig(lookahead_ms=-20)


def test_whisper_streams_chunked_by_default(model: WhisperModel) -> None:
    assert Session(model).encoder == "chunked"
    assert Session(model, SessionConfig(encoder="window")).encoder == "window"


def test_tails_of_several_streams_encode_in_one_pass_as_each_alone(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream with cached frames, a fresh stream and a whole window in one `encode_tails`:
    states, cross-attention keys and values and committed caches equal encoding each alone.
    A pass that fails part-way commits nothing."""
    from streamasr.models import whisper
    from streamasr.models.encoder_cache import Tail

    mels = [mel_of(c, pad_to=len(c) // 160 // 2 * 2 + 40) for c in clips[:2]]
    mels.append(mel_of(clips[2], pad_to=300))

    def streams() -> tuple:  # type: ignore[type-arg]
        a, b = model.new_encoder_cache(), model.new_encoder_cache()
        model.encode_tail(a, mels[0][..., :200], commit_frames=50)
        return a, b

    a, b = streams()
    calls = iter(range(1000))
    real_attention = whisper.chunk_attention

    def failing(*args: object, **kwargs: object) -> torch.Tensor:
        if next(calls) == 7:  # in the third encoder layer
            raise RuntimeError("out of memory")
        return real_attention(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(whisper, "chunk_attention", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        model.encode_tails([Tail(mels[0], a, 100), Tail(mels[1], b, 60), Tail(mels[2])])
    assert (a.length, b.length) == (50, 0)
    monkeypatch.setattr(whisper, "chunk_attention", real_attention)

    together = model.encode_tails([Tail(mels[0], a, 100), Tail(mels[1], b, 60), Tail(mels[2])])
    a1, b1 = streams()
    window = model.encode(mels[2])
    alone = [
        model.encode_tail(a1, mels[0], commit_frames=100),
        model.encode_tail(b1, mels[1], commit_frames=60),
        (window, model.cross_kv(window)),
    ]
    close = dict(rtol=1e-4, atol=1e-4)
    for (states, cross), (states1, cross1) in zip(together, alone, strict=True):
        torch.testing.assert_close(states, states1, **close)
        for (k, v), (k1, v1) in zip(cross, cross1, strict=True):
            torch.testing.assert_close(k, k1, **close)
            torch.testing.assert_close(v, v1, **close)
    assert (a.length, b.length) == (a1.length, b1.length) == (100, 60)
    for got, want in ((a, a1), (b, b1)):
        n = want.length
        for name in ("k", "v", "cross_k", "cross_v"):
            torch.testing.assert_close(
                getattr(got, name)[..., :n, :], getattr(want, name)[..., :n, :], **close
            )
        torch.testing.assert_close(got.out[:, :n], want.out[:, :n], **close)
