"""The queue policies, the arrival clock, config precedence and checks, and sd_notify."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest

from streamasr.events import SpeechStarted, TranscriptFinal, TranscriptPartial
from streamasr.net import is_loopback
from streamasr.server.config import ConfigError, ServerConfig, load_config
from streamasr.server.notify import notify
from streamasr.server.protocol import End, Flush
from streamasr.server.queues import ArrivalClock, CloseRequest, Inbox, Outbox


def partial(segment: int, text: str) -> TranscriptPartial:
    return TranscriptPartial(segment, text, "", 0, 100)


async def test_outbox_merges_partials_and_never_drops_finals() -> None:
    dropped: list[int] = []
    box = Outbox(limit=3, on_drop=lambda: dropped.append(1))
    assert box.put(SpeechStarted(0))
    assert box.put(partial(0, "a"))
    assert box.put(partial(0, "a b"))  # replaces "a"
    assert len(box) == 2 and len(dropped) == 1
    assert box.put(TranscriptFinal(0, "a b c", 0, 100))  # replaces "a b"
    assert [type(await box.get()) for _ in range(2)] == [SpeechStarted, TranscriptFinal]
    for i in range(3):
        assert box.put(TranscriptFinal(i, "x", 0, 1))
    assert not box.put(TranscriptFinal(3, "x", 0, 1))  # over the limit: client too slow
    assert len(dropped) == 2


async def test_outbox_discards_everything_after_a_close_request() -> None:
    box = Outbox(limit=2)
    box.put(CloseRequest(1000, ""))
    assert box.put(SpeechStarted(0)) and len(box) == 1
    assert await box.get() == CloseRequest(1000, "")


async def test_inbox_coalesces_audio_keeps_order_and_pauses_when_full() -> None:
    box = Inbox(max_samples=10)
    await box.put_audio(np.ones(4, np.float32))
    await box.put_audio(np.ones(7, np.float32))  # 11 >= 10: the next put waits
    flush = asyncio.create_task(box.put_command(Flush()))  # a flush waits for room too
    await asyncio.sleep(0.01)
    assert not flush.done() and box.queued_samples == 11
    first = await box.get()
    assert isinstance(first, np.ndarray) and first.size == 11
    await flush
    assert box.queued_samples == box.flush_samples == 1  # a tenth of the room
    await box.put_audio(np.zeros(3, np.float32))
    assert isinstance(await box.get(), Flush) and box.queued_samples == 3
    await box.put_command(End("client"))
    third = await box.get()
    assert isinstance(third, np.ndarray) and third.size == 3
    assert await box.get() == End("client")


def test_arrival_clock_maps_engine_samples_to_arrival_times() -> None:
    clock = ArrivalClock(sample_rate=48_000)
    clock.mark(4_800, 1.0)  # 0.1 s -> 1600 samples at 16 kHz
    clock.mark(4_800, 2.0)
    assert clock.time_of(1) == 1.0 and clock.time_of(1600) == 1.0
    assert clock.time_of(1601) == 2.0 and clock.time_of(3200) == 2.0
    assert clock.time_of(3201) is None


def test_config_precedence_is_flags_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "serve.toml"
    file.write_text('port = 9000\nmax-sessions = 2\nallow_origins = ["https://a.example"]\n')
    env = {"STREAMASR_PORT": "9100", "STREAMASR_IDLE_TIMEOUT_S": "5", "STREAMASR_OTHER": "x"}
    config = load_config(file, env, {"port": 9200, "host": None})
    assert config.port == 9200 and config.max_sessions == 2 and config.idle_timeout_s == 5.0
    assert config.allow_origins == ("https://a.example",) and config.host == "127.0.0.1"
    assert load_config(file, env, {}).port == 9100
    assert load_config(None, {"STREAMASR_ALLOW_ORIGINS": "https://a, https://b"}).allow_origins == (
        "https://a",
        "https://b",
    )
    assert load_config() == ServerConfig()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prot = 1\n", "unknown setting"),
        ("port = 'x'\n", "bad value"),
        ("max_sessions = 1.5\n", "bad value"),
        ("port = true\n", "bad value"),
        ("port = [\n", "not valid TOML"),
        ("max_sessions = -1\n", "must be 0 \\(derived\\) or positive"),
        ("workers = 0\n", "must be positive"),
        ("host = '0.0.0.0'\n", "without a token"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, text: str, match: str) -> None:
    file = tmp_path / "serve.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(file, {})


def test_a_token_is_required_off_loopback_only() -> None:
    assert (
        ServerConfig(host="0.0.0.0", token="a-long-enough-secret").token == "a-long-enough-secret"
    )
    for short in ("", "secret", "x" * 15):
        with pytest.raises(ConfigError, match="at least 16 characters"):
            ServerConfig(host="0.0.0.0", token=short)
    with pytest.raises(ConfigError, match="printable ASCII"):
        ServerConfig(token="s3cret token with spaces")
    with pytest.raises(ConfigError, match="without a token"):
        ServerConfig(host="192.168.1.2")
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "example.org", "10.0.0.1"))


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_writes_to_the_datagram_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"@streamasr-test-{id(tmp_path)}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:] if abstract else name)
        assert notify("READY=1", {"NOTIFY_SOCKET": name})
        assert sock.recv(100) == b"READY=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
