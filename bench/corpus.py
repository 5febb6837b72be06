"""Build the held-out evaluation corpus: espeak-ng speech, resampled by sox, plus a manifest.

    python bench/corpus.py --out bench/.corpus --set heldout

writes 16 kHz mono s16 WAV files and `manifest.jsonl`, one JSON object per file: `file`,
`group` ("single" or the long file's name), `text` (the full reference), `duration` (seconds),
and for long files `sentences` (start, end and text of each spoken sentence). The texts and
voices are not used anywhere in tests/, and everything is seeded, so a rebuild is identical.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
DEFAULT_OUT = Path(__file__).resolve().parent / ".corpus"
SEED = 20_240_611
# tests/ use en-us, en-gb and en-us+f3; none of these voices (nor the f3 variant) appears there
VOICES = ("en-gb-x-rp", "en-gb-scotland", "en-us+f2", "en-us+m2", "en-gb-x-rp+f2", "en-gb-x-rp+m2")
WPM_RANGE = (140, 170)
SPEECH_PEAK_DBFS = -3.0  # level of ordinary speech
QUIET_PEAK_DBFS = -30.0  # level of the quiet stretch
NOISE_RMS_DBFS = -45.0  # level of the white noise under the noisy long file
LONG_SECONDS = (60.0, 120.0)

SINGLE_TEXTS = (
    "Could you pass me the salt and pepper, please?",
    "Let's try to get there a bit earlier next time.",
    "My sister is coming to visit us next weekend.",
    "Do you know if the bakery on the corner is open today?",
    "I forgot my umbrella at the office again.",
    "Let's order a pizza and watch a movie tonight.",
    "The train was twenty minutes late this morning.",
    "Have you finished reading the book I lent you?",
    "We need to buy milk, eggs and bread on the way home.",
    "I'm sorry, I didn't hear what you said.",
    "Can you give me a call when you get a chance?",
    "It looks like it's going to rain all afternoon.",
    "She has been learning to play the guitar for two years.",
    "Please remember to lock the back door before you go to bed.",
    "How long does it take to walk to the beach from here?",
    "I really enjoyed the dinner you made last night.",
    "The meeting has been moved to Thursday afternoon.",
    "Our neighbours just adopted a small brown puppy.",
    "Would you like a cup of tea or coffee?",
    "I need to get my car washed before the trip.",
    "The kids are out in the garden with their friends.",
    "Don't forget to send your mother a birthday card.",
    "We spent the whole summer at my grandparents' house by the lake.",
    "Is there a good place to park near the restaurant?",
    "He said he would fix the kitchen sink on Saturday.",
    "I usually go for a run before breakfast.",
    "Could you help me carry these boxes upstairs?",
    "The shop closes at six, so we should hurry.",
    "My phone battery is almost empty.",
    "Let me know if you need anything else from the store.",
    "They are planning a surprise party for their teacher.",
    "I can't find my keys anywhere in the house.",
    "We had lovely sunshine the whole time we were on holiday.",
    "We should water the plants before we leave for the week.",
    "What time does the film start this evening?",
    "I think I left the window open in the bedroom.",
    "It was nice to finally meet you in person.",
    "Could you speak a little more slowly, please?",
    "The new café downtown makes really good sandwiches.",
    "I'll pick you up from the airport on Monday.",
    "My cousin just started a new job at the hospital.",
    "We had to wait in line for almost an hour.",
    "Thanks so much for helping me move last weekend.",
    "Please put the dishes in the sink when you are done.",
)

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
    voice: str
    wpm: int
    audio: np.ndarray = field(repr=False)  # (n,) float32, 16 kHz


def speak(text: str, voice: str, wpm: int, tmp: Path) -> Clip:
    """`text` spoken by espeak-ng, converted by sox to 16 kHz mono float32, silence trimmed."""
    raw = tmp / "espeak.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    pcm = subprocess.run(
        [
            "sox",
            str(raw),
            "-t",
            "raw",
            "-e",
            "float",
            "-b",
            "32",
            "-c",
            "1",
            "-r",
            str(SAMPLE_RATE),
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    x = np.frombuffer(pcm, dtype="<f4")
    loud = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    x = x[loud[0] : loud[-1] + 1]
    return Clip(text, voice, wpm, to_peak_dbfs(x, SPEECH_PEAK_DBFS))


def to_peak_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    y: np.ndarray = (x * (10.0 ** (dbfs / 20.0) / np.abs(x).max())).astype(np.float32)
    return y


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def write_wav(path: Path, x: np.ndarray) -> float:
    """Write 16-bit PCM WAV; return the duration in seconds."""
    sf.write(path, np.clip(x, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return len(x) / SAMPLE_RATE


def build_singles(out: Path, rng: random.Random, tmp: Path) -> list[dict[str, Any]]:
    entries = []
    for i, text in enumerate(SINGLE_TEXTS):
        clip = speak(text, VOICES[i % len(VOICES)], rng.randint(*WPM_RANGE), tmp)
        name = f"single_{i:03d}.wav"
        duration = write_wav(out / name, np.concatenate([silence(0.5), clip.audio, silence(0.8)]))
        entries.append(
            {
                "file": name,
                "group": "single",
                "text": text,
                "duration": duration,
                "voice": clip.voice,
                "wpm": clip.wpm,
            }
        )
    return entries


def build_long(
    out: Path,
    name: str,
    texts: list[str],
    voices: tuple[str, str],
    kind: str,
    rng: random.Random,
    tmp: Path,
) -> dict[str, Any]:
    """A conversation of `texts` by two voices with 0.3..3 s pauses.

    kind "plain": as is; "quiet": a middle stretch of sentences at -30 dBFS peak;
    "noise": white noise at -45 dBFS RMS under the whole file.
    """
    quiet = set(range(len(texts) // 3, len(texts) // 3 + 4)) if kind == "quiet" else set()
    parts = [silence(0.5)]
    sentences = []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        clip = speak(text, voices[i % 2], rng.randint(*WPM_RANGE), tmp)
        audio = to_peak_dbfs(clip.audio, QUIET_PEAK_DBFS) if i in quiet else clip.audio
        gap = silence(rng.uniform(0.3, 3.0) if i + 1 < len(texts) else 1.0)
        parts += [audio, gap]
        sentences.append(
            {
                "start": pos / SAMPLE_RATE,
                "end": (pos + len(audio)) / SAMPLE_RATE,
                "text": text,
                "voice": clip.voice,
                "wpm": clip.wpm,
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
        "group": name,
        "text": " ".join(texts),
        "duration": duration,
        "sentences": sentences,
    }


def build(out: Path, which: str = "heldout") -> Path:
    """Write the `which` set into `out`; return the manifest path."""
    if which != "heldout":
        raise ValueError(f"unknown set {which!r} (known: heldout)")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        entries = build_singles(out, rng, tmp)
        longs = [
            ("long_plain", ("en-gb-x-rp", "en-us+f2"), "plain"),
            ("long_quiet", ("en-us+m2", "en-gb-x-rp+f2"), "quiet"),
            ("long_noise", ("en-gb-x-rp+m2", "en-gb-scotland"), "noise"),
        ]
        for (name, voices, kind), texts in zip(longs, LONG_TEXTS, strict=True):
            entries.append(build_long(out, name, list(texts), voices, kind, rng, tmp))
    manifest = out / "manifest.jsonl"
    tmp_manifest = manifest.with_suffix(".tmp")  # a half-built corpus has no manifest
    tmp_manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp_manifest.replace(manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir")
    p.add_argument("--set", dest="which", default="heldout", choices=["heldout"])
    args = p.parse_args(argv)
    manifest = build(args.out, args.which)
    lines = manifest.read_text().splitlines()
    total = sum(json.loads(line)["duration"] for line in lines)
    print(f"{manifest}: {len(lines)} files, {total:.1f} s of audio", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
