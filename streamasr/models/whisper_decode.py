"""Greedy Whisper decoding of a batch of windows from different streams, in shared model calls.

Each row has its own prompt, forced prefix, encoder length and budget. Rows that join together
were encoded in one pass (`WhisperModel.encode_tails`); each prompt is prefilled on its own (a
matrix product already). Then every generation step runs all rows at once: one token per row
against its own ragged self-attention cache (`decode_attention`) and its own encoder states
(`cross_attention`), and the greedy picks of all rows are read back at once. A row leaves as
soon as it ends; a step's cost is mostly the weight reads, which the rows share.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from streamasr.config import DecodeConfig
from streamasr.engine.kv_cache import KVCache
from streamasr.kernels import cross_attention, decode_attention
from streamasr.models.base import DecodeResult, TranscribeRequest, WordTiming
from streamasr.models.guards import compression_ratio, loop_excess
from streamasr.models.slots import SlotBatch
from streamasr.models.timing import alignment_matrix, split_words, word_boundaries

if TYPE_CHECKING:
    from streamasr.models.whisper import WhisperModel

ENCODER_FRAME_SAMPLES = 320  # one encoder frame = 2 mel frames = 20 ms

CrossKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer (1, H, S, D) keys, values


@dataclass
class DecodeRow:
    """One window to decode: its encoder's cross-attention keys/values and decode arguments."""

    cross: CrossKV
    num_frames: int
    prompt: list[int]
    options: DecodeConfig
    word_timestamps: bool
    prefix: list[int]
    draft: list[int]  # guessed tokens after the prefix
    start: tuple[int, ...]  # the start-of-transcript sequence (`WhisperTokens.start`)
    language: str | None = None  # what `start` names, for the result
    language_probability: float | None = None  # when it was detected
    bias: list[int] = field(default_factory=list)  # kept at the head of the prompt


@dataclass
class _State:
    """The greedy loop's state of one row."""

    head: list[int]  # context prompt + start-of-transcript sequence
    budget: int  # new tokens allowed after the prefix
    out: list[int]
    logprobs: list[float]  # of the decoded tokens (after the forced prefix)
    prefix_logprobs: list[float]  # of the forced prefix, for word probabilities only
    sum_logprob: float
    no_speech_prob: float
    qk: list[torch.Tensor] | None  # alignment-head cross-attention logits, (heads, T, S) each
    step: int  # index in `out` of the token being predicted
    fed: int = 0  # positions in the self-attention cache that hold valid keys and values
    enc_len: int = 0  # encoder frames of the row's window
    done: bool = False
    next_token: int = 0


