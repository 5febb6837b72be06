"""One decoding step of a continuous batch, by batch size: where the per-step time goes.

    python bench/steps.py [--model tiny.en] [--batches 1,2,4,8] [--threads 1] [--repeats 3]
                          [--finals K] [--corpus DIR]

Runs the model on the CPU as the engine does (decoder weights that fp16 holds exactly packed
for FBGEMM's fp16-weight GEMM, models/packed_linear.py) and with that off (`use_fp16_gemm`:
MKL's float32 GEMM). For each batch size B, B held-out corpus utterances (their first 3 s, each
its own window) join one `StepBatch`; the table gives the median time of the steps while all B
rows are decoding (the best of `--repeats` runs), the time per row, and the vocabulary
projection alone for B rows. With `--finals K`, the first K rows are finals' windows instead:
the whole 30 s window (1500 encoder frames), as when finals decode beside partials in the
daemon.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from corpus import DEFAULT_OUT
from serve import load_clips

from streamasr import SAMPLE_RATE
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import AsrModel, TranscribeRequest
from streamasr.models.loader import load_model
from streamasr.models.packed_linear import use_fp16_gemm


def requests(
    corpus: Path, n: int, finals: int = 0, window_frames: int = 3000
) -> list[TranscribeRequest]:
    """n requests of the corpus's first 3 s: the first `finals` on the whole window."""
    out = []
    for i, clip in enumerate(load_clips(corpus)[:n]):
        mel = LogMelBuffer(n_mels=80)
        mel.append(clip.audio[: 3 * SAMPLE_RATE])
        pad = mel.covered_frames + 100
        window = window_frames if i < finals else pad + pad % 2
        feats = mel.features(pad_to_frames=window)
        out.append(TranscribeRequest(feats, mel.covered_frames))
    return out


def step_ms(model: AsrModel, reqs: list[TranscribeRequest]) -> float:
    """Median step time (ms) while every request's row is decoding."""
    batch = model.new_step_batch(len(reqs))
    batch.add_many([(r, i) for i, r in enumerate(reqs)])
    times = []
    while batch.size == len(reqs):
        t = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)) if times else float("nan")


def timed_ms(call: Callable[[], object], n: int = 20) -> float:
    call()
    t = time.perf_counter()
    for _ in range(n):
        call()
    return 1000 * (time.perf_counter() - t) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--finals", type=int, default=0, help="rows on a whole 30 s window")
    p.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    model = load_model(args.model, compute="cpu")
    reqs = requests(args.corpus, max(batches), args.finals, model.info.features.window_frames)
    d = model.config.d_model  # type: ignore[attr-defined]
    print("command: python " + shlex.join(sys.argv))
    finals = f", the first {args.finals} on 30 s windows" if args.finals else ""
    print(f"machine: torch threads {args.threads}; model {args.model}; rows: 3 s{finals}\n")
    print(
        "| batch | step ms, fp16-packed | per row | step ms, float32 | per row "
        "| vocab ms, packed / float32 |"
    )
    print("|--:|--:|--:|--:|--:|--:|")
    for b in batches:
        x = torch.randn(b, d)
        fast, slow, vocab = [], [], []
        for on, times in ((True, fast), (False, slow)):
            with use_fp16_gemm(on):
                times += [step_ms(model, reqs[:b]) for _ in range(args.repeats)]
                vocab.append(timed_ms(partial(model.logits, x)))  # type: ignore[attr-defined]
        print(
            f"| {b} | {min(fast):.1f} | {min(fast) / b:.1f} | {min(slow):.1f} "
            f"| {min(slow) / b:.1f} | {vocab[0]:.1f} / {vocab[1]:.1f} |"
        )


if __name__ == "__main__":
    main()
