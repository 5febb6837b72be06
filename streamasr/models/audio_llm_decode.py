"""Greedy decoding of audio-LLM prompts from different streams, in shared decoder calls.

Each row is a prompt in embeddings, optionally after a prefix whose keys and values a stream
keeps in its own one-row cache (the chat prompt up to its last committed audio token), then a
forced prefix and a draft. Rows are prefilled one at a time (each is a matrix product already);
then every generation step feeds one token per row at its own position (`CausalLm.step`, whose
attention is `decode_attention` over the grouped KV heads of a ragged batch). In `greedy_rows`
a finished row rides along until the last one ends (a step's cost is the weight reads, which
the rows share); in `LlmStepBatch` (continuous batching) it leaves at once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from streamasr.config import DecodeConfig
from streamasr.engine.kv_cache import KVCache
from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.models.causal_lm import CausalLm
from streamasr.models.guards import compression_ratio, loop_excess
from streamasr.models.slots import SlotBatch


@dataclass
class LlmRow:
    """One prompt to decode greedily."""

    head: torch.Tensor  # (T, d) prompt embeddings after the cached prefix, T >= 1
    num_frames: int  # mel frames of real audio: they bound the token budget
    options: DecodeConfig
    prefix: list[int]  # forced first tokens of the transcript, part of the result
    draft: list[int] = field(default_factory=list)  # guessed tokens after the prefix
    cache: KVCache | None = None  # one-row cache holding the prompt before `head`, or None


@dataclass
class _State:
    """The greedy loop's state of one row."""

    budget: int  # tokens that may be chosen after the prefix
    out: list[int]
    sum_logprob: float = 0.0
    chosen: int = 0
    done: bool = False
    next_token: int = 0
    fed: int = 0  # cache positions holding valid keys and values


def greedy_rows(
    lm: CausalLm,
    rows: list[LlmRow],
    eos_ids: Collection[int],
    detokenize: Callable[[list[int]], str],
) -> list[DecodeResult]:
    """Greedy decoding of every row; row i's result equals decoding it alone.

    A row's own cache is only read: its length is the same afterwards. A single row whose
    cache has room decodes inside it, past its length, and trims it back; other rows' cached
    prefixes are copied into one batch cache.
    """
    drafts = [_usable_draft(lm, r, _budget(lm, r)) for r in rows]
    sizes = [
        _cached(r) + r.head.shape[0] + len(r.prefix) + len(d)
        for r, d in zip(rows, drafts, strict=True)
    ]
    need = [n + _budget(lm, r) + 2 for n, r in zip(sizes, rows, strict=True)]
    first = rows[0].cache
    own = len(rows) == 1 and first is not None and first.max_len >= need[0]
    cache = first if own and first is not None else lm.new_cache(max(need), len(rows))
    keep = cache.length
    try:
        states = [
            _prefill(lm, r, d, _row_cache(cache, b, r, own), eos_ids)
            for b, (r, d) in enumerate(zip(rows, drafts, strict=True))
        ]
        while not all(s.done for s in states):  # a done row feeds its last token again
            _step(lm, rows, states, cache, eos_ids)
    finally:
        cache.trim(keep)
    return [_result(st, detokenize) for st in states]


def _cached(row: LlmRow) -> int:
    return row.cache.length if row.cache is not None else 0


def _budget(lm: CausalLm, row: LlmRow) -> int:
    by_length = 8 + int(row.options.max_tokens_per_second * row.num_frames / 100)
    room = lm.max_positions - _cached(row) - row.head.shape[0] - len(row.prefix)
    return max(0, min(row.options.max_new_tokens, by_length, room))


def _usable_draft(lm: CausalLm, row: LlmRow, budget: int) -> list[int]:
    """The draft tokens worth feeding: those whose prediction could still be chosen."""
    vocab = lm.vocab_limit or lm.base.embed_tokens.num_embeddings
    draft = row.draft[: max(budget - 1, 0)]
    bad = [i for i, t in enumerate(draft) if not 0 <= t < vocab]
    return draft[: bad[0]] if bad else list(draft)


def _row_cache(cache: KVCache, b: int, row: LlmRow, own: bool) -> KVCache:
    """Row b's one-row cache, holding its cached prompt prefix."""
    if own:
        return cache
    view = cache.row(b)
    if row.cache is not None and row.cache.length:
        n = row.cache.length
        view.k[:, :, :, :n] = row.cache.k[:, :, :, :n]
        view.v[:, :, :, :n] = row.cache.v[:, :, :, :n]
        view.advance(n)
    return view


def _prefill(
    lm: CausalLm, row: LlmRow, draft: list[int], cache: KVCache, eos_ids: Collection[int]
) -> _State:
    """Feed head, prefix and draft in one pass; choose the first token.

    The draft is verified as speculative decoding does: each draft token is kept while it is
    the token greedy decoding picks at its position, read off this one pass, so the result is
    what step-by-step decoding gives, in fewer sequential steps.
    """
    if row.head.shape[0] == 0:
        raise ValueError("an audio-LLM prompt row needs at least one position after its cache")
    st = _State(budget=_budget(lm, row), out=list(row.prefix))
    x = torch.cat([row.head.to(lm.dtype), lm.embed([*row.prefix, *draft])])  # (T, d)
    logits = lm.forward(x[None], cache, logits_from=row.head.shape[0] - 1)[0]
    lp = logits.float().log_softmax(-1)  # (1 + len(prefix) + len(draft), V)
    n = len(row.prefix)
    forced = torch.tensor(row.prefix, dtype=torch.long, device=lp.device)
    st.sum_logprob = float(lp[:n].gather(1, forced[:, None]).sum()) if n else 0.0
    picks = _pick(lp[n:])
    kept = 0
    while True:
        _choose(st, picks[kept], row, eos_ids)
        if st.done or kept == len(draft) or st.next_token != draft[kept]:
            break
        kept += 1  # the draft token was right, and it has been fed already
    st.fed = cache.length - len(draft) + kept
    return st


