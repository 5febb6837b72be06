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
A connection that drops, or a daemon that shuts down, is followed by a new connection that
resumes the session (docs/protocol.md, "Resume"): the last 60 s of audio are kept to be sent
again, and what could not be is reported on stderr.
Exit codes: 0 done, 1 the server ended the session with an error, 2 usage, file or connection
errors (one line on stderr), 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from streamasr.server.resume import ResumeState
from streamasr.textsafe import safe_json, safe_text

DEFAULT_URL = f"ws://127.0.0.1:8765{STREAM_PATH}"
FRAME_S = 0.1  # audio per WebSocket frame
MIC_RATE = 16_000
END_WAIT_S = 30.0  # after session.end, how long to wait for session.ended
KEEP_AUDIO_S = 60.0  # audio kept to send again after a resume
RECONNECT_WAITS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # between tries after a lost connection


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
class Lost(Exception):
    """The connection dropped before the session ended: reconnect and resume."""


class Stream:
    """One session over as many connections as it takes: a connection that drops (or a
    daemon that shuts down) is followed by a new one that resumes the session
    (docs/protocol.md, "Resume"), sending again the audio the daemon did not transcribe."""

    def __init__(self, start: SessionStart, frames: AsyncIterator[bytes], printer: Printer):
        self.start = start
        self.frames = frames
        self.printer = printer
        self.state = self._fresh_state()
        self.all_sent = False  # session.end went out
        self.fatal = False
        self.resuming = False  # a connection was lost; not resumed yet
        self.failures = 0  # connections lost or refused since the session last went on
        # The source's frames, read by one task for every connection: a sender cancelled with
        # its connection must not close the source.
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def _fresh_state(self) -> ResumeState:
        fmt = self.start.audio
        return ResumeState(fmt.sample_rate, fmt.bytes_per_frame, KEEP_AUDIO_S)

    async def _read_source(self) -> None:
        try:
            async for frame in self.frames:
                await self._queue.put(frame)
        finally:
            await self._queue.put(None)

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    async def run(self, ws: ClientConnection) -> int:
        """Serve one connection (resuming the session after a lost one); the exit code, or
        `Lost`."""
        if self._pump is None:
            self._pump = asyncio.create_task(self._read_source())
        resumed: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        sender = asyncio.create_task(self._send(ws, resumed if self.resuming else None))
        receiver = asyncio.create_task(self._receive(ws, resumed))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
            if not receiver.done():  # all sent: the last finals are on their way
                await asyncio.wait_for(asyncio.shield(receiver), END_WAIT_S)
            return receiver.result()
        finally:
            sender.cancel()
            receiver.cancel()

    async def _send(
        self, ws: ClientConnection, resumed: asyncio.Future[float | None] | None
    ) -> None:
        """session.start (or session.resume and the audio to send again), the audio, then
        session.end (also after Ctrl-C, which ends `frames`)."""
        try:
            if resumed is None:
                await ws.send(self.start.to_json())
            else:
                await ws.send(json.dumps(self.state.resume_message()))
                t = await resumed
                if t is None:  # it could not be resumed: a new session
                    await ws.send(self.start.to_json())
                else:
                    again = self.state.again(t)
                    step = max(1, int(FRAME_S * self.start.audio.sample_rate))
                    step *= self.start.audio.bytes_per_frame
                    for i in range(0, len(again), step):
                        await self._frame(ws, again[i : i + step])
            while not self.all_sent and (frame := await self._queue.get()) is not None:
                await self._frame(ws, frame)
            self.all_sent = True
            await ws.send(SessionEnd().to_json())
        except ConnectionClosed:
            pass

    async def _frame(self, ws: ClientConnection, frame: bytes) -> None:
        self.state.sent(frame)  # kept first: sent again if the daemon never got it
        await ws.send(frame)

    async def _receive(self, ws: ClientConnection, resumed: asyncio.Future[float | None]) -> int:
        """Print messages until session.ended or the close; the exit code, or `Lost`."""
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                msg = parse_server_message(raw)
                if msg["type"] == "error" and msg.get("code") == "resume_failed":
                    notice(f"the session could not be resumed ({msg['message']}); a new one starts")
                    self.state = self._fresh_state()
                    self.resuming, self.failures = False, 0
                    if not resumed.done():
                        resumed.set_result(None)
                    continue
                if msg["type"] == "error" and msg.get("code") == "server_busy" and self.resuming:
                    # not the session's: a full daemon refused the resume; try again
                    notice(f"the daemon is busy ({msg['message']}); trying again")
                    continue
                self.state.received(msg)
                self.printer.show(msg)
                if msg["type"] == "session.resumed" and not resumed.done():
                    self.resuming = False
                    self.failures = 0
                    lost = self.state.lost_s
                    notice(
                        f"resumed at {msg['t']:.1f} s"
                        + (f"; {lost:.1f} s of audio lost" if lost else "")
                    )
                    resumed.set_result(float(msg["t"]))
                if msg["type"] == "error" and msg.get("fatal"):
                    self.fatal = True
                if msg["type"] == "session.ended":
                    if (
                        msg.get("reason") == "shutdown"
                        and not self.all_sent
                        and self.state.resumable
                    ):
                        raise Lost  # the daemon went away: another one takes the session on
                    break
        except ConnectionClosed:
            if ws.close_code != 1000 and not self.fatal and self.state.resumable:
                raise Lost from None
        if ws.close_code not in (None, 1000) and not self.fatal:
            notice(f"connection closed: {ws.close_code} {ws.close_reason}")
            return 1
        return 1 if self.fatal else 0


def notice(text: str) -> None:
    print(safe_text(text), file=sys.stderr, flush=True)


async def open_socket(url: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return await asyncio.wait_for(connect(url, additional_headers=headers, max_size=2**22), 10)


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
    try:
        ws = await open_socket(args.url, args.token)
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
    stream = Stream(
        SessionStart(audio=fmt, language=args.language, task=args.task), frames, printer
    )
    try:
        code = await serve(stream, ws, args)
    except asyncio.CancelledError:
        code = 130
    finally:
        stream.close()
        printer.close()
        loop.remove_signal_handler(signal.SIGINT)
    return code


async def serve(stream: Stream, ws: ClientConnection, args: argparse.Namespace) -> int:
    """The session over `ws`, then over new connections while it can be resumed."""
    while True:
        async with ws:
            try:
                return await stream.run(ws)
            except Lost:
                if not stream.resuming:
                    notice("connection lost; resuming the session")
                stream.resuming = True
        while True:  # the backoff goes on over refused resumes, until one goes through
            if stream.failures >= len(RECONNECT_WAITS_S):
                notice("gave up reconnecting")
                return 1
            await asyncio.sleep(RECONNECT_WAITS_S[stream.failures])
            stream.failures += 1
            try:
                ws = await open_socket(args.url, args.token)
                break
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                notice(f"cannot reconnect to {args.url}: {exc or type(exc).__name__}")


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