class WhisperStepBatch(SlotBatch[DecodeRow, _State]):
    """Greedy decodes of windows from different streams, joining and leaving between steps.

    A row joins with its prefill (prompt, forced prefix and draft in one pass). Every `step`
    then feeds one token to each row at its own position, against its own ragged slice of one
    preallocated self-attention cache (`decode_attention`) and its own encoder states
    (`cross_attention`). A row leaves as soon as it ends, so new rows never wait for a whole
    batch and no step is spent on finished rows.
    """

    @torch.inference_mode()
    def __init__(self, model: WhisperModel, capacity: int) -> None:
        super().__init__(capacity)
        self.model = model
        heads = model.n_heads_dec
        # Every position a row can reach: prompt, prefix and budget are capped by it.
        self.cache = KVCache(
            layers=len(model.decoder.layers),
            batch=capacity,
            heads=heads,
            head_dim=model.config.d_model // heads,
            max_len=model.max_target_positions,
            dtype=model.dtype,
            device=model.device,
        )
        self.cross_k: list[torch.Tensor] = []  # per layer (capacity, H, S_cap, D)
        self.cross_v: list[torch.Tensor] = []
        self.suppress = torch.tensor(model.tokens.suppress, dtype=torch.long, device=model.device)
        self.begin = torch.tensor(
            model.tokens.begin_suppress, dtype=torch.long, device=model.device
        )

    def encode(self, requests: list[TranscribeRequest]) -> list[DecodeRow]:
        return self.model.decode_rows(requests)

    @torch.inference_mode()
    def add_row(self, row: DecodeRow, tag: Any) -> DecodeResult | None:
        b = self._free_slot()
        st = _prefill_state(self.model, row)
        # A draft token past the budget could never be kept; this keeps every position fed
        # inside the model's context (and the cache).
        row = replace(row, draft=row.draft[: st.budget])
        _prefill(self.model, row, st, self.cache.row(b), self.suppress, self.begin)
        if st.done:
            return _result(self.model, row, st)
        st.enc_len = row.cross[0][0].shape[2]
        self._put_cross(b, row.cross)
        if self.capacity > 1:  # the batch holds a copy now: let the row's (18 MB for tiny.en's
            row = replace(row, cross=[])  # 30 s window) go while it decodes
        self._join(row, st, tag)
        return None

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, DecodeResult]]:
        n = self.size
        if n == 0:
            return []
        device = self.model.device
        tokens = torch.tensor([[s.next_token] for s in self.states], device=device)  # (n, 1)
        lengths = torch.tensor([s.fed for s in self.states], device=device)
        enc_lens = [s.enc_len for s in self.states]
        s_max = max(enc_lens)
        logits = _step(
            self.model,
            tokens,
            self.cache.rows(n),
            lengths,
            [k[:n, :, :s_max] for k in self.cross_k],
            [v[:n, :, :s_max] for v in self.cross_v],
            torch.tensor(enc_lens, device=device),
            self.states,
        )
        picks = _pick(self.model, logits, [s.step for s in self.states], self.suppress, self.begin)
        for row, st, pick in zip(self.rows, self.states, picks, strict=True):
            st.fed += 1
            _accept(self.model, row, st, pick)
        return self._leave(lambda row, st: _result(self.model, row, st))

    def _put_cross(self, b: int, cross: CrossKV) -> None:
        s = cross[0][0].shape[2]
        if self.capacity == 1:  # the row's own tensors: no copy
            self.cross_k = [k for k, _ in cross]
            self.cross_v = [v for _, v in cross]
        else:
            if not self.cross_k or s > self.cross_k[0].shape[2]:
                self._grow_cross(cross, s)
            for layer, (k, v) in enumerate(cross):
                self.cross_k[layer][b, :, :s] = k[0]
                self.cross_v[layer][b, :, :s] = v[0]

    def _grow_cross(self, cross: CrossKV, s: int) -> None:
        k0 = cross[0][0]
        shape = (self.capacity, k0.shape[1], s, k0.shape[3])
        n, old = self.size, (self.cross_k[0].shape[2] if self.cross_k else 0)
        ks = [k0.new_empty(shape) for _ in cross]
        vs = [k0.new_empty(shape) for _ in cross]
        for layer in range(len(self.cross_k)):
            ks[layer][:n, :, :old] = self.cross_k[layer][:n]
            vs[layer][:n, :, :old] = self.cross_v[layer][:n]
        self.cross_k, self.cross_v = ks, vs

    def _move(self, src: int, dst: int) -> None:
        fed, s = self.states[src].fed, self.states[src].enc_len
        self.cache.k[:, dst, :, :fed] = self.cache.k[:, src, :, :fed]
        self.cache.v[:, dst, :, :fed] = self.cache.v[:, src, :, :fed]
        for k, v in zip(self.cross_k, self.cross_v, strict=True):
            k[dst, :, :s] = k[src, :, :s]
            v[dst, :, :s] = v[src, :, :s]


