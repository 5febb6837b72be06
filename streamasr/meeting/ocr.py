"""Text of a slide image: the OCR backends behind one small interface, chosen like `--model`."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TYPE_CHECKING, Protocol

from streamasr.errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image

TESSERACT_TIMEOUT_S = 60.0  # a slide takes under a second; a hung process must not stall notes


class OcrBackend(Protocol):
    """Reads the text of one image. Runs on the slide worker's thread, never on the path of
    the audio: it may take seconds."""

    name: str

    def read(self, image: Image) -> str:
        """The image's text, lines separated by newlines (empty when there is none)."""
        ...


class TesseractOcr:
    """The `tesseract` program (Debian `tesseract-ocr`): offline, a fraction of a second per
    slide on one core. It runs as a child process, so it holds neither the GIL nor torch's
    threads; OMP_THREAD_LIMIT=1 keeps it to one core beside the recogniser."""

    name = "tesseract"

    def __init__(self, languages: str = "eng", program: str = "tesseract") -> None:
        path = shutil.which(program)
        if path is None:
            raise InputError(
                f"OCR backend tesseract: {program!r} is not installed "
                "(Debian: apt install tesseract-ocr)"
            )
        self.program = path
        self.languages = languages

    def read(self, image: Image) -> str:
        import io

        png = io.BytesIO()
        image.save(png, format="PNG")
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        # --psm 3: automatic page segmentation, the layout of a slide (title, bullets, columns)
        command = [self.program, "stdin", "stdout", "-l", self.languages, "--psm", "3"]
        done = subprocess.run(
            command,
            input=png.getvalue(),
            capture_output=True,
            env=env,
            timeout=TESSERACT_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            detail = done.stderr.decode("utf-8", "replace").strip()[-300:]
            raise RuntimeError(f"tesseract failed ({done.returncode}): {detail}")
        return done.stdout.decode("utf-8", "replace").replace("\f", "").strip()


def load_ocr(name: str, *, compute: str = "auto", dtype: str = "auto") -> OcrBackend:
    """`tesseract` (default), `glm-ocr` (hub id zai-org/GLM-OCR, from the local cache), or a
    directory holding a GLM-OCR checkpoint."""
    if name == "tesseract":
        return TesseractOcr()
    if name != "glm-ocr" and "/" not in name and not os.path.isdir(name):
        raise InputError(
            f"unknown OCR backend {name!r}: tesseract, glm-ocr, a hub id (org/name) or a "
            "GLM-OCR directory"
        )
    from streamasr.meeting.glm_ocr import GLM_OCR_ID, GlmOcr

    source = GLM_OCR_ID if name == "glm-ocr" else name
    ocr: OcrBackend = GlmOcr.load(source, compute=compute, dtype=dtype)
    return ocr
