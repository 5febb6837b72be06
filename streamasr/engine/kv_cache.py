"""A preallocated key/value cache for incremental decoding: reset, append, advance, trim."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every decoder layer for one batch of sequences.

    Layout is (layers, B, H, max_len, D). A forward step appends its new keys and values to
    every layer at positions `[length, length + T)`, then calls `advance(T)` once.
    """

    def __init__(
        self,
        *,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (layers, batch, heads, max_len, head_dim)
        # Positions past a row's length stay unwritten; no attention op reads them.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def row(self, b: int) -> KVCache:
        """A one-sequence cache over row `b`'s storage, empty (e.g. for a per-row prefill)."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, b : b + 1], self.v[:, b : b + 1]
        view.max_len = self.max_len
        view.length = 0
        return view

    def rows(self, n: int) -> KVCache:
        """A cache over the first `n` rows' storage, sharing it, with this cache's length."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view.max_len = self.max_len
        view.length = self.length
        return view

    def reset(self) -> None:
        self.length = 0

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k`, `v` (B, H, T, D) after the prefix; return the layer's (B, H, length+T, D)."""
        t = k.shape[2]
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {t} > {self.max_len}")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def trim(self, length: int) -> None:
        """Forget everything from position `length` on (e.g. to re-decode an unstable tail)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot trim a cache of length {self.length} to {length}")
        self.length = length