def greedy_batch(model: WhisperModel, rows: list[DecodeRow]) -> list[DecodeResult]:
    """Greedy decoding of every row; row i's result equals decoding it alone."""
    batch = WhisperStepBatch(model, capacity=max(1, len(rows)))
    results: list[DecodeResult | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        results[i] = batch.add_row(row, i)
    while batch.size:
        for i, result in batch.step():
            results[i] = result
    done = [r for r in results if r is not None]
    assert len(done) == len(rows), "every row ends with a result"
    return done


def _prefill_state(model: WhisperModel, row: DecodeRow) -> _State:
    limit = model.max_target_positions // 2 - 1  # Whisper's own cap on the previous text
    bias = row.bias[:limit]
    max_prompt = min(row.options.prompt_tokens, limit - len(bias))
    prompt = row.prompt if row.options.condition_on_previous else []
    head = model.prompt_tokens(prompt, max_prompt, row.start, bias)
    by_length = 8 + int(row.options.max_tokens_per_second * row.num_frames / 100)
    room = model.max_target_positions - len(head) - len(row.prefix) - 1
    return _State(
        head=head,
        budget=min(row.options.max_new_tokens, by_length, room),
        out=list(row.prefix),
        logprobs=[],
        prefix_logprobs=[],
        sum_logprob=0.0,
        no_speech_prob=0.0,
        qk=[] if row.word_timestamps else None,
        step=len(row.prefix),
    )


def _prefill(
    model: WhisperModel,
    row: DecodeRow,
    st: _State,
    cache: KVCache,
    suppress: torch.Tensor,
    begin: torch.Tensor,
) -> None:
    """Run prompt, prefix and draft through the decoder in one pass; choose the first token.

    The draft is verified the way speculative decoding does it: each draft token is kept while
    it is the token greedy decoding picks at its position, read off this one pass, so the
    result is what step-by-step decoding gives, in fewer sequential steps. The cache is cut
    back to the kept tokens.
    """
    seq = st.head + row.prefix + row.draft
    sot_index = seq.index(model.tokens.sot)
    n_known = len(st.head) + len(row.prefix)
    if row.word_timestamps:  # word probabilities need the forced prefix's scores too
        rows = list(range(sot_index, len(seq)))
    else:  # the no-speech row, then the predictions of the draft and the token after it
        rows = [sot_index, *range(n_known - 1, len(seq))]
    tokens = torch.tensor([seq], device=model.device)
    logits = model.decode_step(tokens, cache, row.cross, st.qk, rows)[0]
    st.no_speech_prob = float(logits[0].float().softmax(-1)[model.tokens.no_speech])
    first = rows.index(n_known - 1)  # the logits row that predicts the first new token
    if row.word_timestamps:
        prefix_lp = logits[first - len(row.prefix) : first].log_softmax(-1)
        st.prefix_logprobs = [float(prefix_lp[i, t]) for i, t in enumerate(row.prefix)]
    # Row j predicts step `st.step + j` if the first j draft tokens are kept.
    picks = _pick(
        model,
        logits[first : first + len(row.draft) + 1],
        [st.step + j for j in range(len(row.draft) + 1)],
        suppress,
        begin,
    )
    kept = 0
    while True:
        _accept(model, row, st, picks[kept])
        if st.done or kept == len(row.draft) or st.next_token != row.draft[kept]:
            break
        kept += 1  # the draft token was right, and it has been fed already
    st.fed = n_known + kept
    if st.qk is not None:
        st.qk[0] = st.qk[0][:, : st.fed]  # the rejected draft positions are not inputs


def _pick(
    model: WhisperModel,
    logits: torch.Tensor,
    steps: list[int],
    suppress: torch.Tensor,
    begin: torch.Tensor,
) -> list[tuple[int, float, float]]:
    """Per logits row (n, V), predicting output step `steps[i]`: Whisper's greedy pick with
    its suppressed tokens (and, at step 0, those that cannot begin), as (token, its
    log-probability, the end token's log-probability). Scores in float32 whatever the model's
    dtype; one read back from the device for all rows."""
    scores = logits.to(torch.float32, copy=True)
    scores[:, suppress] = -torch.inf
    for i, step in enumerate(steps):
        if step == 0:
            scores[i, begin] = -torch.inf
    best = scores.argmax(-1)
    logprobs = scores.log_softmax(-1)
    picked = torch.stack(
        [
            best.to(torch.float64),
            logprobs.gather(1, best[:, None])[:, 0].double(),
            logprobs[:, model.tokens.eot].double(),
        ],
        dim=1,
    ).tolist()
    return [(int(t), lp, eot_lp) for t, lp, eot_lp in picked]


def _accept(
    model: WhisperModel, row: DecodeRow, st: _State, pick: tuple[int, float, float]
) -> None:
    """Take the row's next token from its `_pick`, or end the row."""
    tk = model.tokens
    token, lp, eot_lp = pick
    if st.step == len(row.prefix) + st.budget:  # out of room: the end token, whatever won
        token, lp = tk.eot, eot_lp
    st.sum_logprob += lp
    if token == tk.eot:
        st.done = True
        return
    st.out.append(token)
    st.logprobs.append(lp)
    excess = loop_excess(st.out[len(row.prefix) :], row.options.max_repeat_ngram)
    if excess:
        del st.out[-excess:]  # keep one copy of the looping n-gram
        del st.logprobs[-excess:]
        st.done = True
        return
    st.step += 1
    st.next_token = token


def _step(
    model: WhisperModel,
    tokens: torch.Tensor,
    cache: KVCache,
    lengths: torch.Tensor,
    cross_k: list[torch.Tensor],
    cross_v: list[torch.Tensor],
    enc_lens: torch.Tensor,
    states: list[_State],
) -> torch.Tensor:
    """One token per row (B, 1) at positions `lengths`; returns the logits (B, V)."""
    dec = model.decoder
    b = tokens.shape[0]
    rows = torch.arange(b, device=tokens.device)
    x = dec.embed_tokens(tokens) + dec.embed_positions.weight[lengths].unsqueeze(1)  # (B, 1, d)
    timed = [i for i, s in enumerate(states) if s.qk is not None and not s.done]
    step_qk: dict[int, list[torch.Tensor]] = {i: [] for i in timed}
    for i, layer in enumerate(dec.layers):
        h = layer.self_attn_layer_norm(x)
        q, k, v = model._attend(layer.self_attn, h, model.n_heads_dec)  # (B, H, 1, D)
        cache.k[i, rows, :, lengths] = k[:, :, 0]
        cache.v[i, rows, :, lengths] = v[:, :, 0]
        a = decode_attention(q, cache.k[i], cache.v[i], lengths + 1, scale=1.0)
        x = x + layer.self_attn.out_proj(a.transpose(1, 2).flatten(2))

        h = layer.encoder_attn_layer_norm(x)
        ea = layer.encoder_attn
        q = (ea.q_proj(h) * ea.scaling).view(b, 1, model.n_heads_dec, -1).transpose(1, 2)
        a = cross_attention(q, cross_k[i], cross_v[i], enc_lens, scale=1.0)
        if i in model.alignment_heads:
            heads = model.alignment_heads[i]
            for r in timed:
                ck = cross_k[i][r, heads, : int(enc_lens[r])]
                step_qk[r].append(q[r, heads] @ ck.transpose(-1, -2))  # (h, 1, S)
        x = x + ea.out_proj(a.transpose(1, 2).flatten(2))

        h = layer.final_layer_norm(x)
        x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
    for r in timed:
        qk = states[r].qk
        assert qk is not None
        qk.append(torch.cat(step_qk[r], dim=0))
    return model.logits(dec.layer_norm(x[:, 0]))


def _result(model: WhisperModel, row: DecodeRow, st: _State) -> DecodeResult:
    text = model.decode_tokens(st.out)
    words: tuple[WordTiming, ...] = ()
    if st.qk is not None and st.out:
        scores = st.prefix_logprobs + st.logprobs
        sot_len = len(row.start)
        words = _word_timings(model, st.qk, len(st.head), sot_len, st.out, scores, row.num_frames)
    return DecodeResult(
        tokens=tuple(st.out),
        text=text,
        avg_logprob=st.sum_logprob / (len(st.logprobs) + 1),  # decoded tokens and the end
        no_speech_prob=st.no_speech_prob,
        compression_ratio=compression_ratio(text),
        words=words,
        language=row.language,
        language_probability=row.language_probability,
    )


def _word_timings(
    model: WhisperModel,
    qk_steps: list[torch.Tensor],
    prompt_len: int,
    sot_len: int,
    tokens: list[int],
    logprobs: list[float],
    num_frames: int,
) -> tuple[WordTiming, ...]:
    # Row r of the stacked logits belongs to input position r; text token i is the input at
    # position prompt_len + i, which is where its own cross-attention alignment is read.
    qk = torch.cat(qk_steps, dim=1).float().cpu().numpy()  # (heads, positions, S)
    qk = qk[:, prompt_len - sot_len :]
    enc_frames = max(1, min(qk.shape[-1], (num_frames + 1) // 2))
    matrix = alignment_matrix(qk, enc_frames)
    matrix = matrix[sot_len : sot_len + len(tokens)]
    words, groups = split_words(tokens, model.decode_tokens)
    bounds = word_boundaries(matrix, groups, ENCODER_FRAME_SAMPLES)
    probs = np.exp(np.array(logprobs))
    result = []
    idx = 0
    for word, group, (s, e) in zip(words, groups, bounds, strict=True):
        p = float(probs[idx : idx + len(group)].mean())
        idx += len(group)
        result.append(WordTiming(word=word, start_sample=s, end_sample=e, probability=p))
    return tuple(result)
