"""SIGKILL mid-meeting keeps each reported final; a restart makes a new meeting, old one intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import speech

from streamasr import SAMPLE_RATE

SENTENCES = (
    "Good morning everyone, let us start the weekly meeting.",
    "The first item is the release of the streaming server.",
    "We fixed the memory leak in the decoder last week.",
    "Next we need to write the documentation for the new protocol.",
    "Please send your comments before Friday afternoon.",
    "The next meeting is on Monday at ten o'clock.",
    "Thank you all for coming today.",
)
TIMEOUT_S = 240  # model load and decode on a slow CPU; a hang fails the test, never blocks CI


def meeting_wav(directory: Path) -> Path:
    parts = [speech.silence(0.5)]
    for text in SENTENCES:
        parts += [speech.espeak(text, directory), speech.silence(1.2)]
    path = directory / "meeting.wav"
    sf.write(path, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return path


class Meeting:
    """`streamasr meeting` as a subprocess whose stdout JSON lines are read as they come."""

    def __init__(self, wav: Path, out: Path, model_dir: Path, log: Path) -> None:
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamasr.cli",
                "meeting",
                "--input",
                str(wav),
                "--out",
                str(out),
                "--model",
                str(model_dir),
                "--speed",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=out.parent,  # not the checkout: its kernels/ folder must not be importable
        )
        self.watchdog = threading.Timer(TIMEOUT_S, self.proc.kill)
        self.watchdog.start()
        self.log = log

    def read_finals(self, n: int) -> list[dict[str, Any]]:
        """Read stdout until `n` finals with text have been reported."""
        assert self.proc.stdout is not None
        finals: list[dict[str, Any]] = []
        while len(finals) < n:
            line = self.proc.stdout.readline()
            assert line, f"meeting exited early: {self.log.read_text()[-2000:]}"
            record = json.loads(line)
            if record["type"] == "transcript.final" and record["text"].strip():
                finals.append(record)
        return finals

    def stop(self, sig: int) -> str:
        self.proc.send_signal(sig)
        rest, _ = self.proc.communicate(timeout=TIMEOUT_S)
        self.watchdog.cancel()
        self.stderr.close()
        return rest.decode()


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_sigkill_keeps_reported_finals_and_restart_leaves_old_meeting_intact(
    tmp_path: Path, tiny_en_dir: Path
) -> None:
    wav = meeting_wav(tmp_path)
    out = tmp_path / "meetings"

    first = Meeting(wav, out, tiny_en_dir, tmp_path / "first.log")
    reported = first.read_finals(3)
    first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL

    (old,) = out.iterdir()
    assert {r["meeting"] for r in reported} == {old.name}
    raw = (old / "transcript.jsonl").read_bytes()
    assert raw.endswith(b"\n"), "a torn last line"
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert all(r["type"] == "transcript.final" for r in lines)
    on_disk = [r for r in lines if r["text"].strip()]
    assert on_disk[: len(reported)] == [
        {k: v for k, v in r.items() if k != "meeting"} for r in reported
    ]
    assert "transcript.srt" not in os.listdir(old)  # killed: never rendered
    before = snapshot(old)

    second = Meeting(wav, out, tiny_en_dir, tmp_path / "second.log")
    again = second.read_finals(1)
    rest = second.stop(signal.SIGTERM)  # graceful: finalise and render
    assert second.proc.returncode == 0, (tmp_path / "second.log").read_text()[-2000:]
    new = out / again[0]["meeting"]
    assert new != old and sorted(p.name for p in out.iterdir()) == sorted([old.name, new.name])
    assert snapshot(old) == before, "the restart touched the old meeting"
    assert json.loads(rest.splitlines()[-1])["type"] == "meeting.ended"
    assert {p.name for p in new.iterdir()} >= {"transcript.srt", "transcript.vtt", "transcript.md"}

    subprocess.run(
        [sys.executable, "-m", "streamasr.cli", "meeting", "render", str(old)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=120,
    )
    srt = (old / "transcript.srt").read_text()
    assert all(r["text"].strip() in srt for r in reported)
    assert (old / "transcript.jsonl").read_bytes() == before["transcript.jsonl"]
