"""Slide terms as context biasing (`streamasr meeting --slides`): a talk full of rare names, its
slides read by OCR, recorded as one meeting.

    python bench/slides.py [--voice piper|espeak] [--model tiny.en] [--threads N]
                           [--conditions a,b] [--show]

The meeting: the 40 sentences of `bench/biasing_texts.py` in order (78 target terms: names from
many cultures, places, drugs, software), after 1 s of silence and with 1.2 s of silence after
each, said by Piper's en_US-joe-medium (`--voice piper`, the clips of `bench/biasing.py`, cached
under `bench/.corpus/biasing/v1/`) or by espeak-ng en-us at 160 wpm (`--voice espeak`, cached
under `bench/.corpus/slides/v1/espeak/`). It is a talk of 10 slides, one per 4 sentences: slide
k has the title "Part k" and one bullet per target term of its sentences, folded to ASCII
("Quinones" for "Quiñones": Pillow's built-in font, which `tests/meeting/slide_deck.py` renders
with, has no glyphs for diacritics), on a 1280x800 image (nine bullets do not fit on 720 rows).
Each is shown 0.5 s before its first sentence starts, as a replay folder names it
(`0012.50-part2.png`).

Per condition (`--conditions`, default all), the whole meeting is streamed as one stream in
50 ms chunks with no pacing through `MeetingRecorder` around a fresh
`LocalSession(model, SessionConfig(partials=False))`, wired as `streamasr meeting --input
--slides` wires it: `ReplaySlides` offers each slide when the audio reaches its time,
`SlideReader(TesseractOcr(), extract_terms with tokenizer_rarity)` reads it (the replay waits
for the OCR), and `SlideTerms(TermWindow(window_s, max_terms))` steers the session with the
terms of the slides shown in the last `window_s`, the most recent slide's first:

- `none`: no slides at all (no reader: what `streamasr meeting` does without `--slides`);
- `terms=N`: the slides, at most N terms, window 300 s (N in 0, 4, 8, 16, 24, 48); `terms=0`
  reads and files the slides but biases with nothing, so it must give `none`'s text (a note
  is printed when it does not);
- `terms=24@60s`: at most 24 terms of the slides of the last 60 s.

The meeting is 196 s long (Piper; espeak-ng 206 s), so a 300 s window never lets a slide go:
the bound on the number of terms is what decides. A slide holds 7 to 9 terms, so 8 is about the
current slide, 24 about the last three, 48 about the last six (and more bias tokens than
`DecodeConfig.max_bias_tokens`, 159, keeps: the session cuts the tail, the oldest slides').

Per condition, the table gives (over the whole meeting, the finals' text joined):

- bias tok/decode (cut): mean tokens of bias in the decode requests the session made, and
  mean tokens cut off beyond `max_bias_tokens` (0 with no terms);
- term err: target-term occurrences of the meeting's reference not found in the normalised
  transcript (`textnorm.normalize`: lowercase, punctuation dropped) as the same run of words,
  counted per term over the whole meeting (said n times, found m: max(0, n - m) missed); a term
  of several words counts once. "folded" compares with diacritics removed too (what the ASCII
  slides can teach: "Quinones" for "Quiñones"). `biasing.Tally` with the whole glossary as the
  targets of one long "sentence";
- rest WER: word errors of the non-target words over their number, `biasing.py`'s slot method
  over the whole reference: each target is a slot that matches any run of hypothesis words at
  no cost;
- WER: all words, `textnorm.wer`'s word errors over the reference's words;
- halluc. (words): glossary terms in the transcript more often than in the reference, summed
  over the terms; "words": likewise for the words of at least four letters of the glossary's
  terms (a part of a name said where another was);
- compute s/s: wall seconds inside the session's calls (feed, steer, close) over the meeting's
  seconds, `--threads` torch threads (default 1), after one untimed warm-up stream. The OCR
  is not in it: in a replay the audio waits for it, live it runs beside the audio, niced;
- OCR s/slide: mean wall seconds of tesseract per slide (`ocr_s` of the slide records);
- OCR terms: the share of the slides' (folded) target terms that are exactly among the terms
  extracted from their OCR text, the ceiling of what the biasing can give.

Below the table, each slide's extracted terms beside its true ones, for `terms=24` (the default
of `--slide-terms`; else the first condition with slides): what the OCR and the term extraction
missed, and what they added. `--show` prints each condition's transcript.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from biasing import GLOSSARY, Tally, clips, fold
from biasing_texts import SENTENCES
from corpus import espeak, silence
from languages import stream as stream_finals

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.events import Event
from streamasr.meeting.ocr import TesseractOcr
from streamasr.meeting.recorder import MeetingRecorder
from streamasr.meeting.slide_sources import ReplaySlides
from streamasr.meeting.slides import SlideReader
from streamasr.meeting.terms import SlideTerms, TermWindow, extract_terms, tokenizer_rarity
from streamasr.models.loader import load_model

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.append(str(TESTS / "meeting"))  # appended: the repo's root must not shadow packages
from slide_deck import render_slide  # noqa: E402

VERSION = 1  # bump when the texts or the espeak voice change: the cache is rebuilt
CACHE = Path(__file__).resolve().parent / ".corpus" / "slides" / f"v{VERSION}"
CHUNK = 800  # 50 ms
LEAD_S, GAP_S, AHEAD_S = 1.0, 1.2, 0.5  # silence first, between sentences; a slide's lead
PER_SLIDE = 4  # sentences
SLIDE_SIZE = (1280, 800)
ESPEAK_VOICE, ESPEAK_WPM = "en-us", 160

CONDITIONS: dict[str, TermWindow | None] = {
    "none": None,
    **{f"terms={n}": TermWindow(300.0, n) for n in (0, 4, 8, 16, 24, 48)},
    "terms=24@60s": TermWindow(60.0, 24),
}
SHOWN = "terms=24"  # whose slides are listed below the table


def ascii_term(term: str) -> str:
    """`term` as the slide shows it: diacritics removed, case kept."""
    return " ".join(fold(term.split()))


@dataclass
class Meeting:
    """The talk's audio, its reference text, and its slides (title, terms, second shown)."""

    audio: np.ndarray
    text: str
    slides: list[tuple[str, tuple[str, ...], float]]


