"""One session's asyncio shell, for every transport: read, decode and send tasks around a codec.

`SessionRunner` owns what every front door shares: the bounded `Inbox` and `Outbox`, the
session and its driver, the idle and length limits, the lag policy, metrics, and the closing
(drain, abort, a client too slow). A `Channel` is the socket (an ASGI WebSocket) and a `Codec`
the API spoken on it (protocol v1, OpenAI Realtime, Deepgram): its messages in, `Action`s out;
the runner's outgoing messages in, its frames out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any

import numpy as np

from streamasr.engine.driver import SessionDriver
from streamasr.engine.session import Session
from streamasr.events import ErrorEvent, SpeechStopped, WarningEvent, shifted
from streamasr.server.protocol import (
    Action,
    Audio,
    Close,
    CloseCode,
    End,
    ErrorCode,
    Flush,
    KeepAlive,
    Mark,
    Reply,
    Resume,
    SendError,
    ServerMessage,
    ServerProtocol,
    SessionEnded,
    SessionResume,
    SessionResumed,
    SessionStart,
    SessionStarted,
    ShowSlide,
    Start,
    State,
    error_event,
)
from streamasr.server.queues import ArrivalClock, CloseRequest, Inbox, Outbox, ReadPacer
from streamasr.server.resume import Checkpoint, ResumeError
from streamasr.server.session_io import (
    CLOSE_GRACE_S,
    Channel,
    ChannelClosed,
    Codec,
    Cut,
    Recording,
    ServerContext,
)

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"
REPLAY_MESSAGES = 4096  # sent messages kept for a client that resumes (minutes of a session)


class SessionRunner:
    """One client: a `Channel`, a `Codec`, a `Session`, an `Inbox`, an `Outbox`, three tasks."""

    def __init__(
        self,
        channel: Channel,
        codec: Codec,
        ctx: ServerContext,
        *,
        recording: Recording | None = None,
        shutdown_reason: str = SHUTDOWN_REASON,
    ) -> None:
        self.channel = channel
        self.ctx = ctx
        self.recording = recording
        self._shutdown_reason = shutdown_reason
        self._recorded = recording is None  # the recording has been told the session is over
        self._gone = False  # the client went away; the session decodes what it had sent
        self._close_after: tuple[int, str] | None = None  # a fatal error, once decoding is done
        self.session_id = uuid.uuid4().hex
        self.protocol = codec
        self.outbox = Outbox(ctx.config.outgoing_queue, ctx.metrics.dropped_partials.inc)
        self._inbox: Inbox | None = None
        self._driver: SessionDriver | None = None  # drives the session, once started
        self._clock: ArrivalClock | None = None
        self._done = asyncio.Event()
        self._close_with: tuple[int, str] | None = None  # close code and reason, once decided
        self._tasks: set[asyncio.Task[None]] = set()
        self._compute: asyncio.Task[None] | None = None
        self._idle_deadline: float | None = None
        self._max_length: asyncio.TimerHandle | None = None
        self._grace_s = CLOSE_GRACE_S  # how long the closing handshake may take
        self._sending = False  # the sender waits for the channel to take a message
        # Resume (docs/protocol.md, "Resume"): protocol v1 with tokens keeps what it sent
        self._resumable = isinstance(codec, ServerProtocol) and codec.tokens is not None
        self._sent: deque[tuple[int, str]] = deque(maxlen=REPLAY_MESSAGES)  # (seq, frame)
        self._held: asyncio.TimerHandle | None = None  # the client vanished: the grace timer
        self._attached: asyncio.Future[None] | None = None  # done when a resumed channel is
        # no longer used
        self.handed_off: asyncio.Future[None] | None = None  # this connection resumed another
        # session, which uses the channel until the future is done
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._origin = 0  # a continued session: its clock starts here (16 kHz samples)
        self._first_segment = 0  # and its segments are numbered from here

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        """Serve the session until it ends, then close the socket; never raises."""
        loop = asyncio.get_running_loop()
        self._idle_deadline = loop.time() + self.ctx.config.idle_timeout_s
        self._reader = self._spawn(self._open())
        self._sender = self._spawn(self._send(), sender=True)
        try:
            await self._done.wait()
        finally:
            if self._max_length is not None:
                self._max_length.cancel()
            self._unhold()
            self._unlive()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close_recording("disconnect" if self._gone else "error")
            if self._driver is not None:
                self._driver.release()
            if self.handed_off is None:  # else the resumed session owns the channel
                await self._close_socket()
            self._release_channel()

    def end(self, reason: str = "shutdown") -> None:
        """A server-side end: finalise the session, send its finals and session.ended, close."""
        code = CloseCode.GOING_AWAY if reason == "shutdown" else CloseCode.NORMAL
        close_reason = self._shutdown_reason if reason == "shutdown" else reason
        self._idle_deadline = None
        self._spawn(self._apply(self.protocol.end(reason, close_code=code), close_reason))

    def cut(self) -> None:
        """Finalise the speech so far and have the recording start anew; a no-op before the
        session starts or without a recording."""
        if self._inbox is not None and self.recording is not None and not self._gone:
            self._spawn(self._inbox.put_command(Cut()))

    def abort(
        self,
        code: int = CloseCode.GOING_AWAY,
        reason: str | None = None,
        grace_s: float = CLOSE_GRACE_S,
    ) -> None:
        """Stop now, whatever is pending: the drain time is over, or the client is too slow."""
        self._grace_s = grace_s
        self._finish((code, self._shutdown_reason if reason is None else reason))

    def _finish(self, close_with: tuple[int, str] | None) -> None:
        if not self._done.is_set():
            self._close_with = close_with
            self._done.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], sender: bool = False) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guard(coro, sender))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: coro.close())  # a task cancelled before it ran
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None], sender: bool) -> None:
        """The edge of every task of this connection: a failure ends this session only."""
        try:
            await coro
        except ChannelClosed as closed:  # the client went away: nothing more can be sent
            if closed.code == CloseCode.NORMAL:  # it closed on purpose: no resume
                if self._held is not None:
                    self.let_go()
                    return
            elif self._hold():
                return
            self._vanished()
        except Exception:
            log.exception("session %s failed", self.session_id)
            self.ctx.metrics.errors.labels(code=ErrorCode.INTERNAL_ERROR.value).inc()
            if sender:  # nobody is left to send an error: just close
                self.abort(CloseCode.INTERNAL, "internal error")
            else:
                self._fail("internal server error; see the server log")

    async def _close_recording(self, reason: str) -> None:
        """Tell the recording the session is over, if `_decode_loop` could not."""
        if self._recorded or self.recording is None:
            return
        self._recorded = True
        try:
            await self.ctx.pool.call(self.recording.closed, reason)
        except Exception:
            log.exception("session %s: closing its recording failed", self.session_id)

    async def _close_socket(self) -> None:
        if self._close_with is None:
            self.channel.abort()  # the client is gone or a close is already under way
            return
        code, reason = self._close_with
        try:
            async with asyncio.timeout(self._grace_s):
                await self.channel.close(code, reason)
        except TimeoutError:  # a client that does not read never sees our close frame
            self.channel.abort()

    # ---------------------------------------------------------------- reading
    async def _open(self) -> None:
        await self._apply(self.protocol.open())
        await self._read()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        rate = self.ctx.config.max_messages_per_s
        pacer = ReadPacer(rate, rate, loop.time())
        while True:
            try:
                async with asyncio.timeout_at(self._idle_deadline):
                    message = await self.channel.receive()
            except TimeoutError:
                self.end("idle")
                continue
            if isinstance(message, str):
                actions = self.protocol.receive_text(message)
            else:
                actions = self.protocol.receive_bytes(message)
            await self._apply(actions)
            if self.handed_off is not None:
                return  # the resumed session reads the channel now
            wait_s = pacer.take(loop.time())
            if wait_s > 0:  # a flood of messages: the next ones wait in the socket
                await asyncio.sleep(wait_s)
            elif len(self.outbox):
                await asyncio.sleep(0)  # let the sender write before the next buffered frame

    async def _apply(self, actions: list[Action], close_reason: str | None = None) -> None:
        for action in actions:
            if isinstance(action, Start):
                self._start(action.options)
            elif isinstance(action, Audio):
                await self._on_audio(action.samples)
            elif isinstance(action, Flush | End):
                if self._inbox is not None:
                    await self._inbox.put_command(action)
            elif isinstance(action, SendError):
                self._queue(action.error)
            elif isinstance(action, Reply):
                self._queue(action)
            elif isinstance(action, KeepAlive):
                self._touch()
            elif isinstance(action, Close):
                self._close_now(action.code, close_reason or action.reason)
            elif isinstance(action, Resume):
                self._resume(action.request)
                if self.handed_off is not None:
                    return
            elif isinstance(action, ShowSlide):
                self._show(action)

    def _show(self, slide: ShowSlide) -> None:
        problem = "slides are taken by meeting recorders only"
        if self.recording is not None:
            problem = self.recording.show(slide.image, slide.sample) or ""
        if problem:
            self._queue(error_event(ErrorCode.SLIDE_REFUSED, problem))

    def _resume(self, request: SessionResume) -> None:
        """Hand the channel to the session if this daemon holds it; else, with a token this
        service signed, a new session continues it from the token's checkpoint."""
        assert isinstance(self.protocol, ServerProtocol) and self.protocol.tokens is not None
        try:
            checkpoint = self.protocol.tokens.verify(request.resume_token, request.session_id)
        except ResumeError as exc:
            message = f"{exc}; start a new session"
            self._queue(error_event(ErrorCode.RESUME_FAILED, message))
            return
        live = self.ctx.live.get(request.session_id)
        if live is not None:  # held, or still on a connection the client has left
            self.handed_off = live.attach(self.channel, request.last_seq)
            self._finish(None)
            return
        options = self.protocol.continue_from(checkpoint, request.last_seq)
        self._start(options, checkpoint)

    def _start(self, options: SessionStart, resumed: Checkpoint | None = None) -> None:
        options = options.resolved(self.ctx.session_config)
        rate = options.audio.sample_rate
        session = Session(self.ctx.model, options.session_config(self.ctx.session_config), rate)
        self._driver = SessionDriver(session, self.ctx.scheduler)
        self._inbox = Inbox(max(1, int(self.ctx.config.max_backlog_s * rate)))
        self._clock = ArrivalClock(rate)
        limits = self.ctx.config.protocol_limits
        if resumed is None:
            self._queue(SessionStarted(self.session_id, self.ctx.model.info, options, limits))
        else:
            self.session_id = resumed.session_id
            self._origin, self._first_segment = resumed.sample, resumed.segment
            self._queue(SessionResumed(self.session_id, options, False, 0, resumed.sample))
        if self._resumable:
            self.ctx.live[self.session_id] = self
        if session.bias_cut:
            kept = session.config.decode.max_bias_tokens
            message = (
                f"the prompt and keywords are {kept + session.bias_cut} tokens; the first "
                f"{kept} steer the decoding, the rest is dropped"
            )
            self._queue(WarningEvent("bias_cut", message, 0.0))
        self.ctx.metrics.count_session(session.config.language, self.ctx.model.info.languages)
        self._compute = self._spawn(self._decode_loop())
        if self.ctx.config.max_session_s is not None:
            loop = asyncio.get_running_loop()
            self._max_length = loop.call_later(self.ctx.config.max_session_s, self._on_max_length)
        log.info("session %s started: %s", self.session_id, options.audio.to_dict())

    async def _on_audio(self, samples: np.ndarray) -> None:
        assert self._inbox is not None and self._clock is not None  # Start comes first
        self._clock.mark(samples.size, asyncio.get_running_loop().time())
        seconds = samples.size / self._clock.sample_rate
        self._touch(seconds)
        self.ctx.metrics.audio_seconds.inc(seconds)
        await self._inbox.put_audio(samples)

    def _touch(self, audio_s: float | None = None) -> None:
        """Put off the idle end: by twice `audio_s`, the seconds of audio just received, or
        (a keep-alive) in full; never past `idle_timeout_s` from now. A client sending audio
        at half real time or more never goes idle; a trickle (a sample now and then) does."""
        if self._idle_deadline is not None:  # None: the session is ending
            now = asyncio.get_running_loop().time()
            latest = now + self.ctx.config.idle_timeout_s
            if audio_s is not None:
                latest = min(latest, self._idle_deadline + 2 * audio_s)
            self._idle_deadline = latest

    def _on_max_length(self) -> None:
        self._idle_deadline = None
        reason = "max_length"
        self._spawn(self._apply(self.protocol.end(reason, close_code=CloseCode.POLICY), reason))

    # ---------------------------------------------------------------- decoding
    async def _decode_loop(self) -> None:
        assert self._inbox is not None and self._driver is not None
        driver, offload = self._driver, self.ctx.pool.call
        session = driver.session
        loop = asyncio.get_running_loop()
        recording = self.recording
        if recording is not None:
            await offload(recording.opened, session.position)
        while True:
            item = await self._inbox.get()
            t0 = loop.time()
            # The session's work runs on the pool; its model calls on the scheduler, awaited
            # here: no thread waits for a model call.
            events: list[ServerMessage]
            if isinstance(item, np.ndarray):
                events = [*await driver.run_async(offload, session.feed, item)]
            elif isinstance(item, Flush):
                self._queue(Mark("flush"))
                events = [*await driver.run_async(offload, session.flush), Mark("flushed")]
            else:
                events = [*await driver.run_async(offload, session.close)]
            if any(isinstance(event, SpeechStopped) for event in events):
                events.append(Mark("settled"))
            if self._origin or self._first_segment:  # a session that continues another
                events = [shifted(e, self._origin, self._first_segment) for e in events]
            if recording is not None:
                await offload(recording.record, events, session.position)
                session.steer(recording.context(session.position))
                if isinstance(item, Cut):
                    await offload(recording.cut)
                elif isinstance(item, End):
                    self._recorded = True
                    await offload(recording.closed, item.reason)
            self.ctx.metrics.decode_seconds.observe(loop.time() - t0)
            for event in events:
                self._queue(event)
            if isinstance(item, np.ndarray):
                self._check_lag(session)
            if isinstance(item, End):
                self._end_queued(item.reason)
                return

    def _end_queued(self, reason: str) -> None:
        """The session is closed: the last messages, then the socket's close."""
        if self._gone:
            self._finish(None)
            return
        if self._close_after is not None:  # a fatal error, its message already queued
            self._queue(CloseRequest(*self._close_after))
            return
        if reason == "max_length":
            limit = self.ctx.config.max_session_s or 0
            message = f"the session reached its maximum length of {limit:g} s"
            self._queue(error_event(ErrorCode.SESSION_TOO_LONG, message))
        self._queue(SessionEnded(reason))
        if reason == "shutdown":
            self._queue(CloseRequest(CloseCode.GOING_AWAY, self._shutdown_reason))
        elif reason == "max_length":
            self._queue(CloseRequest(CloseCode.POLICY, "session too long"))
        else:
            self._queue(CloseRequest(CloseCode.NORMAL, "idle" if reason == "idle" else ""))

    def _check_lag(self, session: Session) -> None:
        """Falling behind real time: fewer partials; far behind: warn and pause them.

        The lag is how long ago the audio just processed arrived. The degradation policy:
        past `slow_partials_lag_s`, or while model calls queue for the shared inference
        threads (`Scheduler.congested`), partials come every second step (half the partial
        compute), and every step again once neither holds; past `lag_warning_s` the
        client gets a `warning` and partials pause, since a session without partials needs one
        decode per utterance instead of two per second of speech, until the lag is under a
        third of it. Finals are never dropped.
        """
        assert self._clock is not None
        arrived = self._clock.time_of(session.position)
        if arrived is None:
            return
        lag = asyncio.get_running_loop().time() - arrived
        limit = self.ctx.config.lag_warning_s
        slow = self.ctx.config.slow_partials_lag_s
        congested = self.ctx.scheduler.congested
        if lag > slow or congested:
            session.step_scale = 2
        elif lag < slow / 2:
            session.step_scale = 1
        if not session.partials_paused and lag > limit:
            session.partials_paused = True
            self.ctx.metrics.lag_warnings.inc()
            log.warning("session %s is %.1f s behind real time", self.session_id, lag)
            message = f"transcription is {lag:.1f} s behind the audio; partials are paused"
            self._queue(WarningEvent("behind_real_time", message, lag))
        elif session.partials_paused and lag < limit / 3:
            session.partials_paused = False
            self._queue(WarningEvent("caught_up", "back to real time; partials resume", lag))

    # ---------------------------------------------------------------- sending
    def _queue(self, message: ServerMessage | CloseRequest | Reply) -> None:
        if self._done.is_set():  # closing: nothing more will be sent
            return
        if isinstance(message, ErrorEvent) and not self.outbox.closed:
            self.ctx.metrics.errors.labels(code=message.code).inc()
        if not self.outbox.put(message) and self._write_blocked():
            self.ctx.metrics.errors.labels(code=ErrorCode.CLIENT_TOO_SLOW.value).inc()
            log.warning("session %s: client too slow, closing", self.session_id)
            self.abort(CloseCode.POLICY, "client too slow")

    def _write_blocked(self) -> bool:
        """The channel is not taking our bytes: the client does not read (fast enough)."""
        return self._sending

    def _close_now(self, code: int, reason: str) -> None:
        """A fatal error: drop pending audio, send what is queued (the error last), close.
        With a recording, the audio received is decoded first, and the session finalised."""
        self._idle_deadline = None
        if self._compute is not None and not self._recorded and self._inbox is not None:
            if self._close_after is None:
                self._close_after = (code, reason)
                self._spawn(self._inbox.put_command(End("error")))
            return
        if self._compute is not None:
            self._compute.cancel()
        self._queue(CloseRequest(code, reason))

    def _fail(self, message: str) -> None:
        """An internal error: tell the client (the count is taken by `_guard`), close 1011."""
        if self.outbox.closed:
            self.abort(CloseCode.INTERNAL, "internal error")
            return
        self.outbox.put(error_event(ErrorCode.INTERNAL_ERROR, message))
        self._close_now(CloseCode.INTERNAL, "internal error")

    async def _send(self, replay_after: int | None = None) -> None:
        if replay_after is not None:
            await self._replay(replay_after)
        while True:
            message = await self.outbox.get()
            if isinstance(message, CloseRequest):
                held = self._held is not None
                self._finish(None if held else (message.code, message.reason))
                return
            if isinstance(message, Reply):
                frames = list(message.frames)
            else:
                if self._clock is not None:
                    now = asyncio.get_running_loop().time()
                    self.ctx.metrics.observe_sent(message, self._clock.time_of, now)
                frames = self._encode(message)
            await self._deliver(frames)

    async def _deliver(self, frames: list[str]) -> None:
        """Send `frames`, unless the client is gone; a held session keeps them (`_encode`)."""
        if self._held is not None or self._gone:
            return
        self._sending = True
        try:
            for frame in frames:
                await self.channel.send(frame)
        except ChannelClosed:
            if not self._hold():
                raise
        finally:
            self._sending = False

    def _encode(self, message: ServerMessage) -> list[str]:
        """The message's frames, kept with their seq for a client that resumes."""
        if not self._resumable:
            return self.protocol.encode(message)
        assert isinstance(self.protocol, ServerProtocol)
        seq = self.protocol.next_seq
        frames = self.protocol.encode(message)
        self._sent.extend((seq + i, frame) for i, frame in enumerate(frames))
        return frames

    async def _replay(self, last_seq: int) -> None:
        """A resumed session's first frames: what the client missed, then session.resumed."""
        missed = [frame for seq, frame in self._sent if seq > last_seq]
        assert self._clock is not None and isinstance(self.protocol, ServerProtocol)
        position = self._clock.received + self._origin
        start = self.protocol.options or SessionStart()
        resumed = SessionResumed(self.session_id, start, True, len(missed), position)
        await self._deliver([*missed, *self._encode(resumed)])

    # ---------------------------------------------------------------- resume
    def _hold(self) -> bool:
        """The client vanished: hold the session for `resume_grace_s` (it goes on decoding
        what it received, its messages kept), if it can be resumed. True when held."""
        if self._held is not None:
            return True
        grace = self.ctx.config.resume_grace_s
        ending = self._done.is_set() or self._gone or self._close_after is not None
        if not self._resumable or grace <= 0 or self._driver is None or ending:
            return False
        if not isinstance(self.protocol, ServerProtocol) or self.ctx.max_held < 1:
            return False
        if self.protocol.state is not State.STREAMING:
            return False  # ending (session.end) or not started
        held = self.ctx.held
        while len(held) >= self.ctx.max_held:  # the oldest held session goes
            held[next(iter(held))].let_go()
        loop = asyncio.get_running_loop()
        self._held = loop.call_later(grace, self.let_go)
        self._idle_deadline = None
        self._sending = False
        self.ctx.held[self.session_id] = self
        self._release_channel()  # that channel is dead
        log.info("session %s: client gone; held %.0f s for it to resume", self.session_id, grace)
        return True

    def _release_channel(self) -> None:
        """The session no longer uses the channel it was resumed on: that connection's
        handler may return."""
        if self._attached is not None and not self._attached.done():
            self._attached.set_result(None)

    def _unlive(self) -> None:
        """It can no longer be resumed: it is over, or ending as a vanished client's."""
        if self.ctx.live.get(self.session_id) is self:
            del self.ctx.live[self.session_id]

    def _unhold(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self.ctx.held.get(self.session_id) is self:
            del self.ctx.held[self.session_id]

    def let_go(self) -> None:
        """No resume within the grace period: end the session as a vanished client's."""
        self._unhold()
        log.info("session %s: not resumed; ending it", self.session_id)
        self._vanished()

    def _vanished(self) -> None:
        """The client is gone for good: the session decodes what it sent (`_decode_loop`
        then finishes), or finishes now if it has nothing to decode."""
        if self._recorded or self._inbox is None:
            self._finish(None)
        elif not self._gone:
            self._gone = True
            self._unlive()
            self._idle_deadline = None
            self._spawn(self._inbox.put_command(End("disconnect")))

    def attach(self, channel: Channel, last_seq: int) -> asyncio.Future[None]:
        """The client is back on `channel`: replay what it missed and go on. The future is done
        when the session no longer uses `channel` (ended, or the client vanished again)."""
        self._unhold()
        self._release_channel()  # the connection it had
        left, self.channel = self.channel, channel
        left.abort()  # the client left it for this one, perhaps before it noticed it was dead
        loop = asyncio.get_running_loop()
        self._attached = loop.create_future()
        self._idle_deadline = loop.time() + self.ctx.config.idle_timeout_s
        for task in (self._sender, self._reader):  # the sender was keeping messages, and a
            if task is not None:  # reader may still wait on the dead channel
                task.cancel()
        self._sender = self._spawn(self._send(last_seq), sender=True)
        self._reader = self._spawn(self._read())
        log.info("session %s resumed after seq %d", self.session_id, last_seq)
        return self._attached
