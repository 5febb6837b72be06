"""Context biasing (`SessionConfig.keywords` and `prompt`) on speech full of rare names and jargon.

    python bench/biasing.py [--model tiny.en] [--limit N] [--threads N] [--conditions a,b]
                            [--show]

The 40 sentences of `bench/biasing_texts.py` (78 target terms: names from many cultures,
places, drugs, software) are said by Piper's neural voice en_US-joe-medium (seeded, so the
clips are the same every build) and cached as 16 kHz mono float32 WAV files under
`bench/.corpus/biasing/v1/`. The voice reads a rare name from its spelling through espeak-ng's
rules, which is easier on the model than a speaker who knows the name would be.

Each clip, with 0.5 s of silence before and 1 s after, is streamed in 50 ms chunks with no
pacing through a fresh `LocalSession` per condition (`--conditions`, default all):

- `none`: no biasing;
- `own-kw`: `keywords` = the sentence's own targets (the best case: the list is exactly right);
- `own-prompt`: `prompt` = a short sentence naming the sentence's own targets ("Today we talked
  about A and B."), the same terms as `own-kw` in prose;
- `own-label`: `prompt` = "Glossary: A, B.", the list of `own-kw` with a label;
- `glossary-kw`: `keywords` = all 78 targets in sentence order, the shared glossary a
  deployment would configure (the realistic case);
- `glossary-prose`: `prompt` = the glossary in that sentence ("Today we talked about A, B, ...
  and Z."), the other format in the realistic case;
- `glossary-rev`: `prompt` = the glossary in `bias_text`'s format but in reverse order: the
  session keeps the head of the bias tokens (`DecodeConfig.max_bias_tokens`, 159), which holds
  part of the 78 terms; reversed, the other part of the list is kept.

Per condition, the table gives:

- bias tokens: mean tokens of the bias text, before the cut to `max_bias_tokens`;
- term err: target-term occurrences not found in the normalised finals (`textnorm.normalize`:
  lowercase, punctuation dropped) as the same run of words; a term of several words counts
  once. "folded" compares with diacritics removed too ("Quinones" for "Quiñones");
- rest WER: word errors of the non-target words over their number. Each target in the
  reference becomes a slot that matches any run of hypothesis words (none included) at no
  cost, and the reference is aligned to the hypothesis by edit distance: so a misheard term
  ("cooper netties" for "Kubernetes") costs the rest nothing, while every other reference word
  still has to be matched. Removing the terms from both texts instead would count a misheard
  term's words as insertions in the rest; the price of the slot is that insertions next to a
  term are free;
- WER: all words, `textnorm.wer`;
- halluc.: glossary terms in the finals more often than in the reference, summed over all
  sentences (what a wrong bias makes the model say); "words": likewise for the words of at
  least four letters of the glossary's terms, which catches part of a name ("Nguyen" of
  "Linh Nguyen") put where another was said;
- compute s/s: wall seconds inside the session's calls over seconds of audio fed (padding
  included), `--threads` torch threads (default 1), after one untimed warm-up stream.

Below the table, the term error of each glossary condition is split by whether the term lies
inside the part of the bias the session keeps, beside the error of the same terms with no
biasing (when `none` ran). `--show` prints each sentence's finals per condition. `--model base`
runs the multilingual model (language detected per utterance).

Each session hears one sentence, so the decodes have no previous finals as context after the
bias: how the two share the prompt on long streams is not measured here. A misheard name often
takes its neighbours with it ("If a book the" for "Aoife booked a"), so the rest WER moves
with the term error too.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from biasing_texts import GLOSSARY, SENTENCES
from corpus import Piper, silence
from languages import stream as stream_finals

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig
from streamasr.engine.session import bias_text, bias_tokens
from streamasr.models.loader import load_model
from streamasr.textnorm import normalize, word_errors

VERSION = 1  # bump when the texts or the voice change: the cache is rebuilt
CACHE = Path(__file__).resolve().parent / ".corpus" / "biasing" / f"v{VERSION}"
CHUNK = 800  # 50 ms
LEAD_S, TAIL_S = 0.5, 1.0
GLOSSARY_WORDS = sorted({w for term in GLOSSARY for w in normalize(term) if len(w) >= 4})
SLOT = None  # a target term in the reference: matches any run of hypothesis words
FOLD = str.maketrans({"ø": "o", "ł": "l", "ı": "i", "æ": "ae", "ß": "ss", "đ": "d"})

Terms = tuple[str, ...]
CONDITIONS: dict[str, Callable[[Terms], SessionConfig]] = {
    "none": lambda own: SessionConfig(),
    "own-kw": lambda own: SessionConfig(keywords=own),
    "own-prompt": lambda own: SessionConfig(prompt=f"Today we talked about {prose(own)}."),
    "own-label": lambda own: SessionConfig(prompt=f"Glossary: {', '.join(own)}."),
    "glossary-kw": lambda own: SessionConfig(keywords=GLOSSARY),
    "glossary-prose": lambda own: SessionConfig(prompt=f"Today we talked about {prose(GLOSSARY)}."),
    "glossary-rev": lambda own: SessionConfig(prompt=bias_text("", GLOSSARY[::-1])),
}


def prose(terms: Terms) -> str:
    """The terms as prose: A; A and B; A, B and C."""
    return terms[0] if len(terms) == 1 else f"{', '.join(terms[:-1])} and {terms[-1]}"


def clips() -> list[np.ndarray]:
    """The sentences said by Piper's joe voice, built into the cache on the first run."""
    manifest = CACHE / "manifest.json"
    texts = [text for text, _ in SENTENCES]
    if not manifest.exists() or json.loads(manifest.read_text()) != texts:
        print(f"synthesizing {len(texts)} sentences into {CACHE}", file=sys.stderr)
        CACHE.mkdir(parents=True, exist_ok=True)
        say = Piper().speaker(1.0)  # seeded once; the clips are made in a fixed order
        for i, text in enumerate(texts):
            sf.write(CACHE / f"{i:03d}.wav", say(text).audio, SAMPLE_RATE, subtype="FLOAT")
        manifest.write_text(json.dumps(texts, ensure_ascii=False, indent=1))
    return [sf.read(CACHE / f"{i:03d}.wav", dtype="float32")[0] for i in range(len(texts))]


