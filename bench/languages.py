"""Languages on the multilingual held-out set (bench/languages_corpus.py).

    python bench/languages.py [--corpus DIR] [--model base] [--limit N] [--threads N]
                              [--groups _neural]

Per language, on the single-sentence files of the chosen groups (default: the neural voices;
espeak-ng's voices other than English are too poor to measure a model with), at most
`--limit` per group:

- language ID: how often the streamed finals' language (`"language": "auto"`) is the spoken one;
- WER (CER for zh and ja, whose text has no spaces; zh in simplified characters on both sides,
  with OpenCC) of the streamed finals and of the offline decode (`transcribe_offline`,
  language auto), and their ratio;
- compute per audio second: wall seconds inside the session's calls over audio seconds,
  streamed as fast as possible with `--threads` torch threads (tiny.en runs English only).

Then the margin study behind `DecodeConfig.language_switch_margin`: per file, the language
probabilities of its first 1 s, 2 s and whole audio. A wrong switch happens when, with the right
language as prior, another is more probable by at least the margin; a missed switch when, with
a wrong prior (the previous speaker's language: English, or Spanish for English files), the
right one does not beat it by the margin. The table gives both rates for several margins.

And the switch files (English, then Spanish): the languages of their finals.

How many base streams the daemon holds at real time: `bench/serve.py --model base`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import unicodedata
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from languages_corpus import DEFAULT_OUT, load_manifest

from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.engine.offline import transcribe_offline
from streamasr.events import TranscriptFinal
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.loader import load_model
from streamasr.textnorm import word_errors

SAMPLE_RATE = 16_000
CHUNK = 800  # 50 ms
UNSPACED = ("zh", "ja", "th")
PREFIXES_S = (1.0, 2.0, None)  # None: the whole file
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@functools.cache
def _simplified() -> Any:
    """OpenCC's traditional-to-simplified Chinese converter (the bench extra)."""
    import opencc

    return opencc.OpenCC("t2s")


def units(text: str, language: str) -> list[str]:
    """Words (characters for unspaced scripts) of `text`, lowercased, punctuation dropped;
    Chinese in simplified characters, as the references are: base writes Mandarin in
    traditional characters as often as not, and the error rate counts what was heard."""
    text = unicodedata.normalize("NFKC", text).lower()
    if language == "zh":
        text = _simplified().convert(text)
    kept = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return list(kept.replace(" ", "")) if language in UNSPACED else kept.split()


def errors(ref: str, hyp: str, language: str) -> tuple[int, int]:
    r = units(ref, language)
    return word_errors(r, units(hyp, language)), len(r)


def stream(
    model: Any, audio: np.ndarray, config: SessionConfig | None = None
) -> tuple[list[TranscriptFinal], float]:
    """The finals of `audio` streamed through a session, and the seconds spent in its calls."""
    session = LocalSession(model, config or SessionConfig())
    finals: list[TranscriptFinal] = []
    spent = 0.0
    steps = [
        functools.partial(session.feed, audio[i : i + CHUNK]) for i in range(0, len(audio), CHUNK)
    ]
    for step in [*steps, session.close]:  # closed whatever the length: its last words count
        t0 = time.perf_counter()
        events = step()
        spent += time.perf_counter() - t0
        finals += [e for e in events if isinstance(e, TranscriptFinal)]
    return finals, spent


def language_probs(model: Any, audio: np.ndarray) -> dict[str, float]:
    """Whisper's language distribution on `audio` (<= 30 s), padded to the full window."""
    mel = LogMelBuffer(n_mels=model.info.features.n_mels)
    mel.append(audio[: 30 * SAMPLE_RATE])
    features = mel.features(pad_to_frames=model.info.features.window_frames)
    with torch.inference_mode():
        enc = model.encode(model.mel(features))
        result: dict[str, float] = model.language_probs(model.cross_kv(enc))
    return result


