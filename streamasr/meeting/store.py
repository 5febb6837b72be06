"""One directory per meeting: an append-only, fsynced transcript.jsonl and its renderings."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamasr import SAMPLE_RATE
from streamasr.events import TranscriptFinal, Word
from streamasr.formats import to_srt, to_vtt

JSONL = "transcript.jsonl"
RENDERED = ("transcript.srt", "transcript.vtt", "transcript.md")


def default_out_dir(env: Mapping[str, str] | None = None) -> Path:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=) or ~/.local/share/streamasr/meetings."""
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0])  # several StateDirectory= entries are ':'-separated
    return Path.home() / ".local" / "share" / "streamasr" / "meetings"


# Transcripts are private notes: whatever the umask, only their owner may read them.
DIR_MODE = 0o700
FILE_MODE = 0o600


def _mkdir_private(path: Path) -> None:
    """mkdir `path` with DIR_MODE, exclusively; the umask can only clear bits, so chmod after."""
    os.mkdir(path, DIR_MODE)
    os.chmod(path, DIR_MODE)


def _makedirs_private(path: Path) -> None:
    """Create `path` and its missing parents with DIR_MODE; existing ones are left as they are."""
    if path.is_dir():
        return
    _makedirs_private(path.parent)
    try:
        _mkdir_private(path)
    except FileExistsError:
        if not path.is_dir():
            raise


def _open_private(path: Path, flags: int) -> int:
    """os.open(path, O_CREAT | flags) with FILE_MODE, also for a file that already existed."""
    fd = os.open(path, os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def _make_meeting_dir(out: Path, now: float) -> Path:
    """Create a new, empty directory named by UTC start time; never reuse an existing one."""
    _makedirs_private(out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for n in range(1, 1000):
        path = out / (stamp if n == 1 else f"{stamp}-{n:03d}")
        try:
            _mkdir_private(path)  # exclusive: a restart in the same second gets a suffix
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{out}: too many meetings started at {stamp}")


def _shifted(final: TranscriptFinal, origin: int) -> TranscriptFinal:
    """`final` on the meeting's clock: samples counted from the meeting's first sample."""
    words = tuple(
        Word(w.word, w.start_sample - origin, w.end_sample - origin, w.probability)
        for w in final.words
    )
    return replace(
        final,
        start_sample=final.start_sample - origin,
        end_sample=final.end_sample - origin,
        words=words,
    )


class MeetingWriter:
    """An open meeting. `append` returns only once the final is on disk (write + fsync)."""

    def __init__(self, out: Path, origin_sample: int, now: float | None = None) -> None:
        self.path = _make_meeting_dir(out, time.time() if now is None else now)
        self.origin_sample = origin_sample  # stream sample at which the meeting's clock is 0
        self.count = 0
        # O_APPEND: every write lands at the end, so a restart can never overwrite a line
        self._fd: int | None = _open_private(self.path / JSONL, os.O_WRONLY | os.O_APPEND)
        _fsync_dir(self.path)  # the new dir entry and file survive a power cut too

    def append(self, final: TranscriptFinal) -> dict[str, Any]:
        """Write one final as one JSON line, fsync it, and return the dict written."""
        if self._fd is None:
            raise RuntimeError("meeting is closed")
        record = _shifted(final, self.origin_sample).to_dict()
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        written = 0
        while written < len(data):  # one write in practice; a short write is finished, not lost
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        self.count += 1
        return record

    def close(self) -> None:
        """Close the jsonl and render srt, vtt and md beside it."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        render_dir(self.path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _samples(t: float) -> int:
    return round(float(t) * SAMPLE_RATE)


def final_from_dict(d: Mapping[str, Any]) -> TranscriptFinal:
    """Inverse of `TranscriptFinal.to_dict` (to the millisecond the wire keeps)."""
    words = tuple(
        Word(str(w["word"]), _samples(w["start"]), _samples(w["end"]), float(w["probability"]))
        for w in d.get("words", ())
    )
    return TranscriptFinal(
        int(d["segment_id"]),
        str(d["text"]),
        _samples(d["start"]),
        _samples(d["end"]),
        words,
        fallback=bool(d.get("fallback", False)),
    )


def read_finals(meeting_dir: Path) -> list[TranscriptFinal]:
    """The finals of a meeting's transcript.jsonl.

    A last line without its newline is a write cut short by a crash before it was reported
    (reported finals are fsynced whole); it is ignored. Any other bad line is an error.
    """
    raw = (meeting_dir / JSONL).read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn tail
    finals = []
    for n, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            finals.append(final_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{meeting_dir / JSONL}:{n}: not a transcript.final line: {exc}"
            ) from exc
    return finals


def to_markdown(finals: list[TranscriptFinal], title: str) -> str:
    lines = [f"# Meeting {title}", ""]
    for f in finals:
        if f.text.strip():
            s = max(f.start_sample, 0) // SAMPLE_RATE
            stamp = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
            lines.append(f"**[{stamp}]** {f.text.strip()}  ")
    return "\n".join(lines) + "\n"


def render_dir(meeting_dir: Path) -> list[Path]:
    """(Re)write transcript.srt, .vtt and .md from transcript.jsonl; returns their paths."""
    finals = read_finals(meeting_dir)
    texts = (to_srt(finals), to_vtt(finals), to_markdown(finals, meeting_dir.name))
    paths = []
    for name, text in zip(RENDERED, texts, strict=True):
        path = meeting_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        with os.fdopen(_open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # a reader never sees half a file
        paths.append(path)
    return paths
