"""A scripted server for the clients: it sends chosen messages (hostile text included) and
records what the client sent, so the clients' handling of untrusted server text is testable."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.sync.server import ServerConnection, serve

# A transcript each: what the server sends, and what a terminal or a window should get.
HOSTILE = [
    ("\x1b]0;pwn\x07title", "title"),  # OSC: sets the terminal's title
    ("\x1b[2Jcleared", "cleared"),  # CSI: clears the screen
    ("rm -rf ~\n", "rm -rf ~"),  # a command and Enter
    ("one\rtwo\tthree", "one two three"),
    ("\u202eevil\u202c text", "evil text"),  # a bidi override turns the text around
    ("bell\x07 del\x7f c1\x9b31m", "bell del c1"),
    ("café 東京 naïve 😀", "café 東京 naïve 😀"),  # ordinary text passes intact
]


def finals(texts: list[str]) -> list[dict[str, Any]]:
    return [{"type": "transcript.final", "text": t, "start": 0.0, "end": 1.0} for t in texts]


@dataclass
class ScriptedServer:
    """Answers session.start with `messages`, waits for session.end, then closes."""

    messages: list[dict[str, Any]]
    close_code: int = 1000
    close_reason: str = ""
    authorization: list[str | None] = field(default_factory=list)  # one per connection
    port: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.authorization.append(ws.request.headers.get("Authorization"))
        ws.recv()  # session.start
        for seq, msg in enumerate(self.messages):
            ws.send(json.dumps({**msg, "seq": seq}))
        for raw in ws:
            if isinstance(raw, str) and json.loads(raw).get("type") == "session.end":
                break
        ws.close(self.close_code, self.close_reason)


@contextmanager
def scripted_server(messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[ScriptedServer]:
    """A `ScriptedServer` on a free loopback port, served from a thread."""
    scripted = ScriptedServer(messages, **kwargs)
    with serve(scripted.handle, "127.0.0.1", 0) as server:
        scripted.port = server.socket.getsockname()[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield scripted
        finally:
            server.shutdown()
            thread.join(10)


# A token the clients send: to this machine, over wss://, with the flag; or no token at all.
TOKEN_ALLOWED = [
    ("ws://127.0.0.1:8765/v1/stream", ["--token", "t"]),
    ("ws://127.4.5.6:8765/v1/stream", ["--token", "t"]),
    ("ws://localhost:8765/v1/stream", ["--token", "t"]),
    ("ws://[::1]:8765/v1/stream", ["--token", "t"]),
    ("wss://example.com/v1/stream", ["--token", "t"]),
    ("ws://example.com/v1/stream", ["--token", "t", "--insecure-token"]),
    ("ws://example.com/v1/stream", []),  # no token, nothing to give away
]


class Connecting(Exception):
    """The client got as far as opening the connection."""


def record_connects(monkeypatch: Any, module: Any) -> list[str]:
    """Replace `module.connect`: the URLs an in-process client tries to open, each try raising
    `Connecting`; and no token from the environment."""
    urls: list[str] = []

    def connect(url: str, **kwargs: object) -> None:
        urls.append(url)
        raise Connecting(url)

    monkeypatch.setattr(module, "connect", connect)
    monkeypatch.delenv("STREAMASR_TOKEN", raising=False)
    return urls
