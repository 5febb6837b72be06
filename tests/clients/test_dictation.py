"""Dictation client: spoken punctuation, xdotool typing into a Tk window under Xvfb, and the
whole audio path: a speech file or a (virtual) microphone -> a real daemon on tiny.en -> typed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
import speech
from scripted_server import (
    HOSTILE,
    TOKEN_ALLOWED,
    Connecting,
    finals,
    record_connects,
    scripted_server,
)
from virtual_mic import VirtualMic

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "dictation.py"
sys.path.insert(0, str(CLIENT.parent))

import dictation  # noqa: E402
from dictation import CHUNK, Committer, choose_backend, spoken_punctuation, type_text  # noqa: E402

FIRST = "Please call me tomorrow after the meeting period"  # said as a word: "period"
SECOND = "The report is ready question mark"
TIMEOUT_S = 240  # model load and decode on a slow, shared CPU; a hang fails, never blocks CI

TK_APP = r"""
import sys, tkinter as tk
root = tk.Tk(); root.title("dictation-test")
text = tk.Text(root); text.pack(); text.focus_force()
def done(_event):
    open(sys.argv[1], "w").write(text.get("1.0", "end-1c")); root.destroy()
root.bind("<Escape>", done)
root.mainloop()
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:  # a hard failure: a skip would leave typing untested
        pytest.fail(f"{tool} is missing (apt-get install xvfb xdotool)")
    return path


@pytest.fixture
def display() -> Iterator[str]:
    """A private Xvfb on a free display number (Xvfb picks it and writes it to -displayfd)."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [need("Xvfb"), "-displayfd", str(w), "-screen", "0", "800x600x24"],
        pass_fds=(w,),
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    assert number, "Xvfb did not start"
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_spoken_punctuation() -> None:
    assert spoken_punctuation("Hello comma world period new line next question mark") == (
        "Hello, world.\nnext?"
    )
    assert spoken_punctuation("Hello, comma, world. Period.") == "Hello, world."
    assert spoken_punctuation("no marks here") == "no marks here"


def test_committer_spaces_utterances() -> None:
    c = Committer(punctuation=True)
    assert [c.text(t) for t in (" First one period", " ", " second comma okay")] == [
        "First one.",
        "",
        " second, okay",
    ]


def test_backend_choice_follows_the_session() -> None:
    need("xdotool")
    assert choose_backend({"DISPLAY": ":9"}) == "xdotool"
    with pytest.raises(SystemExit):
        choose_backend({})


def typed_in_window(display: str, tmp_path: Path, typist: Callable[[], None]) -> str:
    """Open a Tk text window on `display`, focus it, run `typist`, return what it typed."""
    xdotool = need("xdotool")
    out = tmp_path / "typed.txt"
    env = {**os.environ, "DISPLAY": display}
    app = subprocess.Popen([sys.executable, "-c", TK_APP, str(out)], env=env)
    try:
        wid = subprocess.run(
            [xdotool, "search", "--sync", "--name", "dictation-test"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env=env,
        ).stdout.split()[0]
        subprocess.run([xdotool, "windowfocus", "--sync", wid], check=True, timeout=10, env=env)
        typist()
        subprocess.run([xdotool, "key", "Escape"], check=True, timeout=10, env=env)
        app.wait(30)
    finally:
        app.kill()
    return out.read_text()


def test_xdotool_types_into_the_focused_window(
    display: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("xdotool")
    monkeypatch.setenv("DISPLAY", display)

    def typist() -> None:
        c = Committer(punctuation=True)
        for final in (" Hello comma world period", " New line second line question mark"):
            type_text(c.text(final), choose_backend(os.environ))

    assert typed_in_window(display, tmp_path, typist) == "Hello, world.\nsecond line?"


# ------------------------------------------------------------------ untrusted server text
@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the in-process client has xdotool type, one entry per call; nothing is typed."""
    texts: list[str] = []

    def run(argv: list[str], **kwargs: Any) -> None:
        assert argv[:-1] == dictation.BACKENDS["xdotool"]
        texts.append(argv[-1])

    monkeypatch.setattr(dictation, "subprocess", SimpleNamespace(run=run))
    monkeypatch.delenv("STREAMASR_TOKEN", raising=False)
    return texts


