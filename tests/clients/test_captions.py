"""clients/captions.py as a subprocess against an in-process daemon with FakeModel."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speech

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "engine"), str(TESTS / "server")]  # fake_model, server_helpers

from fake_model import FakeModel  # noqa: E402
from scripted_server import (  # noqa: E402
    HOSTILE,
    TOKEN_ALLOWED,
    Connecting,
    finals,
    record_connects,
    scripted_server,
)
from server_helpers import pcm16, reference_finals  # noqa: E402

from streamasr.server.app import Server  # noqa: E402
from streamasr.server.config import ServerConfig  # noqa: E402

SCRIPT = TESTS.parent / "clients" / "captions.py"
TOKEN = "captions-test-token"
sys.path.insert(0, str(SCRIPT.parent))

import captions as captions_client  # noqa: E402


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server(ServerConfig(port=0, token=TOKEN), model_factory=lambda _spec: FakeModel())
    await server.startup()
    yield server
    await server.shutdown()


@pytest.fixture
def clip(sentences: list[np.ndarray]) -> np.ndarray:
    """Two utterances with a pause between them, so there are two finals."""
    pause = speech.silence(1.2)
    return np.concatenate([speech.silence(0.3), sentences[0], pause, sentences[1], pause])


def write_wav(path: Path, x: np.ndarray) -> Path:
    """16 kHz s16le, the exact samples the server decodes, so reference_finals applies."""
    sf.write(path, np.frombuffer(pcm16(x), dtype="<i2"), 16_000, subtype="PCM_16")
    return path


async def captions(*args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """Run the client (stdout a pipe, not a TTY); exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k != "STREAMASR_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/stream"


