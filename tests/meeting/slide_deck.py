"""Slides as images, rendered with Pillow's own font (no system fonts needed), for the slide
tests and bench/slides.py."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

SIZE = (1280, 720)


def render_slide(title: str, lines: Sequence[str], size: tuple[int, int] = SIZE) -> bytes:
    """A plain slide as PNG: dark text on white, a title and its bullet lines."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    title_font = ImageFont.load_default(size=56)
    body_font = ImageFont.load_default(size=40)
    draw.text((70, 60), title, fill=(20, 20, 20), font=title_font)
    y = 190
    for line in lines:
        draw.text((90, y), f"- {line}", fill=(30, 30, 30), font=body_font)
        y += 64
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class DeckSlide:
    """A slide, and the sentences said while it shows."""

    title: str
    terms: tuple[str, ...]  # the names and terms on it, one bullet each
    sentences: tuple[str, ...]

    def png(self) -> bytes:
        return render_slide(self.title, self.terms)
