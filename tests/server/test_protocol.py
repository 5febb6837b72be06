"""The sans-I/O protocol core: every client input to its actions, seq numbering, the error table."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from streamasr.config import SessionConfig
from streamasr.events import SpeechStarted
from streamasr.models.base import FeatureSpec, ModelInfo
from streamasr.server.protocol import (
    CLOSE_CODES,
    MAX_TEXT_BYTES,
    Audio,
    AudioFormat,
    Close,
    CloseCode,
    End,
    ErrorCode,
    Flush,
    SendError,
    ServerProtocol,
    SessionEnd,
    SessionEnded,
    SessionFlush,
    SessionStart,
    SessionStarted,
    Start,
    State,
    parse_client_message,
    parse_server_message,
)


def proto() -> ServerProtocol:
    return ServerProtocol(max_frame_bytes=4096)


def start(**fields: Any) -> str:
    return json.dumps({"type": "session.start", **fields})


def errors(actions: list[Any]) -> list[tuple[str, bool]]:
    return [(a.error.code, a.error.fatal) for a in actions if isinstance(a, SendError)]


def closes(actions: list[Any]) -> list[int]:
    return [a.code for a in actions if isinstance(a, Close)]


def test_audio_first_starts_a_default_session() -> None:
    p = proto()
    actions = p.receive_bytes(np.array([0, 16384, -32768], "<i2").tobytes())
    assert isinstance(actions[0], Start) and actions[0].implicit
    assert actions[0].options == SessionStart()
    assert isinstance(actions[1], Audio)
    np.testing.assert_allclose(actions[1].samples, [0.0, 0.5, -1.0])
    assert p.state is State.STREAMING


def test_session_start_sets_the_format_and_audio_after_it_is_decoded() -> None:
    p = proto()
    fmt = {"encoding": "pcm_f32le", "sample_rate": 48000, "channels": 2}
    [action] = p.receive_text(start(version=1, audio=fmt, partials=False, extra="ignored"))
    assert isinstance(action, Start) and not action.implicit
    assert action.options.audio == AudioFormat("pcm_f32le", 48000, 2)
    assert action.options.partials is False
    [audio] = p.receive_bytes(np.array([0.5, -0.5, 1.0, 0.0], "<f4").tobytes())
    assert isinstance(audio, Audio)
    np.testing.assert_allclose(audio.samples, [0.0, 0.5])  # stereo averaged to mono


def test_flush_and_end_in_order_and_input_after_end_is_ignored() -> None:
    p = proto()
    assert [type(a) for a in p.receive_text('{"type": "session.flush"}')] == [Start, Flush]
    assert p.receive_text('{"type": "session.end"}') == [End("client")]
    assert p.state is State.ENDED
    assert p.receive_bytes(b"\0\0") == []
    assert p.receive_text("not json") == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", ErrorCode.BAD_JSON),
        ("[" * 40_000, ErrorCode.BAD_JSON),  # under the text limit, too deep for the parser
        ("[1, 2]", ErrorCode.BAD_MESSAGE),
        ('{"type": 5}', ErrorCode.BAD_MESSAGE),
        ('{"type": "session.pause"}', ErrorCode.UNKNOWN_TYPE),
    ],
)
def test_bad_messages_are_reported_and_the_session_goes_on(text: str, code: ErrorCode) -> None:
    p = proto()
    actions = p.receive_text(text)
    assert errors(actions) == [(code, False)] and closes(actions) == []
    assert p.state is State.AWAITING_START  # a session.start may still come
    assert isinstance(p.receive_text(start())[0], Start)


def test_bad_audio_frames_are_dropped_and_the_session_goes_on() -> None:
    p = proto()
    odd = p.receive_bytes(b"\x01\x02\x03")
    assert isinstance(odd[0], Start)  # audio first: defaults
    assert errors(odd) == [(ErrorCode.BAD_AUDIO, False)] and closes(odd) == []
    p2 = proto()
    p2.receive_text(start(audio={"encoding": "pcm_f32le"}))
    nan = p2.receive_bytes(np.array([np.nan], "<f4").tobytes())
    assert errors(nan) == [(ErrorCode.BAD_AUDIO, False)]
    assert isinstance(p.receive_bytes(b"\0\0")[0], Audio)


@pytest.mark.parametrize(
    ("fields", "code", "close"),
    [
        ({"version": 2}, ErrorCode.UNSUPPORTED_VERSION, 1008),
        ({"version": "1"}, ErrorCode.INVALID_START, 1007),
        ({"audio": {"sample_rate": 96000}}, ErrorCode.UNSUPPORTED_AUDIO, 1007),
        ({"audio": {"sample_rate": 4000}}, ErrorCode.UNSUPPORTED_AUDIO, 1007),
        ({"audio": {"sample_rate": 16000.0}}, ErrorCode.INVALID_START, 1007),
        ({"audio": {"channels": 3}}, ErrorCode.UNSUPPORTED_AUDIO, 1007),
        ({"audio": {"encoding": "opus"}}, ErrorCode.UNSUPPORTED_AUDIO, 1007),
        ({"audio": "pcm"}, ErrorCode.INVALID_START, 1007),
        ({"partials": "yes"}, ErrorCode.INVALID_START, 1007),
        ({"language": "fr"}, ErrorCode.UNSUPPORTED_LANGUAGE, 1007),
        ({"language": 7}, ErrorCode.INVALID_START, 1007),
        ({"task": "translate"}, ErrorCode.UNSUPPORTED_TASK, 1007),
        ({"task": ["transcribe"]}, ErrorCode.INVALID_START, 1007),
        ({"prompt": 5}, ErrorCode.INVALID_START, 1007),
        ({"prompt": "x" * 1001}, ErrorCode.INVALID_START, 1007),
        ({"keywords": "Kubernetes"}, ErrorCode.INVALID_START, 1007),
        ({"keywords": ["ok", 3]}, ErrorCode.INVALID_START, 1007),
        ({"keywords": [""]}, ErrorCode.INVALID_START, 1007),
        ({"keywords": ["k"] * 101}, ErrorCode.INVALID_START, 1007),
    ],
)
def test_an_invalid_session_start_is_fatal(
    fields: dict[str, Any], code: ErrorCode, close: int
) -> None:
    p = proto()
    actions = p.receive_text(start(**fields))
    assert errors(actions) == [(code, True)]
    assert closes(actions) == [close]
    assert p.state is State.ENDED


@pytest.mark.parametrize("first", ["start", "audio"])
def test_a_late_session_start_is_fatal(first: str) -> None:
    p = proto()
    p.receive_text(start()) if first == "start" else p.receive_bytes(b"\0\0")
    actions = p.receive_text(start())
    assert errors(actions) == [(ErrorCode.UNEXPECTED_START, True)] and closes(actions) == [1008]


def test_frames_over_the_limits_are_fatal() -> None:
    p = proto()
    actions = p.receive_bytes(bytes(4098))
    assert errors(actions) == [(ErrorCode.FRAME_TOO_BIG, True)] and closes(actions) == [1009]
    p2 = proto()
    actions = p2.receive_text(json.dumps({"type": "x", "pad": "a" * MAX_TEXT_BYTES}))
    assert errors(actions) == [(ErrorCode.FRAME_TOO_BIG, True)] and closes(actions) == [1009]


def test_server_side_end_depends_on_the_state() -> None:
    p = proto()
    assert p.end("idle") == [Close(CloseCode.NORMAL, "idle")]  # nothing to finalise
    p2 = proto()
    p2.receive_bytes(b"\0\0")
    assert p2.end("shutdown", close_code=CloseCode.GOING_AWAY) == [End("shutdown")]
    assert p2.end("shutdown") == []  # already ending


def test_outgoing_messages_are_numbered_from_zero() -> None:
    p = proto()
    first = json.loads(p.event(SpeechStarted(16000)))
    second = json.loads(p.event(SessionEnded("client")))
    assert list(first)[:2] == ["type", "seq"]
    assert first == {"type": "speech.started", "seq": 0, "t": 1.0}
    assert second == {"type": "session.ended", "seq": 1, "reason": "client"}
    assert parse_server_message(json.dumps(second)) == second
    with pytest.raises(ValueError, match="seq"):
        parse_server_message('{"type": "speech.started"}')


def test_client_messages_round_trip() -> None:
    msg = SessionStart(AudioFormat("pcm_f32le", 8000, 2), partials=False, word_timestamps=False)
    assert parse_client_message(msg.to_json()) == msg
    assert parse_client_message(SessionFlush().to_json()) == SessionFlush()
    assert parse_client_message(SessionEnd().to_json()) == SessionEnd()


def test_every_error_code_has_a_documented_close_code() -> None:
    assert set(CLOSE_CODES) == set(ErrorCode)
    table = (
        __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    ).read_text()
    for code, close in CLOSE_CODES.items():
        assert f"`{code.value}`" in table, code
        if close is not None:
            assert str(int(close)) in table


SPEC = FeatureSpec(n_mels=80, window_frames=3000)
MULTILINGUAL = ModelInfo("base", SPEC, languages=("en", "es"), tasks=("transcribe", "translate"))
ANY_LANGUAGE = ModelInfo("glm", SPEC, languages=None)


@pytest.mark.parametrize(
    ("model", "fields", "code"),
    [
        (MULTILINGUAL, {"language": "es", "task": "translate"}, None),
        (MULTILINGUAL, {"language": "auto"}, None),
        (MULTILINGUAL, {"language": "it"}, ErrorCode.UNSUPPORTED_LANGUAGE),
        (ANY_LANGUAGE, {"language": "yue"}, None),
        (ANY_LANGUAGE, {"language": "Spanish!"}, ErrorCode.UNSUPPORTED_LANGUAGE),
        (ANY_LANGUAGE, {"task": "translate"}, ErrorCode.UNSUPPORTED_TASK),
        (None, {"language": "en"}, None),
    ],
)
def test_a_session_may_ask_for_what_the_model_speaks(
    model: ModelInfo | None, fields: dict[str, Any], code: ErrorCode | None
) -> None:
    p = ServerProtocol(max_frame_bytes=4096, model=model)
    actions = p.receive_text(start(**fields))
    if code is None:
        assert isinstance(actions[0], Start) and p.state is State.STREAMING
    else:
        assert errors(actions) == [(code, True)] and closes(actions) == [1007]


def test_session_started_lists_the_models_languages_and_tasks() -> None:
    options = SessionStart(language="es", task="translate")
    body = SessionStarted("id", MULTILINGUAL, options, {}).to_dict()
    assert (body["model"], body["language"], body["task"]) == ("base", "es", "translate")
    assert (body["languages"], body["tasks"]) == (["en", "es"], ["transcribe", "translate"])
    assert SessionStarted("id", ANY_LANGUAGE, SessionStart(), {}).to_dict()["languages"] is None
    config = options.session_config(SessionConfig())
    assert (config.language, config.task) == ("es", "translate")


def test_prompt_and_keywords_reach_the_session_config() -> None:
    p = proto()
    [action] = p.receive_text(
        start(prompt="Notes of the ACME board.", keywords=["Siobhan", "Oaxaca"])
    )
    assert isinstance(action, Start)
    config = action.options.session_config(SessionConfig())
    assert config.prompt == "Notes of the ACME board."
    assert config.keywords == ("Siobhan", "Oaxaca")
