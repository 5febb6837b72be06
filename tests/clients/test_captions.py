"""clients/captions.py as a subprocess against an in-process daemon with FakeModel."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import speech

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "engine"), str(TESTS / "server")]  # fake_model, server_helpers

from fake_model import FakeModel  # noqa: E402
from server_helpers import pcm16, reference_finals  # noqa: E402

from streamasr.server.app import Server  # noqa: E402
from streamasr.server.config import ServerConfig  # noqa: E402

SCRIPT = TESTS.parent / "clients" / "captions.py"
TOKEN = "captions-test-token"


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