def stream(model: Any, config: SessionConfig, audio: np.ndarray) -> tuple[str, float]:
    """The finals' text of `audio` streamed through a session, and the seconds in its calls."""
    finals, spent = stream_finals(model, audio, config)
    return " ".join(f.text for f in finals), spent


def fold(words: list[str]) -> list[str]:
    """`words` without diacritics."""
    bare = unicodedata.normalize("NFKD", " ".join(words).translate(FOLD))
    return "".join(c for c in bare if not unicodedata.combining(c)).split()


def count(term: list[str], words: list[str]) -> int:
    """Non-overlapping occurrences of the run `term` in `words`."""
    n = i = 0
    while i + len(term) <= len(words):
        if words[i : i + len(term)] == term:
            n, i = n + 1, i + len(term)
        else:
            i += 1
    return n


def slotted(ref: list[str], terms: Terms) -> list[str | None]:
    """`ref` with each occurrence of a target term replaced by one `SLOT`."""
    runs = sorted((normalize(t) for t in terms), key=len, reverse=True)
    out: list[str | None] = []
    i = 0
    while i < len(ref):
        run = next((r for r in runs if ref[i : i + len(r)] == r), None)
        out.append(SLOT if run else ref[i])
        i += len(run) if run else 1
    return out


def rest_errors(items: Sequence[str | None], hyp: list[str]) -> int:
    """Edit distance of `items` (words and slots) to `hyp`, a slot taking any run for free."""
    row = list(range(len(hyp) + 1))  # row[j]: distance of the items so far to hyp[:j]
    for item in items:
        if item is SLOT:
            row = list(np.minimum.accumulate(row))
            continue
        new = [row[0] + 1]
        for j, h in enumerate(hyp, start=1):
            new.append(min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (item != h)))
        row = new
    return int(row[-1])


@dataclass
class Tally:
    """The counts of one condition, summed over sentences."""

    terms: int = 0
    missed: int = 0
    missed_folded: int = 0
    rest_words: int = 0
    rest_err: int = 0
    words: int = 0
    word_err: int = 0
    hallucinated: int = 0
    hallucinated_words: int = 0
    bias_tokens: int = 0
    audio_s: float = 0.0
    spent_s: float = 0.0
    per_term: dict[str, list[int]] = field(default_factory=dict)  # term: [said, missed]
    kept: set[str] = field(default_factory=set)  # glossary terms inside the bias the model sees
    hyps: list[str] = field(default_factory=list)

    def add(self, ref_text: str, hyp_text: str, own: Terms) -> None:
        ref, hyp = normalize(ref_text), normalize(hyp_text)
        for term in own:
            run = normalize(term)
            said = count(run, ref)
            missed = max(0, said - count(run, hyp))
            self.terms += said
            self.missed += missed
            self.missed_folded += max(0, said - count(fold(run), fold(hyp)))
            counts = self.per_term.setdefault(term, [0, 0])
            counts[0] += said
            counts[1] += missed
        for term in GLOSSARY:
            run = normalize(term)
            self.hallucinated += max(0, count(run, hyp) - count(run, ref))
        self.hallucinated_words += sum(max(0, hyp.count(w) - ref.count(w)) for w in GLOSSARY_WORDS)
        items = slotted(ref, own)
        self.rest_words += sum(item is not SLOT for item in items)
        self.rest_err += rest_errors(items, hyp)
        self.words += len(ref)
        self.word_err += word_errors(ref, hyp)
        self.hyps.append(hyp_text)


