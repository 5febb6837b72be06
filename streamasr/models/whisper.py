"""Whisper adapter: transformers weights, our own forward, KV-cached greedy decoding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamasr.engine.kv_cache import KVCache
from streamasr.errors import ModelFormatError
from streamasr.kernels import chunk_attention, cross_attention
from streamasr.models.base import (
    DecodeResult,
    FeatureSpec,
    ModelInfo,
    TranscribeRequest,
    pick_language,
)
from streamasr.models.encoder_cache import EncoderCache, Tail
from streamasr.models.mapped_weights import release_pages
from streamasr.models.packed_linear import LazyPack, linear_fp16, pack_linears
from streamasr.models.whisper_decode import CrossKV, DecodeRow, WhisperStepBatch, greedy_batch
from streamasr.models.whisper_net import WhisperNet
from streamasr.models.whisper_tokens import alignment_heads, special_tokens


class WhisperModel:
    """One Whisper checkpoint, shared by all sessions; all per-call state lives in locals."""

    def __init__(self, net: WhisperNet, tokenizer: Any, gen_config: Any, name: str) -> None:
        self.net = net.eval()
        self.tokenizer = tokenizer
        cfg = net.config
        self.config = cfg
        self.encoder: Any = net.model.encoder  # typed loosely: layers are reached by name
        self.decoder: Any = net.model.decoder
        self.n_heads_dec = cfg.decoder_attention_heads
        self.n_heads_enc = cfg.encoder_attention_heads
        self.max_target_positions = cfg.max_target_positions
        self.tokens = special_tokens(tokenizer, gen_config, cfg.vocab_size)
        multilingual = self.tokens.multilingual
        self.info = ModelInfo(
            name=name,
            features=FeatureSpec(
                n_mels=cfg.num_mel_bins, window_frames=2 * cfg.max_source_positions
            ),
            # The chunked encoder first: finals equal the window encoder's (re-encoded), partials
            # are about as accurate, and an update costs less (held-out speech: docs/engine.md).
            encoders=("chunked", "window"),
            continuous_batching=True,
            languages=tuple(self.tokens.languages) if multilingual else ("en",),
            tasks=tuple(self.tokens.tasks) if multilingual else ("transcribe",),
            continues_text=True,  # as Whisper continues the previous window's text
        )
        self.alignment_heads = alignment_heads(gen_config, cfg.decoder_layers, self.n_heads_dec)
        self._place()

    def to(
        self,
        device: torch.device | str,
        dtype: torch.dtype,
        encoder_dtype: torch.dtype | None = None,
    ) -> WhisperModel:
        """Move the weights (and every tensor made per call from now on) to `device`, `dtype`;
        the encoder's layers may run in `encoder_dtype` (its output is `dtype` all the same).
        Weights of the file's memory map that were copied (cast or moved) are read no more:
        their pages are released (models/mapped_weights.py)."""
        before = [t.detach() for t in (*self.net.parameters(), *self.net.buffers())]
        self.net.to(device=device, dtype=dtype)
        if encoder_dtype is not None:
            self.encoder.to(dtype=encoder_dtype)
        kept = {t.untyped_storage().data_ptr() for t in self.net.parameters()}
        kept |= {t.untyped_storage().data_ptr() for t in self.net.buffers()}
        release_pages(*(t for t in before if t.untyped_storage().data_ptr() not in kept))
        del before
        self._place()
        return self

    def _place(self) -> None:
        """Derive what follows the weights' placement: the vocabulary projection, and the
        decoder's linear layers as `PackedLinear`s, which pack on their first float32 CPU call
        where fp16 holds the weights exactly (models/packed_linear.py; steps run a few rows)."""
        embed = self.decoder.embed_tokens.weight.detach()
        self._vocab_projection: torch.Tensor | None = None  # made on the first call needing it
        self.vocab_pack = LazyPack(embed)
        pack_linears(self.decoder)
        self.device, self.dtype = embed.device, embed.dtype
        self.encoder_dtype = self.encoder.conv1.weight.dtype

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (..., d), after the final layer norm -> vocabulary logits."""
        packed = self.vocab_pack.get(x)
        if packed is not None:
            return linear_fp16(x, packed)
        out: torch.Tensor = x @ self.vocab_projection
        return out

    @property
    def vocab_projection(self) -> torch.Tensor:
        """The tied embedding transposed, stored contiguous (through the transposed view MKL
        takes a 3x slower path on the CPU). Made when first used: with the fp16 GEMM the CPU
        never needs these 80 MB (tiny.en)."""
        if self._vocab_projection is None:
            self._vocab_projection = self.decoder.embed_tokens.weight.detach().T.contiguous()
        return self._vocab_projection

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_dir(cls, model_dir: Path, *, name: str | None = None) -> WhisperModel:
        from transformers import AutoTokenizer

        net = WhisperNet.from_dir(model_dir)
        try:
            tok = AutoTokenizer.from_pretrained(str(model_dir))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(
                f"cannot load a Whisper tokenizer from {model_dir}: {exc}"
            ) from exc
        return cls(net, tok, generation_config(model_dir), name or model_dir.name)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_tokens(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    # ---------------------------------------------------------------- forward
    def mel(self, features: np.ndarray) -> torch.Tensor:
        """Log-mel (n_mels, T) as the encoder takes it: (1, n_mels, T) on the model's device and
        in its dtype, T padded to even."""
        mel = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).unsqueeze(0)
        mel = mel.to(device=self.device, dtype=self.dtype)
        return F.pad(mel, (0, 1)) if mel.shape[-1] % 2 else mel

    @staticmethod
    def _attend(attn: Any, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
        b, t, d = x.shape
        q = (attn.q_proj(x) * attn.scaling).view(b, t, heads, -1).transpose(1, 2)  # (B, H, T, D)
        k = attn.k_proj(x).view(b, t, heads, -1).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, heads, -1).transpose(1, 2)
        return q, k, v

    def _encoder_qkv(self, attn: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """An encoder layer's queries, keys and values, in the model's dtype: with a bfloat16
        encoder the attention itself runs in float32, which on the CPU is also the faster
        (flash attention over 1500 frames: 23-25 ms a layer against 27 in bfloat16)."""
        return tuple(m.to(self.dtype) for m in self._attend(attn, x, self.n_heads_enc))

    def _encoder_out(self, attn: Any, a: torch.Tensor) -> torch.Tensor:
        """The output projection of an encoder layer's attention (B, H, T, D)."""
        out: torch.Tensor = attn.out_proj(a.transpose(1, 2).flatten(2).to(self.encoder_dtype))
        return out

    def _stem(self, mel: torch.Tensor) -> torch.Tensor:
        """The two convolutions: log-mel (B, n_mels, T) -> (B, T/2, d), positions not added."""
        x = F.gelu(self.encoder.conv1(mel.to(self.encoder_dtype)))
        return F.gelu(self.encoder.conv2(x)).permute(0, 2, 1)

    def _check_frames(self, t: int) -> None:
        if t % 2 or t > self.info.features.window_frames:
            raise ValueError(
                f"mel frames must be even and <= {self.info.features.window_frames}, got {t}"
            )

    @torch.inference_mode()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, T) with T even and <= 3000 -> encoder states (B, T/2, d)."""
        enc = self.encoder
        self._check_frames(features.shape[-1])
        x = self._stem(features)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            h = layer.self_attn_layer_norm(x)
            q, k, v = self._encoder_qkv(layer.self_attn, h)
            a = chunk_attention(q, k, v, mask="none", scale=1.0)
            x = x + self._encoder_out(layer.self_attn, a)
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        out: torch.Tensor = enc.layer_norm(x).to(self.dtype)
        return out

    # ---------------------------------------------------------------- chunked encoding
    def new_encoder_cache(self) -> EncoderCache:
        """Empty per-stream state for chunked requests."""
        cfg = self.config
        return EncoderCache(
            layers=len(self.encoder.layers),
            heads=self.n_heads_enc,
            head_dim=cfg.d_model // self.n_heads_enc,
            width=cfg.d_model,
            max_frames=self.info.features.window_frames // 2,
            cross_layers=len(self.decoder.layers),
            cross_heads=self.n_heads_dec,
            cross_head_dim=cfg.d_model // self.n_heads_dec,
            dtype=self.dtype,
            device=self.device,
        )

    def encode_tail(
        self, cache: EncoderCache, mel: torch.Tensor, *, commit_frames: int
    ) -> tuple[torch.Tensor, CrossKV]:
        """Encode mel (1, n_mels, T) of a stream whose first `cache.length` frames are cached.

        Frames from `cache.length` on (the tail) attend the cached keys and values and each
        other; the cached frames are not recomputed, so they never see the audio that came
        after they were committed (block-causal). Then tail frames before `commit_frames` are
        committed. Returns the encoder states (1, T/2, d) and the decoder's cross-attention
        keys and values of them. With an empty cache and no commit this is `encode` exactly.
        """
        return self.encode_tails([Tail(mel, cache, commit_frames)])[0]

    @torch.inference_mode()
    def encode_tails(self, tails: list[Tail]) -> list[tuple[torch.Tensor, CrossKV]]:
        """`encode_tail` of many streams (a `Tail` without a cache: its whole window) in one
        pass: the position-wise layers run once over all tails' frames packed together, and
        each tail attends only its own stream's frames. Result i equals encoding tail i alone.
        A pass that fails commits nothing (a cache's length moves only at the end)."""
        enc = self.encoder
        spans = [self._tail_span(t) for t in tails]  # (cached, new, to commit) frames
        x = torch.cat(
            [
                self._tail_stem(t.mel, c)[0] + enc.embed_positions.weight[c : c + n]
                for t, (c, n, _) in zip(tails, spans, strict=True)
            ]
        )[None]  # (1, sum of new frames, d)
        sizes = [n for _, n, _ in spans]
        for i, layer in enumerate(enc.layers):
            h = layer.self_attn_layer_norm(x)
            q, k, v = self._encoder_qkv(layer.self_attn, h)  # (1, H, N, D)
            parts = []
            for t, (c, _, n_commit), qr, kr, vr in zip(
                tails, spans, *(torch.split(m, sizes, 2) for m in (q, k, v)), strict=True
            ):
                if t.cache is not None and c:
                    k_all = torch.cat([t.cache.k[i, :, :, :c], kr], dim=2)
                    v_all = torch.cat([t.cache.v[i, :, :, :c], vr], dim=2)
                else:
                    k_all, v_all = kr.contiguous(), vr.contiguous()
                parts.append(chunk_attention(qr.contiguous(), k_all, v_all, mask="none", scale=1.0))
                if t.cache is not None and n_commit:
                    t.cache.commit_layer(i, kr, vr, n_commit)
            x = x + self._encoder_out(layer.self_attn, torch.cat(parts, dim=2))
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        out = enc.layer_norm(x).to(self.dtype)
        cross_all = [
            (torch.split(k, sizes, 2), torch.split(v, sizes, 2)) for k, v in self.cross_kv(out)
        ]  # per decoder layer, per tail
        results = []
        for r, (t, (c, _, n_commit), o) in enumerate(
            zip(tails, spans, torch.split(out, sizes, 1), strict=True)
        ):
            cross = []
            for layer, (ks, vs) in enumerate(cross_all):
                k, v = ks[r], vs[r]
                if t.cache is None:
                    cross.append((k.contiguous(), v.contiguous()))
                    continue
                cross.append(
                    (
                        torch.cat([t.cache.cross_k[layer, :, :, :c], k], dim=2),
                        torch.cat([t.cache.cross_v[layer, :, :, :c], v], dim=2),
                    )
                )
                if n_commit:
                    t.cache.commit_cross(layer, k, v, n_commit)
            if t.cache is None:
                results.append((o, cross))
                continue
            t.cache.frames_computed += o.shape[1]
            results.append((torch.cat([t.cache.out[:, :c], o], dim=1), cross))
        for t, (_, _, n_commit), o in zip(tails, spans, torch.split(out, sizes, 1), strict=True):
            if t.cache is not None:
                t.cache.commit_out(o, n_commit)
        return results

    def _tail_span(self, tail: Tail) -> tuple[int, int, int]:
        """A checked tail's (cached frames, new frames, frames to commit)."""
        t = tail.mel.shape[-1]
        self._check_frames(t)
        c, total = (tail.cache.length if tail.cache is not None else 0), t // 2
        if c > total:
            raise ValueError(f"{c} frames are cached but the mel holds only {total}")
        if tail.cache is None:
            return 0, total, 0
        return c, total - c, min(max(tail.commit_frames - c, 0), total - c)

    def _tail_stem(self, mel: torch.Tensor, c: int) -> torch.Tensor:
        """The convolutions' output frames from `c` on: (1, T/2 - c, d)."""
        # conv2's frame c reads conv1 outputs 2c-1..2c+1, which read mel frames 2c-2..2c+2;
        # start two mel frames early and drop the first output, whose input is cut off.
        start = max(0, 2 * c - 2)
        return self._stem(mel[..., start:])[:, 1 if c else 0 :]

    @torch.inference_mode()
    def cross_kv(self, enc_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, cross-attention keys and values (B, H, S, D) of the encoder states."""
        b, s, _ = enc_states.shape
        out = []
        for layer in self.decoder.layers:
            ea = layer.encoder_attn
            k = ea.k_proj(enc_states).view(b, s, self.n_heads_dec, -1).transpose(1, 2)
            v = ea.v_proj(enc_states).view(b, s, self.n_heads_dec, -1).transpose(1, 2)
            out.append((k, v))
        return out

    @torch.inference_mode()
    def decode_step(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        qk_out: list[torch.Tensor] | None = None,
        logits_from: int | list[int] = 0,
    ) -> torch.Tensor:
        """Feed `tokens` (B, T) after the cached prefix; return logits (B, T', vocab).

        The vocabulary projection is the costliest part of a step, so only the positions from
        `logits_from` on (T' = T - logits_from), or only those it lists, get logits: a prompt's
        predictions are read by nobody. When `qk_out` is
        given, the raw cross-attention logits of the alignment heads, (heads, T, S) for batch
        item 0, are appended to it.
        """
        dec = self.decoder
        b, t = tokens.shape
        pos0 = cache.length
        x = dec.embed_tokens(tokens) + dec.embed_positions.weight[pos0 : pos0 + t]
        step_qk: list[torch.Tensor] = []
        for i, layer in enumerate(dec.layers):
            h = layer.self_attn_layer_norm(x)
            q, k, v = self._attend(layer.self_attn, h, self.n_heads_dec)
            k_all, v_all = cache.append(i, k, v)
            a = chunk_attention(q, k_all, v_all, mask="causal", scale=1.0)
            x = x + layer.self_attn.out_proj(a.transpose(1, 2).flatten(2))

            h = layer.encoder_attn_layer_norm(x)
            ea = layer.encoder_attn
            q = (ea.q_proj(h) * ea.scaling).view(b, t, self.n_heads_dec, -1).transpose(1, 2)
            ck, cv = cross[i]
            a = cross_attention(q, ck, cv, scale=1.0)
            if qk_out is not None and i in self.alignment_heads:
                heads = self.alignment_heads[i]
                step_qk.append(q[0, heads] @ ck[0, heads].transpose(-1, -2))  # (h, T, S)
            x = x + ea.out_proj(a.transpose(1, 2).flatten(2))

            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        cache.advance(t)
        if qk_out is not None:
            qk_out.append(torch.cat(step_qk, dim=0))
        x = x[:, logits_from:] if isinstance(logits_from, int) else x[:, logits_from]
        return self.logits(dec.layer_norm(x))

    # ---------------------------------------------------------------- decoding
    def prompt_tokens(
        self,
        prompt: list[int],
        max_prompt: int,
        start: tuple[int, ...],
        bias: Sequence[int] = (),
    ) -> list[int]:
        """The decoder's prompt: the `bias` tokens, up to `max_prompt` tokens of previous
        text, then the start-of-transcript sequence `start` (`WhisperTokens.start`)."""
        prev = [*bias, *(prompt[-max_prompt:] if max_prompt > 0 else [])]
        return ([self.tokens.sot_prev, *prev] if prev else []) + list(start)

    @torch.inference_mode()
    def language_probs(self, cross: CrossKV) -> dict[str, float]:
        """Whisper's language detection on one window's encoder states (their decoder keys and
        values): the distribution of the token after the SOT over the language tokens."""
        languages = self.tokens.languages
        cache = KVCache(
            layers=len(self.decoder.layers),
            batch=1,
            heads=self.n_heads_dec,
            head_dim=self.config.d_model // self.n_heads_dec,
            max_len=1,
            dtype=self.dtype,
            device=self.device,
        )
        tokens = torch.tensor([[self.tokens.sot]], device=self.device)
        logits = self.decode_step(tokens, cache, cross)[0, 0].float()
        ids = torch.tensor(list(languages.values()), device=self.device)
        probs = logits[ids].softmax(-1).tolist()
        return dict(zip(languages, probs, strict=True))

    def choose_language(
        self, request: TranscribeRequest, cross: CrossKV
    ) -> tuple[str, float | None]:
        """The language to decode `request` in, with its detected probability (None when it
        was not detected): the asked one; else the most probable, unless that is not
        `language_switch_margin` more probable than the prior language."""
        if not self.tokens.multilingual:
            return "en", None
        if request.language != "auto":
            return request.language, None
        probs = self.language_probs(cross)
        margin = request.options.language_switch_margin
        return pick_language(probs, request.prior_language, margin)

    @torch.inference_mode()
    def run(self, requests: list[TranscribeRequest]) -> list[DecodeResult]:
        """`AsrModel.run`: the windows and streams' tails are encoded in one pass
        (`encode_tails`); the decoding steps of all of them run batched."""
        return greedy_batch(self, self.decode_rows(requests))

    def new_step_batch(self, capacity: int) -> WhisperStepBatch:
        """A continuous batch: calls join and leave between decoding steps (`StepBatch`)."""
        return WhisperStepBatch(self, capacity)

    @torch.inference_mode()
    def decode_rows(self, requests: list[TranscribeRequest]) -> list[DecodeRow]:
        """The rows to decode of many requests: their windows (or streams' tails, over their
        caches) encoded in one pass."""
        for r in requests:
            self.info.check_language(r.language, r.task)
        tails = [Tail(self.mel(r.features), r.cache, r.commit_frames) for r in requests]
        rows = []
        for r, (_, cross) in zip(requests, self.encode_tails(tails), strict=True):
            language, probability = self.choose_language(r, cross)
            same = r.prior_language in (None, language)
            rows.append(
                DecodeRow(
                    cross,
                    r.num_frames,
                    r.prompt if same else [],  # one language's text never steers another's
                    r.options,
                    r.word_timestamps,
                    list(r.prefix),
                    list(r.draft or []),
                    start=self.tokens.start(language, r.task),
                    language=language,
                    bias=list(r.bias),
                    language_probability=probability,
                )
            )
        return rows


def generation_config(model_dir: Path) -> SimpleNamespace:
    """The dir's generation_config.json as attributes (special tokens, alignment heads); without
    one, the suppression lists older Whisper configs keep in config.json."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        path = model_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    return SimpleNamespace(**data)


def load_whisper(model_dir: Path, name: str | None = None) -> WhisperModel:
    """Load a transformers-format Whisper dir (config.json with model_type 'whisper')."""
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "whisper":
        raise ModelFormatError(f"{model_dir} holds a {cfg.get('model_type')!r} model, not whisper")
    return WhisperModel.from_dir(model_dir, name=name)
