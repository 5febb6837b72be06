"""Session resume (docs/protocol.md, "Resume"): a client whose TCP connection drops comes back
with `session.resume` and ends with every final once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from server_helpers import CHUNK_BYTES, pcm16, receive_all, reference_finals, send_audio, ws_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamasr.server.app import Server
from streamasr.server.protocol import SessionResume, parse_server_message
from streamasr.server.resume import Checkpoint, ResumeError, ResumeTokens

pytestmark = pytest.mark.timeout(120)

SECRET = "a secret the replicas share"


@dataclass
class Client:
    """What a resuming client keeps: the messages, the latest token, the audio it sent."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    token: str | None = None

    def take(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if "resume_token" in message:
            self.token = message["resume_token"]

    @property
    def last_seq(self) -> int:
        return self.messages[-1]["seq"]

    @property
    def session_id(self) -> str:
        return str(self.messages[0]["session_id"])

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def resume(self) -> str:
        assert self.token is not None
        return SessionResume(self.session_id, self.token, self.last_seq).to_json()


async def read_into(ws: ClientConnection, client: Client, finals: int | None = None) -> None:
    """Read into `client` until the server closes, or until `finals` finals came."""
    try:
        async for raw in ws:
            assert isinstance(raw, str)
            client.take(parse_server_message(raw))
            if finals is not None and len(client.of("transcript.final")) >= finals:
                return
    except ConnectionClosed:
        pass


async def until(condition: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def finals_sent(server: Server) -> float:
    """Finals the daemon's sessions have sent (or kept for a held session's client)."""
    [metric] = server.metrics.final_latency.collect()
    return next(s.value for s in metric.samples if s.name.endswith("_count"))


async def drop_mid_stream(
    server: Server, audio: bytes, client: Client, *, finals_read: int = 1, finals_made: int = 1
) -> None:
    """Start a session and send `audio`; read until `finals_read` finals came, then stop
    reading; once the daemon made `finals_made`, drop the TCP connection, no close frame."""
    ws = await connect(ws_url(server))
    reader = asyncio.create_task(read_into(ws, client, finals_read))
    await send_audio(ws, audio)
    await reader
    await until(lambda: finals_sent(server) >= finals_made)
    ws.transport.abort()


async def dropped_after_one_final(
    server: Server, speech_clips: list[np.ndarray]
) -> tuple[Client, np.ndarray, bytes]:
    """A session of the conversation whose connection drops after its first utterance."""
    audio = conversation(speech_clips)
    data = pcm16(audio)
    client = Client()
    await drop_mid_stream(server, data[: len(pcm16(speech_clips[0]))], client)
    return client, audio, data


async def resume_and_finish(server: Server, client: Client, audio: bytes) -> dict[str, Any]:
    """Reconnect with session.resume, send `audio` from the `t` the server names, end the
    session; the session.resumed message."""
    async with connect(ws_url(server)) as ws:
        await ws.send(client.resume())
        reader = asyncio.create_task(read_into(ws, client))
        await until(lambda: client.of("session.resumed"))
        resumed = client.of("session.resumed")[-1]
        await send_audio(ws, audio[int(round(resumed["t"] * 16_000)) * 2 :])
        await ws.send(json.dumps({"type": "session.end"}))
        await reader
    return resumed


def check_once(client: Client, audio: np.ndarray) -> None:
    """Every message once, in seq order, and the finals of the whole audio, each once."""
    seqs = [m["seq"] for m in client.messages]
    assert seqs == list(range(len(seqs))), seqs
    finals = client.of("transcript.final")
    assert [f["segment_id"] for f in finals] == list(range(len(finals)))
    assert [f["text"] for f in finals] == reference_finals(audio)
    assert client.messages[-1]["type"] == "session.ended"


def conversation(speech_clips: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(speech_clips[:3])


async def test_the_same_daemon_replays_what_the_client_missed_and_goes_on(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server()
    audio = conversation(speech_clips)
    data = pcm16(audio)
    client = Client()
    # Two utterances sent; the client reads the first final only, and the connection drops
    # once the second is made: the client never saw it.
    cut = len(pcm16(np.concatenate(speech_clips[:2])))
    await drop_mid_stream(server, data[:cut], client, finals_made=2)
    missed_from = client.last_seq + 1
    await until(lambda: server.held_sessions == 1)
    resumed = await resume_and_finish(server, client, data)
    assert resumed["same_session"] is True and resumed["session_id"] == client.session_id
    assert resumed["t"] == pytest.approx(cut / 32_000, abs=1e-3)  # all it received
    replayed = client.messages[missed_from : missed_from + resumed["replayed"]]
    assert "transcript.final" in [m["type"] for m in replayed]  # made while it was away
    check_once(client, audio)
    assert await server.wait_idle(5.0)


async def test_another_daemon_with_the_secret_continues_from_the_last_final(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    first = await make_server(resume_secret=SECRET)
    second = await make_server(resume_secret=SECRET)
    audio = conversation(speech_clips)
    data = pcm16(audio)
    client = Client()
    # The first utterance and half of the second; the first daemon is then lost to the client.
    cut = len(pcm16(speech_clips[0])) + len(pcm16(speech_clips[1])) // 2
    cut -= cut % CHUNK_BYTES
    await drop_mid_stream(first, data[:cut], client)
    [kept] = client.of("transcript.final")
    resumed = await resume_and_finish(second, client, data)
    assert resumed["same_session"] is False and resumed["replayed"] == 0
    assert resumed["session_id"] == client.session_id
    assert resumed["t"] == kept["end"]  # the audio after the last final it had is sent again
    later = client.of("transcript.final")[1:]
    assert later and all(f["start"] >= kept["end"] for f in later)  # the clock goes on
    assert [f["text"] for f in client.of("transcript.final")] == reference_finals(audio)
    seqs = [m["seq"] for m in client.messages]
    assert seqs == list(range(len(seqs)))
    assert [f["segment_id"] for f in client.of("transcript.final")] == [0, 1, 2]


async def test_a_forged_or_foreign_token_is_refused_and_a_new_session_may_start(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(resume_secret=SECRET)
    stranger = ResumeTokens("another service's secret")
    forged = stranger.issue(Checkpoint("abc", {}, 3, 1, 16_000))
    own = ResumeTokens(SECRET).issue(Checkpoint("abc", {}, 3, 1, 16_000))
    for message in (
        SessionResume("abc", forged, 3).to_json(),
        SessionResume("another", own, 3).to_json(),  # a token of session abc
        json.dumps({"type": "session.resume", "session_id": "abc", "resume_token": own}),
        json.dumps({"type": "session.resume", "session_id": "abc", "last_seq": 1}),
    ):
        async with connect(ws_url(server)) as ws:
            await ws.send(message)
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["code"] == "resume_failed", error
            assert error["fatal"] is False
            await send_audio(ws, pcm16(speech_clips[0]))
            await ws.send(json.dumps({"type": "session.end"}))
            result = await receive_all(ws)
        assert result.types[0] == "session.started" and result.types[-1] == "session.ended"
        assert result.final_texts == reference_finals(speech_clips[0])


async def test_a_client_that_closes_on_purpose_is_not_held(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server()
    async with connect(ws_url(server)) as ws:
        await send_audio(ws, pcm16(speech_clips[0][:16_000]))
        assert json.loads(await ws.recv())["type"] == "session.started"
    assert await server.wait_idle(5.0)  # closed 1000: ended, not held for 30 s
    assert server.held_sessions == 0


async def test_a_session_not_resumed_in_time_ends_and_its_token_starts_anew(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(resume_grace_s=0.5)
    client, audio, data = await dropped_after_one_final(server, speech_clips)
    assert await server.wait_idle(10.0)  # let go after half a second
    assert server.held_sessions == 0
    resumed = await resume_and_finish(server, client, data)
    assert resumed["same_session"] is False
    check_once(client, audio)


async def test_a_full_daemon_takes_back_the_session_it_holds(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    server = await make_server(max_sessions=1)
    client, audio, data = await dropped_after_one_final(server, speech_clips)
    await until(lambda: server.held_sessions == 1)
    async with connect(ws_url(server)) as other:  # the held session took no place
        await other.send(bytes(CHUNK_BYTES))
        assert json.loads(await other.recv())["type"] == "session.started"
        resumed = await resume_and_finish(server, client, data)  # the daemon is full now
    assert resumed["same_session"] is True
    check_once(client, audio)


def test_tokens_are_signed_and_name_their_session() -> None:
    tokens = ResumeTokens(SECRET)
    checkpoint = Checkpoint("s1", {"language": "en", "prompt": "Zürich"}, 7, 2, 48_000)
    token = tokens.issue(checkpoint)
    assert tokens.verify(token, "s1") == checkpoint
    assert ResumeTokens(SECRET).verify(token, "s1") == checkpoint  # a replica with the secret
    body, _, tag = token.partition(".")
    for bad in (f"{body}.{tag[:-2]}AA", f"{body[:-2]}AA.{tag}", "", "x.y", "é.é", token + "."):
        with pytest.raises(ResumeError):
            tokens.verify(bad, "s1")
    with pytest.raises(ResumeError):
        tokens.verify(token, "s2")
    with pytest.raises(ResumeError):
        ResumeTokens().verify(token, "s1")  # a daemon with a secret of its own


async def test_a_resume_takes_the_session_from_a_connection_the_daemon_thinks_alive(
    make_server: Any, speech_clips: list[np.ndarray]
) -> None:
    """The client reconnects before the daemon noticed its old connection died: the token
    proves the session is the client's, and the old connection is dropped."""
    server = await make_server()
    audio = conversation(speech_clips)
    data = pcm16(audio)
    client = Client()
    old = await connect(ws_url(server))
    await send_audio(old, data[: len(pcm16(speech_clips[0]))])
    await read_into(old, client, finals=1)  # the old connection stays open, unread
    resumed = await resume_and_finish(server, client, data)
    assert resumed["same_session"] is True
    await asyncio.wait_for(old.wait_closed(), 5)  # dropped by the daemon
    check_once(client, audio)
    assert await server.wait_idle(5.0)
