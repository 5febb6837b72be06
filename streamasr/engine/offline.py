"""Offline decoding of a whole recording on a fixed grid of 30 s windows."""

from __future__ import annotations

import numpy as np

from streamasr.audio.level import boost_to_peak
from streamasr.config import DecodeConfig
from streamasr.events import TranscriptFinal, Word
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import AsrModel, TranscribeRequest, looks_like_hallucination, run_one


def final_audio(audio: np.ndarray, options: DecodeConfig) -> np.ndarray:
    """The audio of a final (or offline) decode, level-boosted as `options` say."""
    if options.boost_peak_dbfs is None:
        return audio
    return boost_to_peak(
        audio, target_dbfs=options.boost_peak_dbfs, max_gain_db=options.max_boost_db
    )


def transcribe_offline(
    model: AsrModel,
    audio: np.ndarray,
    options: DecodeConfig | None = None,
    *,
    language: str = "auto",
    task: str = "transcribe",
) -> list[TranscriptFinal]:
    """Decode `audio` (16 kHz mono) window by window, prompting each with the text before it.
    With language "auto" each window's language is detected, the previous one kept unless
    another is clearly more probable (`TranscribeRequest.prior_language`)."""
    model.info.check_language(language, task)
    opts = options or DecodeConfig()
    spec = model.info.features
    window = spec.window_frames * spec.hop_samples
    mel = LogMelBuffer(n_mels=spec.n_mels)
    context: list[int] = []
    previous: str | None = None  # the language of `context`
    finals: list[TranscriptFinal] = []
    for seg, start in enumerate(range(0, len(audio), window)):
        chunk = audio[start : start + window]
        if len(chunk) < 2 * spec.hop_samples:
            break
        mel.reset()
        mel.append(final_audio(chunk, opts))
        request = TranscribeRequest(
            mel.features(pad_to_frames=spec.window_frames),
            num_frames=mel.covered_frames,
            prompt=context,
            options=opts,
            word_timestamps=opts.word_timestamps,
            language=language,
            task=task,
            prior_language=previous,
        )
        result = run_one(model, request)
        if looks_like_hallucination(result, opts):
            continue
        text = result.text.strip()
        if not text:
            continue
        end = start + len(chunk)
        words = tuple(
            Word(w.word, start + w.start_sample, min(end, start + w.end_sample), w.probability)
            for w in result.words
        )
        finals.append(
            TranscriptFinal(
                seg,
                text,
                start,
                end,
                words,
                language=result.language,
                language_probability=result.language_probability,
            )
        )
        kept = context if result.language == previous else []
        context = (kept + list(result.tokens))[-opts.prompt_tokens :]
        previous = result.language
    return finals
