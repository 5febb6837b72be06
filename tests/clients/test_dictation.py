"""Dictation client: spoken punctuation, and xdotool typing into a Tk window under Xvfb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients"))

from dictation import Committer, choose_backend, spoken_punctuation, type_text  # noqa: E402

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


def test_xdotool_types_into_the_focused_window(
    display: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdotool = need("xdotool")
    monkeypatch.setenv("DISPLAY", display)
    out = tmp_path / "typed.txt"
    app = subprocess.Popen([sys.executable, "-c", TK_APP, str(out)])
    try:
        wid = subprocess.run(
            [xdotool, "search", "--sync", "--name", "dictation-test"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()[0]
        subprocess.run([xdotool, "windowfocus", "--sync", wid], check=True, timeout=10)
        c = Committer(punctuation=True)
        for final in (" Hello comma world period", " New line second line question mark"):
            type_text(c.text(final), choose_backend(os.environ))
        subprocess.run([xdotool, "key", "Escape"], check=True, timeout=10)
        app.wait(30)
    finally:
        app.kill()
    assert out.read_text() == "Hello, world.\nsecond line?"
