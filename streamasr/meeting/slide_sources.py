"""Where a meeting's slides come from: a folder images are dropped in, a screenshot command,
or, for replays, a folder of images named by the time they show."""

from __future__ import annotations

import re
import shlex
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from streamasr import SAMPLE_RATE
from streamasr.errors import InputError
from streamasr.meeting.slides import Slide

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# "0012.5-intro.png": shown at 12.5 s on the meeting's clock
_TIMED = re.compile(r"^(\d+(?:\.\d+)?)(?:[-_ .].*)?$")
SCREENSHOT_TIMEOUT_S = 20.0
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # larger files are not slides

Offer = Callable[[Slide], None]
Clock = Callable[[], int]  # the stream position now, in 16 kHz samples


def _images(folder: Path) -> list[Path]:
    """The image files of `folder`, by name; hidden and partial (".tmp") files are not."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def timed_slides(folder: Path) -> list[tuple[int, Path]]:
    """The images of a replay folder whose names start with a time in seconds, as (stream
    sample, path) in time order. InputError when the folder has none."""
    if not folder.is_dir():
        raise InputError(f"--slides {folder}: not a directory")
    timed = []
    for path in _images(folder):
        m = _TIMED.match(path.stem)
        if m is not None:
            timed.append((round(float(m.group(1)) * SAMPLE_RATE), path))
    if not timed:
        raise InputError(
            f"--slides {folder}: with --input, slide images are named by the second they show "
            "on the meeting's clock, e.g. 0012.5-intro.png; none is"
        )
    return sorted(timed)


class ReplaySlides:
    """Timed slides of a file replay: each is offered when the audio reaches its time."""

    def __init__(self, folder: Path) -> None:
        self._due = timed_slides(folder)

    def due(self, position: int) -> list[Slide]:
        """The slides whose time is at or before `position`, not offered before."""
        shown = [(sample, path) for sample, path in self._due if sample <= position]
        self._due = self._due[len(shown) :]
        return [Slide(sample, path.read_bytes(), "folder", path.name) for sample, path in shown]


class _Poller:
    """A daemon thread that calls `poll` every `interval_s` until `stop`; `poll` offers what
    it finds as shown at `clock()`, and reports what goes wrong to `on_error`."""

    def __init__(
        self,
        interval_s: float,
        name: str,
        offer: Offer,
        clock: Clock,
        on_error: Callable[[str], None],
    ) -> None:
        if not interval_s > 0:
            raise InputError(f"the slide interval must be positive, got {interval_s}")
        self.interval_s = interval_s
        self.offer = offer
        self.clock = clock
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError


class FolderWatcher(_Poller):
    """Offers each image that appears in `folder`, at the stream time it appeared. Images
    already there at the start are not shown. A file is read once its size has stayed the same
    for one poll, so a slide being copied in is not read half written. (A poll each second:
    inotify misses files written from another machine into a shared folder.)"""

    def __init__(
        self, folder: Path, offer: Offer, clock: Clock, on_error: Callable[[str], None]
    ) -> None:
        super().__init__(1.0, "slide-folder", offer, clock, on_error)
        if not folder.is_dir():
            raise InputError(f"--slides {folder}: not a directory")
        self.folder = folder
        self._seen = set(_images(folder))
        self._sizes: dict[Path, int] = {}

    def poll(self) -> None:
        try:
            new = [p for p in _images(self.folder) if p not in self._seen]
        except OSError as exc:
            self.on_error(f"--slides {self.folder}: {exc}")
            return
        for path in new:
            try:
                size = path.stat().st_size
                if size == 0 or self._sizes.get(path) != size:
                    self._sizes[path] = size  # still being written, perhaps: next poll
                    continue
                self._seen.add(path)
                del self._sizes[path]
                if size > MAX_IMAGE_BYTES:
                    raise OSError(f"{size} B is over {MAX_IMAGE_BYTES} B")
                data = path.read_bytes()
            except OSError as exc:
                self._seen.add(path)
                self.on_error(f"slide {path.name} not read: {exc}")
                continue
            self.offer(Slide(self.clock(), data, "folder", path.name))


class ScreenshotCommand(_Poller):
    """Runs `command` every `interval_s` and offers the image it writes to stdout (e.g.
    `grim -`, `import -window root png:-`, `gnome-screenshot -f /dev/stdout`). The reader drops
    frames that did not change, so an unchanged screen costs no OCR."""

    def __init__(
        self,
        command: str,
        interval_s: float,
        offer: Offer,
        clock: Clock,
        on_error: Callable[[str], None],
    ) -> None:
        super().__init__(interval_s, "slide-screenshot", offer, clock, on_error)
        self.argv = shlex.split(command)
        if not self.argv:
            raise InputError("--screenshot: empty command")
        self._failing = False  # a failure is reported once, until a screenshot works again

    def poll(self) -> None:
        at = self.clock()
        try:
            done = subprocess.run(
                self.argv, capture_output=True, timeout=SCREENSHOT_TIMEOUT_S, check=False
            )
            if done.returncode != 0 or not done.stdout:
                detail = done.stderr.decode("utf-8", "replace").strip()[-200:]
                raise OSError(f"exit {done.returncode}, {len(done.stdout)} B out: {detail}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            if not self._failing:
                self.on_error(f"--screenshot {self.argv[0]}: {exc}")
            self._failing = True
            return
        self._failing = False
        self.offer(Slide(at, done.stdout, "screenshot"))
