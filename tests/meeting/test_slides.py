"""Slides: term extraction, frame change, the OCR thread, slides.jsonl and the `slide` message."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from slide_deck import render_slide

from streamasr import SAMPLE_RATE
from streamasr.meeting.ocr import TesseractOcr, load_ocr
from streamasr.meeting.slides import (
    MAX_PENDING,
    Slide,
    SlideError,
    SlideReader,
    changed,
    open_image,
    thumbnail,
)
from streamasr.meeting.store import (
    SLIDES,
    MeetingWriter,
    read_slides,
    render_dir,
)
from streamasr.meeting.terms import SlideTerms, TermWindow, extract_terms
from streamasr.server.protocol import (
    MAX_SLIDE_BYTES,
    MAX_TEXT_BYTES,
    ErrorCode,
    SendError,
    ServerProtocol,
    SessionStart,
    ShowSlide,
    SlideMessage,
)

pytestmark = pytest.mark.timeout(60)

COMMON = {"meeting", "with", "and", "review", "the", "plan", "agenda", "part", "today"}


def rare(word: str) -> bool:
    return word.lower() not in COMMON


def test_terms_are_names_acronyms_and_quantities_in_reading_order() -> None:
    text = (
        "Quarterly Plan Review\n"
        "Meeting With Linh Nguyen and Aoife Brennan\n"
        "Moving to Kubernetes on GKE by Q3\n"
        "p95 latency down to 250 ms, budget $1.2M\n"
        "gRPC and PyTorch; linh nguyen again"
    )
    terms = extract_terms(text, lambda w: w.lower() in {"quarterly", "linh", "nguyen", "aoife"})
    assert terms == [
        "Quarterly",
        "Linh Nguyen",
        "Aoife",
        "GKE",
        "Q3",
        "250 ms",
        "$1.2M",
        "p95",
        "gRPC",
        "PyTorch",
    ]


def test_a_line_of_common_words_gives_no_terms() -> None:
    assert extract_terms("Agenda\nThe Plan And Review Today\n", rare=lambda w: False) == []


def test_the_window_keeps_recent_slides_first_and_bounds_the_count() -> None:
    terms = SlideTerms(TermWindow(window_s=60.0, max_terms=3))
    terms.add(0, ("Alpha", "Beta"))
    terms.add(30 * SAMPLE_RATE, ("Gamma", "alpha", "Delta"))
    assert terms.current(10 * SAMPLE_RATE) == ("Alpha", "Beta")
    assert terms.current(40 * SAMPLE_RATE) == ("Gamma", "alpha", "Delta")  # newest first, bound 3
    assert terms.current(75 * SAMPLE_RATE) == ("Gamma", "alpha", "Delta")
    assert terms.current(100 * SAMPLE_RATE) == ()  # both slides over a minute old
    with pytest.raises(ValueError):
        TermWindow(max_terms=-1)


def test_a_frame_is_read_again_only_when_it_changed_enough() -> None:
    base = open_image(render_slide("Roadmap", ["Linh Nguyen", "Kubernetes"]))[0]
    grid = thumbnail(base)
    noisy = np.asarray(base, dtype=np.int16) + np.random.default_rng(0).integers(
        -12, 13, (720, 1280, 3)
    )
    from PIL import Image

    noise = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    assert changed(None, grid)
    assert not changed(grid, thumbnail(noise)), "compression-like noise is not a new slide"
    more = open_image(render_slide("Roadmap", ["Linh Nguyen", "Kubernetes", "Oaxaca"]))[0]
    assert changed(grid, thumbnail(more)), "a new bullet is"


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"not an image", "not a readable image"), (b"", "not a readable image")],
)
def test_what_is_not_an_image_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(SlideError, match=problem):
        open_image(data)


def test_an_image_of_too_many_pixels_is_refused_before_decoding() -> None:
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (9000, 5000)).save(out, format="PNG")  # 45 Mpx, a few kB
    with pytest.raises(SlideError, match="over"):
        open_image(out.getvalue())


class BlockingOcr:
    """An OCR that reads the text it is told, after `gate` opens."""

    name = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.read_count = 0

    def read(self, image: object) -> str:
        self.gate.wait(30)
        self.read_count += 1
        return f"Slide {self.read_count} Kubernetes"


TOPICS = ("Budget", "Hiring", "Roadmap", "Security", "Incidents", "Latency", "Storage", "Pricing")


def slide(n: int) -> Slide:
    """Slide `n`: a title and bullets of its own, unlike any other's."""
    words = [TOPICS[(n + k) % len(TOPICS)] for k in range(1 + n % 3)]
    return Slide(n * SAMPLE_RATE, render_slide(f"{n}. {TOPICS[n % len(TOPICS)]}", words), "folder")


def test_the_reader_skips_unchanged_frames_and_drops_the_oldest_in_a_burst() -> None:
    ocr = BlockingOcr()
    errors: list[str] = []
    reader = SlideReader(ocr, lambda text: extract_terms(text, rare), errors.append)
    try:
        reader.offer(slide(0))  # taken by the thread, which waits at the gate
        for n in range(1, MAX_PENDING + 3):
            reader.offer(slide(n))
        assert not reader.wait_idle(0.2)
        ocr.gate.set()
        assert reader.wait_idle(30)
        read = reader.take()
        assert reader.dropped >= 1
        assert len(read) + reader.dropped == MAX_PENDING + 3
        assert read[-1].slide.sample == (MAX_PENDING + 2) * SAMPLE_RATE, "the newest is kept"
        reader.offer(slide(MAX_PENDING + 2))  # the same frame again
        reader.offer(Slide(99, b"garbage", "producer"))
        assert reader.wait_idle(30)
        assert reader.take() == [] and reader.unchanged == 1
        assert errors and "not a readable image" in errors[0]
    finally:
        ocr.gate.set()
        reader.close()


