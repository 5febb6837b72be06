"""Each bad input over a real socket gets its documented answer, and the next client is served."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest
from fake_model import FakeModel
from server_helpers import Result, assert_served, pcm16, session, stream_session, ws_url
from websockets.asyncio.client import connect

from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.server.app import Server

START = json.dumps({"type": "session.start"})
END = json.dumps({"type": "session.end"})
SILENCE = bytes(3200)


def start(**fields: Any) -> str:
    return json.dumps({"type": "session.start", **fields})


def check_nonfatal(result: Result, code: str) -> None:
    """The error came, non-fatal, and the session still ended cleanly on session.end."""
    assert [(e["code"], e["fatal"]) for e in result.of("error")] == [(code, False)]
    assert "session.started" in result.types
    assert result.types[-1] == "session.ended" and result.close_code == 1000
    result.check_seq()


def check_fatal(result: Result, code: str, close: int) -> None:
    assert [(e["code"], e["fatal"]) for e in result.of("error")] == [(code, True)]
    assert result.types[-1] == "error"  # nothing after a fatal error
    assert result.close_code == close
    assert result.close_reason == code.replace("_", " ")
    result.check_seq()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["{not json", START, SILENCE, END], "bad_json"),
        (["[1, 2]", SILENCE, END], "bad_message"),
        ([START, '{"type": "session.pause"}', SILENCE, END], "unknown_type"),
        ([SILENCE, b"\x01\x02\x03", SILENCE, END], "bad_audio"),
        (
            [
                start(audio={"encoding": "pcm_f32le"}),
                np.array([0.0, np.nan], "<f4").tobytes(),
                SILENCE,
                END,
            ],
            "bad_audio",
        ),
    ],
    ids=["malformed-json", "not-an-object", "unknown-type", "odd-byte-count", "nan-float"],
)
async def test_non_fatal_errors_keep_the_session(
    server: Server, frames: list[str | bytes], code: str
) -> None:
    check_nonfatal(await session(server, frames), code)
    await assert_served(server)


@pytest.mark.parametrize(
    ("frames", "code", "close"),
    [
        ([start(version=2), SILENCE], "unsupported_version", 1008),
        ([start(audio={"sample_rate": 96000}), SILENCE], "unsupported_audio", 1007),
        ([start(audio={"channels": 6})], "unsupported_audio", 1007),
        ([start(audio={"encoding": "mp3"})], "unsupported_audio", 1007),
        ([start(audio={"sample_rate": "16k"})], "invalid_start", 1007),
        ([start(language="de")], "unsupported_language", 1007),
        ([start(prompt="\ud800")], "invalid_start", 1007),  # JSON's "\\ud800": no character
        ([start(keywords=["ok", "\udc00"])], "invalid_start", 1007),
        ([START, SILENCE, START, SILENCE], "unexpected_start", 1008),
        ([SILENCE, START, SILENCE], "unexpected_start", 1008),
        ([SILENCE, bytes(5000)], "frame_too_big", 1009),
        ([json.dumps({"type": "x", "pad": "a" * 70_000})], "frame_too_big", 1009),
    ],
    ids=[
        "version",
        "rate",
        "channels",
        "encoding",
        "wrong-type",
        "language",
        "lone-surrogate-prompt",
        "lone-surrogate-keyword",
        "second-start",
        "start-after-audio",
        "big-binary",
        "big-text",
    ],
)
async def test_fatal_errors_close_with_their_code(
    make_server: Any, frames: list[str | bytes], code: str, close: int
) -> None:
    server = await make_server(max_frame_bytes=50_000 if "pad" in str(frames) else 4096)
    check_fatal(await session(server, frames), code, close)
    assert server.metrics.errors.labels(code=code)._value.get() == 1
    await assert_served(server)


async def test_audio_first_means_the_default_format(server: Server) -> None:
    result = await session(server, [SILENCE, END])
    started = result.of("session.started")[0]
    assert started["audio"] == {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1}
    assert started["protocol"] == 1 and started["model"] == "fake" and started["seq"] == 0
    assert started["limits"]["max_frame_bytes"] == server.config.max_frame_bytes


async def test_frames_beyond_the_hard_cap_and_invalid_utf8_are_closed_by_the_websocket_layer(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(max_frame_bytes=4096)
    huge = await session(server, [SILENCE, bytes(9000)])  # > 2 * max_frame_bytes
    assert huge.close_code == 1009 and huge.of("error") == []
    async with connect(ws_url(server)) as ws:
        await ws.send(b"\xff\xfe", text=True)
        await ws.wait_closed()
    assert ws.close_code == 1007
    await assert_served(server)
    # a client's fault, so no ERROR line (and no traceback) any client could write at will
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("not UTF-8" in r.getMessage() for r in caplog.records)


class BrokenModel(FakeModel):
    """Decodes the warm-up, then fails on every decode."""

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        if self.calls:  # the warm-up was the first call
            raise RuntimeError("the model broke")
        return super().decode(request)


async def test_an_engine_failure_closes_that_session_1011_only(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(model_factory=lambda _: BrokenModel())
    result = await stream_session(server, pcm16(speech_clips[3]))
    check_fatal(result, "internal_error", 1011)
    assert server.active_sessions == 0 or await server.wait_idle(5.0)
    await assert_served(server)
