"""Our own KV-cached forward of a transformers Llama or Qwen3 decoder (grouped KV heads).

The GLM-ASR decoder is Llama (16 q / 4 kv heads x 128); Tiny Audio's is Qwen3 (16 q / 8 kv
heads x 128, plus a per-head RMSNorm on q and k before RoPE). Both run through `forward`. The
cache stores keys and values before the heads are repeated, (layers, B, kv_heads, max_len,
head_dim), and the attention ops of `streamasr.kernels` read them as they are (grouped KV
heads, no repeat): a prefill is `chunk_attention` with a causal mask, a one-token step is
`decode_attention`. Both dispatch to Triton on CUDA and to a torch reference elsewhere.
`step` is the batched one-token form for rows of different lengths (ragged decoding).
"""

from __future__ import annotations

from typing import Any

import torch

from streamasr.engine.kv_cache import KVCache
from streamasr.errors import ModelFormatError
from streamasr.kernels import chunk_attention, decode_attention
from streamasr.models.glm_encoder import apply_rope
from streamasr.models.packed_linear import PackedLinear, pack_linears


class CausalLm:
    """A decoder-only LM: token embeddings, KV-cached forward, logits."""

    def __init__(self, base: Any, lm_head: Any, *, vocab_limit: int | None = None) -> None:
        """`base` is a transformers LlamaModel or Qwen3Model, `lm_head` its output Linear.

        `vocab_limit` keeps only the first logits: Tiny Audio shrinks Qwen3's 151936 rows to its
        tokenizer's 151670 tokens, so the padding rows are never generated.
        """
        cfg = base.config
        if getattr(cfg, "use_sliding_window", False):
            raise ModelFormatError("decoders with sliding-window attention are not supported")
        self.base = base.eval()
        self.lm_head = lm_head
        self.layers = len(base.layers)
        self.q_heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.q_heads)
        self.max_positions = int(cfg.max_position_embeddings)
        self.hidden_size = int(cfg.hidden_size)
        self.vocab_limit = vocab_limit
        self.qk_norm = hasattr(base.layers[0].self_attn, "q_norm")  # Qwen3
        self.place()

    def place(self) -> None:
        """After the weights moved: take their device and dtype; the linear layers (`lm_head`
        too) become `PackedLinear`s, which pack on their first float32 CPU call where fp16
        holds the weights exactly (models/packed_linear.py)."""
        pack_linears(self.base)
        if isinstance(self.lm_head, PackedLinear):
            self.lm_head.repack()
        elif isinstance(self.lm_head, torch.nn.Linear):
            self.lm_head = PackedLinear(self.lm_head)
        param = next(self.base.parameters())
        self.dtype, self.device = param.dtype, param.device

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Token embeddings (T, d) of `ids`."""
        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        out: torch.Tensor = self.base.embed_tokens(t)
        return out

    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        return KVCache(
            layers=self.layers,
            batch=batch,
            heads=self.kv_heads,
            head_dim=self.head_dim,
            max_len=max_len,
            dtype=self.dtype,
            device=self.device,
        )

    def reserve(self, cache: KVCache | None, max_len: int) -> KVCache:
        """One-row `cache` if it has room for `max_len` positions, else a larger copy of it."""
        if cache is not None and cache.max_len >= max_len:
            return cache
        grown = self.new_cache(max(max_len, 2 * cache.max_len if cache is not None else 0))
        if cache is not None and cache.length:
            n = cache.length
            grown.k[:, :, :, :n], grown.v[:, :, :, :n] = cache.k[:, :, :, :n], cache.v[:, :, :, :n]
            grown.advance(n)
        return grown

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache: KVCache, *, logits_from: int = -1) -> torch.Tensor:
        """Feed embeddings x (B, T, d) after the cached prefix; return logits (B, T', vocab).

        Logits are computed only for positions `logits_from` .. T-1 (default: the last one;
        T: none, for a prefix whose predictions nobody reads).
        """
        b, t, _ = x.shape
        pos0 = cache.length
        positions = torch.arange(pos0, pos0 + t, device=x.device)[None, :]  # (1, T)
        cos, sin = self.base.rotary_emb(x, position_ids=positions)  # (1, T, head_dim)
        # Every sequence of the batch holds the cached prefix plus these T tokens.
        seq_lens = torch.full((b,), pos0 + t, dtype=torch.int32, device=x.device)  # (B,)
        for i, layer in enumerate(self.base.layers):
            h = layer.input_layernorm(x)
            x = x + self._attend(layer.self_attn, h, i, cache, cos, sin, seq_lens)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        cache.advance(t)
        return self._logits(x[:, logits_from:])

    @torch.inference_mode()
    def step(self, x: torch.Tensor, cache: KVCache, lengths: torch.Tensor) -> torch.Tensor:
        """One token per row, x (B, 1, d), row b at position lengths[b]; returns logits (B, V).

        Row b's key and value go to cache position lengths[b] and it attends positions
        0..lengths[b] of its own row: rows of different lengths decode together. The cache's
        `length` is not used or advanced; the caller keeps `lengths`.
        """
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        cos, sin = self.base.rotary_emb(x, position_ids=lengths.view(b, 1))  # (B, 1, head_dim)
        seq_lens = (lengths + 1).to(torch.int32)  # (B,)
        # The caller counts the lengths, so their value check (a device sync on CUDA) is skipped.
        for i, layer in enumerate(self.base.layers):
            attn = layer.self_attn
            q, k, v = self._project(attn, layer.input_layernorm(x), cos, sin)  # (B, H, 1, D)
            cache.k[i, rows, :, lengths] = k[:, :, 0]
            cache.v[i, rows, :, lengths] = v[:, :, 0]
            a = decode_attention(
                q, cache.k[i], cache.v[i], seq_lens, scale=float(attn.scaling), check_lengths=False
            )  # (B, Hq, 1, D)
            x = x + attn.o_proj(a.transpose(1, 2).reshape(b, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(x)[:, 0]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(self.base.norm(x))
        if self.vocab_limit is not None:
            logits = logits[..., : self.vocab_limit]
        return logits

    def _project(
        self, attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, Hq, T, D), k, v (B, Hkv, T, D) of h (B, T, d); q/k norms and RoPE applied."""
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, self.q_heads, self.head_dim)  # (B, T, Hq, D)
        k = attn.k_proj(h).view(b, t, self.kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = attn.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, Hq, T, D)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, Hkv, T, D)
        return q, k, v

    def _attend(
        self,
        attn: Any,
        h: torch.Tensor,
        layer: int,
        cache: KVCache,
        cos: torch.Tensor,
        sin: torch.Tensor,
        seq_lens: torch.Tensor,
    ) -> torch.Tensor:
        """Self-attention of h (B, T, d), whose keys and values are appended to `cache` first."""
        b, t, _ = h.shape
        q, k, v = self._project(attn, h, cos, sin)
        k_all, v_all = cache.append(layer, k, v)  # (B, Hkv, L, D), L = cached + T
        scale = float(attn.scaling)
        # The lengths are built here from the cache's own counter, so their value check (a
        # device sync on CUDA) is skipped.
        if t == 1:
            a = decode_attention(q, k_all, v_all, seq_lens, scale=scale, check_lengths=False)
        else:  # a prefill: query i at position L - T + i sees keys up to itself
            a = chunk_attention(
                q, k_all, v_all, seq_lens, mask="causal", scale=scale, check_lengths=False
            )  # (B, Hq, T, D)
        out: torch.Tensor = attn.o_proj(a.transpose(1, 2).reshape(b, t, -1))
        return out
