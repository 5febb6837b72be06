"""What `min_first_ms` and `agreement` do to partial transcripts, on the held-out single utterances.

    python bench/partials.py [--corpus DIR] [--model tiny.en] [--groups G,...] [--limit N]
                             [--threads N] [--min-first-ms 300,600,...] [--agreement 1,2,...]

`SessionConfig.min_first_ms` is the audio an utterance needs, its VAD pre-roll included, before
its first partial decode; `SessionConfig.agreement` is the n of the LocalAgreement-n stabilizer,
whose committed prefix is a partial's `stable_text` and the forced decoder prefix of the next
partials. Each single utterance of the corpus (bench/corpus.py) is streamed through a fresh
`Session` once per (min_first_ms, agreement) setting, in 50 ms chunks with no pacing. Per file
group and setting, the markdown tables give:

- first caption p50/p95: audio seconds from the start of speech (the first voiced frame the
  VAD saw: the first `speech.started` plus the pre-roll) to the `end` of the first partial with
  words. It depends on the audio and the decodes only, not on the machine. "+ compute" adds the
  wall time of the `feed` call that returned that partial: when a live caption would appear on
  this machine, if the stream kept up until then;
- first words p50: how many words that first partial shows;
- first partial WER: its words without the last (which may be cut mid-word) against the
  reference's first words of the same count, averaged over the first partials of two or more
  words; first off: the share of first partials with no word among the reference's first words
  (as many as the partial's, plus two), the last word counting when one of them begins with it;
- flicker/utt: per utterance, the partials that take back a word shown by the partial before
  (a word other than its last that changes or disappears). Words are compared after
  `streamasr.textnorm.normalize`, so changes of case or punctuation do not count;
- stable share: words of `stable_text` over words of `text`, in each segment's last partial;
- stable errors/utt: per utterance, the word edits that turn each segment's last
  `stable_text` into a prefix of its final (the committed words the final takes back); stable
  wrong: the share of utterances with any;
- the WER of each segment's last partial and of the finals against the references;
- compute s/utt: wall seconds spent inside `feed`/`close` per utterance.

`--limit N` keeps the first N files of each group. The model is loaded once and warmed up with
one untimed stream; `--threads N` sets torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from corpus import DEFAULT_OUT, load_manifest
from transcribe import CHUNK

from streamasr import SAMPLE_RATE
from streamasr.audio.files import load_audio
from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.events import Event, SpeechStarted, TranscriptFinal, TranscriptPartial
from streamasr.models.base import AsrModel
from streamasr.models.loader import load_model
from streamasr.models.placement import add_placement_args
from streamasr.textnorm import normalize, wer, word_errors


@dataclass
class Run:
    """The events of one stream; each partial with the wall seconds of the call that made it."""

    speech_starts: list[int] = field(default_factory=list)
    partials: list[tuple[TranscriptPartial, float]] = field(default_factory=list)
    finals: list[TranscriptFinal] = field(default_factory=list)
    compute_s: float = 0.0

    def take(self, call: Callable[[], list[Event]]) -> None:
        before = time.perf_counter()
        events = call()
        spent = time.perf_counter() - before
        self.compute_s += spent
        for ev in events:
            if isinstance(ev, SpeechStarted):
                self.speech_starts.append(ev.sample)
            elif isinstance(ev, TranscriptPartial):
                self.partials.append((ev, spent))
            elif isinstance(ev, TranscriptFinal):
                self.finals.append(ev)


def record(model: AsrModel, audio: np.ndarray, config: SessionConfig) -> Run:
    """Feed `audio` through a fresh Session in 50 ms chunks, as fast as it goes."""
    session = LocalSession(model, config)
    run = Run()
    for start in range(0, len(audio), CHUNK):
        run.take(partial(session.feed, audio[start : start + CHUNK]))
    run.take(session.close)
    return run


@dataclass(frozen=True)
class Measured:
    """What the partials and finals of one file under one setting show."""

    ref: str
    first_s: float | None  # audio seconds from the start of speech to the first caption
    first_wall_s: float | None  # ... plus the wall time of the feed call that made it
    first_words: int | None
    first_wer: float | None  # None: no caption, or a one-word one
    first_off: bool | None
    flicker: int
    stable_words: int
    shown_words: int
    stable_errors: int
    last_partials: str
    finals: str
    compute_s: float


def prefix_errors(stable: list[str], final: list[str]) -> int:
    """Word edits that turn `stable` into a prefix of `final`."""
    return min(word_errors(final[:k], stable) for k in range(len(final) + 1))


def takes_back(before: list[str], after: list[str]) -> bool:
    """Whether `after` changes or drops a word of `before` other than its last."""
    keep = max(len(before) - 1, 0)
    return after[:keep] != before[:keep]


def first_caption_scores(words: list[str], ref: list[str]) -> tuple[float | None, bool]:
    """The first caption's WER without its last word, and whether it misses the reference."""
    k = len(words) - 1
    first_wer = word_errors(ref[:k], words[:k]) / k if k else None
    head = ref[: len(words) + 2]
    off = not set(words[:-1]) & set(head) and not any(r.startswith(words[-1]) for r in head)
    return first_wer, off


