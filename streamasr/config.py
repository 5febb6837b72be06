"""Frozen configuration dataclasses: every tunable default of the engine lives here, once."""

from __future__ import annotations

from dataclasses import dataclass, field

LANGUAGE_POLICIES = ("utterance", "once")
ENCODERS = ("auto", "window", "chunked")


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = (
        2  # webrtcvad mode, 0 (least) .. 3 (most aggressive at rejecting non-speech)
    )
    frame_ms: int = 30  # webrtcvad frame length: 10, 20 or 30
    start_ms: int = 90  # voiced audio needed inside `start_window_ms` to open an utterance
    start_window_ms: int = 150  # sliding window for the start decision
    stop_ms: int = 450  # unvoiced audio that closes an utterance
    # ... in these languages, once the session knows it speaks one (asked for, detected in the
    # utterance's partials, or the previous final's): Mandarin's clause pauses run 0.5-0.8 s,
    # and a clause decoded alone, without the rest of its sentence, picks the wrong one of many
    # homophones (streamed CER 1.64x offline at 450 ms, 1.00x at 900: docs/engine.md)
    stop_ms_by_language: tuple[tuple[str, int], ...] = (("zh", 900),)
    preroll_ms: int = 300  # audio kept before the detected start (catches soft onsets)
    max_utterance_ms: int = 25_000  # longer speech is cut at its quietest point
    min_cut_ms: int = 5_000  # never cut an utterance shorter than this when cutting at max length

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0..3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if self.start_ms > self.start_window_ms:
            raise ValueError("VAD start_ms cannot exceed start_window_ms")
        if not 0 < self.min_cut_ms < self.max_utterance_ms:
            raise ValueError("VAD needs 0 < min_cut_ms < max_utterance_ms")
        if self.max_utterance_ms + self.preroll_ms > 30_000:  # one model window holds it all
            raise ValueError("VAD max_utterance_ms + preroll_ms must not exceed 30000")


@dataclass(frozen=True)
class DecodeConfig:
    max_new_tokens: int = 128  # per window; a 30 s window rarely holds more than ~100 tokens
    max_tokens_per_second: float = 8.0  # and at most this many per second of audio (+8): speech
    # runs at ~4 tokens/s, so a longer run is a loop that would waste the step's compute
    condition_on_previous: bool = True  # prompt with the text of previous finals
    prompt_tokens: int = 64  # at most this many tokens of previous text in the prompt
    max_bias_tokens: int = 159  # the session's prompt and keywords beyond this are cut: with the
    # 64 of previous text, Whisper's 223 (a longer bias pushed the previous text out, and cost
    # 50% more compute per decode: bench/biasing.py)
    language_switch_margin: float = 0.3  # language "auto" leaves the previous language only for
    # one this much more probable (docs/engine.md, "Languages")
    no_speech_threshold: float = 0.6  # drop a window whose no-speech probability is above this ...
    logprob_threshold: float = -1.0  # ... and whose mean token log-probability is below this
    compression_ratio_threshold: float = 2.4  # above this the text is a repetition loop: drop it
    max_repeat_ngram: int | None = None  # stop decoding at a loop of an n-gram up to this size
    # (None: any size, 0: no loop guard); the first copy is kept (models/guards.py)
    word_timestamps: bool = True  # cross-attention DTW word timing on finals
    boost_peak_dbfs: float | None = -6.0  # boost a final's audio toward this peak (None: off)
    max_boost_db: float = 24.0  # ... by at most this much (-30 dBFS speech reaches -6 dBFS)


