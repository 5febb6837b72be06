"""Where slides come from: a watched folder, a screenshot command, a replay's timed folder."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from slide_deck import render_slide

from streamasr import SAMPLE_RATE
from streamasr.errors import InputError
from streamasr.meeting.slide_sources import (
    FolderWatcher,
    ReplaySlides,
    ScreenshotCommand,
    timed_slides,
)
from streamasr.meeting.slides import Slide

pytestmark = pytest.mark.timeout(60)


class Collect:
    def __init__(self) -> None:
        self.slides: list[Slide] = []
        self.errors: list[str] = []
        self.now = 0

    def clock(self) -> int:
        return self.now


def test_the_folder_shows_new_images_once_they_stop_growing(tmp_path: Path) -> None:
    png = render_slide("Roadmap", ["Kubernetes"])
    (tmp_path / "before.png").write_bytes(png)  # there at the start: not shown
    seen = Collect()
    watcher = FolderWatcher(tmp_path, seen.slides.append, seen.clock, seen.errors.append)
    (tmp_path / "b.png").write_bytes(png[:100])  # still being copied
    (tmp_path / ".hidden.png").write_bytes(png)
    (tmp_path / "notes.txt").write_text("not an image")
    seen.now = 5 * SAMPLE_RATE
    watcher.poll()
    assert seen.slides == []  # a size seen once may still grow
    (tmp_path / "b.png").write_bytes(png)
    watcher.poll()
    assert seen.slides == []  # it grew: wait for one more poll
    seen.now = 6 * SAMPLE_RATE
    watcher.poll()
    assert [(s.name, s.sample, s.image, s.source) for s in seen.slides] == [
        ("b.png", 6 * SAMPLE_RATE, png, "folder")
    ]
    watcher.poll()
    assert len(seen.slides) == 1 and seen.errors == []  # shown once


def test_the_watcher_thread_starts_and_stops(tmp_path: Path) -> None:
    seen = Collect()
    watcher = FolderWatcher(tmp_path, seen.slides.append, seen.clock, seen.errors.append)
    watcher.start()
    watcher.stop()
    with pytest.raises(InputError, match="not a directory"):
        FolderWatcher(tmp_path / "missing", seen.slides.append, seen.clock, seen.errors.append)


def test_a_screenshot_command_is_run_and_a_failing_one_reported_once(tmp_path: Path) -> None:
    png = render_slide("Roadmap", ["Kubernetes"])
    shot = tmp_path / "shot.png"
    shot.write_bytes(png)
    seen = Collect()
    command = ScreenshotCommand(
        f"cat {shlex.quote(str(shot))}", 5.0, seen.slides.append, seen.clock, seen.errors.append
    )
    seen.now = 123
    command.poll()
    assert [(s.sample, s.image, s.source) for s in seen.slides] == [(123, png, "screenshot")]
    shot.unlink()
    command.poll()
    command.poll()
    assert len(seen.errors) == 1 and "--screenshot cat" in seen.errors[0]
    shot.write_bytes(png)
    command.poll()
    assert len(seen.slides) == 2
    with pytest.raises(InputError, match="positive"):
        ScreenshotCommand("true", 0, seen.slides.append, seen.clock, seen.errors.append)


def test_a_replay_shows_each_timed_image_when_the_audio_reaches_it(tmp_path: Path) -> None:
    for name in ("0012.5-intro.png", "3-start.jpg", "0040.png", "cover.png", "7x.png"):
        (tmp_path / name).write_bytes(name.encode())
    assert [(t, p.name) for t, p in timed_slides(tmp_path)] == [
        (3 * SAMPLE_RATE, "3-start.jpg"),
        (200_000, "0012.5-intro.png"),
        (40 * SAMPLE_RATE, "0040.png"),
    ]
    replay = ReplaySlides(tmp_path)
    assert replay.due(SAMPLE_RATE) == []
    assert [s.name for s in replay.due(20 * SAMPLE_RATE)] == ["3-start.jpg", "0012.5-intro.png"]
    assert [s.sample for s in replay.due(10**9)] == [40 * SAMPLE_RATE]
    assert replay.due(10**9) == []


def test_a_replay_folder_without_timed_names_says_how_to_name_them(tmp_path: Path) -> None:
    (tmp_path / "cover.png").write_bytes(b"x")
    with pytest.raises(InputError, match="0012.5-intro.png"):
        ReplaySlides(tmp_path)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--listen", "0", "--slides", "."], "the producer sends its slides"),
        (["--input", "x.wav", "--slides", ".", "--screenshot", "true"], "one source of slides"),
        (
            ["--input", "x.wav", "--screenshot", "true", "--ocr", "tesserract"],
            "unknown OCR backend",
        ),
        (["--input", "x.wav", "--slides", ".", "--slide-terms", "-1"], "0 or more"),
    ],
)
def test_bad_slide_options_are_usage_errors(
    args: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamasr.cli import main

    assert main(["meeting", "--out", str(tmp_path), *args]) == 2
    assert problem in capsys.readouterr().err
