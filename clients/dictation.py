"""Desktop dictation: microphone or file -> streamasr daemon -> text typed in the focused window.

    python clients/dictation.py [--url ws://127.0.0.1:8765/v1/stream] [--once] [--punctuation]

Listening toggles on SIGUSR1, so a desktop shortcut can run `pkill -USR1 -f clients/dictation.py`;
it starts listening unless --start-paused. `--once` types the first utterance and exits.
Typing: xdotool on X11, wtype or ydotool on Wayland, the clipboard (xclip / wl-copy) otherwise;
--backend picks one. See docs/dictation.md.
Server text is typed on one line with control characters, escape sequences and bidi overrides
removed, so a broken or hostile server cannot press Enter or send escapes into a terminal; with
--punctuation the words "new line" still become a newline, whoever sent them. A token is not sent
over plain ws:// to another host unless --insecure-token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np

from streamasr.net import add_token_args, token_refusal
from streamasr.server.protocol import (
    STREAM_PATH,
    AudioFormat,
    SessionEnd,
    SessionFlush,
    SessionStart,
    parse_server_message,
)
from streamasr.textsafe import safe_text

RATE = 16_000
CHUNK = RATE // 20  # 50 ms frames

# ------------------------------------------------------------------ spoken punctuation
SPOKEN = {
    "comma": ",",
    "period": ".",
    "full stop": ".",
    "question mark": "?",
    "exclamation mark": "!",
    "exclamation point": "!",
    "colon": ":",
    "semicolon": ";",
    "new line": "\n",
    "newline": "\n",
    "new paragraph": "\n\n",
}
_SPOKEN_RE = re.compile(
    r"[\s,.]*\b("
    + "|".join(sorted((re.escape(k) for k in SPOKEN), key=len, reverse=True))
    + r")\b[,.!?;:]?",
    re.IGNORECASE,
)


def spoken_punctuation(text: str) -> str:
    """'hello comma world period new line' -> 'hello, world.\\n' (the model's own punctuation
    around a spoken mark is dropped: Whisper tends to write "Hello, comma, world.")."""

    def mark(m: re.Match[str]) -> str:
        return SPOKEN[" ".join(m.group(1).lower().split())]

    out = _SPOKEN_RE.sub(mark, text)
    out = re.sub(r"([,.?!:;]) *(?=\S)", r"\1 ", out)  # one space after a mark, before a word
    out = re.sub(r" *\n *", "\n", out)
    return out


# ------------------------------------------------------------------ typing backends
BACKENDS: dict[str, list[str]] = {
    "xdotool": ["xdotool", "type", "--delay", "0", "--"],
    "wtype": ["wtype", "--"],
    "ydotool": ["ydotool", "type", "--"],
    "xclip": ["xclip", "-selection", "clipboard"],  # text on stdin
    "wl-copy": ["wl-copy"],  # text on stdin
}
CLIPBOARD = ("xclip", "wl-copy")


def choose_backend(env: Mapping[str, str]) -> str:
    """The first available backend for the session: Wayland, X11, then the clipboard."""
    order = (
        ["wtype", "ydotool", "wl-copy"]
        if env.get("WAYLAND_DISPLAY")
        else ["xdotool", "xclip"]
        if env.get("DISPLAY")
        else []
    )
    for name in order:
        if shutil.which(name):
            return name
    raise SystemExit(f"dictation: no typing tool found (tried {', '.join(order) or 'none'})")


def type_text(text: str, backend: str) -> None:
    """Type `text` into the focused window (or put it on the clipboard)."""
    if not text:
        return
    argv = BACKENDS[backend]
    if backend in CLIPBOARD:
        subprocess.run(argv, input=text.encode(), check=True, timeout=10)
    else:
        subprocess.run([*argv, text], check=True, timeout=30)


class Committer:
    """Turns finals into the text to type: spacing between utterances, spoken punctuation."""

    def __init__(self, punctuation: bool) -> None:
        self.punctuation = punctuation
        self.typed_any = False

    def text(self, final_text: str) -> str:
        text = final_text.strip()
        if self.punctuation:
            text = spoken_punctuation(text)
        if not text:
            return ""
        sep = " " if self.typed_any and not text.startswith("\n") else ""
        self.typed_any = True
        return sep + text


# ------------------------------------------------------------------ audio
def file_format(path: str) -> AudioFormat:
    """What `file_audio` sends: the file's own rate (the daemon resamples), mono s16le."""
    import soundfile as sf

    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise SystemExit(f"dictation: cannot read {path}: {exc}") from None
    return AudioFormat("pcm_s16le", int(info.samplerate), 1)