@dataclass(frozen=True)
class SessionConfig:
    step_ms: int = 500  # re-decode the hypothesis after this much new speech audio
    min_first_ms: int = 900  # audio, pre-roll included, before the first partial: with less,
    # one first partial in seven is a misheard word ("China" for "Jane Eyre"; docs/engine.md)
    min_utterance_ms: int = 250  # shorter utterances (pre-roll included) are never decoded:
    # webrtcvad calls the first 120-180 ms of any non-silent stream speech, and tiny.en turns
    # such a blip into "you"; a real word plus the 300 ms pre-roll is always longer
    encode_window: str = "utterance"  # "utterance": encode the utterance plus `window_pad_ms` of
    # silence (fast); "full": pad every window to 30 s as Whisper was trained (offline-exact, slow)
    window_pad_ms: int = 1000  # silence after the utterance in "utterance" mode
    final_window: str = "full"  # the window of an utterance's final decode: "full" pads it to
    # 30 s, as offline decoding and Whisper's training do, and scores as offline; "utterance"
    # pads it with `final_pad_ms` of silence: half the cost, 1.2-1.4x the WER on natural voices
    # (docs/engine.md, "Lead-in")
    final_pad_ms: int = 10_000  # silence after the utterance in its final's "utterance" window:
    # with 1 s, tiny.en often does not see where the audio ends, and says the sentence again
    final_lead_ms: int = 700  # audio before the utterance that its final also decodes, which
    # may reach into the previous utterance (not before a cut at `max_utterance_ms`): 700 puts
    # 1 s of audio before the first voiced frame, as in a recording, and makes "full" finals
    # score as offline (with "utterance" finals it helps Piper's voice and hurts some espeak-ng
    # ones; docs/engine.md)
    final_join_ms: int = 700  # an utterance that starts this soon after the previous final's
    # speech ended continues it: its final decodes the audio from that utterance's lead on, with
    # the previous final's text as the forced prefix (its language the prior of detection), and
    # says only what comes after it. A sentence the VAD cut at a pause keeps its context (0: off;
    # models whose `ModelInfo.continues_text` is false never join)
    encoder: str = "auto"  # "window": re-encode the utterance window at every update (exact);
    # "chunked": encode only audio not yet committed, attending the cached states of the
    # committed prefix (block-causal; cost per update does not grow with the utterance);
    # "auto": the model's first of `ModelInfo.encoders`, chosen per model on measurements
    # (docs/engine.md)
    chunk_ms: int = 1000  # chunked: commit encoder states in blocks of this much audio ...
    lookahead_ms: int = 500  # ... once this much audio follows the block (its right context)
    polish_final: bool = True  # chunked: re-encode the utterance's window once for its final
    final_speculation_ms: int = 150  # decode the final once the speaker has paused this long,
    # inside the VAD's stop hangover, so it is ready when the utterance closes (0: off)
    final_keeps_stable: bool = False  # True: the final continues the committed prefix (cheaper);
    # False: the final is a free decode of the whole utterance (more accurate, may revise it)
    partials: bool = True  # emit transcript.partial events
    language: str = "auto"  # an ISO 639-1 code the model speaks, or "auto": detected (a model
    # with one language speaks it; a prompt-driven one transcribes what it hears)
    task: str = "transcribe"  # or "translate": any language into English text
    language_policy: str = "utterance"  # auto: "utterance" detects in every utterance (keeping
    # the previous language unless another is clearly more probable); "once" detects in the
    # first utterance with text and keeps that language for the session
    prompt: str = ""  # text that steers every decode: names, spellings, style (context biasing)
    keywords: tuple[str, ...] = ()  # words and names likely to be said, likewise
    agreement: int = 3  # LocalAgreement-n: a word is stable once n consecutive hypotheses agree
    # (3: the final takes back stable words in 16% of utterances, against 28% with 2)
    vad: VadConfig = field(default_factory=VadConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        if self.step_ms < 50:
            raise ValueError(f"step_ms must be at least 50, got {self.step_ms}")
        if self.agreement < 1:
            raise ValueError("agreement must be at least 1")
        if self.final_lead_ms < 0:
            raise ValueError(f"final_lead_ms must not be negative, got {self.final_lead_ms}")
        if self.final_join_ms < 0:
            raise ValueError(f"final_join_ms must not be negative, got {self.final_join_ms}")
        if self.vad.max_utterance_ms + self.vad.preroll_ms + self.final_lead_ms > 30_000:
            raise ValueError(
                "VAD max_utterance_ms + preroll_ms + final_lead_ms must not exceed 30000: "
                "one model window holds a final's audio"
            )
        if self.language_policy not in LANGUAGE_POLICIES:
            raise ValueError(
                f"language_policy must be one of {', '.join(LANGUAGE_POLICIES)}; "
                f"got {self.language_policy!r}"
            )
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}; got {self.encoder!r}")
        if self.chunk_ms < 20 or self.chunk_ms % 20:
            raise ValueError(f"chunk_ms must be a positive multiple of 20, got {self.chunk_ms}")
        if self.lookahead_ms < 0 or self.lookahead_ms % 20:
            raise ValueError(f"lookahead_ms must be a multiple of 20, got {self.lookahead_ms}")
        if self.encode_window not in ("utterance", "full"):
            raise ValueError(
                f"encode_window must be 'utterance' or 'full', got {self.encode_window!r}"
            )
