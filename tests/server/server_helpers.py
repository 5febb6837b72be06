"""Helpers for server tests: PCM encoding, a WebSocket client that records everything, HTTP GET."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamasr.engine.driver import LocalSession
from streamasr.events import TranscriptFinal
from streamasr.server.app import Server
from streamasr.server.protocol import STREAM_PATH, parse_server_message

CHUNK_BYTES = 3200  # 100 ms of 16 kHz s16le mono


def pcm16(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] to s16le bytes."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def dequantized(x: np.ndarray) -> np.ndarray:
    """What the server decodes from `pcm16(x)`: the reference input for a local Session."""
    return np.frombuffer(pcm16(x), dtype="<i2").astype(np.float32) / np.float32(32768.0)


def pcm24(x: np.ndarray) -> bytes:
    """16 kHz float audio as the API's 24 kHz 16-bit PCM."""
    y = soxr.resample(x, 16_000, 24_000)
    return (np.clip(y, -1, 1) * 32767).round().astype("<i2").tobytes()


def wav_bytes(x: np.ndarray, rate: int = 16_000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def deepgram_sdk_client(port: int, key: str) -> Any:
    """The official Deepgram SDK's async client, pointed at the daemon on `port`."""
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    host = f"127.0.0.1:{port}"
    env = DeepgramClientEnvironment(
        base=f"http://{host}", production=f"ws://{host}", agent=f"ws://{host}", agent_rest=""
    )
    return AsyncDeepgramClient(api_key=key, environment=env)


def ws_url(server: Server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}{STREAM_PATH}{query}"


@dataclass
class Result:
    """Everything one client received, and how the connection closed."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    @property
    def final_texts(self) -> list[str]:
        return [m["text"] for m in self.of("transcript.final")]

    def check_seq(self) -> None:
        assert [m["seq"] for m in self.messages] == list(range(len(self.messages)))


async def receive_all(ws: ClientConnection) -> Result:
    """Read until the server closes; every frame must be a JSON text message with a seq."""
    result = Result()
    try:
        async for raw in ws:
            assert isinstance(raw, str), "the server sends text frames only"
            result.messages.append(parse_server_message(raw))
    except ConnectionClosed:
        pass
    result.close_code = ws.close_code
    result.close_reason = ws.close_reason or ""
    return result


async def send_audio(ws: ClientConnection, data: bytes, chunk: int = CHUNK_BYTES) -> None:
    for i in range(0, len(data), chunk):
        await ws.send(data[i : i + chunk])


async def session(
    server: Server,
    frames: list[str | bytes],
    *,
    query: str = "",
    timeout_s: float = 30.0,
    speed: float | None = None,
) -> Result:
    """Connect, send `frames` (text or binary) concurrently with reading, return what came back.

    With `speed`, binary frames (16 kHz s16le mono) are paced at `speed` times real time.
    """
    async with asyncio.timeout(timeout_s):
        async with connect(ws_url(server, query)) as ws:
            reader = asyncio.create_task(receive_all(ws))
            t0, sent = time.monotonic(), 0
            try:
                for frame in frames:
                    if speed is not None and isinstance(frame, bytes):
                        sent += len(frame)
                        await asyncio.sleep(t0 + sent / 32_000 / speed - time.monotonic())
                    await ws.send(frame)
            except ConnectionClosed:
                pass
            return await reader


async def stream_session(
    server: Server,
    audio: bytes,
    *,
    start: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
    speed: float | None = None,
) -> Result:
    """session.start (if given), the audio in 100 ms frames, session.end; all messages back."""
    frames: list[str | bytes] = [json.dumps(start)] if start else []
    frames += [audio[i : i + CHUNK_BYTES] for i in range(0, len(audio), CHUNK_BYTES)]
    frames.append(json.dumps({"type": "session.end"}))
    return await session(server, frames, timeout_s=timeout_s, speed=speed)


async def assert_served(server: Server) -> None:
    """The next client still gets a whole, clean session."""
    silence = bytes(3200 * 3)
    result = await stream_session(server, silence, timeout_s=10.0)
    assert result.types == ["session.started", "session.ended"], result.messages
    assert result.close_code == 1000
    result.check_seq()


def reference_finals(audio: np.ndarray) -> list[str]:
    """The finals a local Session with FakeModel gives for the same (dequantized) audio."""
    from fake_model import FakeModel  # on sys.path through tests/server/conftest.py

    session = LocalSession(FakeModel())
    events = session.feed(dequantized(audio)) + session.close()
    return [e.text for e in events if isinstance(e, TranscriptFinal)]


async def raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client with a 4 KiB receive buffer, for a client that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    head = [
        f"GET {STREAM_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    reply = await reader.readuntil(b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 101"), reply
    return reader, writer


def masked_binary_frame(payload: bytes) -> bytes:
    """A client binary frame (FIN, opcode 2) masked with a zero key; payload under 126 bytes."""
    return bytes([0x82, 0x80 | len(payload)]) + bytes(4) + payload


@dataclass
class HttpReply:
    status: int
    headers: Message  # names case-insensitive, as in HTTP
    body: bytes


def _get(url: str, headers: dict[str, str]) -> HttpReply:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return HttpReply(reply.status, reply.headers, reply.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, exc.headers, exc.read())


async def http_get(server: Server, path: str, headers: dict[str, str] | None = None) -> HttpReply:
    """GET on the server's port from a thread (urllib blocks)."""
    url = f"http://127.0.0.1:{server.port}{path}"
    return await asyncio.to_thread(_get, url, headers or {})
