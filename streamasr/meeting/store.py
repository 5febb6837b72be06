"""One directory per meeting: an append-only, fsynced transcript.jsonl and its renderings."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from streamasr import SAMPLE_RATE
from streamasr.events import TranscriptFinal, Word
from streamasr.formats import to_srt, to_vtt

JSONL = "transcript.jsonl"
SLIDES = "slides.jsonl"
RENDERED = ("transcript.srt", "transcript.vtt", "transcript.md")
T = TypeVar("T")


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
        self.slides = 0
        # O_APPEND: every write lands at the end, so a restart can never overwrite a line
        self._fd: int | None = _open_private(self.path / JSONL, os.O_WRONLY | os.O_APPEND)
        self._slides_fd: int | None = None  # slides.jsonl, opened with the first slide
        _fsync_dir(self.path)  # the new dir entry and file survive a power cut too

    def append(self, final: TranscriptFinal) -> dict[str, Any]:
        """Write one final as one JSON line, fsync it, and return the dict written."""
        if self._fd is None:
            raise RuntimeError("meeting is closed")
        record = _shifted(final, self.origin_sample).to_dict()
        _append_line(self._fd, record)
        self.count += 1
        return record

    def add_slide(
        self, sample: int, image: bytes, fmt: str, text: str, terms: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Save a slide's image (fsynced, its directory entry too), then append its line to
        slides.jsonl and fsync it: a line on disk always has its image. `sample` is on the
        stream clock; the line's `t` is on the meeting's, as the finals' times are."""
        if self._fd is None:
            raise RuntimeError("meeting is closed")
        if self._slides_fd is None:
            self._slides_fd = _open_private(self.path / SLIDES, os.O_WRONLY | os.O_APPEND)
        self.slides += 1
        name = f"slide-{self.slides:04d}.{fmt}"
        fd = _open_private(self.path / name, os.O_WRONLY | os.O_TRUNC | os.O_EXCL)
        try:
            _write_all(fd, image)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.path)
        t = max(0, sample - self.origin_sample) / SAMPLE_RATE
        # terms: what the recogniser was biased with after it
        record = {"type": "slide", "t": round(t, 3), "image": name, "text": text, "terms": [*terms]}
        _append_line(self._slides_fd, record)
        return record

    def close(self) -> None:
        """Close the jsonl files and render srt, vtt and md beside them."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self._slides_fd is not None:
            os.close(self._slides_fd)
            self._slides_fd = None
        render_dir(self.path)


def _write_all(fd: int, data: bytes) -> None:
    written = 0
    while written < len(data):  # one write in practice; a short write is finished, not lost
        written += os.write(fd, data[written:])


def _append_line(fd: int, record: dict[str, Any]) -> None:
    """One JSON line at the end of `fd`, fsynced."""
    _write_all(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())
    os.fsync(fd)


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


def _read_lines(path: Path, parse: Callable[[Any], T], kind: str) -> list[T]:
    """The records of a jsonl file, each through `parse`.

    A last line without its newline is a write cut short by a crash before it was reported
    (reported lines are fsynced whole); it is ignored. Any other bad line is an error.
    """
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn tail
    records = []
    for n, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            records.append(parse(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: not a {kind} line: {exc}") from exc
    return records


def read_finals(meeting_dir: Path) -> list[TranscriptFinal]:
    """The finals of a meeting's transcript.jsonl."""
    return _read_lines(meeting_dir / JSONL, final_from_dict, "transcript.final")


@dataclass(frozen=True)
class SlideRecord:
    """A line of slides.jsonl: when the slide showed (meeting clock), its image, its text."""

    t: float
    image: str
    text: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlideRecord:
        return cls(float(d["t"]), str(d["image"]), str(d["text"]))


def read_slides(meeting_dir: Path) -> list[SlideRecord]:
    """The slides of a meeting's slides.jsonl (none when it has no such file)."""
    path = meeting_dir / SLIDES
    return _read_lines(path, SlideRecord.from_dict, "slide") if path.exists() else []


def _stamp(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def to_markdown(
    finals: list[TranscriptFinal], title: str, slides: list[SlideRecord] | None = None
) -> str:
    """The transcript as Markdown, each slide's text as a quote at its time among the finals."""
    entries: list[tuple[float, int, list[str]]] = []
    for f in finals:
        if f.text.strip():
            t = f.start_sample / SAMPLE_RATE
            entries.append((t, 1, [f"**[{_stamp(t)}]** {f.text.strip()}  "]))
    for slide in slides or ():
        quoted = [f"> {line}  " for line in slide.text.splitlines() if line.strip()]
        head = f"**[{_stamp(slide.t)}] Slide** ([{slide.image}]({slide.image}))"
        entries.append((slide.t, 0, ["", head, "", *quoted, ""]))
    lines = [f"# Meeting {title}", ""]
    for _, _, block in sorted(entries, key=lambda e: (e[0], e[1])):
        lines.extend(block)
    return "\n".join(lines) + "\n"


def render_dir(meeting_dir: Path) -> list[Path]:
    """(Re)write transcript.srt, .vtt and .md from transcript.jsonl (and slides.jsonl, for the
    Markdown); returns their paths."""
    finals = read_finals(meeting_dir)
    slides = read_slides(meeting_dir)
    texts = (to_srt(finals), to_vtt(finals), to_markdown(finals, meeting_dir.name, slides))
    paths = []
    for name, text in zip(RENDERED, texts, strict=True):
        path = meeting_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        with os.fdopen(_open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # a reader never sees half a file
        paths.append(path)
    return paths