def test_slides_are_saved_with_their_image_and_placed_in_the_markdown(tmp_path: Path) -> None:
    from streamasr.events import TranscriptFinal

    writer = MeetingWriter(tmp_path, origin_sample=16_000)
    png = render_slide("Roadmap", ["Linh Nguyen"])
    writer.append(TranscriptFinal(0, "Hello everyone.", 16_000, 48_000))
    record = writer.add_slide(
        16_000 + 5 * SAMPLE_RATE, png, "png", "Roadmap\n\nLinh Nguyen", ("Linh Nguyen",)
    )
    writer.append(
        TranscriptFinal(1, "Linh will present.", 16_000 + 6 * SAMPLE_RATE, 16_000 + 8 * SAMPLE_RATE)
    )
    assert record == {
        "type": "slide",
        "t": 5.0,
        "image": "slide-0001.png",
        "text": "Roadmap\n\nLinh Nguyen",
        "terms": ["Linh Nguyen"],
    }
    assert (writer.path / "slide-0001.png").read_bytes() == png
    writer.close()
    md = (writer.path / "transcript.md").read_text()
    assert (
        md.index("Hello everyone") < md.index("Slide** ([slide-0001.png]") < md.index("Linh will")
    )
    assert "> Linh Nguyen" in md
    # a slide line cut short by a crash is ignored, as a final's is
    with (writer.path / SLIDES).open("ab") as f:
        f.write(b'{"type": "slide", "t": 9')
    assert [s.image for s in read_slides(writer.path)] == ["slide-0001.png"]
    render_dir(writer.path)


def test_tesseract_reads_a_rendered_slide() -> None:
    ocr = load_ocr("tesseract")
    assert isinstance(ocr, TesseractOcr)
    image = open_image(render_slide("Platform Roadmap", ["Linh Nguyen", "Kubernetes", "250 ms"]))[0]
    text = ocr.read(image)
    for expected in ("Platform Roadmap", "Linh Nguyen", "Kubernetes", "250 ms"):
        assert expected in text, text


def test_a_missing_ocr_program_is_a_clear_error() -> None:
    from streamasr.errors import InputError

    with pytest.raises(InputError, match="apt install tesseract-ocr"):
        TesseractOcr(program="no-such-tesseract")


def slide_frame(image: bytes, **extra: object) -> str:
    return json.dumps({"type": "slide", "image": base64.b64encode(image).decode(), **extra})


def test_the_slide_message_is_taken_only_by_a_meeting_recorder() -> None:
    png = render_slide("Roadmap", ["Oaxaca"])
    daemon = ServerProtocol(max_frame_bytes=4096)
    (refused,) = daemon.receive_text(slide_frame(png))
    assert isinstance(refused, SendError) and refused.error.code == ErrorCode.UNKNOWN_TYPE

    recorder = ServerProtocol(max_frame_bytes=65_536, slides=True)
    recorder.receive_text(SessionStart().to_json())
    recorder.receive_bytes(b"\x00\x00" * 8000)  # half a second of audio
    (now,) = recorder.receive_text(slide_frame(png))
    assert isinstance(now, ShowSlide) and now.image == png and now.sample == 8000
    (at,) = recorder.receive_text(SlideMessage(png, t=12.5).to_json())
    assert isinstance(at, ShowSlide) and at.sample == 200_000


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (json.dumps({"type": "slide"}), "base64"),
        (json.dumps({"type": "slide", "image": "@@@"}), "not valid base64"),
        (slide_frame(b"x", t=-1), "seconds"),
        (slide_frame(b"x", t="soon"), "seconds"),
        (slide_frame(b"\x00" * (MAX_SLIDE_BYTES + 1)), "over the limit"),
    ],
)
def test_a_bad_slide_message_is_refused_and_the_session_goes_on(frame: str, problem: str) -> None:
    recorder = ServerProtocol(max_frame_bytes=65_536, slides=True)
    recorder.receive_text(SessionStart().to_json())
    actions = recorder.receive_text(frame)
    assert len(actions) == 1 and isinstance(actions[0], SendError), actions
    assert actions[0].error.code == ErrorCode.SLIDE_REFUSED and problem in actions[0].error.message
    assert recorder.receive_bytes(b"\x00\x00" * 10)  # audio still taken


def test_only_a_slide_may_be_a_big_text_frame() -> None:
    recorder = ServerProtocol(max_frame_bytes=65_536, slides=True)
    big = json.dumps({"type": "session.flush", "pad": "x" * MAX_TEXT_BYTES})
    error = recorder.receive_text(big)[0]
    assert isinstance(error, SendError) and error.error.code == ErrorCode.FRAME_TOO_BIG


def test_read_slides_of_a_meeting_without_slides_is_empty(tmp_path: Path) -> None:
    writer = MeetingWriter(tmp_path, origin_sample=0)
    writer.close()
    assert read_slides(writer.path) == []
    assert not (writer.path / SLIDES).exists()


def test_read_slide_keeps_its_format() -> None:
    image, fmt = open_image(render_slide("A", ["b"]))
    assert fmt == "png" and image.size == (1280, 720)
    out = io.BytesIO()
    image.save(out, format="JPEG")
    assert open_image(out.getvalue())[1] == "jpg"


def test_an_unknown_ocr_backend_lists_the_choices() -> None:
    from streamasr.errors import InputError

    with pytest.raises(InputError, match="tesseract, glm-ocr"):
        load_ocr("tesserract")
