"""Live captions in the terminal from a running `streamasr serve`: a file or the microphone in.

    python clients/captions.py [--url ws://127.0.0.1:8765/v1/stream] [--token T]
                               (FILE | --mic) [--json] [--speed 1]

A file is streamed paced at `--speed` times real time, in its own sample rate (the daemon
resamples); `--mic` records 16 kHz mono through sounddevice (optional: pip install sounddevice).
On a terminal the current partial is rewritten in place and each final gets its own line; on a
pipe only the finals are printed; `--json` prints every server message as one JSON line.
Server text is printed with escape sequences and control characters removed (`--json`
escapes them), so a broken or hostile server cannot drive the terminal. A token is not sent
over plain ws:// to another host unless `--insecure-token`.
Ctrl-C ends the session (session.end) and waits for the last finals; a second Ctrl-C quits.
Exit codes: 0 done, 1 the server ended the session with an error, 2 usage, file or connection
errors (one line on stderr), 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from streamasr.net import add_token_args, token_refusal
from streamasr.server.protocol import (
    STREAM_PATH,
    AudioFormat,
    SessionEnd,
    SessionStart,
    parse_server_message,
)
from streamasr.textsafe import safe_json, safe_text

DEFAULT_URL = f"ws://127.0.0.1:8765{STREAM_PATH}"
FRAME_S = 0.1  # audio per WebSocket frame
MIC_RATE = 16_000
END_WAIT_S = 30.0  # after session.end, how long to wait for session.ended


class UsageError(Exception):
    """A bad argument, file or connection: exit code 2 with a one-line message."""


# ------------------------------------------------------------------ audio sources
async def file_frames(path: Path, speed: float, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """s16le frames of `path` in its own rate and channels, paced at `speed` x real time."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        block = max(1, int(f.samplerate * FRAME_S))
        t0, sent = time.monotonic(), 0
        while not stop.is_set():
            data = f.read(block, dtype="int16", always_2d=True)  # (n, channels)
            if len(data) == 0:
                return
            if data.shape[1] > 2:  # the protocol takes 1 or 2 channels
                data = data.mean(axis=1, keepdims=True).astype(np.int16)
            sent += len(data)
            if speed > 0:
                await asyncio.sleep(max(0.0, t0 + sent / f.samplerate / speed - time.monotonic()))
            yield data.astype("<i2").tobytes()


def file_format(path: Path) -> AudioFormat:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return AudioFormat("pcm_s16le", int(info.samplerate), 1 if info.channels == 1 else 2)


def import_sounddevice() -> Any:
    try:
        import sounddevice  # optional: only --mic needs PortAudio
    except (ImportError, OSError) as exc:
        raise UsageError(
            f"--mic needs sounddevice and PortAudio ({exc}); "
            "pip install sounddevice, apt-get install libportaudio2"
        ) from None
    return sounddevice


async def mic_frames(sd: Any, stop: asyncio.Event) -> AsyncIterator[bytes]:
    """16 kHz mono s16le frames from the default input device until `stop` is set."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)  # 10 s; drop-oldest when full

    def put(data: bytes) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(data)

    def callback(indata: Any, frames: int, when: Any, status: Any) -> None:
        loop.call_soon_threadsafe(put, bytes(indata))

    try:
        stream = sd.RawInputStream(
            samplerate=MIC_RATE,
            channels=1,
            dtype="int16",
            blocksize=int(MIC_RATE * FRAME_S),
            callback=callback,
        )
    except Exception as exc:  # PortAudioError and friends: no device, busy device
        raise UsageError(f"cannot open the microphone: {exc}") from None
    with stream:
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                got = asyncio.create_task(queue.get())
                await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    return
                yield got.result()
        finally:
            stopped.cancel()


# ------------------------------------------------------------------ output
class Printer:
    """Server messages to the terminal: JSON lines, or captions with an in-place partial."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.tty = out.isatty()
        self.partial_shown = False

    def show(self, msg: dict[str, Any]) -> None:
        if self.as_json:
            print(safe_json(msg), file=self.out, flush=True)
            return
        kind = msg["type"]
        if kind == "transcript.partial" and self.tty:
            width = shutil.get_terminal_size().columns - 1
            text = safe_text(msg["text"]).strip()
            if len(text) > width:  # keep the tail: one line, so \r can rewrite it
                text = "…" + text[-(width - 1) :]
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()
            self.partial_shown = True
        elif kind == "transcript.final":
            self._clear()
            print(safe_text(msg["text"]).strip(), file=self.out, flush=True)
        elif kind == "error":
            self._clear()
            error = safe_text(f"server error {msg['code']}: {msg['message']}")
            print(error, file=sys.stderr, flush=True)

    def _clear(self) -> None:
        if self.partial_shown:
            self.out.write("\r\x1b[K")
            self.partial_shown = False

    def close(self) -> None:
        self._clear()
        self.out.flush()