def _pick(lp: torch.Tensor) -> list[tuple[int, float]]:
    """Per row of log-probabilities (n, V): the greedy token and its log-probability, read
    back from the device once for all rows."""
    best = lp.argmax(-1)
    picked = torch.stack([best.double(), lp.gather(1, best[:, None])[:, 0].double()], 1)
    return [(int(t), p) for t, p in picked.tolist()]


def _choose(st: _State, pick: tuple[int, float], row: LlmRow, eos_ids: Collection[int]) -> None:
    """Take the row's next token from its `_pick`, or end the row."""
    if st.chosen == st.budget:
        st.done = True
        return
    token, token_lp = pick
    st.sum_logprob += token_lp
    st.chosen += 1
    if token in eos_ids:
        st.done = True
        return
    st.out.append(token)
    excess = loop_excess(st.out[len(row.prefix) :], row.options.max_repeat_ngram)
    if excess:
        del st.out[-excess:]  # keep one copy of the looping n-gram
        st.done = True
        return
    st.done = st.chosen == st.budget  # its successor would never be read: do not feed it
    st.next_token = token


def _step(
    lm: CausalLm,
    rows: list[LlmRow],
    states: list[_State],
    cache: KVCache,
    eos_ids: Collection[int],
) -> None:
    """Feed every row's next token at its own position; choose the unfinished rows' next."""
    lengths = torch.tensor([s.fed for s in states], device=lm.device)  # (B,)
    tokens = [s.next_token for s in states]
    logits = lm.step(lm.embed(tokens)[:, None], cache, lengths)  # (B, V)
    picks = _pick(logits.float().log_softmax(-1))
    for row, st, pick in zip(rows, states, picks, strict=True):
        if not st.done:
            st.fed += 1
            _choose(st, pick, row, eos_ids)


class LlmStepBatch(SlotBatch[LlmRow, _State]):
    """Greedy decodes of audio-LLM prompts from different streams, joining and leaving
    between steps (continuous batching).

    A row joins with its prefill: its stream's cached prompt prefix is copied into a free slot
    of one batch cache, then head, forced prefix and draft are fed in one pass. Every `step`
    feeds one token to each row at its own position; a row leaves as soon as it ends. The
    batch cache grows (by doubling) when a row needs more positions than it has.
    """

    def __init__(
        self,
        lm: CausalLm,
        capacity: int,
        eos_ids: Collection[int],
        detokenize: Callable[[list[int]], str],
        rows_of: Callable[[list[TranscribeRequest]], list[LlmRow]],
    ) -> None:
        super().__init__(capacity)
        self.lm, self.eos_ids, self.detokenize, self.rows_of = lm, eos_ids, detokenize, rows_of
        self.cache: KVCache | None = None

    def encode(self, requests: list[TranscribeRequest]) -> list[LlmRow]:
        return self.rows_of(requests)

    @torch.inference_mode()
    def add_row(self, row: LlmRow, tag: Any) -> DecodeResult | None:
        b = self._free_slot()
        budget = _budget(self.lm, row)
        draft = _usable_draft(self.lm, row, budget)
        self._reserve(_cached(row) + row.head.shape[0] + len(row.prefix) + len(draft) + budget + 2)
        assert self.cache is not None
        st = _prefill(self.lm, row, draft, _row_cache(self.cache, b, row, False), self.eos_ids)
        if st.done:
            return _result(st, self.detokenize)
        self._join(row, st, tag)
        return None

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, DecodeResult]]:
        if not self.size or self.cache is None:
            return []
        _step(self.lm, self.rows, self.states, self.cache.rows(self.size), self.eos_ids)
        return self._leave(lambda _, st: _result(st, self.detokenize))

    def _reserve(self, positions: int) -> None:
        if self.cache is not None and self.cache.max_len >= positions:
            return
        old = self.cache
        grown = self.lm.new_cache(max(positions, 2 * old.max_len if old else 0), self.capacity)
        if old is not None and self.size:
            n, fed = self.size, max(s.fed for s in self.states)
            grown.k[:, :n, :, :fed] = old.k[:, :n, :, :fed]
            grown.v[:, :n, :, :fed] = old.v[:, :n, :, :fed]
        self.cache = grown

    def _move(self, src: int, dst: int) -> None:
        assert self.cache is not None
        fed = self.states[src].fed
        self.cache.k[:, dst, :, :fed] = self.cache.k[:, src, :, :fed]
        self.cache.v[:, dst, :, :fed] = self.cache.v[:, src, :, :fed]


def _result(st: _State, detokenize: Callable[[list[int]], str]) -> DecodeResult:
    text = detokenize(st.out)
    return DecodeResult(
        tokens=tuple(st.out),
        text=text,
        avg_logprob=st.sum_logprob / (len(st.out) + 1),
        no_speech_prob=0.0,  # these models have no no-speech token
        compression_ratio=compression_ratio(text),
    )