def kept_terms(model: Any, config: SessionConfig) -> set[str]:
    """The glossary terms whole inside the bias tokens the session keeps."""
    tokens, _ = bias_tokens(model, config)  # what the session keeps
    kept = normalize(model.decode_tokens(tokens))
    return {t for t in GLOSSARY if count(normalize(t), kept)}


def run(model: Any, name: str, audio: list[np.ndarray], limit: int) -> Tally:
    """One condition over the first `limit` sentences."""
    tally = Tally()
    for (text, own), x in list(zip(SENTENCES, audio, strict=True))[:limit]:
        config = CONDITIONS[name](own)
        fed = np.concatenate([silence(LEAD_S), x, silence(TAIL_S)])
        hyp, spent = stream(model, config, fed)
        tally.add(text, hyp, own)
        tally.kept |= kept_terms(model, config)
        tokens, cut = bias_tokens(model, config)
        tally.bias_tokens += len(tokens) + cut
        tally.audio_s += len(fed) / SAMPLE_RATE
        tally.spent_s += spent
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return tally


def table(tallies: dict[str, Tally], model_name: str) -> str:
    out = [
        "| condition | bias tokens | term err | term err (folded) | rest WER | WER | "
        f"halluc. (words) | compute s/s ({model_name}) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, t in tallies.items():
        out.append(
            f"| {name} | {t.bias_tokens / len(t.hyps):.0f} | "
            f"{t.missed / t.terms:.1%} ({t.missed}/{t.terms}) | {t.missed_folded / t.terms:.1%} | "
            f"{t.rest_err / t.rest_words:.1%} | {t.word_err / t.words:.1%} | "
            f"{t.hallucinated} ({t.hallucinated_words}) | "
            f"{t.spent_s / t.audio_s:.3f} |"
        )
    return "\n".join(out)


def split_by_cut(tallies: dict[str, Tally]) -> str:
    """For the glossary conditions: term error inside and outside the kept bias, beside the
    error of the same terms with no biasing."""
    out = []
    for name, t in tallies.items():
        if not name.startswith("glossary"):
            continue
        cells = []
        for inside, label in ((True, "inside the kept bias"), (False, "cut off")):
            terms = [term for term in t.per_term if (term in t.kept) == inside]
            said = sum(t.per_term[term][0] for term in terms)
            missed = sum(t.per_term[term][1] for term in terms)
            base = sum(tallies["none"].per_term[term][1] for term in terms)
            if said:
                cells.append(
                    f"{label}: {missed / said:.1%} ({missed}/{said}; none: {base / said:.1%})"
                )
        out.append(f"- {name}, term err " + "; ".join(cells))
    return "\n" + "\n".join(out) if out else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--limit", type=int, default=0, help="first N sentences (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--show", action="store_true", help="print every sentence's finals")
    args = ap.parse_args()
    names = args.conditions.split(",")
    if unknown := set(names) - set(CONDITIONS):
        ap.error(f"unknown conditions {sorted(unknown)}; known: {', '.join(CONDITIONS)}")
    torch.set_num_threads(args.threads)
    audio = clips()
    limit = args.limit or len(SENTENCES)
    model = load_model(args.model)
    stream(model, SessionConfig(), np.concatenate([silence(LEAD_S), audio[0], silence(TAIL_S)]))
    tallies = {name: run(model, name, audio, limit) for name in names}
    seconds = sum(len(x) / SAMPLE_RATE for x in audio[:limit])
    print(f"\n### {args.model}: {limit} sentences, {seconds:.0f} s of speech\n")
    print(table(tallies, args.model))
    if "none" in tallies:
        print(split_by_cut(tallies))
    if args.show:
        for i, (text, own) in enumerate(SENTENCES[:limit]):
            print(f"\n{i:02d} ref: {text}  [{'; '.join(own)}]")
            for name, t in tallies.items():
                print(f"   {name:>12}: {t.hyps[i]}")


if __name__ == "__main__":
    main()