async def file_audio(path: str, realtime: bool) -> AsyncIterator[np.ndarray]:
    """50 ms chunks of `path`, (n,) float32 mono at the file's own rate."""
    import soundfile as sf

    data, rate = sf.read(path, dtype="float32", always_2d=True)  # (n, channels)
    mono = data.mean(axis=1)
    chunk = rate // 20
    for i in range(0, len(mono), chunk):
        yield mono[i : i + chunk]
        await asyncio.sleep(chunk / rate if realtime else 0)


async def mic_audio(device: str | None) -> AsyncIterator[np.ndarray]:
    try:
        import sounddevice as sd  # optional: only the microphone needs PortAudio
    except (ImportError, OSError) as exc:
        raise SystemExit(
            f"dictation: the microphone needs sounddevice and PortAudio ({exc}); "
            "pip install sounddevice, apt-get install libportaudio2"
        ) from None

    loop = asyncio.get_running_loop()
    q: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=200)  # 10 s; drop-newest when full

    def put(block: np.ndarray) -> None:
        if not q.full():
            q.put_nowait(block)

    def callback(indata: np.ndarray, frames: int, t: object, status: object) -> None:
        # copied here: PortAudio reuses `indata` for the next block once the callback returns
        loop.call_soon_threadsafe(put, indata[:, 0].copy())

    try:
        stream = sd.InputStream(
            samplerate=RATE,
            channels=1,
            dtype="float32",
            blocksize=CHUNK,
            device=int(device) if device and device.isdigit() else device,
            callback=callback,
        )
    except (ValueError, sd.PortAudioError) as exc:  # no such device, or it is busy
        raise SystemExit(f"dictation: cannot open the microphone: {exc}") from None
    with stream:
        while True:
            yield await q.get()


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


# ------------------------------------------------------------------ the client
async def dictate(args: argparse.Namespace) -> int:
    from websockets.asyncio.client import connect

    refusal = token_refusal(args, args.url)
    if refusal:
        raise SystemExit(f"dictation: {refusal}")
    backend = args.backend or choose_backend(os.environ)
    committer = Committer(args.punctuation)
    listening = asyncio.Event()
    if not args.start_paused:
        listening.set()
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    fmt = file_format(args.input) if args.input else AudioFormat()  # the microphone: 16 kHz
    async with connect(args.url, additional_headers=headers) as ws:
        start = SessionStart(fmt, language=args.language, partials=False)
        await ws.send(start.to_json())

        def toggle() -> None:
            if listening.is_set():
                listening.clear()
                loop.create_task(ws.send(SessionFlush().to_json()))  # type what was said
            else:
                listening.set()

        loop.add_signal_handler(signal.SIGUSR1, toggle)

        async def send() -> None:
            source = file_audio(args.input, args.realtime) if args.input else mic_audio(args.device)
            async for chunk in source:
                if listening.is_set():
                    await ws.send(pcm16(chunk))
            await ws.send(SessionEnd().to_json())

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                msg = parse_server_message(str(raw))
                if msg["type"] == "transcript.final":
                    text = committer.text(safe_text(msg["text"]))
                    type_text(text, backend)
                    if text and args.once:
                        break
                elif msg["type"] == "error" and msg.get("fatal"):
                    print(f"dictation: {safe_text(msg['message'])}", file=sys.stderr)
                    return 1
        finally:
            sender.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=f"ws://127.0.0.1:8765{STREAM_PATH}")
    add_token_args(p)
    p.add_argument("--device", help="sound input (sounddevice name or index)")
    p.add_argument(
        "--input",
        metavar="FILE",
        help="an audio file (wav, flac, ogg; 8-48 kHz) instead of the microphone",
    )
    p.add_argument("--realtime", action="store_true", help="pace --input in real time")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="typing tool (auto)")
    p.add_argument("--punctuation", action="store_true", help="spoken punctuation ('comma')")
    p.add_argument("--once", action="store_true", help="type one utterance, then exit")
    p.add_argument(
        "--language", help="spoken language: a code such as es, or auto (the server's default)"
    )
    p.add_argument("--start-paused", action="store_true", help="wait for SIGUSR1 to listen")
    args = p.parse_args(argv)
    try:
        return asyncio.run(dictate(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
