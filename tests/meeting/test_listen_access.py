"""`meeting --listen` without a real model: its address parsing, config rules and access checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_model import FakeModel, MultilingualFakeModel
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamasr.config import SessionConfig
from streamasr.errors import InputError
from streamasr.meeting.command import parse_listen
from streamasr.meeting.listen import ListenConfig, MeetingListener
from streamasr.server.protocol import SessionStart
from streamasr.server.worker import DecodePool

TOKEN = "listen-test-token"


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8766") == ("127.0.0.1", 8766)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("8766") == ("127.0.0.1", 8766)
    assert parse_listen(":8766") == ("127.0.0.1", 8766)
    for bad in ("127.0.0.1:", "host:http", "127.0.0.1:70000"):
        with pytest.raises(InputError, match="HOST:PORT"):
            parse_listen(bad)


def test_a_public_address_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without a token"):
        ListenConfig(tmp_path, host="0.0.0.0")
    assert ListenConfig(tmp_path, host="0.0.0.0", token=TOKEN).token == TOKEN
    with pytest.raises(ValueError, match="at least 16 characters"):
        ListenConfig(tmp_path, token="")


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[MeetingListener, list[dict[str, Any]]]]:
    records: list[dict[str, Any]] = []
    pool = DecodePool(1)
    config = ListenConfig(tmp_path / "meetings", token=TOKEN)
    listener = MeetingListener(config, FakeModel(), records.append, pool)  # type: ignore[arg-type]
    await listener.start()
    yield listener, records
    await listener.stop()
    pool.shutdown()


async def refused_status(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, **kwargs)
    return refused.value.response.status_code


async def test_access_checks(listener: tuple[MeetingListener, list[dict[str, Any]]]) -> None:
    server, records = listener
    url = server.url
    assert url == f"ws://127.0.0.1:{server.port}/v1/stream"
    assert await refused_status(url) == 401
    assert await refused_status(url + "?token=wrong") == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    other = url.replace("/v1/stream", "/other")
    assert await refused_status(other, additional_headers=bearer) == 404
    assert await refused_status(url, additional_headers=bearer, origin="http://127.0.0.1") == 403
    assert records == [], "a refused request must not open a meeting"

    async with connect(url + f"?token={TOKEN}") as ws:  # the token in the query also works
        await ws.send(json.dumps({"type": "session.end"}))
        replies = [json.loads(m) async for m in ws]
    assert [m["type"] for m in replies] == ["session.started", "session.ended"]
    assert replies[0]["limits"] == {
        "max_frame_bytes": 1_048_576,
        "idle_timeout_s": 60.0,  # an idle producer gives its slot back
        "max_session_s": None,
    }
    assert ws.close_code == 1000
    assert [r["type"] for r in records] == ["meeting.started", "meeting.ended"]
    assert records[1]["finals"] == 0 and records[1]["reason"] == "end"
    assert (Path(records[1]["dir"]) / "transcript.md").is_file()


async def test_a_split_before_the_meeting_opens_changes_nothing(
    listener: tuple[MeetingListener, list[dict[str, Any]]],
) -> None:
    server, records = listener
    async with connect(server.url + f"?token={TOKEN}") as ws:
        await ws.send("{not json")  # connected, nothing started yet
        server.split()  # what SIGUSR1 calls
        await ws.send(json.dumps({"type": "session.end"}))
        replies = [json.loads(m) async for m in ws]
    assert [m["type"] for m in replies] == ["error", "session.started", "session.ended"]
    assert replies[0]["code"] == "bad_json" and not replies[0]["fatal"]
    assert ws.close_code == 1000
    assert [r["type"] for r in records] == ["meeting.started", "meeting.ended"]


async def test_an_idle_producer_gives_its_slot_back(tmp_path: Path) -> None:
    """A producer that stops sending audio holds the one slot only for the idle timeout."""
    records: list[dict[str, Any]] = []
    pool = DecodePool(1)
    config = ListenConfig(tmp_path / "meetings", token=TOKEN, idle_timeout_s=0.5)
    server = MeetingListener(config, FakeModel(), records.append, pool)  # type: ignore[arg-type]
    await server.start()
    try:
        url = server.url + f"?token={TOKEN}"
        async with connect(url) as idle:
            await idle.send(SessionStart().to_json())
            replies = [json.loads(m) async for m in idle]  # until the server closes
        assert idle.close_code == 1000 and idle.close_reason == "idle"
        assert [m["type"] for m in replies] == ["session.started", "session.ended"]
        assert replies[0]["limits"]["idle_timeout_s"] == 0.5
        assert replies[1]["reason"] == "idle"
        assert [(r["type"], r.get("reason")) for r in records] == [
            ("meeting.started", None),
            ("meeting.ended", "idle"),
        ]
        async with connect(url) as next_one:  # the slot is free again
            await next_one.send(json.dumps({"type": "session.end"}))
            assert [json.loads(m)["type"] async for m in next_one] == [
                "session.started",
                "session.ended",
            ]
    finally:
        await server.stop()
        pool.shutdown()


async def test_a_producer_that_names_no_language_gets_the_meetings(tmp_path: Path) -> None:
    """`meeting --language es --listen`: a session.start without a language decodes in es, one
    that names its own keeps it."""
    pool = DecodePool(1)
    session = SessionConfig(language="es")
    config = ListenConfig(tmp_path / "meetings", token=TOKEN, session=session)
    server = MeetingListener(config, MultilingualFakeModel(), lambda _: None, pool)  # type: ignore[arg-type]
    await server.start()
    started = []
    try:
        for start in ({"type": "session.start"}, {"type": "session.start", "language": "en"}):
            async with connect(server.url + f"?token={TOKEN}") as ws:
                await ws.send(json.dumps(start))
                await ws.send(json.dumps({"type": "session.end"}))
                started.append(json.loads(await ws.recv()))
                assert [json.loads(m)["type"] async for m in ws] == ["session.ended"]
    finally:
        await server.stop()
        pool.shutdown()
    assert [s["language"] for s in started] == ["es", "en"]
