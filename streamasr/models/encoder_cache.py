"""Per-utterance state of a chunked encoder: the committed frames' keys, values and outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class EncoderCache:
    """What a chunked encoder keeps of the frames it has committed, for one stream.

    Layout: `k`, `v` (layers, 1, H, frames, D) are each encoder layer's self-attention keys
    and values; `out` (1, frames, d) the encoder's output states; `cross_k`, `cross_v`
    (dec_layers, 1, H, frames, D) the decoder's cross-attention keys and values of those
    outputs, when the model has cross-attention. Frames `[0, length)` are valid. Tail frames
    are recomputed on every update; `commit` appends the leading part of a tail for good.

    The tensors hold as many frames as the utterance has committed, grown by doubling up to
    `max_frames`, and `reset` gives their memory back: a stream costs what its current
    utterance needs (tiny.en: 26 KB a frame, 39 MB at the 1500 frames of a 30 s window).
    """

    GROW_FRAMES = 128  # the first allocation after a reset, in frames

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
        self._self_shape = (layers, 1, heads, head_dim)
        self._cross_shape = (cross_layers, 1, cross_heads, cross_head_dim)
        self._width = width
        self._dtype, self._device = dtype, device
        self.max_frames = max_frames
        self.length = 0
        self.frames_computed = 0  # encoder frames run through the layers since the last reset
        self._allocate(0)

    @property
    def capacity(self) -> int:
        """Frames the tensors hold now (committed or not)."""
        return int(self.out.shape[1])

    def _empty(self, shape: tuple[int, int, int, int], frames: int) -> torch.Tensor:
        layers, one, heads, dim = shape
        return torch.empty(
            (layers, one, heads, frames, dim), dtype=self._dtype, device=self._device
        )

    def _allocate(self, frames: int) -> None:
        self.k = self._empty(self._self_shape, frames)
        self.v = self._empty(self._self_shape, frames)
        self.out = torch.empty((1, frames, self._width), dtype=self._dtype, device=self._device)
        self.cross_k = self._empty(self._cross_shape, frames)
        self.cross_v = self._empty(self._cross_shape, frames)

    def _reserve(self, frames: int) -> None:
        """Hold at least `frames` frames, keeping the committed ones."""
        if frames <= self.capacity:
            return
        if frames > self.max_frames:
            raise ValueError(f"encoder cache full: {frames} > {self.max_frames} frames")
        grown = max(frames, 2 * self.capacity, self.GROW_FRAMES)
        n, old = self.length, (self.k, self.v, self.cross_k, self.cross_v, self.out)
        self._allocate(min(grown, self.max_frames))
        for new, prev in zip((self.k, self.v, self.cross_k, self.cross_v), old[:4], strict=True):
            new[:, :, :, :n] = prev[:, :, :, :n]
        self.out[:, :n] = old[4][:, :n]

    def reset(self) -> None:
        """Forget every frame, and give the memory back."""
        self.length = 0
        self.frames_computed = 0
        if self.capacity:
            self._allocate(0)

    def trim(self, length: int) -> None:
        """Forget committed frames from `length` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot trim an encoder cache of {self.length} frames to {length}")
        self.length = length

    def commit_layer(self, layer: int, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        """Store the first `n` tail frames of one layer's keys and values (1, H, T, D)."""
        self._reserve(self.length + n)
        self.k[layer, :, :, self.length : self.length + n] = k[:, :, :n]
        self.v[layer, :, :, self.length : self.length + n] = v[:, :, :n]

    def commit_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        self._reserve(self.length + n)
        self.cross_k[layer, :, :, self.length : self.length + n] = k[:, :, :n]
        self.cross_v[layer, :, :, self.length : self.length + n] = v[:, :, :n]

    def commit_out(self, out: torch.Tensor, n: int) -> None:
        """Store the first `n` tail outputs (1, T, d) and advance past them (call last)."""
        self._reserve(self.length + n)
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
