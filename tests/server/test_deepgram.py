"""Deepgram's live API on /v1/listen: the query, audio encodings, the messages and their order,
auth, abuse (FakeModel, a plain `websockets` client); the official deepgram-sdk on real tiny.en."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
import soundfile as sf
import speech
from deepgram.listen.v1.types import (
    ListenV1ConfigureFailure,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from fake_model import FakeModel
from server_helpers import Result, assert_served, deepgram_sdk_client, pcm16
from starlette.datastructures import QueryParams
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streamasr.audio.wav import WavFormat, read_wav_header
from streamasr.events import SpeechStarted, TranscriptFinal, TranscriptPartial, Word
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.server.deepgram import LISTEN_PATH, DeepgramCodec
from streamasr.server.deepgram_query import BadRequest, ListenOptions
from streamasr.server.protocol import AudioFormat, Mark
from streamasr.textnorm import wer

TOKEN = "deepgram-test-token"
RAW = {"encoding": "linear16", "sample_rate": "16000"}
# The SDK's model of each message type: every message must pass its *validated* parse
MODELS: dict[str, Any] = {
    "Results": ListenV1Results,
    "Metadata": ListenV1Metadata,
    "SpeechStarted": ListenV1SpeechStarted,
    "UtteranceEnd": ListenV1UtteranceEnd,
    "Error": ListenV1Error,
    "ConfigureFailure": ListenV1ConfigureFailure,
}


@dataclass
class Listened(Result):
    """Everything one Deepgram client received, and how the connection closed."""

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.of("Results") if m["is_final"]]

    @property
    def transcript(self) -> str:
        texts = (m["channel"]["alternatives"][0]["transcript"] for m in self.finals)
        return " ".join(t for t in texts if t)


def listen_url(server: Server, query: dict[str, Any]) -> str:
    return f"ws://127.0.0.1:{server.port}{LISTEN_PATH}?{urlencode(query, doseq=True)}"


async def receive_all(ws: ClientConnection) -> Listened:
    """Read until the server closes; every frame must be a typed JSON message the SDK accepts."""
    result = Listened()
    try:
        async for raw in ws:
            assert isinstance(raw, str), "the server sends text frames only"
            message = json.loads(raw)
            MODELS[message["type"]].model_validate(message)
            result.messages.append(message)
    except ConnectionClosed:
        pass
    result.close_code = ws.close_code
    result.close_reason = ws.close_reason or ""
    return result


async def listen(
    server: Server,
    frames: list[str | bytes],
    query: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Listened:
    """Connect to /v1/listen, send `frames` while reading, return everything that came back."""
    async with asyncio.timeout(timeout_s):
        url = listen_url(server, RAW if query is None else query)
        async with connect(url, additional_headers=headers) as ws:
            reader = asyncio.create_task(receive_all(ws))
            try:
                for frame in frames:
                    await ws.send(frame)
            except ConnectionClosed:
                pass
            return await reader


def chunked(data: bytes, size: int = 3200) -> list[str | bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


CLOSE = json.dumps({"type": "CloseStream"})
FINALIZE = json.dumps({"type": "Finalize"})


# ------------------------------------------------------------------ the query (sans I/O)
def test_query_maps_to_session_options() -> None:
    query = QueryParams(
        "model=nova-3&language=en-US&encoding=mulaw&sample_rate=8000&channels=2&interim_results="
        "true&endpointing=300&utterance_end_ms=1000&vad_events=true&smart_format=true&keyterm="
        "Deep+gram&keyterm=x%26y&keywords=foo%3A2&no_delay=true&filler_words=true"
    )
    options = ListenOptions.from_query(query, FakeModel.info)
    assert options.audio == AudioFormat("pcm_mulaw", 8000, 2)
    assert options.language == "en"
    assert (options.interim_results, options.vad_events, options.punctuate) == (True, True, True)
    assert (options.utterance_end_ms, options.endpointing) == (1000, True)
    assert options.keywords == ("Deep gram", "x&y", "foo")  # the keywords' boost dropped
    defaults = ListenOptions.from_query(
        QueryParams("language=multi&endpointing=false"), FakeModel.info
    )
    assert defaults.audio is None  # no encoding: a WAV stream
    assert (defaults.language, defaults.interim_results, defaults.endpointing) == (
        "auto",
        False,
        False,
    )
    with pytest.raises(BadRequest, match="language"):
        ListenOptions.from_query(QueryParams("language=fr-FR"), FakeModel.info)


def test_finals_follow_punctuate_and_utterance_end() -> None:
    final = TranscriptFinal(
        0,
        " Hello, world.",
        0,
        16_000,
        (Word(" Hello,", 0, 8000, 0.8), Word(" world.", 8000, 15_000, 0.6)),
    )
    plain = DeepgramCodec(
        ListenOptions(AudioFormat(), utterance_end_ms=1000),
        model=FakeModel.info,
        max_frame_bytes=1000,
        request_id="r",
    )
    message = json.loads(plain.encode(final)[0])
    alternative = message["channel"]["alternatives"][0]
    assert alternative["transcript"] == "hello world"
    assert alternative["confidence"] == pytest.approx(0.7)
    assert [(w["word"], w["punctuated_word"], w["end"]) for w in alternative["words"]] == [
        ("hello", "hello", 0.5),
        ("world", "world", 0.938),
    ]
    assert (message["is_final"], message["speech_final"], message["from_finalize"]) == (
        True,
        True,
        False,
    )
    utterance_end = [json.loads(f) for f in plain.encode(Mark("settled"))]
    assert utterance_end == [{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.938}]
    assert plain.encode(Mark("settled")) == []  # once per pause
    punctuated = DeepgramCodec(
        ListenOptions(AudioFormat(), punctuate=True, endpointing=False),
        model=FakeModel.info,
        max_frame_bytes=1000,
        request_id="r",
    )
    message = json.loads(punctuated.encode(final)[0])
    alternative = message["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Hello, world."
    assert alternative["words"][0]["punctuated_word"] == "Hello,"
    assert message["speech_final"] is False  # endpointing=false
    assert punctuated.encode(TranscriptPartial(1, " Hel", "", 0, 800)) == []  # no interim_results
    assert punctuated.encode(SpeechStarted(0)) == []  # no vad_events


def test_wav_header_is_read_across_frames() -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(800, np.float32), 8000, format="WAV", subtype="ULAW")
    wav = buffer.getvalue()
    assert read_wav_header(wav[:30]) is None  # not all there yet
    fmt, offset = read_wav_header(wav) or (None, 0)
    assert fmt == WavFormat("pcm_mulaw", 8000, 1)
    assert len(wav) - offset == 800


# ------------------------------------------------------------------ sessions on FakeModel
async def test_results_order_finalize_and_metadata(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    audio = [pcm16(speech_clips[2]), pcm16(speech_clips[3])]
    cut = 3200 * 13  # 1.3 s into the second clip: 1 s into its speech
    frames = [*chunked(audio[0]), *chunked(audio[1][:cut]), FINALIZE, *chunked(audio[1][cut:])]
    query = {**RAW, "interim_results": "true", "vad_events": "true", "utterance_end_ms": "1000"}
    result = await listen(server, [*frames, CLOSE], query)

    assert result.close_code == 1000 and result.of("Error") == []
    assert result.types[-1] == "Metadata" and len(result.of("Metadata")) == 1
    assert result.types.index("SpeechStarted") < result.types.index("Results")
    results = result.of("Results")
    first_final = next(i for i, m in enumerate(results) if m["is_final"])
    assert first_final > 0 and not results[0]["is_final"]  # interim results came first
    flushed = [m for m in result.finals if m["from_finalize"]]
    assert len(flushed) == 1 and flushed[0]["channel"]["alternatives"][0]["transcript"]
    assert len(result.finals) == 3  # the first clip, the flushed second, the rest of it
    for final in result.finals:
        assert final["speech_final"] and final["channel_index"] == [0, 1]
        words = final["channel"]["alternatives"][0]["words"]
        assert words and final["channel"]["alternatives"][0]["confidence"] == pytest.approx(0.9)
        assert final["start"] <= words[0]["start"] <= words[-1]["end"]
    # UtteranceEnd after each final, at its last word's end
    ends = [i for i, m in enumerate(result.messages) if m["type"] == "UtteranceEnd"]
    assert len(ends) == 3
    for i in ends:
        last_final = [m for m in result.messages[:i] if m["type"] == "Results" and m["is_final"]]
        last_word = last_final[-1]["channel"]["alternatives"][0]["words"][-1]
        assert result.messages[i]["last_word_end"] == last_word["end"]
    metadata = result.of("Metadata")[0]
    sent = b"".join(audio)
    assert metadata["duration"] == pytest.approx(len(sent) / 2 / 16_000)
    assert metadata["sha256"] == hashlib.sha256(sent).hexdigest()
    assert metadata["channels"] == 1 and metadata["transaction_key"] == "deprecated"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", metadata["created"])
    uuid = results[0]["metadata"]["model_uuid"]
    assert metadata["models"] == [uuid] and metadata["model_info"][uuid]["name"] == "fake"
    assert {m["metadata"]["request_id"] for m in results} == {metadata["request_id"]}


async def test_options_off_send_only_finals(server: Server, speech_clips: list[np.ndarray]) -> None:
    result = await listen(server, [*chunked(pcm16(speech_clips[2])), CLOSE])
    assert result.close_code == 1000
    assert set(result.types) == {"Results", "Metadata"}  # no SpeechStarted, no UtteranceEnd
    assert all(m["is_final"] for m in result.of("Results"))
    assert result.transcript.startswith("w0 w1")


async def test_g711_at_8khz_gives_the_words_of_linear16(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    x8 = np.concatenate(speech_clips[:2])[::2]  # 8 kHz (the speech is mostly below 4 kHz)
    linear = pcm16(x8)
    with warnings.catch_warnings():  # deprecated, still in 3.11: an independent G.711 encoder
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

        coded = {"mulaw": audioop.lin2ulaw(linear, 2), "alaw": audioop.lin2alaw(linear, 2)}
    rate = {"sample_rate": "8000"}
    want = await listen(server, [*chunked(linear), CLOSE], {"encoding": "linear16", **rate})
    assert want.transcript.count("w0") == 2, want.transcript  # two utterances
    got = {
        encoding: await listen(
            server, [*chunked(data, 1600), CLOSE], {"encoding": encoding, **rate}
        )
        for encoding, data in coded.items()
    }
    assert got["mulaw"].transcript == want.transcript
    # A-law has no exact zero: the VAD may place an edge a few ms off, and FakeModel says one
    # word per 0.4 s, so an utterance may gain or lose a word
    assert got["alaw"].transcript.count("w0") == 2
    assert wer([want.transcript], [got["alaw"].transcript]) <= 0.2
    for result in got.values():
        assert result.of("Metadata")[0]["duration"] == pytest.approx(x8.size / 8000)


async def test_odd_frames_carry_their_last_byte(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    data = pcm16(speech_clips[3])
    even = await listen(server, [*chunked(data), CLOSE])
    odd = await listen(server, [*chunked(data, 3201), CLOSE])
    assert odd.of("Error") == [] and odd.close_code == 1000
    assert odd.transcript == even.transcript and odd.transcript
    assert odd.of("Metadata")[0]["duration"] == even.of("Metadata")[0]["duration"]


async def test_wav_stream_without_encoding(server: Server, speech_clips: list[np.ndarray]) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, speech_clips[3], 16_000, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    raw = await listen(server, [*chunked(pcm16(speech_clips[3])), CLOSE])
    frames = [wav[:20], *chunked(wav[20:])]  # the header split across frames
    got = await listen(server, [*frames, CLOSE], {"model": "nova-3"})
    assert got.transcript == raw.transcript and got.transcript
    assert got.of("Metadata")[0]["sha256"] == hashlib.sha256(wav).hexdigest()
    ogg = await listen(server, [b"OggS" + bytes(400), CLOSE], {})
    assert ogg.types == ["Error", "Metadata"] and ogg.close_code == 1008
    assert "WAV" in ogg.of("Error")[0]["description"]


async def test_finalize_is_always_answered(server: Server) -> None:
    silence = bytes(3200 * 5)
    result = await listen(server, [silence, FINALIZE, FINALIZE, b""])  # b"": old end of stream
    assert result.types == ["Results", "Results", "Metadata"] and result.close_code == 1000
    for message in result.of("Results"):
        assert message["is_final"] and message["from_finalize"]
        assert message["channel"]["alternatives"][0]["transcript"] == ""


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"encoding": "mp3x", "sample_rate": "16000"}, "encoding"),
        ({"encoding": "linear16", "sample_rate": "abc"}, "sample_rate"),
        ({**RAW, "channels": "9"}, "channels"),
        ({"encoding": "linear16"}, "sample_rate"),
        ({**RAW, "interim_results": "maybe"}, "interim_results"),
        ({**RAW, "language": "fr"}, "language"),
    ],
)
async def test_bad_query_gets_deepgram_400(
    server: Server, query: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(listen_url(server, query)):
            pass
    response = refused.value.response
    assert response.status_code == 400
    body = json.loads(response.body or b"")
    assert set(body) == {"err_code", "err_msg", "request_id"} and body["err_code"] == "Bad Request"
    assert named in body["err_msg"] and named in response.headers["dg-error"]
    assert response.headers["dg-request-id"] == body["request_id"]
    await assert_served(server)


async def test_token_schemes_and_subprotocol(make_server: Any) -> None:
    server = await make_server(token=TOKEN)
    frames: list[str | bytes] = [bytes(3200), CLOSE]
    for scheme in ("Token", "bearer"):
        result = await listen(server, frames, headers={"Authorization": f"{scheme} {TOKEN}"})
        assert result.types == ["Metadata"] and result.close_code == 1000, scheme
    async with connect(listen_url(server, RAW), subprotocols=["token", TOKEN]) as ws:
        assert ws.subprotocol == "token"  # a browser aborts unless it is echoed
        await ws.send(CLOSE)
        assert (await receive_all(ws)).types == ["Metadata"]
    for headers in ({"Authorization": "Token wrong"}, {}):
        with pytest.raises(InvalidStatus) as refused:
            await listen(server, frames, headers=headers)
        assert refused.value.response.status_code == 401


async def test_garbage_gets_errors_and_the_session_goes_on(
    server: Server, speech_clips: list[np.ndarray]
) -> None:
    deep = "[" * 40_000  # under the 64 KiB text limit, too deep for the JSON parser
    garbage = ["not json", '{"type": "Bogus"}', "[1, 2]", '{"no": "type"}', deep]
    configure = json.dumps({"type": "Configure", "keyterms": ["streamasr"]})
    audio = chunked(pcm16(speech_clips[1]))
    result = await listen(server, [*garbage, configure, *audio, CLOSE])
    errors = result.of("Error")
    assert [e["message"] for e in errors] == [*garbage[:-1], deep[:1000]]  # the text, each
    assert {e["variant"] for e in errors} == {"SchemaError"}
    assert result.of("ConfigureFailure")[0]["code"] == "CONFIGURE_KEYTERMS_NOT_SUPPORTED"
    assert result.transcript.startswith("w0") and result.types[-1] == "Metadata"
    assert result.close_code == 1000
    await assert_served(server)


async def test_keepalive_keeps_an_idle_session_open(make_server: Any) -> None:
    server = await make_server(idle_timeout_s=0.5)
    async with connect(listen_url(server, RAW)) as ws:
        reader = asyncio.create_task(receive_all(ws))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:  # three idle timeouts
            await ws.send(json.dumps({"type": "KeepAlive"}))
            await asyncio.sleep(0.2)
        assert not reader.done()  # still open, nothing sent
        await ws.send(CLOSE)
        kept = await asyncio.wait_for(reader, 10)
    assert kept.types == ["Metadata"] and kept.close_code == 1000 and kept.close_reason == ""
    t0 = time.monotonic()
    idle = await listen(server, [], timeout_s=10)  # no KeepAlive: closed for idleness
    assert idle.types == ["Metadata"] and (idle.close_code, idle.close_reason) == (1000, "idle")
    assert time.monotonic() - t0 < 3.0
    await assert_served(server)


# ------------------------------------------------------------------ the official SDK, tiny.en
SENTENCES = (
    "Please send me the report before the meeting tomorrow morning.",
    "We should leave early to avoid the traffic on the highway.",
)


@pytest.mark.slow
async def test_deepgram_sdk_on_tiny_en(tiny_en_dir: Path, tmp_path: Path) -> None:

    spoken = [speech.espeak(text, tmp_path) for text in SENTENCES]
    first = pcm16(np.concatenate([speech.silence(0.3), spoken[0], speech.silence(0.1)]))
    second = pcm16(np.concatenate([speech.silence(1.0), spoken[1], speech.silence(1.5)]))
    server = Server(ServerConfig(port=0, model=str(tiny_en_dir), threads=1, token=TOKEN))
    await server.startup()
    try:
        client = deepgram_sdk_client(server.port, TOKEN)
        messages: list[Any] = []
        with warnings.catch_warnings():  # the SDK's async client uses websockets.legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            async with client.listen.v1.connect(
                model="nova-3",
                language="en-US",
                encoding="linear16",
                sample_rate=16000,
                channels=1,
                interim_results=True,
                vad_events=True,
                utterance_end_ms=1000,
                endpointing=300,
                smart_format=True,
                keyterm=["report"],
            ) as conn:

                async def read() -> None:
                    async for message in conn:
                        messages.append(message)

                reader = asyncio.create_task(read())
                for data in (first, second):  # Finalize as the first sentence ends
                    for chunk in chunked(data):
                        await conn.send_media(chunk)
                        await asyncio.sleep(0.1 / 3)  # 3x real time
                    if data is first:
                        await conn.send_finalize()
                await conn.send_close_stream()
                await asyncio.wait_for(reader, 120)
    finally:
        await server.shutdown()

    assert None not in messages  # every message had a type the SDK knows
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    finals = [m for m in results if m.is_final]
    text = " ".join(m.channel.alternatives[0].transcript for m in finals)
    assert wer([" ".join(SENTENCES)], [text]) < 0.35, text
    assert not results[0].is_final  # interim results before the first final
    flushed = [m for m in finals if m.from_finalize]
    assert (
        len(flushed) == 1
        and wer([SENTENCES[0]], [flushed[0].channel.alternatives[0].transcript]) < 0.35
    )
    kinds = [type(m) for m in messages]
    assert kinds.index(ListenV1SpeechStarted) < kinds.index(ListenV1Results)
    assert ListenV1UtteranceEnd in kinds[kinds.index(ListenV1Results) :]
    assert kinds[-1] is ListenV1Metadata
    assert messages[-1].duration == pytest.approx((len(first) + len(second)) / 32_000)