def lid_table(rows: dict[str, dict[str, float]], model_name: str) -> str:
    out = [
        f"| language | files | audio s | LID | streamed WER | offline WER | ratio | "
        f"compute s/s ({model_name}) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for language, r in sorted(rows.items()):
        streamed = r["s_err"] / max(r["words"], 1)
        offline = r["o_err"] / max(r["words"], 1)
        ratio = streamed / offline if offline else float("nan")
        metric = "CER" if language in UNSPACED else "WER"
        out.append(
            f"| {language} | {r['files']:.0f} | {r['seconds']:.0f} | {r['lid'] / r['files']:.0%} | "
            f"{streamed:.1%} ({metric}) | {offline:.1%} | {ratio:.2f} | "
            f"{r['spent'] / r['seconds']:.3f} |"
        )
    return "\n".join(out)


def margin_table(study: list[tuple[str, float | None, dict[str, float]]]) -> str:
    out = [
        "| margin | "
        + " | ".join(f"wrong switch {p or 'all'}" for p in PREFIXES_S)
        + " | "
        + " | ".join(f"missed switch {p or 'all'}" for p in PREFIXES_S)
        + " |",
        "|--:|" + "--:|" * (2 * len(PREFIXES_S)),
    ]
    for margin in MARGINS:
        cells = []
        for kind in ("wrong", "missed"):
            for prefix in PREFIXES_S:
                cases = [(lang, probs) for lang, p, probs in study if p == prefix]
                bad = 0
                for lang, probs in cases:
                    best = max(probs, key=probs.__getitem__)
                    if kind == "wrong":  # prior right: does another beat it by the margin?
                        bad += best != lang and probs[best] - probs[lang] >= margin
                    else:  # prior wrong: does the right one fail to beat it by the margin?
                        prior = "es" if lang == "en" else "en"
                        won = best == lang and probs[lang] - probs[prior] >= margin
                        bad += not won
                cells.append(f"{bad / max(len(cases), 1):.1%}")
        out.append(f"| {margin:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model", default="base")
    ap.add_argument("--limit", type=int, default=8, help="files per group (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--groups", default="_neural", help="groups whose name holds this ('': all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    entries = load_manifest(args.corpus)
    per_group: dict[str, int] = defaultdict(int)
    chosen = []
    for e in entries:
        wanted = e["kind"] == "single" and args.groups in e["group"]
        if wanted and (not args.limit or per_group[e["group"]] < args.limit):
            per_group[e["group"]] += 1
            chosen.append(e)
    switches = [e for e in entries if e["kind"] == "switch"][: args.limit or None]
    models = {args.model: load_model(args.model)}
    if args.model != "tiny.en":
        models["tiny.en"] = load_model("tiny.en")
    print(f"{len(chosen)} files, {len(switches)} switch files, torch threads {args.threads}")
    for name, model in models.items():
        spoken = model.info.languages
        rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        study: list[tuple[str, float | None, dict[str, float]]] = []
        stream(model, np.zeros(SAMPLE_RATE, np.float32))  # warm-up
        for e in chosen:
            language = e["language"]
            if spoken is not None and language not in spoken:
                continue
            audio, _ = sf.read(args.corpus / e["file"], dtype="float32")
            finals, spent = stream(model, audio)
            offline = transcribe_offline(model, audio)
            r = rows[language]
            r["files"] += 1
            r["seconds"] += len(audio) / SAMPLE_RATE
            r["spent"] += spent
            heard = [f.language for f in finals]
            r["lid"] += bool(heard) and all(h == language for h in heard)
            s_err, words = errors(e["text"], " ".join(f.text for f in finals), language)
            o_err, _ = errors(e["text"], " ".join(f.text for f in offline), language)
            r["s_err"] += s_err
            r["o_err"] += o_err
            r["words"] += words
            if model.info.detects_language:
                for prefix in PREFIXES_S:
                    cut = audio if prefix is None else audio[: int(prefix * SAMPLE_RATE)]
                    study.append((language, prefix, language_probs(model, cut)))
            print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        print(f"\n### {name}\n")
        print(lid_table(rows, name))
        if study:
            print(f"\nLanguage switch margin ({len(study) // len(PREFIXES_S)} files):\n")
            print(margin_table(study))
        if model.info.detects_language and switches:
            print("\nSwitch files (English, then Spanish): languages of the finals\n")
            for e in switches:
                audio, _ = sf.read(args.corpus / e["file"], dtype="float32")
                finals, _ = stream(model, audio)
                said = [f"{f.language}: {f.text}" for f in finals]
                print(f"- {e['file']}: " + " | ".join(said))


if __name__ == "__main__":
    main()