async def test_json_prints_every_event_in_order(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    rc, out, err = await captions(
        "--url", url(server), "--token", TOKEN, "--json", "--speed", "8", str(wav)
    )
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    types = [e["type"] for e in events]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert types[0] == "session.started" and types[-1] == "session.ended"
    assert events[0]["audio"] == {"encoding": "pcm_s16le", "sample_rate": 16_000, "channels": 1}
    assert events[-1]["reason"] == "client"
    assert "transcript.partial" in types and "speech.started" in types
    finals = [e["text"] for e in events if e["type"] == "transcript.final"]
    assert finals == reference_finals(clip) and len(finals) == 2


async def test_plain_output_on_a_pipe_is_the_finals_only(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    rc, out, err = await captions(
        "--url", url(server), "--token", TOKEN, "--speed", "max", str(wav)
    )
    assert rc == 0, err
    assert "\r" not in out and "\x1b" not in out
    assert out.splitlines() == [t.strip() for t in reference_finals(clip)]


async def test_a_file_at_another_rate_is_sent_in_its_own_rate(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    import soxr

    wav = tmp_path / "clip44.wav"
    sf.write(wav, soxr.resample(clip, 16_000, 44_100), 44_100, subtype="PCM_16")
    rc, out, err = await captions(
        "--url", url(server), "--token", TOKEN, "--json", "--speed", "max", str(wav)
    )
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["audio"]["sample_rate"] == 44_100
    assert sum(e["type"] == "transcript.final" for e in events) == 2


async def test_a_wrong_token_is_a_one_line_error_and_exit_2(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip[:16_000])
    rc, out, err = await captions("--url", url(server), "--token", "wrong", str(wav))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "401" in err, err


async def test_an_unreachable_url_is_a_one_line_error_and_exit_2(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.5))
    rc, out, err = await captions("--url", "ws://127.0.0.1:9/v1/stream", str(wav), timeout_s=20)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("captions: cannot connect to"), err


async def test_a_missing_file_is_exit_2(tmp_path: Path) -> None:
    rc, _, err = await captions(str(tmp_path / "nope.wav"), timeout_s=20)
    assert rc == 2 and err.strip().splitlines() == [
        f"captions: no such file: {tmp_path / 'nope.wav'}"
    ]


async def test_ctrl_c_ends_the_session_and_waits_for_the_final(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", clip)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--url",
        url(server),
        "--token",
        TOKEN,
        "--json",
        str(wav),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    events = []
    async with asyncio.timeout(60):
        while line := await proc.stdout.readline():
            events.append(json.loads(line))
            if events[-1]["type"] == "transcript.partial" and len(events) < 100:
                proc.send_signal(2)  # SIGINT mid-utterance, as Ctrl-C does
                break
        rest, err = await proc.communicate()
    events += [json.loads(line) for line in rest.decode().splitlines()]
    assert proc.returncode == 0, err
    types = [e["type"] for e in events]
    assert types[-3:] == ["speech.stopped", "transcript.final", "session.ended"], types
    assert events[-1]["reason"] == "client"
    assert events[-2]["end"] < len(clip) / 16_000 / 2  # it stopped early, in the first sentence


async def test_a_terminal_gets_the_partial_rewritten_in_place(
    server: Server, clip: np.ndarray, tmp_path: Path
) -> None:
    import pty

    wav = write_wav(tmp_path / "clip.wav", clip)
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--url",
        url(server),
        "--token",
        TOKEN,
        "--speed",
        "8",
        str(wav),
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(slave)

    def read_all() -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return b"".join(chunks)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    try:
        out, _ = await asyncio.wait_for(
            asyncio.gather(asyncio.to_thread(read_all), proc.wait()), 60
        )
    finally:
        os.close(master)
    text = out.decode()
    assert proc.returncode == 0
    assert "\r\x1b[K" in text  # partials rewrite the current line
    lines = [
        line.rsplit("\x1b[K", 1)[-1].strip() for line in text.replace("\r\n", "\n").split("\n")
    ]
    assert [line for line in lines if line] == [t.strip() for t in reference_finals(clip)]


# ------------------------------------------------------------------ untrusted server text
def invisible(text: str) -> list[str]:
    """The control and format characters in `text`, line ends aside."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")]


async def test_server_text_reaches_the_terminal_without_escapes(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.5))
    error = {"type": "error", "code": "bad\x1b[31m", "message": "oops\x1b]0;pwn\x07\nnow"}
    script = finals([sent for sent, _ in HOSTILE]) + [{**error, "fatal": False}]
    with scripted_server(script, close_code=1011, close_reason="gone\x1b[2J") as server:
        rc, out, err = await captions(
            "--url", server.url, "--token", TOKEN, "--speed", "max", str(wav)
        )
    assert rc == 1  # the server closed with 1011
    assert out.splitlines() == [shown for _, shown in HOSTILE]
    assert err.splitlines() == ["server error bad: oops now", "connection closed: 1011 gone"]
    assert invisible(out + err) == []
    # the token went to this machine over ws://, as it may
    assert server.authorization == [f"Bearer {TOKEN}"]


async def test_json_escapes_server_text_and_keeps_it_exact(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.5))
    sent = [text for text, _ in HOSTILE]
    with scripted_server(finals(sent)) as server:
        rc, out, err = await captions("--url", server.url, "--json", "--speed", "max", str(wav))
    assert rc == 0, err
    assert invisible(out) == []
    assert [json.loads(line)["text"] for line in out.splitlines()] == sent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_partial_on_a_terminal_is_shown_without_escapes() -> None:
    term = Terminal()
    printer = captions_client.Printer(term, as_json=False)
    for sent, shown in HOSTILE:
        printer.show({"type": "transcript.partial", "text": sent, "seq": 0})
        assert term.getvalue().rsplit("\r\x1b[K", 1)[-1] == shown
    assert invisible(term.getvalue().replace("\r\x1b[K", "")) == []


# ------------------------------------------------------------------ the token on the network
@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs the in-process client tries to open; each try raises `Connecting`."""
    return record_connects(monkeypatch, captions_client)


@pytest.mark.parametrize(
    "url",
    [
        "ws://example.com/v1/stream",
        "ws://10.0.0.2:8765/v1/stream",
        "ws://[2001:db8::1]:8765/v1/stream",
        "ws://localhost.example.com/v1/stream",
        "ws://128.0.0.1/v1/stream",
    ],
)
def test_a_token_in_clear_to_another_host_is_refused_before_connecting(
    url: str, connects: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.2))
    assert captions_client.main(["--url", url, "--token", "s3cret", str(wav)]) == 2
    assert connects == []
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "s3cret" not in err
    assert (
        err.startswith("captions: refusing to send the token unencrypted")
        and "--insecure-token" in err
    )


@pytest.mark.parametrize(("url", "extra"), TOKEN_ALLOWED)
def test_a_token_goes_to_loopback_over_wss_or_with_the_flag(
    url: str, extra: list[str], connects: list[str], tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.2))
    with pytest.raises(Connecting):
        captions_client.main(["--url", url, *extra, str(wav)])
    assert connects == [url]


def test_a_token_from_the_environment_is_refused_too(
    connects: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMASR_TOKEN", "s3cret")
    wav = write_wav(tmp_path / "clip.wav", speech.silence(0.2))
    assert captions_client.main(["--url", "ws://example.com/v1/stream", str(wav)]) == 2
    assert connects == []
