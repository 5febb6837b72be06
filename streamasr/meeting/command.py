"""The `streamasr meeting` subcommand: record meetings, or `render` a meeting directory."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streamasr.errors import InputError
from streamasr.meeting.ocr import OcrBackend, load_ocr
from streamasr.meeting.slide_sources import FolderWatcher, ReplaySlides, ScreenshotCommand
from streamasr.meeting.slides import Slide, SlideReader
from streamasr.meeting.terms import SlideTerms, TermWindow, extract_terms, tokenizer_rarity
from streamasr.models.placement import add_placement_args

if TYPE_CHECKING:
    from streamasr.models.base import AsrModel

EXIT_OK = 0


def add_meeting_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser(
        "meeting",
        help="transcribe meetings into one directory each (see docs/meeting.md)",
        description="Record until the input ends or SIGTERM/SIGINT (which finalise and render); "
        "SIGUSR1 ends the current meeting. With --listen, each WebSocket producer (protocol v1, "
        "one at a time) records one meeting, from its connection to session.end or its "
        "disconnect. `streamasr meeting render DIR` rewrites a meeting's srt/vtt/md from its "
        "transcript.jsonl.",
    )
    m.add_argument("action", nargs="?", choices=["record", "render"], default="record")
    m.add_argument("dirs", nargs="*", type=Path, help="meeting directories (render)")
    m.add_argument(
        "--out",
        type=Path,
        help="meetings dir ($STATE_DIRECTORY or ~/.local/share/streamasr/meetings)",
    )
    from streamasr.cli import add_language_args

    m.add_argument(
        "--model", default="tiny.en", help="tiny.en, base (multilingual), a model dir or a hub id"
    )
    add_language_args(m)
    add_placement_args(m)
    src = m.add_mutually_exclusive_group()
    src.add_argument("--device", help="sound input (name or index; needs sounddevice)")
    src.add_argument("--input", help="audio file (wav/flac/ogg), or - for 16 kHz s16le on stdin")
    src.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="take audio from one WebSocket producer at a time at ws://HOST:PORT/v1/stream "
        "(protocol v1, as `streamasr serve`; port 0 picks a free one)",
    )
    m.add_argument(
        "--token",
        default=os.environ.get("STREAMASR_TOKEN"),
        help="--listen: bearer token producers must send (default $STREAMASR_TOKEN); "
        "required on an address other than loopback",
    )
    m.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="--listen: end a producer's meeting and close it after S seconds without audio "
        "(default 60), so an idle connection cannot hold the one producer slot",
    )
    m.add_argument(
        "--speed",
        default="max",
        help="file pacing: a factor of real time (1, 4, ...) or max (default)",
    )
    add_slide_args(m)
    m.add_argument(
        "--silence-timeout",
        type=float,
        default=None,
        metavar="S",
        help="end the meeting after S seconds without speech (default: never)",
    )


def add_slide_args(m: argparse.ArgumentParser) -> None:
    g = m.add_argument_group("slides (docs/meeting.md)")
    g.add_argument(
        "--slides",
        type=Path,
        metavar="DIR",
        help="read slides from the images in DIR: live, each new file when it arrives; with "
        "--input, each file named by the second it shows (0012.5-intro.png)",
    )
    g.add_argument(
        "--screenshot",
        metavar="CMD",
        help="read slides from the image a command writes to stdout (e.g. 'grim -'), run "
        "every --screenshot-every seconds; unchanged screens are not read again",
    )
    g.add_argument(
        "--screenshot-every", type=float, default=5.0, metavar="S", help="default 5 seconds"
    )
    g.add_argument(
        "--ocr",
        default="tesseract",
        help="OCR backend: tesseract (default; Debian tesseract-ocr), glm-ocr "
        "(zai-org/GLM-OCR from the local Hugging Face cache) or a GLM-OCR directory",
    )
    g.add_argument(
        "--slide-terms",
        type=int,
        default=TermWindow.max_terms,
        metavar="N",
        help=f"bias the recogniser with at most N terms of the slides of the last "
        f"{TermWindow.window_s / 60:g} minutes (default {TermWindow.max_terms}; 0: none)",
    )


def _emitter(out: TextIO) -> Any:
    def emit(record: dict[str, Any]) -> None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()

    return emit


def run_meeting_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "render":
        if not args.dirs:
            raise InputError("meeting render needs at least one meeting directory")
        from streamasr.meeting.store import render_dir

        for d in args.dirs:
            if not d.is_dir():
                raise InputError(f"{d}: not a directory")
            try:
                for path in render_dir(d):
                    out.write(f"{path}\n")
            except (OSError, ValueError) as exc:
                raise InputError(str(exc)) from exc
        return EXIT_OK
    if args.dirs:
        raise InputError("unexpected arguments: " + " ".join(map(str, args.dirs)))
    return _record(args, out)


def _record(args: argparse.Namespace, out: TextIO) -> int:
    from streamasr.config import SessionConfig
    from streamasr.engine.driver import LocalSession
    from streamasr.meeting.recorder import MeetingRecorder, run_meeting
    from streamasr.meeting.sources import AudioSource, DeviceSource, FileSource, StdinSource
    from streamasr.meeting.store import default_out_dir
    from streamasr.models.loader import load_model
    from streamasr.server.worker import limit_native_memory

    limit_native_memory()  # a meeting runs for hours: before the model's first call
    try:
        speed = float("inf") if args.speed == "max" else float(args.speed)
    except ValueError:
        raise InputError(f"--speed must be a number or max, got {args.speed!r}") from None
    outdir = args.out if args.out is not None else default_out_dir()
    if args.listen is not None:
        if args.slides is not None or args.screenshot is not None:
            raise InputError("with --listen, the producer sends its slides (slide messages)")
        return _listen(args, outdir, out)
    if args.slides is not None and args.screenshot is not None:
        raise InputError("--slides and --screenshot: one source of slides at a time")
    window = _term_window(args)
    replay = None
    if args.slides is not None and args.input not in (None, "-"):
        replay = ReplaySlides(args.slides)
    ocr = None
    if args.slides is not None or args.screenshot is not None:
        ocr = load_ocr(args.ocr, compute=args.compute, dtype=args.dtype)
    source: AudioSource
    if args.input == "-":
        source = StdinSource()
    elif args.input is not None:
        source = FileSource(args.input, speed=speed)
    else:
        source = DeviceSource(args.device)
    model = load_model(args.model, compute=args.compute, dtype=args.dtype)
    config = SessionConfig(partials=False, language=args.language, task=args.task)
    try:
        session = LocalSession(model, config)
    except ValueError as exc:  # a language or task the model lacks
        raise InputError(str(exc)) from None
    emit = _emitter(out)
    reader = None if ocr is None else _slide_reader(ocr, model, emit)
    recorder = MeetingRecorder(
        session, outdir, emit, args.silence_timeout, reader, SlideTerms(window), replay=replay
    )
    watcher = None
    if reader is not None:
        recorder.open_meeting()  # a slide may show before anyone speaks
        if replay is None:
            watcher = _slide_watcher(args, reader.offer, lambda: session.position, emit)
            watcher.start()
    try:
        run_meeting(source, recorder)
    finally:
        if watcher is not None:
            watcher.stop()
        if reader is not None:
            reader.close()
    return EXIT_OK


def _warner(emit: Callable[[dict[str, Any]], None]) -> Callable[[str], None]:
    return lambda message: emit({"type": "warning", "message": message})


def _term_window(args: argparse.Namespace) -> TermWindow:
    try:
        return TermWindow(max_terms=args.slide_terms)
    except ValueError as exc:
        raise InputError(f"--slide-terms: {exc}") from None


def _slide_reader(
    ocr: OcrBackend, model: AsrModel, emit: Callable[[dict[str, Any]], None]
) -> SlideReader:
    """The OCR thread of a meeting with slides, its terms judged rare by `model`'s tokenizer."""
    rare = tokenizer_rarity(model.encode_text)
    return SlideReader(ocr, lambda text: extract_terms(text, rare), _warner(emit))


