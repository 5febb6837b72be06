"""Slides shown in a meeting: decoded, compared with the last one read, and OCR'd on their own
thread, off the path of the audio."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamasr.meeting.ocr import OcrBackend

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

# Image formats a slide may come in, by PIL's name, and the extension its saved copy gets.
FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}
MAX_PIXELS = 40_000_000  # an 8K screen is 33 Mpx; more is a decompression bomb, not a slide
THUMB = (96, 54)  # a 16:9 grid: a line of slide text is a row or two of it
# Measured on 1280x720 slides: a new bullet line moves 22 cells by more than 16 grey levels,
# a changed page number 10, a mouse pointer or a taskbar clock 2 to 4; noise of +-12 levels per
# pixel, or JPEG at quality 60, none.
PIXEL_STEP = 16  # grey levels a cell must move to count as changed
CHANGED_CELLS = 8  # cells that must move for a frame to be read again
MAX_PENDING = 8  # slides waiting for OCR; a burst beyond drops the oldest waiting one


@dataclass(frozen=True)
class Slide:
    """An image shown at `sample` on the session's 16 kHz stream clock."""

    sample: int
    image: bytes  # encoded, as it came
    source: str  # "folder", "screenshot" or "producer"
    name: str = ""  # its file name, when it came from one


@dataclass(frozen=True)
class ReadSlide:
    """A slide that differed from the one before, with its text and the terms taken from it."""

    slide: Slide
    fmt: str  # extension of the saved image: "png", "jpg", ...
    text: str
    terms: tuple[str, ...]
    ocr_s: float  # wall seconds the OCR took


class SlideError(ValueError):
    """An image that cannot be a slide: not an image, an unknown format, too many pixels."""


def open_image(data: bytes) -> tuple[Image, str]:
    """The decoded RGB image and its saved extension; SlideError for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format or ""
            if kind not in FORMATS:
                raise SlideError(f"unsupported image format {kind or 'unknown'!r}")
            if probe.width * probe.height > MAX_PIXELS:
                raise SlideError(f"image of {probe.width}x{probe.height} is over {MAX_PIXELS} px")
            image = probe.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise SlideError(f"not a readable image: {exc}") from None
    return image, FORMATS[kind]


def thumbnail(image: Image) -> np.ndarray:
    """The image as a small grey grid, what two frames are compared on."""
    from PIL.Image import Resampling

    grey = image.convert("L").resize(THUMB, Resampling.BOX)
    return np.asarray(grey, dtype=np.int16)


def changed(before: np.ndarray | None, after: np.ndarray) -> bool:
    """Whether a frame differs from the last one read enough to read it again: more than
    `CHANGED_CELLS` thumbnail cells moved by more than `PIXEL_STEP` grey levels. A cursor, a
    clock or compression noise stays under; a new slide or a new bullet does not."""
    if before is None:
        return True
    moved = np.abs(after - before) > PIXEL_STEP
    return int(moved.sum()) > CHANGED_CELLS


class SlideReader:
    """OCR's own thread: `offer` never waits; `take` returns the slides read since.

    Frames that did not change are dropped before OCR; when `MAX_PENDING` slides wait, the
    oldest waiting one is dropped (the newer frame is what is on screen). The thread runs at
    a lower priority (nice +10, and tesseract, its child, inherits it), so OCR takes the cores
    the recogniser leaves. `on_error(message)` hears of a slide that could not be read.
    """

    def __init__(
        self,
        ocr: OcrBackend,
        terms: Callable[[str], list[str]],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.ocr = ocr
        self.terms = terms
        self.on_error = on_error or (lambda message: log.warning("%s", message))
        self.dropped = 0  # waiting slides dropped for newer ones
        self.unchanged = 0  # frames like the last one read
        self._pending: queue.Queue[Slide | None] = queue.Queue()
        self._lock = threading.Lock()
        self._done: list[ReadSlide] = []
        self._busy = 0  # slides offered and not yet read or dropped
        self._idle = threading.Condition(self._lock)
        self._last: np.ndarray | None = None
        self._thread = threading.Thread(target=self._run, name="slide-ocr", daemon=True)
        self._thread.start()

    def offer(self, slide: Slide) -> None:
        with self._lock:
            self._busy += 1
            if self._pending.qsize() >= MAX_PENDING:
                try:
                    self._pending.get_nowait()
                except queue.Empty:
                    pass
                else:
                    self.dropped += 1
                    self._busy -= 1
            self._pending.put(slide)

    def take(self) -> list[ReadSlide]:
        """The slides read since the last call, in the order they were shown."""
        with self._lock:
            done, self._done = self._done, []
        return sorted(done, key=lambda r: r.slide.sample)

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every slide offered is read or dropped; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout_s)

    def close(self) -> None:
        """Stop the thread once the slides offered are read."""
        self._pending.put(None)
        self._thread.join()

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # not allowed here: the process's priority it is
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while (slide := self._pending.get()) is not None:
            try:
                read = self._read(slide)
            except Exception as exc:  # a bad image or a failed OCR loses that slide only
                self.on_error(f"slide {slide.name or slide.sample} not read: {exc}")
                read = None
            with self._idle:
                if read is not None:
                    self._done.append(read)
                self._busy -= 1
                self._idle.notify_all()

    def _read(self, slide: Slide) -> ReadSlide | None:
        image, fmt = open_image(slide.image)
        grid = thumbnail(image)
        if not changed(self._last, grid):
            self.unchanged += 1
            return None
        self._last = grid
        t0 = time.perf_counter()
        text = self.ocr.read(image)
        ocr_s = time.perf_counter() - t0
        return ReadSlide(slide, fmt, text, tuple(self.terms(text)), ocr_s)