def measure(run: Run, ref: str, preroll: int) -> Measured:
    """Score one stream's events against the reference; `preroll`: the VAD's, in samples."""
    segments: dict[int, list[TranscriptPartial]] = {}
    for p, _ in run.partials:
        segments.setdefault(p.segment_id, []).append(p)
    finals = {f.segment_id: normalize(f.text) for f in run.finals}
    last = [ps[-1] for ps in segments.values()]
    stable = [normalize(p.stable_text) for p in last]
    first = next(((p, s) for p, s in run.partials if normalize(p.text)), None)
    first_s: float | None = None
    first_wall_s: float | None = None
    first_words: int | None = None
    first_wer: float | None = None
    first_off: bool | None = None
    if first is not None and run.speech_starts:
        first_s = (first[0].end_sample - run.speech_starts[0] - preroll) / SAMPLE_RATE
        first_wall_s = first_s + first[1]
        words = normalize(first[0].text)
        first_words = len(words)
        first_wer, first_off = first_caption_scores(words, normalize(ref))
    return Measured(
        ref=ref,
        first_s=first_s,
        first_wall_s=first_wall_s,
        first_words=first_words,
        first_wer=first_wer,
        first_off=first_off,
        flicker=sum(
            takes_back(normalize(a.text), normalize(b.text))
            for ps in segments.values()
            for a, b in pairwise(ps)
        ),
        stable_words=sum(len(s) for s in stable),
        shown_words=sum(len(normalize(p.text)) for p in last),
        stable_errors=sum(
            prefix_errors(s, finals.get(p.segment_id, []))
            for p, s in zip(last, stable, strict=True)
        ),
        last_partials=" ".join(p.text for p in last),
        finals=" ".join(f.text for f in run.finals),
        compute_s=run.compute_s,
    )


def quantiles(xs: list[float], q: tuple[int, ...]) -> list[str]:
    return [f"{np.percentile(xs, x):.2f}" if xs else "n/a" for x in q]