def _slide_watcher(
    args: argparse.Namespace,
    offer: Callable[[Slide], None],
    clock: Callable[[], int],
    emit: Callable[[dict[str, Any]], None],
) -> FolderWatcher | ScreenshotCommand:
    if args.slides is not None:
        return FolderWatcher(args.slides, offer, clock, _warner(emit))
    return ScreenshotCommand(args.screenshot, args.screenshot_every, offer, clock, _warner(emit))


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) to (host, port); a bare PORT listens on 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise InputError(f"--listen takes HOST:PORT with a port 0..65535, got {text!r}")
    return host, int(port)


def _listen(args: argparse.Namespace, outdir: Path, out: TextIO) -> int:
    import asyncio

    from streamasr.config import SessionConfig
    from streamasr.meeting.listen import ListenConfig, listen
    from streamasr.models.loader import load_model

    host, port = parse_listen(args.listen)
    try:
        config = ListenConfig(
            outdir,
            host,
            port,
            args.token or None,
            silence_timeout_s=args.silence_timeout,
            # the language and task of a producer's session.start that names none
            session=SessionConfig(language=args.language, task=args.task),
            terms=_term_window(args),
            **({} if args.idle_timeout is None else {"idle_timeout_s": args.idle_timeout}),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    model = load_model(args.model, compute=args.compute, dtype=args.dtype)
    try:
        model.info.check_language(args.language, args.task)
    except ValueError as exc:  # a language or task the model lacks
        raise InputError(str(exc)) from None
    emit = _emitter(out)
    try:
        reader: SlideReader | None = _slide_reader(
            load_ocr(args.ocr, compute=args.compute, dtype=args.dtype), model, emit
        )
    except InputError as exc:  # slides are an extra of --listen: the audio is recorded anyway
        _warner(emit)(f"slide messages are refused: {exc}")
        reader = None
    try:
        asyncio.run(listen(config, model, emit, reader))
    finally:
        if reader is not None:
            reader.close()
    return EXIT_OK