def espeak_clips() -> list[np.ndarray]:
    """The sentences said by espeak-ng, built into the cache on the first run."""
    folder = CACHE / "espeak"
    manifest = folder / "manifest.json"
    texts = [text for text, _ in SENTENCES]
    if not manifest.exists() or json.loads(manifest.read_text()) != texts:
        print(f"synthesizing {len(texts)} sentences into {folder}", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            say = espeak(ESPEAK_VOICE, ESPEAK_WPM, Path(tmp))
            for i, text in enumerate(texts):
                sf.write(folder / f"{i:03d}.wav", say(text).audio, SAMPLE_RATE, subtype="FLOAT")
        manifest.write_text(json.dumps(texts, ensure_ascii=False, indent=1))
    return [sf.read(folder / f"{i:03d}.wav", dtype="float32")[0] for i in range(len(texts))]


def build_meeting(audio: list[np.ndarray]) -> Meeting:
    """The sentences in order with their silences, and a slide per `PER_SLIDE` sentences."""
    pieces = [silence(LEAD_S)]
    at = LEAD_S
    slides = []
    for i, ((_, own), x) in enumerate(zip(SENTENCES, audio, strict=True)):
        if i % PER_SLIDE == 0:
            slides.append((f"Part {i // PER_SLIDE + 1}", (), at - AHEAD_S))
        title, terms, shown = slides[-1]
        slides[-1] = (title, terms + own, shown)
        pieces += [x, silence(GAP_S)]
        at += (len(x) + len(pieces[-1])) / SAMPLE_RATE
    text = " ".join(text for text, _ in SENTENCES)
    return Meeting(np.concatenate(pieces), text, slides)


def write_deck(meeting: Meeting, folder: Path) -> None:
    """The slides as a replay folder: PNGs named by the second they show."""
    for k, (title, terms, shown) in enumerate(meeting.slides):
        png = render_slide(title, [ascii_term(t) for t in terms], SLIDE_SIZE)
        (folder / f"{shown:07.2f}-part{k + 1}.png").write_bytes(png)


class Timed:
    """A `LocalSession` whose calls are timed and whose decode requests' bias is noted."""

    def __init__(self, session: LocalSession) -> None:
        self.inner = session
        self.spent = 0.0
        self.bias: list[int] = []  # tokens of bias of each decode request
        self.cut: list[int] = []  # tokens cut off then
        inner = session.session
        request = inner._request

        def noted(*args: Any, **kwargs: Any) -> Any:
            made = request(*args, **kwargs)
            self.bias.append(len(made.bias))
            self.cut.append(inner.bias_cut)
            return made

        inner._request = noted  # type: ignore[method-assign]

    @property
    def position(self) -> int:
        return self.inner.position

    def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.spent += time.perf_counter() - t0

    def feed(self, samples: np.ndarray) -> list[Event]:
        result: list[Event] = self._timed(self.inner.feed, samples)
        return result

    def steer(self, keywords: tuple[str, ...]) -> None:
        self._timed(self.inner.steer, keywords)

    def flush(self) -> list[Event]:
        result: list[Event] = self._timed(self.inner.flush)
        return result

    def close(self) -> list[Event]:
        result: list[Event] = self._timed(self.inner.close)
        return result


@dataclass
class Result:
    """One condition's meeting: the counts, the transcript, the slide records."""

    tally: Tally
    hyp: str
    bias: list[int]
    cut: list[int]
    audio_s: float
    spent_s: float
    slides: list[dict[str, Any]] = field(default_factory=list)
    ocr_terms: int = 0  # slide target terms among the extracted ones
    all_terms: int = 0


def run(model: Any, name: str, meeting: Meeting, deck: Path) -> Result:
    """One condition: the meeting recorded as `streamasr meeting --input --slides` does."""
    window = CONDITIONS[name]
    session = Timed(LocalSession(model, SessionConfig(partials=False)))
    records: list[dict[str, Any]] = []
    reader = replay = None
    if window is not None:
        rare = tokenizer_rarity(model.encode_text)
        warn = records.append
        reader = SlideReader(
            TesseractOcr(),
            lambda text: extract_terms(text, rare),
            lambda message: warn({"type": "warning", "message": message}),
        )
        replay = ReplaySlides(deck)
    with tempfile.TemporaryDirectory() as out:
        recorder = MeetingRecorder(
            session, Path(out), records.append, None, reader, SlideTerms(window), replay=replay
        )
        try:
            if reader is not None:
                recorder.open_meeting()  # as the CLI: a slide may show before anyone speaks
            for i in range(0, len(meeting.audio), CHUNK):
                recorder.feed(meeting.audio[i : i + CHUNK])
            recorder.close()
        finally:
            if reader is not None:
                reader.close()
    for r in records:
        if r["type"] == "warning":
            print(f"\n{name}: warning: {r['message']}", file=sys.stderr)
    hyp = " ".join(r["text"] for r in records if r["type"] == "transcript.final")
    tally = Tally()
    tally.add(meeting.text, hyp, GLOSSARY)
    result = Result(
        tally,
        hyp,
        session.bias,
        session.cut,
        len(meeting.audio) / SAMPLE_RATE,
        session.spent,
        [r for r in records if r["type"] == "slide"],
    )
    if result.slides and len(result.slides) != len(meeting.slides):
        print(
            f"\n{name}: {len(result.slides)} slides read of {len(meeting.slides)}",
            file=sys.stderr,
        )
    for read, (_, terms, _) in zip(result.slides, meeting.slides, strict=False):
        result.all_terms += len(terms)
        result.ocr_terms += sum(ascii_term(t) in read["terms"] for t in terms)
    return result


def pct(n: int, d: int) -> str:
    return f"{n / d:.1%}" if d else "-"


def table(results: dict[str, Result], model_name: str) -> str:
    out = [
        "| condition | bias tok/decode (cut) | term err | term err (folded) | rest WER | WER | "
        f"halluc. (words) | compute s/s ({model_name}) | OCR s/slide | OCR terms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in results.items():
        t = r.tally
        bias = f"{np.mean(r.bias):.0f} ({np.mean(r.cut):.0f})" if r.bias else "-"
        ocr_s = f"{np.mean([s['ocr_s'] for s in r.slides]):.2f}" if r.slides else "-"
        ocr = f"{pct(r.ocr_terms, r.all_terms)} ({r.ocr_terms}/{r.all_terms})" if r.slides else "-"
        out.append(
            f"| {name} | {bias} | {pct(t.missed, t.terms)} ({t.missed}/{t.terms}) | "
            f"{pct(t.missed_folded, t.terms)} | {pct(t.rest_err, t.rest_words)} | "
            f"{pct(t.word_err, t.words)} | {t.hallucinated} ({t.hallucinated_words}) | "
            f"{r.spent_s / r.audio_s:.3f} | {ocr_s} | {ocr} |"
        )
    return "\n".join(out)


def slide_listing(name: str, result: Result, meeting: Meeting) -> str:
    """Each slide's extracted terms beside its true (folded) ones."""
    out = [f"\nSlides read in `{name}` (true terms; extracted: missed -, added +):\n"]
    for read, (title, terms, shown) in zip(result.slides, meeting.slides, strict=False):
        true = [ascii_term(t) for t in terms]
        got = list(read["terms"])
        missed = [t for t in true if t not in got]
        added = [t for t in got if t not in true]
        marks = [f"-{t}" for t in missed] + [f"+{t}" for t in added]
        out.append(
            f"- {title} at {shown:.2f} s, OCR {read['ocr_s']:.2f} s: {', '.join(true)}"
            f"{'  →  ' + ', '.join(marks) if marks else '  (all exact)'}"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voice", choices=["piper", "espeak"], default="piper")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--show", action="store_true", help="print each condition's transcript")
    args = ap.parse_args()
    names = args.conditions.split(",")
    if unknown := set(names) - set(CONDITIONS):
        ap.error(f"unknown conditions {sorted(unknown)}; known: {', '.join(CONDITIONS)}")
    torch.set_num_threads(args.threads)
    audio = clips() if args.voice == "piper" else espeak_clips()
    meeting = build_meeting(audio)
    model = load_model(args.model)
    stream_finals(model, np.concatenate([silence(0.5), audio[0], silence(1.0)]))  # warm-up
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as deck:
        write_deck(meeting, Path(deck))
        for name in names:
            t0 = time.perf_counter()
            results[name] = run(model, name, meeting, Path(deck))
            print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    seconds = len(meeting.audio) / SAMPLE_RATE
    print(
        f"\n### {args.model}, {args.voice}: one meeting of {len(SENTENCES)} sentences, "
        f"{len(meeting.slides)} slides, {seconds:.0f} s\n"
    )
    print(table(results, args.model))
    if "none" in results and "terms=0" in results and results["none"].hyp != results["terms=0"].hyp:
        print("\nNote: `terms=0` gave another text than `none`: the slides alone changed it.")
    shown = SHOWN if SHOWN in results else next((n for n in names if CONDITIONS[n]), None)
    if shown is not None:
        print(slide_listing(shown, results[shown], meeting))
    if args.show:
        print(f"\nref: {meeting.text}")
        for name, r in results.items():
            print(f"\n{name}: {r.hyp}")


if __name__ == "__main__":
    main()