def row(setting: str, ms: list[Measured]) -> str:
    first_s = [m.first_s for m in ms if m.first_s is not None]
    first_wall_s = [m.first_wall_s for m in ms if m.first_wall_s is not None]
    first_words = [m.first_words for m in ms if m.first_words is not None]
    first_wer = [m.first_wer for m in ms if m.first_wer is not None]
    first_off = [m.first_off for m in ms if m.first_off is not None]
    shown = sum(m.shown_words for m in ms)
    cells = [
        setting,
        *quantiles(first_s, (50, 95)),
        *quantiles(first_wall_s, (50, 95)),
        f"{np.median(first_words):.0f}" if first_words else "n/a",
        f"{np.mean(first_wer):.1%}" if first_wer else "n/a",
        f"{np.mean(first_off):.1%}" if first_off else "n/a",
        f"{np.mean([m.flicker for m in ms]):.2f}",
        f"{sum(m.stable_words for m in ms) / shown:.0%}" if shown else "n/a",
        f"{np.mean([m.stable_errors for m in ms]):.2f}",
        f"{np.mean([m.stable_errors > 0 for m in ms]):.0%}",
        f"{wer([m.ref for m in ms], [m.last_partials for m in ms]):.1%}",
        f"{wer([m.ref for m in ms], [m.finals for m in ms]):.1%}",
        f"{np.mean([m.compute_s for m in ms]):.2f}",
    ]
    if len(first_s) < len(ms):
        cells[1] += f" ({len(ms) - len(first_s)} none)"
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| min_first_ms, agreement | first caption p50 s | p95 s | + compute p50 s | p95 s "
    "| first words p50 | first partial WER | first off | flicker/utt | stable share "
    "| stable errors/utt | stable wrong | WER last partials | WER finals | compute s/utt |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def select(entries: list[dict[str, Any]], groups: str | None, limit: int | None) -> list[Any]:
    """The single utterances of `groups` (comma-separated prefixes), the first `limit` of each."""
    prefixes = tuple(groups.split(",")) if groups else ("",)
    seen: dict[str, int] = {}
    chosen = []
    for e in entries:
        if e["kind"] != "single" or not e["group"].startswith(prefixes):
            continue
        seen[e["group"]] = seen.get(e["group"], 0) + 1
        if limit is None or seen[e["group"]] <= limit:
            chosen.append(e)
    return chosen


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT, help="corpus dir (built if missing)")
    p.add_argument("--model", default="tiny.en", help="tiny.en, a model dir or a hub id")
    p.add_argument("--groups", default=None, help="only these groups (comma-separated prefixes)")
    p.add_argument("--limit", type=int, default=None, help="only the first N files of each group")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--min-first-ms",
        type=ints,
        default=[0, 300, 600, 900, 1200],
        help="comma-separated values of SessionConfig.min_first_ms",
    )
    p.add_argument(
        "--agreement",
        type=ints,
        default=[1, 2, 3],
        help="comma-separated values of SessionConfig.agreement",
    )
    add_placement_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = {
        (first, n): SessionConfig(min_first_ms=first, agreement=n)
        for first in args.min_first_ms
        for n in args.agreement
    }
    entries = select(load_manifest(args.corpus), args.groups, args.limit)
    model = load_model(args.model, compute=args.compute, dtype=args.dtype)
    record(model, load_audio(args.corpus / entries[0]["file"])[: 3 * SAMPLE_RATE], SessionConfig())
    preroll = SessionConfig().vad.preroll_ms * SAMPLE_RATE // 1000

    results: dict[str, dict[tuple[int, int], list[Measured]]] = {}
    started = time.perf_counter()
    for e in entries:
        audio = load_audio(args.corpus / e["file"])
        by_setting = results.setdefault(e["group"], {})
        for key, config in configs.items():
            m = measure(record(model, audio, config), e["text"], preroll)
            by_setting.setdefault(key, []).append(m)
        print(f"{e['file']}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: {shlex.join(['python', *sys.argv])}")
    print(
        f"machine: nproc {os.cpu_count()}, usable cpus {len(os.sched_getaffinity(0))}, "
        f"torch threads {torch.get_num_threads()}, load average at end {load}; "
        f"model {args.model}, chunk 50 ms, no pacing, "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    default = (SessionConfig.min_first_ms, SessionConfig.agreement)
    results["all"] = {key: [m for r in results.values() for m in r[key]] for key in configs}
    for group, by_setting in results.items():
        files = len(next(iter(by_setting.values())))
        print(f"\n**{group}** ({files} files)\n\n{HEADER}")
        for key, ms in by_setting.items():
            name = f"{key[0]}, {key[1]}" + (" (default)" if key == default else "")
            print(row(name, ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