# ------------------------------------------------------------------ session
async def send_audio(
    ws: ClientConnection, start: SessionStart, frames: AsyncIterator[bytes], ended: asyncio.Event
) -> None:
    """session.start, the audio, then session.end (also after Ctrl-C, which ends `frames`)."""
    try:
        await ws.send(start.to_json())
        async for frame in frames:
            await ws.send(frame)
        await ws.send(SessionEnd().to_json())
    except ConnectionClosed:
        pass
    finally:
        ended.set()


async def receive(ws: ClientConnection, printer: Printer) -> int:
    """Print messages until session.ended or the close; the exit code."""
    fatal = False
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            msg = parse_server_message(raw)
            printer.show(msg)
            if msg["type"] == "error" and msg.get("fatal"):
                fatal = True
            if msg["type"] == "session.ended":
                break
    except ConnectionClosed:
        pass
    if ws.close_code not in (None, 1000) and not fatal:
        print(safe_text(f"connection closed: {ws.close_code} {ws.close_reason}"), file=sys.stderr)
        return 1
    return 1 if fatal else 0


async def run(args: argparse.Namespace) -> int:
    refusal = token_refusal(args, args.url)
    if refusal:
        raise UsageError(refusal)
    stop = asyncio.Event()
    if args.mic:
        fmt = AudioFormat("pcm_s16le", MIC_RATE, 1)
        frames = mic_frames(import_sounddevice(), stop)
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        fmt = file_format(path)
        frames = file_frames(path, args.speed, stop)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    try:
        ws = await asyncio.wait_for(
            connect(args.url, additional_headers=headers, max_size=2**22), timeout=10
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise UsageError(f"cannot connect to {args.url}: {exc or type(exc).__name__}") from None

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_sigint() -> None:
        if stop.is_set() and task is not None:
            task.cancel()  # second Ctrl-C: quit now
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    printer = Printer(sys.stdout, as_json=args.json)
    ended = asyncio.Event()
    async with ws:
        sender = asyncio.create_task(
            send_audio(
                ws, SessionStart(audio=fmt, language=args.language, task=args.task), frames, ended
            )
        )
        receiver = asyncio.create_task(receive(ws, printer))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
            if not receiver.done():  # all sent: the last finals are on their way
                await asyncio.wait_for(receiver, END_WAIT_S)
            code = receiver.result()
        except asyncio.CancelledError:
            code = 130
        finally:
            sender.cancel()
            receiver.cancel()
            printer.close()
            loop.remove_signal_handler(signal.SIGINT)
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="captions", description="Live captions from streamasr serve")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", help="an audio file (wav, flac, ogg, ...)")
    src.add_argument("--mic", action="store_true", help="the default microphone (sounddevice)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon's WebSocket ({DEFAULT_URL})")
    add_token_args(p)
    p.add_argument("--json", action="store_true", help="print every server message as JSON")
    p.add_argument(
        "--language", help="spoken language: a code such as es, or auto (the server's default)"
    )
    p.add_argument(
        "--task",
        choices=["transcribe", "translate"],
        help="translate: captions in English, whatever is spoken (the server's default)",
    )
    p.add_argument(
        "--speed", default="1", help="file pacing: times real time (1), or max (no pacing)"
    )
    args = p.parse_args(argv)
    try:
        speed = 0.0 if args.speed == "max" else float(args.speed)
        if args.speed != "max" and not speed > 0:
            raise ValueError
        args.speed = speed
    except ValueError:
        p.error(f"--speed must be a positive number or max, not {args.speed!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        print(f"captions: {safe_text(str(exc))}", file=sys.stderr)  # may quote the server
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
