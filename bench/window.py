"""How the encoder window changes accuracy and cost: one decode per utterance, several paddings.

    python bench/window.py [--corpus DIR] [--model tiny.en] [--limit N] [--threads N]

Each single utterance of the held-out corpus (bench/corpus.py) is decoded whole, once per
window choice: the utterance's own frames plus 0, 1 or 3 s of silence, or the full 30 s window
Whisper was trained on. The table gives WER and the mean decode time per utterance.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from corpus import DEFAULT_OUT, load_manifest

from streamasr.audio.files import load_audio
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.loader import load_model
from streamasr.textnorm import wer

PADS_MS: tuple[int | None, ...] = (0, 1000, 3000, 10000, None)  # None: the full 30 s window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--groups", default="single", help="groups with these prefixes (a,b,...)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prefixes = tuple(args.groups.split(","))
    entries = [
        e
        for e in load_manifest(args.corpus)
        if e["kind"] == "single" and e["group"].startswith(prefixes)
    ]
    entries = entries[: args.limit] if args.limit else entries
    model = load_model(args.model)
    spec = model.info.features
    print(f"{len(entries)} utterances, model {args.model}, torch threads {torch.get_num_threads()}")
    print("| window | WER | decode s per utterance |\n|---|--:|--:|")
    for pad_ms in PADS_MS:
        refs, hyps, seconds = [], [], 0.0
        for e in entries:
            mel = LogMelBuffer(n_mels=spec.n_mels)
            mel.append(load_audio(args.corpus / e["file"]))
            covered = -(-mel.num_samples // spec.hop_samples)
            pad_to = spec.window_frames if pad_ms is None else covered + pad_ms // 10
            pad_to = min(spec.window_frames, pad_to + pad_to % 2)
            t = time.perf_counter()
            r = run_one(
                model, TranscribeRequest(mel.features(pad_to_frames=pad_to), mel.num_frames)
            )
            seconds += time.perf_counter() - t
            refs.append(e["text"])
            hyps.append(r.text)
        name = "full 30 s" if pad_ms is None else f"utterance + {pad_ms / 1000:g} s"
        print(f"| {name} | {wer(refs, hyps):.1%} | {seconds / len(entries):.3f} |")


if __name__ == "__main__":
    main()