def test_server_text_is_typed_without_controls(
    typed: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(wav, speech.silence(0.5), 16_000, subtype="PCM_16")
    fatal = {"type": "error", "code": "x", "message": "bad\x1b]0;pwn\x07\nnews", "fatal": True}
    with scripted_server(finals([sent for sent, _ in HOSTILE]) + [fatal]) as server:
        argv = ["--url", server.url, "--token", "t", "--backend", "xdotool", "--input", str(wav)]
        assert dictation.main(argv) == 1  # the fatal error
    shown = [shown for _, shown in HOSTILE]
    assert typed == [shown[0]] + [" " + text for text in shown[1:]]  # one space between finals
    assert capsys.readouterr().err == "dictation: bad news\n"
    # the token went to this machine over ws://, as it may
    assert server.authorization == ["Bearer t"]


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs the in-process client tries to open; each try raises `Connecting`."""
    import websockets.asyncio.client

    return record_connects(monkeypatch, websockets.asyncio.client)


@pytest.mark.parametrize("url", ["ws://example.com/v1/stream", "ws://192.168.1.9:8765/v1/stream"])
def test_a_token_in_clear_to_another_host_is_refused_before_connecting(
    url: str, connects: list[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        dictation.main(["--url", url, "--token", "s3cret", "--backend", "xdotool"])
    assert connects == []
    message = refused.value.code  # printed on stderr, exit status 1
    assert isinstance(message, str) and len(message.splitlines()) == 1 and "s3cret" not in message
    assert message.startswith("dictation: refusing to send the token unencrypted")
    assert "--insecure-token" in message


@pytest.mark.parametrize(("url", "extra"), TOKEN_ALLOWED)
def test_a_token_goes_to_loopback_over_wss_or_with_the_flag(
    url: str, extra: list[str], connects: list[str]
) -> None:
    with pytest.raises(Connecting):
        dictation.main(["--url", url, *extra, "--backend", "xdotool"])
    assert connects == [url]


# ------------------------------------------------------------------ the audio path, end to end
@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_en_dir: Path) -> Iterator[str]:
    """`streamasr serve` on tiny.en and a free port, as a subprocess; its WebSocket URL."""
    directory = tmp_path_factory.mktemp("daemon")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMASR_")}
    log = (directory / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamasr.cli", "serve", "--port", "0"]
        + ["--model", str(tiny_en_dir)],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=directory,  # not the checkout: its kernels/ folder must not be importable
    )
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().decode()  # "streamasr: serving captions at http://H:P/"
        found = re.search(r"http://([^/]+)/", ready)
        assert found, f"daemon did not start: {(directory / 'serve.log').read_text()[-2000:]}"
        watchdog.cancel()
        yield f"ws://{found.group(1)}/v1/stream"
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(60)
        log.close()


def run_client(*args: str, env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> None:
    done = subprocess.run(
        [sys.executable, str(CLIENT), "--backend", "xdotool", *args],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def two_sentences(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    return speech.espeak(FIRST, directory, wpm=150), speech.espeak(SECOND, directory, wpm=150)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.mark.slow
def test_speech_file_is_typed_into_the_window(display: str, daemon: str, tmp_path: Path) -> None:
    first, second = two_sentences(tmp_path)
    pause = speech.silence(1.5)
    audio = np.concatenate([speech.silence(0.5), first, pause, second, pause])
    wav = tmp_path / "dictation.wav"  # 22.05 kHz stereo: the daemon resamples, the client mixes
    stereo = np.stack([audio, audio], axis=1)
    sf.write(wav, soxr.resample(stereo, 16_000, 22_050), 22_050, subtype="PCM_16")
    env = {**os.environ, "DISPLAY": display}

    def typist() -> None:
        run_client("--url", daemon, "--input", str(wav), "--punctuation", env=env)

    typed = typed_in_window(display, tmp_path, typist)
    # both utterances, in order, one space apart, the spoken marks turned into punctuation
    expected = "please call me tomorrow after the meeting the report is ready"
    assert words(typed) == words(expected), typed
    assert re.fullmatch(r"\S[^\n]*\. \S[^\n]*\?", typed), typed


@pytest.mark.slow
def test_microphone_speech_is_typed_once(display: str, daemon: str, tmp_path: Path) -> None:
    first, second = two_sentences(tmp_path)
    pause = speech.silence(1.5)
    audio = np.concatenate([speech.silence(0.5), first, pause, second, pause])
    mic = VirtualMic(tmp_path, audio, block_frames=CHUNK, speed=2.0)  # the client's 50 ms blocks
    env = mic.env({**os.environ, "DISPLAY": display})
    try:

        def typist() -> None:
            run_client(
                "--url", daemon, "--device", mic.name, "--once", env=env, pass_fds=mic.pass_fds
            )

        typed = typed_in_window(display, tmp_path, typist)
    finally:
        mic.close()
    # --once: the first utterance only, then the client exits (the microphone plays on)
    assert words(typed) == words("please call me tomorrow after the meeting period"), typed
