"""Session mechanics against a weightless model: events, flush, close, prompts, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import speech
from fake_model import FRAMES_PER_WORD, FakeModel

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig, VadConfig
from streamasr.engine.calls import ModelCall
from streamasr.engine.driver import LocalSession
from streamasr.engine.session import Session, bias_text
from streamasr.events import (
    Event,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
)
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one


def feed_all(session: LocalSession, audio: np.ndarray, chunk: int = 800) -> list[Event]:
    events: list[Event] = []
    for i in range(0, len(audio), chunk):
        events += session.feed(audio[i : i + chunk])
    return events


@pytest.fixture
def speech_audio(sentences: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([speech.silence(0.5), sentences[1], speech.silence(1.0)])


def test_one_utterance_gives_growing_partials_then_one_final(speech_audio: np.ndarray) -> None:
    session = LocalSession(FakeModel())
    events = feed_all(session, speech_audio) + session.close()
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted
    assert kinds[-2:] == [SpeechStopped, TranscriptFinal]
    partials = [e for e in events if isinstance(e, TranscriptPartial)]
    assert len(partials) >= 4
    ends = [p.end_sample for p in partials]
    assert ends == sorted(ends)
    # partial steps are at most step_ms of audio apart (plus one chunk)
    assert max(np.diff(ends)) <= (500 + 50) * SAMPLE_RATE // 1000
    assert partials[-1].stable_text and partials[-1].text.startswith(partials[-1].stable_text)
    final = events[-1]
    assert isinstance(final, TranscriptFinal) and final.text.startswith("w0 w1")
    assert [w.word.strip() for w in final.words] == final.text.split()


def test_flush_finalises_now_and_the_session_keeps_going(speech_audio: np.ndarray) -> None:
    session = LocalSession(FakeModel())
    half = len(speech_audio) // 2
    first = feed_all(session, speech_audio[:half])
    assert any(isinstance(e, SpeechStarted) for e in first)
    flushed = session.flush()
    assert [type(e) for e in flushed] == [SpeechStopped, TranscriptFinal]
    rest = feed_all(session, speech_audio[half:]) + session.close()
    finals = [e for e in first + flushed + rest if isinstance(e, TranscriptFinal)]
    assert len(finals) == 2
    assert finals[0].segment_id < finals[1].segment_id
    assert finals[0].end_sample <= finals[1].start_sample


def test_previous_finals_prompt_the_next_utterance(sentences: list[np.ndarray]) -> None:
    model = FakeModel()
    session = LocalSession(model)
    audio = np.concatenate([sentences[0], speech.silence(1.0), sentences[1], speech.silence(1.0)])
    feed_all(session, audio)
    session.close()
    prompts = [c["prompt"] for c in model.calls]
    assert prompts[0] == []
    assert any(p for p in prompts)  # the second utterance saw the first one's tokens


def test_the_prompt_and_keywords_head_every_decode(sentences: list[np.ndarray]) -> None:
    text = bias_text("  Board notes. ", ("Siobhan", " Oaxaca ", "", "Enugu"))
    assert text == "Board notes. Today we talked about Siobhan, Oaxaca and Enugu."
    assert bias_text("", ("Tromsø",)) == "Today we talked about Tromsø."
    assert bias_text("", ()) == ""
    model = FakeModel()  # its text is " w0 w1 ...": the prompt "w5 w7" is tokens 5 and 7
    session = LocalSession(model, SessionConfig(prompt="w5 w7"))
    audio = np.concatenate([sentences[0], speech.silence(1.0), sentences[1], speech.silence(1.0)])
    feed_all(session, audio)
    session.close()
    assert model.calls and all(c["bias"] == [5, 7] for c in model.calls)
    assert any(c["prompt"] for c in model.calls)  # the previous finals follow the bias
    plain = FakeModel()
    LocalSession(plain).feed(sentences[0])
    assert all(c["bias"] == [] for c in plain.calls)


def test_a_bias_over_its_budget_is_cut_and_said(sentences: list[np.ndarray]) -> None:
    model = FakeModel()
    long = " ".join(f"w{i}" for i in range(200))
    session = Session(model, SessionConfig(prompt=long))
    assert session.bias_cut == 200 - 159  # DecodeConfig.max_bias_tokens
    LocalSession(model, SessionConfig(prompt=long)).feed(sentences[0])
    assert model.calls and all(c["bias"] == list(range(159)) for c in model.calls)
    assert Session(model, SessionConfig(prompt="w1 w2")).bias_cut == 0


def test_close_is_final_and_bad_input_is_rejected(speech_audio: np.ndarray) -> None:
    session = LocalSession(FakeModel())
    with pytest.raises(ValueError, match="1-D"):
        session.feed(np.zeros((10, 2), dtype=np.float32))
    assert session.feed(np.zeros(0, dtype=np.float32)) == []
    session.close()
    assert session.flush() == []
    with pytest.raises(RuntimeError, match="closed"):
        session.feed(speech_audio[:160])


def test_partials_can_be_turned_off(speech_audio: np.ndarray) -> None:
    model = FakeModel()
    session = LocalSession(model, SessionConfig(partials=False))
    events = feed_all(session, speech_audio) + session.close()
    assert not any(isinstance(e, TranscriptPartial) for e in events)
    assert sum(isinstance(e, TranscriptFinal) for e in events) == 1
    assert [c["words"] for c in model.calls] == [True]  # the final's decode, and no partial's


def test_silence_never_calls_the_model() -> None:
    model = FakeModel()
    session = LocalSession(model)
    feed_all(session, np.zeros(5 * SAMPLE_RATE, dtype=np.float32))
    session.close()
    assert model.calls == []


def test_event_json_uses_seconds() -> None:
    final = TranscriptFinal(3, "hi", 16000, 24000)
    assert final.to_dict() == {
        "type": "transcript.final",
        "segment_id": 3,
        "text": "hi",
        "start": 1.0,
        "end": 1.5,
        "words": [],
        "fallback": False,
        "language": None,
        "language_probability": None,
    }
    detected = TranscriptFinal(3, "hola", 16000, 24000, language="es", language_probability=0.91234)
    assert detected.to_dict()["language"] == "es"
    assert detected.to_dict()["language_probability"] == 0.9123
    assert SpeechStarted(8000).to_dict() == {"type": "speech.started", "t": 0.5}


def test_chunked_encoder_needs_a_model_that_has_one() -> None:
    with pytest.raises(ValueError, match="no chunked encoder"):
        LocalSession(FakeModel(), SessionConfig(encoder="chunked"))


def test_models_are_told_every_frame_that_holds_audio() -> None:
    """A trailing partial hop counts, as the GLM-ASR processor counts it: ceil(n / 160)."""
    from streamasr.engine.offline import transcribe_offline

    model = FakeModel()
    audio = (0.1 * np.sin(np.arange(SAMPLE_RATE + 321) * 0.05)).astype(np.float32)
    transcribe_offline(model, audio)  # type: ignore[arg-type]
    assert model.calls[-1]["frames"] == 103  # 16321 / 160 = 102.006


def test_auto_encoder_follows_the_model_preference() -> None:
    assert Session(FakeModel()).encoder == "window"  # no chunked encoder: the window one
    assert Session(FakeModel(), SessionConfig(encoder="window")).encoder == "window"


class GatedFinals(FakeModel):
    """Partials as FakeModel's; every final decode (word timings on) comes back as a loop that
    the gate rejects, on the windows listed in `rejected` ("utterance", "full")."""

    def __init__(self, rejected: tuple[str, ...], empty: bool = False) -> None:
        super().__init__()
        self.rejected, self.empty = rejected, empty
        self.final_windows: list[str] = []

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        result = super().decode(request)
        if not request.word_timestamps:
            return result
        full = request.features.shape[1] == self.info.features.window_frames
        window = "full" if full else "utterance"
        self.final_windows.append(window)
        if window not in self.rejected:
            return result
        if self.empty:  # passes the gate, says nothing
            return DecodeResult((), "", -0.1, 0.01, 0.0)
        return replace(result, compression_ratio=3.0)


SHORT_FINALS = SessionConfig(final_window="utterance")  # a rejection there is retried on "full"


def test_a_rejected_final_is_decoded_again_on_the_full_window(speech_audio: np.ndarray) -> None:
    model = GatedFinals(rejected=("utterance",))
    events = feed_all(LocalSession(model, SHORT_FINALS), speech_audio)
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert model.final_windows == ["utterance", "full"]
    assert len(finals) == 1 and finals[0].text.startswith("w0 w1") and not finals[0].fallback
    assert finals[0].words


@pytest.mark.parametrize("empty", [False, True])
def test_a_final_rejected_everywhere_keeps_what_the_partials_showed(
    speech_audio: np.ndarray, empty: bool
) -> None:
    model = GatedFinals(rejected=("utterance", "full"), empty=empty)
    events = feed_all(LocalSession(model, SHORT_FINALS), speech_audio)
    partials = [e for e in events if isinstance(e, TranscriptPartial)]
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert model.final_windows == ["utterance", "full"]
    assert len(finals) == 1 and finals[0].fallback
    assert finals[0].text == partials[-1].stable_text != ""  # the committed text
    assert finals[0].words == ()
    assert finals[0].to_dict()["fallback"] is True


def test_a_rejected_final_without_partials_is_dropped(speech_audio: np.ndarray) -> None:
    model = GatedFinals(rejected=("utterance", "full"))
    config = SessionConfig(final_window="utterance", partials=False)
    events = feed_all(LocalSession(model, config), speech_audio)
    assert not any(isinstance(e, TranscriptPartial | TranscriptFinal) for e in events)
    assert model.final_windows == ["utterance", "full"]


def test_a_rejected_full_window_final_falls_back_at_once(speech_audio: np.ndarray) -> None:
    model = GatedFinals(rejected=("full",))
    events = feed_all(LocalSession(model, SessionConfig(final_window="full")), speech_audio)
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert model.final_windows == ["full"]
    assert len(finals) == 1 and finals[0].fallback and finals[0].text


def final_frames(model: FakeModel) -> list[int]:
    """The mel frames of each final decode (the decodes with word timings)."""
    return [c["frames"] for c in model.calls if c["words"]]


def test_a_final_decodes_a_lead_in_before_its_utterance(sentences: list[np.ndarray]) -> None:
    model = FakeModel()
    config = SessionConfig(
        partials=False, final_speculation_ms=0, final_lead_ms=700, final_join_ms=0
    )
    session = LocalSession(model, config)
    audio = np.concatenate(
        [speech.silence(0.4), sentences[0], speech.silence(0.6), sentences[1], speech.silence(1)]
    )
    events = feed_all(session, audio)
    starts = [e.sample for e in events if isinstance(e, SpeechStarted)]
    stops = [e.sample for e in events if isinstance(e, SpeechStopped)]
    assert len(starts) == len(stops) == 2
    hop = model.info.features.hop_samples
    lead = config.final_lead_ms * SAMPLE_RATE // 1000
    assert starts[0] < lead  # the first lead is cut at the stream's start ...
    assert starts[1] - stops[0] < lead  # ... the second reaches into the first utterance
    assert final_frames(model) == [
        pytest.approx(stops[0] / hop, abs=2),
        pytest.approx((stops[1] - starts[1] + lead) / hop, abs=2),
    ]


def test_an_utterance_cut_at_the_length_limit_has_no_lead_in(
    sentences: list[np.ndarray],
) -> None:
    model = FakeModel()
    vad = VadConfig(max_utterance_ms=3000, min_cut_ms=1500)
    config = SessionConfig(
        partials=False, final_speculation_ms=0, final_lead_ms=700, final_join_ms=0, vad=vad
    )
    audio = np.concatenate([speech.silence(1.0), *sentences[:3], speech.silence(1)])
    events = feed_all(LocalSession(model, config), audio)
    starts = [e.sample for e in events if isinstance(e, SpeechStarted)]
    stops = [e.sample for e in events if isinstance(e, SpeechStopped)]
    assert len(starts) >= 2 and starts[1] == stops[0]  # cut, not a pause
    hop = model.info.features.hop_samples
    lead = config.final_lead_ms * SAMPLE_RATE // 1000
    frames = final_frames(model)
    assert frames[0] == pytest.approx((stops[0] - starts[0] + lead) / hop, abs=2)
    assert frames[1] == pytest.approx((stops[1] - starts[1]) / hop, abs=2)


def two_sentences(sentences: list[np.ndarray], pause_s: float) -> np.ndarray:
    return np.concatenate(
        [
            speech.silence(0.4),
            sentences[0],
            speech.silence(pause_s),
            sentences[1],
            speech.silence(1),
        ]
    )


@pytest.mark.parametrize("speculation_ms", [0, 150])
def test_a_final_after_a_short_pause_continues_the_previous_one(
    sentences: list[np.ndarray], speculation_ms: int
) -> None:
    """The second final decodes both utterances' audio, the first final's text forced as its
    prefix, and says only what comes after it: its words, timed inside its own utterance."""
    model = FakeModel()
    config = SessionConfig(partials=False, final_speculation_ms=speculation_ms)
    events = feed_all(LocalSession(model, config), two_sentences(sentences, 0.6))
    starts = [e.sample for e in events if isinstance(e, SpeechStarted)]
    stops = [e.sample for e in events if isinstance(e, SpeechStopped)]
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert len(starts) == len(finals) == 2
    assert starts[1] - stops[0] <= config.final_join_ms * SAMPLE_RATE // 1000
    decodes = [c for c in model.calls if c["words"]]
    first, second = decodes[0], decodes[-1]
    said = model.encode_text(finals[0].text)
    assert first["prefix"] == [] and second["prefix"] == said  # continued, after its text
    hop = model.info.features.hop_samples
    lead = config.final_lead_ms * SAMPLE_RATE // 1000
    joined_frames = (stops[1] - max(0, starts[0] - lead)) / hop
    assert second["frames"] == pytest.approx(joined_frames, abs=2)
    # FakeModel says a word per 0.4 s of its window: the joined decode's words, less the first's
    n = int(second["frames"]) // FRAMES_PER_WORD
    assert finals[1].text == model.decode_tokens(list(range(len(said), n))).strip()
    assert [w.word for w in finals[1].words] == [f" w{i}" for i in range(len(said), n)]
    assert all(starts[1] <= w.start_sample <= w.end_sample <= stops[1] for w in finals[1].words)


def test_a_final_after_a_long_pause_does_not_continue(sentences: list[np.ndarray]) -> None:
    model = FakeModel()
    config = SessionConfig(partials=False, final_speculation_ms=0, final_join_ms=700)
    events = feed_all(LocalSession(model, config), two_sentences(sentences, 1.5))
    assert sum(isinstance(e, TranscriptFinal) for e in events) == 2
    assert [c["prefix"] for c in model.calls if c["words"]] == [[], []]


def test_an_early_final_is_a_background_call_dropped_when_speech_goes_on(
    sentences: list[np.ndarray],
) -> None:
    """The speaker pauses: the session asks for an early final and goes on without its result.
    The speaker goes on: that call is cancelled. The utterance's final is then what a session
    driven in place gives, and only its decode ran."""
    pause, rest = np.concatenate([sentences[0], speech.silence(0.3)]), sentences[1]
    tail = speech.silence(1.0)
    model = FakeModel()
    session = Session(model, SessionConfig(partials=False))
    steps = [session.feed(c) for c in chunks(np.concatenate([speech.silence(0.4), pause]))]
    early = [c for st in steps for c in st.calls]
    assert len(early) == 1 and early[0].background and early[0].final  # asked for in the pause
    assert session.awaiting is None  # ... and not waited for
    steps = [session.feed(c) for c in chunks(rest)]
    assert [c for st in steps for c in st.cancelled] == [early[0].id]  # speech went on
    assert not any(st.calls for st in steps)
    events: list[Event] = []
    asked: dict[int, ModelCall] = {}
    for c in chunks(tail):
        step = session.feed(c)
        events += step.events
        asked |= {call.id: call for call in step.calls}
        while session.awaiting is not None:  # the final: decoded when it is waited for
            call = asked.pop(session.awaiting)
            step = session.on_result(call.id, run_one(model, call.request))
            events += step.events
    assert not asked  # every call asked for was waited for, none left behind
    in_place = feed_all(
        LocalSession(FakeModel(), SessionConfig(partials=False)),
        np.concatenate([speech.silence(0.4), pause, rest, tail]),
        chunk=320,
    )
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert len(finals) == 1 and finals == [e for e in in_place if isinstance(e, TranscriptFinal)]
    assert len(model.calls) == 1  # only the final that was sent was decoded


def chunks(audio: np.ndarray, size: int = 320) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def test_an_operation_waits_for_its_call_and_takes_only_that_result(
    speech_audio: np.ndarray,
) -> None:
    """While the session waits for a call's result, it takes no other operation and no other
    call's result; a partial is an awaited call."""
    session = Session(FakeModel())
    step = None
    for c in chunks(speech_audio, 800):
        step = session.feed(c)
        if session.awaiting is not None:
            break
    assert step is not None and session.awaiting is not None
    (call,) = step.calls
    assert call.id == session.awaiting and not call.background and not call.final  # a partial
    with pytest.raises(RuntimeError, match="waits for"):
        session.feed(speech_audio[:800])
    with pytest.raises(RuntimeError, match="waits for"):
        session.on_result(call.id + 1, run_one(FakeModel(), call.request))
    done = session.on_result(call.id, run_one(FakeModel(), call.request))
    assert session.awaiting is None
    assert [type(e) for e in done.events] == [TranscriptPartial]
