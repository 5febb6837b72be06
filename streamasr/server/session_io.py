"""What a `SessionRunner` is wired to: the socket (`Channel`), the API spoken on it (`Codec`),
where its events are kept (`Recording`), and what every connection shares (`ServerContext`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamasr.config import SessionConfig
from streamasr.engine.scheduler import Scheduler
from streamasr.models.base import AsrModel
from streamasr.server.config import ServerConfig
from streamasr.server.metrics import ServerMetrics
from streamasr.server.protocol import (
    Action,
    CloseCode,
    Flush,
    ProtocolError,
    ServerMessage,
    SessionResume,
    parse_client_message,
)
from streamasr.server.resume import ResumeTokens
from streamasr.server.worker import DecodePool

CLOSE_GRACE_S = 2.0  # wait this long for the client's close frame, then drop the TCP connection


class ChannelClosed(Exception):
    """The peer went away: nothing more can be read or sent. `code`: the close code of the
    peer's close frame, if it sent one (1000: it meant to leave)."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Cut(Flush):
    """A server-side flush, after which the `Recording` starts anew (a meeting split)."""


class Recording(Protocol):
    """Where a session's events are kept as they happen (a meeting's notes).

    Its calls run on the pool in stream order, each before the client hears of the events. A
    session with a recording transcribes every sample it received however the connection ends
    (a client gone, a fatal error): its queued audio is decoded and its last utterance
    finalised before `closed`.
    """

    def opened(self, position: int) -> None:
        """The session started; `position` is its 16 kHz stream clock."""
        ...

    def record(self, events: Sequence[ServerMessage], position: int) -> None: ...

    def show(self, image: bytes, sample: int) -> str | None:
        """A slide the client sent, shown at stream position `sample`. Returns why it was
        refused, or None. Runs on the event loop: it only queues the slide."""
        ...

    def context(self, position: int) -> tuple[str, ...]:
        """Keywords the session's next decodes are biased with too (`Session.steer`)."""
        ...

    def cut(self) -> None:
        """After a `Cut`'s finals: end what is being recorded; the next speech starts anew."""
        ...

    def closed(self, reason: str) -> None:
        """The session is over (`SessionEnded.reason`, "disconnect" or "error")."""
        ...


class Channel(Protocol):
    """A message socket: one WebSocket, whatever serves it."""

    async def receive(self) -> str | bytes:
        """The next message; raises `ChannelClosed` once the peer has gone."""
        ...

    async def send(self, text: str) -> None:
        """Send a text message; raises `ChannelClosed` once the peer has gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake; drop the connection if it does not end in time."""
        ...

    def abort(self) -> None:
        """Drop the connection now."""
        ...


class Codec(Protocol):
    """One API's messages: frames in, `Action`s out; the runner's messages in, frames out."""

    def open(self) -> list[Action]:
        """What happens as the connection opens, before any message."""
        ...

    def receive_text(self, text: str) -> list[Action]: ...

    def receive_bytes(self, data: bytes) -> list[Action]: ...

    def end(self, reason: str, *, close_code: CloseCode = CloseCode.NORMAL) -> list[Action]:
        """A server-side end (idle, max_length, shutdown): finalise if a session is open."""
        ...

    def encode(self, message: ServerMessage) -> list[str]:
        """The frames of one outgoing message (none: this API has no such message)."""
        ...


@dataclass(frozen=True)
class ServerContext:
    """What every connection shares; read-only, so no per-client state lives on it, except
    in `live` and `held`: the sessions a client may resume."""

    config: ServerConfig
    model: AsrModel
    session_config: SessionConfig
    pool: DecodePool  # runs the sessions' own work: resampling, VAD, features, text
    metrics: ServerMetrics
    scheduler: Scheduler  # runs every session's model calls on the shared inference threads
    tokens: ResumeTokens | None = None  # signs resume tokens; None: sessions are not resumed
    live: dict[str, Resumable] = field(default_factory=dict)  # by session id: every session
    # that can be resumed, its client connected or not
    held: dict[str, Resumable] = field(default_factory=dict)  # those whose client vanished,
    # decoding on within `resume_grace_s`, oldest first
    max_held: int = 0  # more are not held: the oldest is let go


class Resumable(Protocol):
    """A session its client may resume: held since the client vanished, or still on the
    connection the client is leaving."""

    def let_go(self) -> None:
        """End it as a vanished client's session."""
        ...

    def attach(self, channel: Channel, last_seq: int) -> asyncio.Future[None]:
        """Go on over `channel`, dropping the connection it had if any: the messages after
        `last_seq` first. The future is done when the session no longer uses the channel."""
        ...


RESUME_WAIT_S = 1.0  # a full daemon waits this long for a new connection's session.resume


class Prefetched:
    """A channel whose first message was read already: `receive` gives it first."""

    def __init__(self, channel: Channel, first: str | bytes) -> None:
        self._channel = channel
        self._first: str | bytes | None = first

    async def receive(self) -> str | bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._channel.receive()

    async def send(self, text: str) -> None:
        await self._channel.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self._channel.close(code, reason)

    def abort(self) -> None:
        self._channel.abort()


async def resuming(channel: Channel, ctx: ServerContext) -> Channel:
    """`channel`, with its first message read, if that message resumes a session here (it
    needs no new place); else `channel` itself, to be refused."""
    try:
        async with asyncio.timeout(RESUME_WAIT_S):
            first = await channel.receive()
        message = parse_client_message(first) if isinstance(first, str) else None
    except (TimeoutError, ChannelClosed, ProtocolError):
        return channel
    if isinstance(message, SessionResume) and message.session_id in ctx.live:
        return Prefetched(channel, first)
    return channel
