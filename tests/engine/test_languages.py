"""Language in the session: what each decode is asked for, what the events say, and the prompt
of previous text kept within one language (a weightless multilingual stand-in model)."""

from __future__ import annotations

import numpy as np
import pytest
import speech
from fake_model import FakeModel

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig, VadConfig
from streamasr.engine.driver import LocalSession
from streamasr.events import Event, TranscriptFinal, TranscriptPartial
from streamasr.models.base import (
    DecodeResult,
    FeatureSpec,
    ModelInfo,
    TranscribeRequest,
    pick_language,
)

LANGUAGES = ("en", "es", "it")
OFFSET = {"en": 0, "es": 1000, "it": 2000}  # each language's words are its own tokens
DETECTED_P = 0.8


class Polyglot(FakeModel):
    """FakeModel that speaks `spoken` (set by the test): "auto" detects it with probability
    0.8 against 0.1 for each other language, a prior kept as the engine's margin says."""

    info = ModelInfo(
        name="polyglot",
        features=FeatureSpec(n_mels=80, window_frames=3000),
        languages=LANGUAGES,
        tasks=("transcribe", "translate"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.spoken = "en"
        self.requests: list[TranscribeRequest] = []

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        self.requests.append(request)
        result = super().decode(request)
        if request.language == "auto":
            probs = {lang: DETECTED_P if lang == self.spoken else 0.1 for lang in LANGUAGES}
            margin = request.options.language_switch_margin
            language, p = pick_language(probs, request.prior_language, margin)
        else:
            language, p = request.language, None
        tokens = tuple(t + OFFSET[language] for t in result.tokens)
        return DecodeResult(tokens, result.text, -0.1, 0.01, 1.0, result.words, language, p)

    def decode_tokens(self, tokens: list[int]) -> str:
        return "".join(f" w{t % 1000}" for t in tokens)


@pytest.fixture
def speech_audio(sentences: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([speech.silence(0.5), sentences[1], speech.silence(1.0)])


def utterance(speech_audio: np.ndarray) -> np.ndarray:
    return np.concatenate([speech_audio, np.zeros(SAMPLE_RATE, np.float32)])


def feed(session: LocalSession, audio: np.ndarray) -> list[Event]:
    events: list[Event] = []
    for i in range(0, len(audio), 1600):
        events += session.feed(audio[i : i + 1600])
    return events


def transcripts(events: list[Event]) -> list[TranscriptPartial | TranscriptFinal]:
    return [e for e in events if isinstance(e, TranscriptPartial | TranscriptFinal)]


def test_the_detected_language_is_in_every_partial_and_final(speech_audio: np.ndarray) -> None:
    model = Polyglot()
    model.spoken = "es"
    session = LocalSession(model)
    events = transcripts(feed(session, utterance(speech_audio)) + session.close())
    assert any(isinstance(e, TranscriptPartial) for e in events)
    assert [type(e) for e in events].count(TranscriptFinal) == 1
    assert {(e.language, e.language_probability) for e in events} == {("es", DETECTED_P)}
    assert model.requests[0].language == "auto" and model.requests[0].prior_language is None


def test_a_new_language_keeps_the_other_languages_text_out_of_the_prompt(
    speech_audio: np.ndarray,
) -> None:
    model = Polyglot()
    session = LocalSession(model)
    feed(session, utterance(speech_audio))  # English
    english = set(model.requests[-1].prompt) | set(range(1000))
    model.spoken, model.requests = "es", []
    finals = [e for e in feed(session, utterance(speech_audio)) if isinstance(e, TranscriptFinal)]
    assert [f.language for f in finals] == ["es"]
    # A decode that detects keeps the previous finals' language (English) as its prior, with
    # their English prompt, which the model drops when it decodes in another language; one
    # that continues the utterance's committed Spanish text asks for Spanish, with no prompt.
    detecting = [r for r in model.requests if not r.prefix]
    continuing = [r for r in model.requests if r.prefix]
    assert detecting and all(r.language == "auto" and r.prior_language == "en" for r in detecting)
    assert all(r.prompt for r in detecting)
    assert continuing and all(
        (r.language, r.prior_language, r.prompt) == ("es", "es", []) for r in continuing
    )
    model.requests = []
    feed(session, utterance(speech_audio))  # Spanish again: prompted with Spanish text only
    prompts = [t for r in model.requests for t in r.prompt]
    assert prompts and not set(prompts) & english


def test_a_language_more_probable_by_less_than_the_margin_does_not_switch() -> None:
    probs = {"en": 0.35, "es": 0.5, "it": 0.15}
    assert pick_language(probs, "en", 0.3) == ("en", 0.35)
    assert pick_language(probs, "en", 0.1) == ("es", 0.5)
    assert pick_language(probs, None, 0.3) == ("es", 0.5)
    assert pick_language(probs, "fr", 0.3) == ("es", 0.5)  # a prior it cannot detect


def test_policy_once_asks_for_the_first_detected_language_from_then_on(
    speech_audio: np.ndarray,
) -> None:
    model = Polyglot()
    model.spoken = "it"
    session = LocalSession(model, SessionConfig(language_policy="once"))
    feed(session, utterance(speech_audio))
    assert model.requests[0].language == "auto"
    model.spoken, model.requests = "es", []
    finals = [e for e in feed(session, utterance(speech_audio)) if isinstance(e, TranscriptFinal)]
    assert {r.language for r in model.requests} == {"it"}
    assert [(f.language, f.language_probability) for f in finals] == [("it", None)]


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_a_fixed_language_and_task_are_asked_for_in_every_decode(
    speech_audio: np.ndarray, task: str
) -> None:
    model = Polyglot()
    model.spoken = "es"
    session = LocalSession(model, SessionConfig(language="it", task=task))
    events = transcripts(feed(session, utterance(speech_audio)) + session.close())
    assert {(r.language, r.task, r.prior_language) for r in model.requests} == {("it", task, "it")}
    assert {(e.language, e.language_probability) for e in events} == {("it", None)}


def test_text_the_stabiliser_committed_is_continued_in_its_language(
    speech_audio: np.ndarray,
) -> None:
    """A forced prefix was decoded in the utterance's language: a decode that continues it is
    asked for that language, not for a new detection."""
    model = Polyglot()
    model.spoken = "es"
    session = LocalSession(model, SessionConfig(final_keeps_stable=True))
    feed(session, utterance(np.concatenate([speech_audio, speech_audio])))
    continued = [r for r in model.requests if r.prefix]
    assert continued and all(r.language == "es" for r in continued)
    assert all(r.language == "auto" for r in model.requests if not r.prefix)


def test_a_language_or_task_the_model_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not speak language 'fr'"):
        LocalSession(Polyglot(), SessionConfig(language="fr"))
    with pytest.raises(ValueError, match="does not speak language 'es'"):
        LocalSession(FakeModel(), SessionConfig(language="es"))
    with pytest.raises(ValueError, match="no task 'translate'"):
        LocalSession(FakeModel(), SessionConfig(task="translate"))
    with pytest.raises(ValueError, match="language_policy"):
        SessionConfig(language_policy="sometimes")
    LocalSession(FakeModel(), SessionConfig(language="en"))  # its one language, asked for


def test_a_model_that_cannot_tell_the_language_reports_none(speech_audio: np.ndarray) -> None:
    session = LocalSession(FakeModel())
    events = transcripts(feed(session, utterance(speech_audio)) + session.close())
    assert events and {(e.language, e.language_probability) for e in events} == {(None, None)}


@pytest.mark.parametrize(
    ("spoken", "pinned", "finals"),
    [("en", "auto", 2), ("it", "auto", 1), ("en", "it", 1)],
)
def test_a_language_that_pauses_inside_its_sentences_waits_out_a_longer_pause(
    sentences: list[np.ndarray], spoken: str, pinned: str, finals: int
) -> None:
    """`stop_ms_by_language`: a 700 ms pause ends an English utterance (450 ms), not one
    detected, or asked for, in a language that waits 1000 ms."""
    model = Polyglot()
    model.spoken = spoken
    vad = VadConfig(stop_ms_by_language=(("it", 1000),))
    session = LocalSession(model, SessionConfig(language=pinned, vad=vad))
    pause = np.concatenate([sentences[0], speech.silence(0.7), sentences[1]])
    events = feed(session, np.concatenate([speech.silence(0.5), pause, speech.silence(1.5)]))
    events += session.close()
    assert [type(e) for e in transcripts(events)].count(TranscriptFinal) == finals
