"""Streaming against offline transcription on the held-out corpus (bench/corpus.py).

    python bench/transcribe.py [--corpus DIR] [--model tiny.en] [--speed 1|max] [--limit N]
                               [--threads N]

Each file is streamed through a `Session` in 50 ms chunks and also decoded by
`transcribe_offline`. Per file group (the single utterances, each long file) and overall, the
markdown table gives:

- audio seconds, and the real-time factor: wall seconds spent inside `Session.feed`/`close`
  over audio seconds (offline decoding is not counted);
- final latency p50/p95: wall time at which `feed`/`close` returned a `transcript.final`, minus
  the time at which a live source would have delivered the final's `end` sample (t0 + end /
  16000): it includes the VAD's end-of-speech wait, the final decode and any backlog;
- partial interval p50/p95: wall-time gaps between consecutive `transcript.partial` events of
  one segment;
- the WER of each segment's last partial (what a live caption showed just before the final),
  streamed and offline WER (`streamasr.textnorm`) and the streamed WER's relative difference
  from the offline one;
- defects: single utterances whose streamed finals, against the offline decode of the same
  file, are empty, truncated (at least max(3, 40%) of its words fewer) or doubled (as many
  more); in long files, each final against the reference sentences it overlaps in time, and
  sentences that no final overlaps (lost); and the finals marked `fallback`;

then the process's peak RSS. `--speed 1` paces the chunks in real time on an absolute schedule
(chunk k is fed at t0 + its end sample / 16000, so sleeps never accumulate drift); `--speed max`
feeds them as fast as possible, and the wall-clock columns read n/a. One untimed stream of the
first file warms the model up before measuring. `--threads N` sets torch's intra-op threads:
on a small shared machine, fewer threads than cores can be much faster than the default.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from corpus import DEFAULT_OUT, load_manifest

from streamasr import SAMPLE_RATE
from streamasr.audio.files import load_audio
from streamasr.config import ENCODERS, SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.engine.offline import transcribe_offline
from streamasr.events import Event, TranscriptFinal, TranscriptPartial
from streamasr.models.base import AsrModel
from streamasr.models.loader import load_model
from streamasr.models.placement import add_placement_args
from streamasr.textnorm import normalize, wer

CHUNK = SAMPLE_RATE * 50 // 1000  # 50 ms
DEFECTS = ("empty", "truncated", "doubled", "lost", "fallback")


@dataclass
class Stats:
    """Measurements of one file, or pooled over a group of files."""

    audio_s: float = 0.0
    compute_s: float = 0.0
    final_latency_s: list[float] = field(default_factory=list)
    partial_gap_s: list[float] = field(default_factory=list)
    max_lag_s: float = 0.0  # how far a feed ran behind the real-time schedule, at worst
    refs: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # each segment's last partial, joined
    offline: list[str] = field(default_factory=list)
    finals: list[TranscriptFinal] = field(default_factory=list)
    defects: Counter[str] = field(default_factory=Counter)

    def add(self, other: Stats) -> None:
        self.audio_s += other.audio_s
        self.compute_s += other.compute_s
        self.final_latency_s += other.final_latency_s
        self.partial_gap_s += other.partial_gap_s
        self.max_lag_s = max(self.max_lag_s, other.max_lag_s)
        self.refs += other.refs
        self.streamed += other.streamed
        self.partial += other.partial
        self.offline += other.offline
        self.defects += other.defects


def stream(
    model: AsrModel, audio: np.ndarray, paced: bool, config: SessionConfig | None = None
) -> Stats:
    """Feed `audio` through a fresh Session in 50 ms chunks; time it and collect the finals."""
    session = LocalSession(model, config)
    st = Stats(audio_s=len(audio) / SAMPLE_RATE)
    last_partial: dict[int, float] = {}  # segment_id -> wall time of its latest partial
    finals: list[str] = []
    partials: dict[int, str] = {}  # segment_id -> its latest partial text

    def handle(events: list[Event], now: float) -> None:
        for ev in events:
            if isinstance(ev, TranscriptFinal):
                finals.append(ev.text)
                st.finals.append(ev)
                st.final_latency_s.append(now - (t0 + ev.end_sample / SAMPLE_RATE))
            elif isinstance(ev, TranscriptPartial):
                if ev.segment_id in last_partial:
                    st.partial_gap_s.append(now - last_partial[ev.segment_id])
                last_partial[ev.segment_id] = now
                partials[ev.segment_id] = ev.text

    t0 = time.perf_counter()
    for start in range(0, len(audio), CHUNK):
        end = min(start + CHUNK, len(audio))
        if paced:
            delay = t0 + end / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                st.max_lag_s = max(st.max_lag_s, -delay)
        fed = time.perf_counter()
        events = session.feed(audio[start:end])
        now = time.perf_counter()
        st.compute_s += now - fed
        handle(events, now)
    before = time.perf_counter()
    events = session.close()
    now = time.perf_counter()
    st.compute_s += now - before
    handle(events, now)
    st.streamed.append(" ".join(finals))
    st.partial.append(" ".join(partials[k] for k in sorted(partials)))
    return st


def defect(got: str, want: str) -> str | None:
    """How `got` falls short of `want`: "empty", "truncated", "doubled" or None.

    Doubled: at least max(3, 40%) more words than `want`, and a run of three words said more
    often than `want` says it (the sentence, or part of it, again). More words without a
    repeat are misheard words, which the WER counts.
    """
    g, w = normalize(got), normalize(want)
    margin = max(3, 0.4 * len(w))
    if w and not g:
        return "empty"
    if len(w) - len(g) >= margin:
        return "truncated"
    if len(g) - len(w) >= margin and _repeats(g, w):
        return "doubled"
    return None


def _repeats(got: list[str], want: list[str], n: int = 3) -> bool:
    """`got` holds a run of `n` words more than once, and more often than `want` does."""
    said, meant = Counter(_ngrams(got, n)), Counter(_ngrams(want, n))
    return any(count > max(1, meant[gram]) for gram, count in said.items())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def count_defects(st: Stats, entry: dict[str, Any]) -> None:
    """Single file: streamed against offline text. Long file: each final against the reference
    sentences it overlaps in time, and the sentences no final overlaps."""
    st.defects["fallback"] += sum(1 for f in st.finals if getattr(f, "fallback", False))
    if entry["kind"] == "single":
        kind = defect(st.streamed[0], st.offline[0])
        if kind:
            st.defects[kind] += 1
        return
    covered: set[int] = set()
    for f in st.finals:
        start, end = f.start_sample / SAMPLE_RATE, f.end_sample / SAMPLE_RATE
        hit = [i for i, s in enumerate(entry["sentences"]) if s["start"] < end and start < s["end"]]
        covered.update(hit)
        kind = defect(f.text, " ".join(entry["sentences"][i]["text"] for i in hit))
        if kind:
            st.defects[kind] += 1
    st.defects["lost"] += len(entry["sentences"]) - len(covered)


def percentile(xs: list[float], q: float, paced: bool) -> str:
    return f"{np.percentile(xs, q):.2f}" if paced and xs else "n/a"


def row(name: str, files: int, st: Stats, paced: bool) -> str:
    w_stream, w_off = wer(st.refs, st.streamed), wer(st.refs, st.offline)
    rel = "+0%" if w_stream == w_off else "inf"  # the cases where offline WER is 0
    if w_off > 0:
        rel = f"{(w_stream - w_off) / w_off:+.0%}"
    cells = [
        name,
        str(files),
        f"{st.audio_s:.1f}",
        f"{st.compute_s / st.audio_s:.3f}",
        percentile(st.final_latency_s, 50, paced),
        percentile(st.final_latency_s, 95, paced),
        percentile(st.partial_gap_s, 50, paced),
        percentile(st.partial_gap_s, 95, paced),
        f"{wer(st.refs, st.partial):.1%}" if any(st.partial) else "n/a",
        f"{w_stream:.1%}",
        f"{w_off:.1%}",
        rel,
        " ".join(f"{k} {st.defects[k]}" for k in DEFECTS if st.defects[k]) or "none",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| group | files | audio s | RTF | final lat p50 s | final lat p95 s | partial gap p50 s "
    "| partial gap p95 s | WER last partials | WER stream | WER offline | stream vs offline "
    "| defects |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="corpus dir (built if missing)")
    p.add_argument("--model", default="tiny.en", help="tiny.en, a model dir or a hub id")
    p.add_argument(
        "--speed", choices=["1", "max"], default="1", help="1: real time; max: no pacing"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N manifest entries")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    p.add_argument(
        "--final-window", choices=["utterance", "full"], default=SessionConfig.final_window
    )
    p.add_argument(
        "--window-pad-ms",
        type=int,
        default=SessionConfig.window_pad_ms,
        help="silence after the utterance in partials",
    )
    p.add_argument(
        "--final-pad-ms",
        type=int,
        default=SessionConfig.final_pad_ms,
        help="silence after the utterance in finals",
    )
    p.add_argument("--only", default=None, help="only manifest entries whose file contains this")
    p.add_argument("--groups", default=None, help="only these groups (comma-separated prefixes)")
    p.add_argument("--encoder", choices=list(ENCODERS), default=SessionConfig.encoder)
    p.add_argument("--chunk-ms", type=int, default=1000, help="chunked: commit block")
    p.add_argument("--lookahead-ms", type=int, default=500, help="chunked: right context")
    p.add_argument(
        "--no-polish", action="store_true", help="chunked: finals from the cached states too"
    )
    p.add_argument(
        "--no-partials",
        action="store_true",
        help="finals only, as meeting transcription runs (the partial columns read n/a)",
    )
    add_placement_args(p)
    args = p.parse_args(argv)
    config = SessionConfig(
        partials=not args.no_partials,
        final_window=args.final_window,
        window_pad_ms=args.window_pad_ms,
        final_pad_ms=args.final_pad_ms,
        encoder=args.encoder,
        chunk_ms=args.chunk_ms,
        lookahead_ms=args.lookahead_ms,
        polish_final=not args.no_polish,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paced = args.speed == "1"

    entries = load_manifest(args.corpus)
    entries = [e for e in entries if args.only is None or args.only in e["file"]]
    if args.groups:
        entries = [e for e in entries if e["group"].startswith(tuple(args.groups.split(",")))]
    entries = entries[: args.limit]
    model = load_model(args.model, compute=args.compute, dtype=args.dtype)
    stream(model, load_audio(args.corpus / entries[0]["file"])[: 3 * SAMPLE_RATE], paced=False)

    groups: dict[str, Stats] = {}
    counts: dict[str, int] = {}
    for e in entries:
        audio = load_audio(args.corpus / e["file"])
        st = stream(model, audio, paced, config)
        st.refs.append(e["text"])
        st.offline.append(" ".join(f.text for f in transcribe_offline(model, audio)))
        count_defects(st, e)
        groups.setdefault(e["group"], Stats()).add(st)
        counts[e["group"]] = counts.get(e["group"], 0) + 1
        print(
            f"{e['file']}: {st.audio_s:.1f} s, RTF {st.compute_s / st.audio_s:.3f}, "
            f"WER stream {wer(st.refs, st.streamed):.1%} offline {wer(st.refs, st.offline):.1%}"
            f"\n  stream:  {st.streamed[0]}\n  offline: {st.offline[0]}",
            file=sys.stderr,
        )

    overall = Stats()
    for st in groups.values():
        overall.add(st)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(
        f"machine: nproc {os.cpu_count()}, usable cpus {len(os.sched_getaffinity(0))}, "
        f"torch threads {torch.get_num_threads()}, load average at end {load}; "
        f"model {args.model}, chunk 50 ms, speed {args.speed}\n"
    )
    print(HEADER)
    for name, st in groups.items():
        print(row(name, counts[name], st, paced))
    print(row("**overall**", len(entries), overall, paced))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"\npeak RSS: {peak_mib:.0f} MiB")
    if paced:
        print(f"worst lag of a feed behind the real-time schedule: {overall.max_lag_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
