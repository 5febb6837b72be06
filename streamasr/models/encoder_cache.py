"""Per-utterance state of a chunked encoder: the committed frames' keys, values and outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class EncoderCache:
    """What a chunked encoder keeps of the frames it has committed, for one stream.

    Layout: `k`, `v` (layers, 1, H, max_frames, D) are each encoder layer's self-attention keys
    and values; `out` (1, max_frames, d) the encoder's output states; `cross_k`, `cross_v`
    (dec_layers, 1, H, max_frames, D) the decoder's cross-attention keys and values of those
    outputs, when the model has cross-attention. Frames `[0, length)` are valid. Tail frames
    are recomputed on every update; `commit` appends the leading part of a tail for good.
    """

    def __init__(
        self,
        *,
        layers: int,
        heads: int,
        head_dim: int,
        width: int,
        max_frames: int,
        cross_layers: int = 0,
        cross_heads: int = 0,
        cross_head_dim: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.k = torch.empty((layers, 1, heads, max_frames, head_dim), dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.out = torch.empty((1, max_frames, width), dtype=dtype, device=device)
        cross = (cross_layers, 1, cross_heads, max_frames, cross_head_dim)
        self.cross_k = torch.empty(cross, dtype=dtype, device=device)
        self.cross_v = torch.empty(cross, dtype=dtype, device=device)
        self.max_frames = max_frames
        self.length = 0
        self.frames_computed = 0  # encoder frames run through the layers since the last reset

    def reset(self) -> None:
        self.length = 0
        self.frames_computed = 0

    def trim(self, length: int) -> None:
        """Forget committed frames from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot trim an encoder cache of {self.length} frames to {length}")
        self.length = length

    def commit_layer(self, layer: int, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        """Store the first `n` tail frames of one layer's keys and values (1, H, T, D)."""
        self.k[layer, :, :, self.length : self.length + n] = k[:, :, :n]
        self.v[layer, :, :, self.length : self.length + n] = v[:, :, :n]

    def commit_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        self.cross_k[layer, :, :, self.length : self.length + n] = k[:, :, :n]
        self.cross_v[layer, :, :, self.length : self.length + n] = v[:, :, :n]

    def commit_out(self, out: torch.Tensor, n: int) -> None:
        """Store the first `n` tail outputs (1, T, d) and advance past them (call last)."""
        if self.length + n > self.max_frames:
            raise ValueError(f"encoder cache full: {self.length} + {n} > {self.max_frames}")
        self.out[:, self.length : self.length + n] = out[:, :n]
        self.length += n


@dataclass
class Tail:
    """What one stream gives the encoder: its log-mel (1, n_mels, T) from the stream's first
    frame, its cache, and how many encoder frames may be committed. Without a cache the mel is
    a whole window, encoded with nothing cached and nothing committed."""

    mel: torch.Tensor
    cache: EncoderCache | None = None
    commit_frames: int = 0
