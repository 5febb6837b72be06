"""The GLM-ASR audio encoder: our forward on transformers' weights; GLM-ASR and Tiny Audio use it.

The encoder is Whisper's two convolutions (k3 s1, k3 s2, GELU after each: 50 frames/s) and a
pre-LayerNorm transformer whose attention is bidirectional with no mask and applies rotate-half
RoPE to the first half of each head's dims; positions restart at 0 in every window. Its
attention is `streamasr.kernels.chunk_attention` with no mask over the whole window (Triton on
CUDA, a torch reference elsewhere). The projectors after it stack MERGE = 4 encoder frames into
one audio token (80 ms).

`encode_tail` is the chunked form for streaming: the frames after a stream's cached prefix
attend its cached keys and values plus each other, and whole 4-frame groups are committed, so
the audio tokens projected from committed frames never change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from streamasr import SAMPLE_RATE
from streamasr.errors import ModelFormatError
from streamasr.kernels import chunk_attention
from streamasr.models.encoder_cache import EncoderCache, Tail

HOP_SAMPLES = 160  # one mel frame
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # the processor cuts a request into 30 s windows
CONV_LAYERS = ((1, 3, 1), (1, 3, 2))  # (padding, kernel, stride) of conv1 and conv2
MERGE = 4  # encoder frames stacked into one audio token
_TOWER_KEY = re.compile(r"^(?:model\.)?audio_tower\.(.+)$")  # 5.10+ and older checkpoint layouts


def mel_frames_for(num_samples: int) -> int:
    """Mel frames the feature extractor's attention mask marks as audio: ceil(n / 160).

    The mask is the sample mask taken every 160th sample, so a partial last hop counts as a
    frame. `LogMelBuffer.num_frames` is n // 160: its token count is one short when
    n // 160 is 6 mod 8 and n % 160 != 0 (`audio_token_count` steps at L = 8k - 1).
    """
    return -(-num_samples // HOP_SAMPLES)


def encoder_frames(mel_frames: int) -> int:
    """Encoder output frames for `mel_frames` input frames: ceil(L / 2) for L >= 1."""
    n = mel_frames
    for padding, kernel, stride in CONV_LAYERS:
        n = (n + 2 * padding - (kernel - 1) - 1) // stride + 1
    return max(n, 0)


def audio_token_count(mel_frames: int) -> int:
    """Audio tokens for `mel_frames` real frames, as the GLM-ASR processor counts them."""
    return max((encoder_frames(mel_frames) - MERGE) // MERGE + 1, 0)


def audio_tokens_for_samples(num_samples: int) -> int:
    """Audio tokens of a request of `num_samples` samples, as the GLM-ASR processor counts.

    The processor sums the mask frames of all 30 s windows, then counts once; that equals the
    sum of per-window counts (what a window-by-window decode keeps) because a full window's
    3000 frames give 1500 encoder frames, a whole number of 4-frame groups.
    """
    full, rest = divmod(num_samples, WINDOW_SAMPLES)
    return full * audio_token_count(mel_frames_for(WINDOW_SAMPLES)) + audio_token_count(
        mel_frames_for(rest)
    )


def stack_frames(states: torch.Tensor, merge: int = MERGE) -> torch.Tensor:
    """(B, S, d) encoder states -> (B, S // merge, merge * d); drops a trailing partial group."""
    b, s, d = states.shape
    groups = s // merge
    return states[:, : groups * merge].reshape(b, groups, merge * d)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first cos.shape[-1] dims of x (B, H, T, D); cos/sin (1, T, R)."""
    rot = cos.shape[-1]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, R)
    if rot == x.shape[-1]:
        return x * c + rotate_half(x) * s
    head, tail = x[..., :rot], x[..., rot:]
    return torch.cat((head * c + rotate_half(head) * s, tail), dim=-1)


class GlmAudioEncoder:
    """A transformers `GlmAsrEncoder` run with our forward; holds no per-call state."""

    def __init__(self, module: Any) -> None:
        self.module = module.eval()
        cfg = module.config
        self.n_mels = int(cfg.num_mel_bins)
        self.hidden_size = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden_size // self.heads)
        if int(cfg.intermediate_size) != MERGE * self.hidden_size:
            # transformers' projector reshapes the states to intermediate_size, while the
            # processor counts tokens with a merge factor of 4: both hold only at 4 x hidden.
            raise ModelFormatError(
                f"GLM-ASR audio intermediate_size {cfg.intermediate_size} is not "
                f"{MERGE} x hidden_size {self.hidden_size}"
            )

    @classmethod
    def from_glmasr_dir(cls, model_dir: Path, *, dtype: torch.dtype = torch.float32) -> Any:
        """Only the audio tower of a GLM-ASR dir: its config and its `audio_tower.*` weights."""
        from safetensors import safe_open
        from transformers import AutoConfig, GlmAsrEncoder

        try:
            # trust_remote_code=False: a repo's own Python never runs (resolve.py never fetches it)
            cfg = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
            audio_cfg = cfg.audio_config
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelFormatError(f"{model_dir} holds no GLM-ASR config: {exc}") from exc
        state: dict[str, torch.Tensor] = {}
        for file in _safetensors_files(model_dir):
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    m = _TOWER_KEY.match(key)
                    if m:
                        state[m.group(1)] = fh.get_tensor(key).to(dtype)
        with torch.device("meta"):  # no throwaway random init of ~600 M parameters
            module = GlmAsrEncoder(audio_cfg)
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelFormatError(f"{model_dir}: audio tower weights do not fit: {exc}") from exc
        module.rotary_emb = type(module.rotary_emb)(config=audio_cfg)  # its buffers were on meta
        return cls(module)

    @torch.inference_mode()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel (B, n_mels, T) -> encoder states (B, ceil(T / 2), hidden)."""
        m = self.module
        self._check_mel(mel)
        x = self._stem(mel)  # (B, S, d)
        positions = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, S)
        cos, sin = m.rotary_emb(x, position_ids=positions)  # (1, S, rotary dims)
        for layer in m.layers:
            x = x + self.attend(layer.self_attn, layer.input_layernorm(x), cos, sin)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        out: torch.Tensor = m.norm(x)
        return out

    def _check_mel(self, mel: torch.Tensor) -> None:
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel (B, {self.n_mels}, T), got {tuple(mel.shape)}")

    def _stem(self, mel: torch.Tensor) -> torch.Tensor:
        """The two convolutions: log-mel (B, n_mels, T) -> (B, ceil(T / 2), d)."""
        x = F.gelu(self.module.conv1(mel))
        out: torch.Tensor = F.gelu(self.module.conv2(x)).transpose(1, 2)
        return out

    def new_cache(self, max_frames: int) -> EncoderCache:
        """Empty per-stream state for `encode_tail`, room for `max_frames` encoder frames."""
        param = next(self.module.parameters())
        return EncoderCache(
            layers=len(self.module.layers),
            heads=self.kv_heads,
            head_dim=self.head_dim,
            width=self.hidden_size,
            max_frames=max_frames,
            dtype=param.dtype,
            device=param.device,
        )

    def encode_tail(
        self, cache: EncoderCache, mel: torch.Tensor, *, commit_frames: int, group: int = MERGE
    ) -> torch.Tensor:
        """Encode mel (1, n_mels, T) of a stream whose first `cache.length` frames are cached.

        The frames from `cache.length` on (the tail) attend the cached keys and values and each
        other, at their absolute RoPE positions; cached frames are not recomputed, so they never
        see the audio that came after they were committed (block-causal). Then the tail frames
        before `commit_frames`, rounded down to whole `group`s from frame 0 (the projector's
        stacking), are committed. Returns the states (1, ceil(T / 2), d) of all frames. With an
        empty cache and no commit this is `forward` exactly.
        """
        return self.encode_tails([Tail(mel, cache, commit_frames)], group=group)[0]

    @torch.inference_mode()
    def encode_tails(self, tails: list[Tail], *, group: int = MERGE) -> list[torch.Tensor]:
        """`encode_tail` of many streams (a `Tail` without a cache: its whole window, as
        `forward`) in one pass: the position-wise layers run once over all tails' frames
        packed together, and each tail attends only its own stream's frames. Result i equals
        encoding tail i alone. A pass that fails commits nothing."""
        spans = [self._tail_span(t, group) for t in tails]  # (cached, new, to commit) frames
        live = [i for i, (_, n, _) in enumerate(spans) if n]
        new: dict[int, torch.Tensor] = {}
        if live:
            packed = self._encode_packed([tails[i] for i in live], [spans[i] for i in live])
            new = dict(zip(live, torch.split(packed, [spans[i][1] for i in live], 1), strict=True))
        out = []
        for i, (t, (c, n, _)) in enumerate(zip(tails, spans, strict=True)):
            if t.cache is None:
                out.append(new[i])
                continue
            t.cache.frames_computed += n
            if i not in new:  # nothing new since the last commit
                out.append(t.cache.out[:, :c])
                continue
            out.append(torch.cat([t.cache.out[:, :c], new[i]], dim=1) if c else new[i])
        for i, o in new.items():  # last: a pass that failed has moved no cache
            cache = tails[i].cache
            if cache is not None:
                cache.commit_out(o, spans[i][2])
        return out

    def _encode_packed(self, tails: list[Tail], spans: list[tuple[int, int, int]]) -> torch.Tensor:
        """The new frames of every tail, through the layers in one pass: (1, sum of new, d)."""
        m = self.module
        # conv2's frame c reads conv1 outputs 2c-1..2c+1, which read mel frames 2c-2..2c+2;
        # start two mel frames early and drop the first output, whose input is cut off.
        x = torch.cat(
            [
                self._stem(t.mel[..., max(0, 2 * c - 2) :])[0, 1 if c else 0 :]
                for t, (c, _, _) in zip(tails, spans, strict=True)
            ]
        )[None]
        positions = torch.cat([torch.arange(c, c + n, device=x.device) for c, n, _ in spans])
        cos, sin = m.rotary_emb(x, position_ids=positions[None])
        for i, layer in enumerate(m.layers):
            h = layer.input_layernorm(x)
            x = x + self._attend_tails(layer.self_attn, h, cos, sin, tails, spans, i)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        out: torch.Tensor = m.norm(x)
        return out

    def _tail_span(self, tail: Tail, group: int) -> tuple[int, int, int]:
        """A checked tail's (cached frames, new frames, frames to commit)."""
        mel, cache = tail.mel, tail.cache
        self._check_mel(mel)
        total = encoder_frames(mel.shape[-1])
        if cache is None:
            if mel.shape[0] != 1 or total == 0:
                raise ValueError(
                    f"expected one window's mel of 1 frame or more, got {tuple(mel.shape)}"
                )
            return 0, total, 0
        c = cache.length
        if mel.shape[0] != 1 or c > total or total > cache.max_frames:
            raise ValueError(
                f"expected one stream's mel of at most {2 * cache.max_frames} frames covering "
                f"the {c} cached frames; got {tuple(mel.shape)}"
            )
        return c, total - c, max(min(tail.commit_frames, total) // group * group - c, 0)

    def _project(
        self, attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, H, S, D), k, v (B, Hkv, S, D) of h (B, S, d), RoPE applied to q and k."""
        b, s, _ = h.shape
        q = attn.q_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(
        self, attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """One bidirectional self-attention block on h (B, S, d): every frame sees the window."""
        q, k, v = self._project(attn, h, cos, sin)
        a = chunk_attention(q, k, v, mask="none", scale=float(attn.scaling))  # (B, H, S, D)
        out: torch.Tensor = attn.o_proj(a.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1))
        return out

    def _attend_tails(
        self,
        attn: Any,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        tails: list[Tail],
        spans: list[tuple[int, int, int]],
        layer: int,
    ) -> torch.Tensor:
        """Self-attention of packed tails h (1, N, d), each over its own cached frames and
        itself; commits each tail's leading frames' keys and values."""
        q, k, v = self._project(attn, h, cos, sin)
        sizes = [n for _, n, _ in spans]
        parts = []
        for t, (c, _, n_commit), qr, kr, vr in zip(
            tails, spans, *(torch.split(m, sizes, 2) for m in (q, k, v)), strict=True
        ):
            if t.cache is not None and c:
                k_all = torch.cat([t.cache.k[layer, :, :, :c], kr], dim=2)  # (1, Hkv, c + S, D)
                v_all = torch.cat([t.cache.v[layer, :, :, :c], vr], dim=2)
            else:  # with nothing cached the inputs are `attend`'s, so the result is too
                k_all, v_all = kr, vr
            parts.append(chunk_attention(qr, k_all, v_all, mask="none", scale=float(attn.scaling)))
            if t.cache is not None and n_commit:
                t.cache.commit_layer(layer, kr, vr, n_commit)
        a = torch.cat(parts, dim=2)
        out: torch.Tensor = attn.o_proj(a.transpose(1, 2).reshape(1, h.shape[1], -1))
        return out


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} holds no *.safetensors weights")
    return files
