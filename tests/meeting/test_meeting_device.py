"""`streamasr meeting --device`: espeak-ng speech recorded through sounddevice from a virtual
ALSA capture device (tests/virtual_mic.py), transcribed by tiny.en into a meeting directory."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
from virtual_mic import VirtualMic

SENTENCES = (
    "Good morning everyone, let us start the weekly meeting.",
    "Please send your comments before Friday afternoon.",
)
EXPECTED = {"morning", "weekly", "meeting", "comments", "friday"}
TIMEOUT_S = 240  # model load and decode on a slow, shared CPU; a hang fails, never blocks CI
BLOCK_FRAMES = 800  # DeviceSource's 50 ms float32 blocks: what PortAudio reads from the device


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def meeting_cmd(device: str, out: Path, model: str) -> list[str]:
    meeting = [sys.executable, "-m", "streamasr.cli", "meeting", "--device", device]
    return [*meeting, "--out", str(out), "--model", model]


def spoken(directory: Path) -> np.ndarray:
    """The sentences with pauses between them, 16 kHz float32."""
    parts = [speech.silence(0.5)]
    for text in SENTENCES:
        parts += [speech.espeak(text, directory), speech.silence(1.5)]
    return np.concatenate(parts)


@pytest.mark.slow
def test_meeting_records_speech_from_a_named_sound_device(
    tmp_path: Path, tiny_en_dir: Path
) -> None:
    mic = VirtualMic(tmp_path, spoken(tmp_path), block_frames=BLOCK_FRAMES, speed=2.0)
    out = tmp_path / "meetings"
    log = tmp_path / "meeting.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            meeting_cmd(mic.name, out, str(tiny_en_dir)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=mic.env(),
            pass_fds=mic.pass_fds,
            cwd=tmp_path,  # not the checkout: its kernels/ folder must not be importable
        )
        watchdog = threading.Timer(TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            records: list[dict[str, Any]] = []
            heard: set[str] = set()
            while not heard >= EXPECTED:  # read finals as the device plays the sentences
                line = proc.stdout.readline()
                assert line, f"meeting exited early: {log.read_text()[-2000:]}"
                records.append(json.loads(line))
                if records[-1]["type"] == "transcript.final":
                    heard |= words(records[-1]["text"])
            proc.send_signal(signal.SIGTERM)  # the microphone never ends: stop as a user would
            rest, _ = proc.communicate(timeout=TIMEOUT_S)
        finally:
            watchdog.cancel()
            proc.kill()
            mic.close()
    assert proc.returncode == 0, log.read_text()[-2000:]
    records += [json.loads(line) for line in rest.decode().splitlines()]
    assert records[0]["type"] == "meeting.started"
    assert records[-1]["type"] == "meeting.ended" and records[-1]["reason"] == "end"
    meeting = Path(records[0]["dir"])
    lines = (meeting / "transcript.jsonl").read_text().splitlines()
    finals = [r for r in records if r["type"] == "transcript.final"]
    assert [json.loads(line) for line in lines] == [
        {k: v for k, v in f.items() if k != "meeting"} for f in finals
    ]
    for name in ("transcript.srt", "transcript.vtt", "transcript.md"):
        assert words((meeting / name).read_text()) >= EXPECTED, name


def test_an_unknown_device_is_a_usage_error_before_the_model_loads(tmp_path: Path) -> None:
    mic = VirtualMic(tmp_path, speech.silence(0.1), block_frames=BLOCK_FRAMES)
    try:
        listed = subprocess.run(
            [sys.executable, "-c", "import sounddevice; print(sounddevice.query_devices())"],
            env=mic.env(),
            pass_fds=mic.pass_fds,
            capture_output=True,
            text=True,
            timeout=60,
        )
        failed = subprocess.run(
            meeting_cmd("no_such_mic", tmp_path / "meetings", "/no/such/model"),
            env=mic.env(),
            pass_fds=mic.pass_fds,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    finally:
        mic.close()
    assert re.search(rf"\b{mic.name}, ALSA \(\d+ in", listed.stdout), listed.stdout + listed.stderr
    assert failed.returncode == 2, failed.stderr
    expected = "streamasr: error: cannot record from sound input 'no_such_mic': "
    assert failed.stderr.startswith(expected), failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert not (tmp_path / "meetings").exists()
