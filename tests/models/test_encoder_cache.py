"""The chunked encoder's per-stream cache: grows with the utterance, gives memory back."""

from __future__ import annotations

import pytest
import torch

from streamasr.models.encoder_cache import EncoderCache


def _cache(max_frames: int = 600) -> EncoderCache:
    return EncoderCache(
        layers=2,
        heads=2,
        head_dim=4,
        width=8,
        max_frames=max_frames,
        cross_layers=3,
        cross_heads=2,
        cross_head_dim=4,
    )


def _commit(cache: EncoderCache, n: int, value: float) -> None:
    kv = torch.full((1, 2, n + 5, 4), value)  # a tail: only its first n frames are committed
    for layer in range(2):
        cache.commit_layer(layer, kv + layer, kv - layer, n)
    for layer in range(3):
        cache.commit_cross(layer, kv * 2 + layer, kv * 3 + layer, n)
    cache.commit_out(torch.full((1, n + 5, 8), value), n)


def test_committed_frames_survive_growth() -> None:
    cache = _cache()
    assert cache.capacity == 0
    sizes = [100, 100, 150, 200]
    for i, n in enumerate(sizes):
        _commit(cache, n, float(i))
    assert cache.length == sum(sizes) and cache.capacity >= cache.length
    start = 0
    for i, n in enumerate(sizes):
        span = slice(start, start + n)
        assert torch.equal(cache.k[1, :, :, span], torch.full((1, 2, n, 4), i + 1.0))
        assert torch.equal(cache.v[0, :, :, span], torch.full((1, 2, n, 4), float(i)))
        assert torch.equal(cache.cross_k[2, :, :, span], torch.full((1, 2, n, 4), 2.0 * i + 2))
        assert torch.equal(cache.cross_v[1, :, :, span], torch.full((1, 2, n, 4), 3.0 * i + 1))
        assert torch.equal(cache.out[:, span], torch.full((1, n, 8), float(i)))
        start += n


def test_capacity_stops_at_max_frames_and_a_full_cache_refuses() -> None:
    cache = _cache(max_frames=300)
    _commit(cache, 200, 1.0)
    _commit(cache, 100, 2.0)
    assert cache.capacity == 300
    with pytest.raises(ValueError, match="encoder cache full"):
        _commit(cache, 1, 3.0)


def test_reset_gives_the_memory_back_and_trim_keeps_it() -> None:
    cache = _cache()
    _commit(cache, 250, 1.0)
    held = cache.capacity
    cache.trim(100)
    assert (cache.length, cache.capacity) == (100, held)
    cache.reset()
    assert (cache.length, cache.capacity, cache.frames_computed) == (0, 0, 0)
    _commit(cache, 10, 4.0)
    assert torch.equal(cache.out[:, :10], torch.full((1, 10, 8), 4.0))
