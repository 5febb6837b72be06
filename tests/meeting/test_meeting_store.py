"""Meeting store and recorder: jsonl -> srt/vtt/md, and long silence splitting meetings."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
from fake_model import FakeModel

from streamasr import SAMPLE_RATE
from streamasr.config import SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.events import TranscriptFinal, Word
from streamasr.meeting.recorder import MeetingRecorder
from streamasr.meeting.store import RENDERED, MeetingWriter, read_finals, render_dir

SR = SAMPLE_RATE


def test_render_jsonl_to_srt_vtt_md(tmp_path: Path) -> None:
    writer = MeetingWriter(tmp_path, origin_sample=10 * SR, now=0.0)
    assert writer.path.name == "19700101T000000Z"
    writer.append(
        TranscriptFinal(
            3, " Hello there.", 11 * SR, 13 * SR, (Word(" Hello", 11 * SR, 12 * SR, 0.9),)
        )
    )
    writer.append(TranscriptFinal(4, " Second line.", 3671 * SR + SR // 2, 3674 * SR))
    with open(writer.path / "transcript.jsonl", "ab") as f:
        f.write(b'{"type": "transcript.final", "segm')  # a torn, unreported tail
    writer.close()
    finals = read_finals(writer.path)
    assert [f.text for f in finals] == [" Hello there.", " Second line."]
    assert finals[0].words[0].start_sample == 1 * SR  # on the meeting's clock
    assert (writer.path / "transcript.srt").read_text() == (
        "1\n00:00:01,000 --> 00:00:03,000\n Hello there.\n\n"
        "2\n01:01:01,500 --> 01:01:04,000\n Second line.\n\n"
    )
    assert (writer.path / "transcript.vtt").read_text() == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n Hello there.\n\n"
        "01:01:01.500 --> 01:01:04.000\n Second line.\n\n"
    )
    assert (writer.path / "transcript.md").read_text() == (
        "# Meeting 19700101T000000Z\n\n"
        "**[00:00:01]** Hello there.  \n**[01:01:01]** Second line.  \n"
    )
    (writer.path / "transcript.srt").unlink()
    assert [p.name for p in render_dir(writer.path)] == [
        "transcript.srt",
        "transcript.vtt",
        "transcript.md",
    ]
    assert (writer.path / "transcript.srt").read_text().startswith("1\n00:00:01,000")


def test_new_meeting_never_reuses_a_dir(tmp_path: Path) -> None:
    a = MeetingWriter(tmp_path, 0, now=100.0)
    b = MeetingWriter(tmp_path, 0, now=100.0)
    assert a.path != b.path and sorted([a.path.name, b.path.name]) == [a.path.name, b.path.name]


def test_long_silence_ends_the_meeting_and_speech_starts_a_new_one(
    tmp_path: Path, sentences: list[np.ndarray]
) -> None:
    s0, s1 = sentences
    audio = np.concatenate(
        [
            speech.silence(0.5),
            s0,
            speech.silence(4.0),
            s1,
            speech.silence(1.2),
            s0,
            speech.silence(3.0),
        ]
    )
    records: list[dict[str, Any]] = []
    session = LocalSession(FakeModel(), SessionConfig(partials=False))
    recorder = MeetingRecorder(session, tmp_path, records.append, silence_timeout_s=2.5)
    for chunk in speech.chunks(audio, 800):
        recorder.feed(chunk)
    assert recorder.writer is None  # the trailing 3 s of silence ended the second meeting
    recorder.close()
    types = [r["type"] for r in records]
    assert types == [
        "meeting.started",
        "transcript.final",
        "meeting.ended",
        "meeting.started",
        "transcript.final",
        "transcript.final",
        "meeting.ended",
    ]
    assert [r["reason"] for r in records if r["type"] == "meeting.ended"] == ["silence"] * 2
    first, second = recorder.meetings
    assert first != second and first.parent == second.parent == tmp_path
    for d, n in ((first, 1), (second, 2)):
        lines = (d / "transcript.jsonl").read_text().splitlines()
        assert len(lines) == n
        assert json.loads(lines[0])["start"] == 0.0  # each meeting has its own clock
        assert all(
            (d / name).is_file() for name in ("transcript.srt", "transcript.vtt", "transcript.md")
        )
    finals = [r for r in records if r["type"] == "transcript.final"]
    assert [f["meeting"] for f in finals] == [first.name, second.name, second.name]


def test_without_timeout_one_meeting_until_close(
    tmp_path: Path, sentences: list[np.ndarray]
) -> None:
    s0, s1 = sentences
    records: list[dict[str, Any]] = []
    recorder = MeetingRecorder(LocalSession(FakeModel()), tmp_path, records.append)
    for chunk in speech.chunks(np.concatenate([s0, speech.silence(6.0), s1]), 800):
        recorder.feed(chunk)
    recorder.close()
    assert [r["type"] for r in records].count("meeting.started") == 1
    assert records[-1] == {
        "type": "meeting.ended",
        "dir": str(recorder.meetings[0]),
        "finals": 2,
        "reason": "end",
    }


def test_meeting_files_are_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transcripts are private notes: dirs 0700, files 0600 (temp files too), even under umask 0."""
    out = tmp_path / "notes" / "meetings"  # missing parents are created private too
    replace, tmp_modes = os.replace, dict[str, int]()

    def spy(src: Path, dst: Path) -> None:
        tmp_modes[Path(src).name] = stat.S_IMODE(os.stat(src).st_mode)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0o000)
    try:
        writer = MeetingWriter(out, origin_sample=0, now=0.0)
        writer.append(TranscriptFinal(0, " Private.", 0, SR))
        writer.close()
        render_dir(writer.path)  # a re-render replaces the files and keeps them private
    finally:
        os.umask(old)
    dirs = [out.parent, out, *(p for p in out.rglob("*") if p.is_dir())]
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert writer.path in dirs and {p.name for p in files} == {"transcript.jsonl", *RENDERED}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in dirs} == {p.name: 0o700 for p in dirs}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    assert tmp_modes == {f"{name}.tmp": 0o600 for name in RENDERED}
