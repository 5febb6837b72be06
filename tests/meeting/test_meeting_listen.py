"""`streamasr meeting --listen`: real WebSocket producers stream espeak-ng speech to tiny.en."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import speech
from slide_deck import render_slide
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamasr.server.protocol import (
    AudioFormat,
    SessionEnd,
    SessionFlush,
    SessionStart,
    SlideMessage,
    parse_server_message,
)

pytestmark = pytest.mark.slow

FIRST = "Good morning everyone, let us start the weekly meeting."
SECOND = "Please send your comments before Friday afternoon."
THIRD = "The next meeting is on Monday at ten o'clock."
TIMEOUT_S = 240  # model load and decode on a slow, shared CPU; a hang fails, never blocks CI
RENDERS = ("transcript.srt", "transcript.vtt", "transcript.md")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def native_speech(text: str, directory: Path) -> tuple[np.ndarray, int]:
    """`text` by espeak-ng as s16 samples at espeak's own rate (22050 Hz), silence around it."""
    path = directory / f"native_{abs(hash(text))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    x, rate = sf.read(path, dtype="int16")
    pad = np.zeros(rate // 2, dtype=np.int16)
    return np.concatenate([pad, x, pad, pad, pad]), rate


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class Listener:
    """`streamasr meeting --listen 127.0.0.1:0` as a subprocess; its stdout records in a queue."""

    def __init__(self, out: Path, model_dir: Path, log: Path) -> None:
        self.out = out
        self.log = log
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamasr.cli",
                "meeting",
                "--listen",
                "127.0.0.1:0",
                "--out",
                str(out),
                "--model",
                str(model_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=out.parent,  # not the checkout: its kernels/ folder must not be importable
        )
        self.records: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.watchdog = threading.Timer(TIMEOUT_S, self.proc.kill)
        self.watchdog.start()
        self.url = str(self.next_record("meeting.listening")["url"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.put(json.loads(line))
        self.records.put(None)  # the process closed its stdout

    def next_record(self, kind: str) -> dict[str, Any]:
        """The next stdout record of type `kind` (earlier ones of other types are skipped)."""
        while True:
            record = self.records.get(timeout=TIMEOUT_S)
            assert record is not None, f"meeting exited: {self.log.read_text()[-2000:]}"
            if record["type"] == kind:
                return record

    async def record(self, kind: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.next_record, kind)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(TIMEOUT_S)
        self.watchdog.cancel()
        self.stderr.close()
        return code


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory, tiny_en_dir: Path) -> Iterator[Listener]:
    """One listening recorder for the tests that leave it idle when they are done."""
    directory = tmp_path_factory.mktemp("listen")
    proc = Listener(directory / "meetings", tiny_en_dir, directory / "meeting.log")
    yield proc
    assert proc.stop() == 0, proc.log.read_text()[-2000:]


async def receive_all(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes (a close other than 1000 is not an error here)."""
    messages = []
    try:
        async for raw in ws:
            assert isinstance(raw, str), "the recorder sends text frames only"
            messages.append(parse_server_message(raw))
    except ConnectionClosed:
        pass
    return messages


async def connect_when_free(url: str) -> ClientConnection:
    """Connect; a 1013 refusal means the last producer's meeting is still being closed."""
    async with asyncio.timeout(30):
        while True:
            ws = await connect(url)
            try:
                first = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                return ws  # no refusal: the slot is ours (no message before our first frame)
            except ConnectionClosed:
                assert ws.close_code == 1013, (ws.close_code, ws.close_reason)
                await asyncio.sleep(0.2)
                continue
            raise AssertionError(f"unexpected first message {first!r}")


def meeting_files(record: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The jsonl records and rendered files of the meeting a meeting.ended record names."""
    path = Path(record["dir"])
    lines = [json.loads(line) for line in (path / "transcript.jsonl").read_text().splitlines()]
    return lines, {name: (path / name).read_text() for name in RENDERS}


def assert_notes_say(lines: list[dict[str, Any]], rendered: dict[str, str], said: set[str]) -> None:
    """The words `said` are in the meeting's jsonl records and in every rendered file."""
    assert said <= words(" ".join(line["text"] for line in lines)), lines
    assert all(said <= words(text) for text in rendered.values()), rendered


def without_seq(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the notes keep it: without the wire's `seq` and `resume_token`."""
    return {k: v for k, v in message.items() if k not in ("seq", "resume_token")}


async def test_producer_records_a_meeting_and_a_second_one_is_refused(
    listener: Listener, tmp_path: Path
) -> None:
    audio, rate = native_speech(FIRST, tmp_path)  # 22050 Hz: the recorder resamples
    data = audio.astype("<i2").tobytes()
    frame = rate // 10 * 2  # 100 ms
    async with await connect_when_free(listener.url) as ws:
        reader = asyncio.create_task(receive_all(ws))
        await ws.send(SessionStart(AudioFormat("pcm_s16le", rate, 1), partials=False).to_json())
        started = await listener.record("meeting.started")  # on connect, before any speech
        for i in range(0, len(data), frame):
            await ws.send(data[i : i + frame])

        async with connect(listener.url) as second:  # while the first is recording
            refused = await receive_all(second)
        assert second.close_code == 1013
        assert second.close_reason == "busy: another producer is recording"
        assert [(m["type"], m["code"], m["fatal"]) for m in refused] == [
            ("error", "server_busy", True)
        ]

        await ws.send(SessionEnd().to_json())
        messages = await reader
    assert ws.close_code == 1000
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    types = [m["type"] for m in messages]
    assert types[0] == "session.started" and messages[0]["audio"]["sample_rate"] == rate
    assert messages[-1] == {"type": "session.ended", "seq": len(messages) - 1, "reason": "client"}
    assert "speech.started" in types and "transcript.partial" not in types
    finals = [m for m in messages if m["type"] == "transcript.final"]
    assert {"morning", "weekly", "meeting"} <= words(" ".join(f["text"] for f in finals)), finals

    ended = await listener.record("meeting.ended")
    assert ended["dir"] == started["dir"] and ended["reason"] == "end"
    assert ended["finals"] == len(finals)
    lines, rendered = meeting_files(ended)
    # the meeting's clock starts at the connection, so the file holds what the producer got
    assert lines == [without_seq(f) for f in finals]
    for name, text in rendered.items():
        assert {"morning", "weekly", "meeting"} <= words(text), (name, text)


async def test_bad_input_gets_errors_and_keeps_the_written_finals(
    listener: Listener, tmp_path: Path
) -> None:
    audio = np.concatenate([speech.silence(0.3), speech.espeak(SECOND, tmp_path)])
    data = pcm16(audio)  # 16 kHz mono s16le: the default, no session.start
    async with await connect_when_free(listener.url) as ws:
        reader = asyncio.create_task(receive_all(ws))
        for i in range(0, len(data), 3200):
            await ws.send(data[i : i + 3200])
        await ws.send(SessionFlush().to_json())
        final = await listener.record("transcript.final")  # on disk before it is printed
        await ws.send("not json")
        await ws.send(b"\x01\x02\x03")  # not a whole number of s16 samples
        await ws.send(json.dumps({"type": "sesion.flush"}))
        await ws.send(SessionStart().to_json())  # too late: the audio started the session
        messages = await reader
    assert ws.close_code == 1008 and ws.close_reason == "unexpected start"
    errors = [(m["code"], m["fatal"]) for m in messages if m["type"] == "error"]
    assert errors == [
        ("bad_json", False),
        ("bad_audio", False),
        ("unknown_type", False),
        ("unexpected_start", True),
    ]
    sent = [m for m in messages if m["type"] == "transcript.final"]
    assert [without_seq(m) for m in sent] == [{k: v for k, v in final.items() if k != "meeting"}]
    assert {"comments", "friday"} <= words(final["text"]), final

    ended = await listener.record("meeting.ended")
    assert ended["reason"] == "error" and ended["finals"] == 1
    lines, rendered = meeting_files(ended)
    assert lines == [without_seq(m) for m in sent]
    for name, text in rendered.items():
        assert {"comments", "friday"} <= words(text), (name, text)


async def send_and_wait_until_fed(ws: ClientConnection, data: bytes) -> list[dict[str, Any]]:
    """Send 16 kHz PCM, then a bad text frame: its error comes once all the audio was fed."""
    for i in range(0, len(data), 3200):
        await ws.send(data[i : i + 3200])
    await ws.send("marker")
    messages = []
    async for raw in ws:
        messages.append(parse_server_message(str(raw)))
        if messages[-1]["type"] == "error":
            assert messages[-1]["code"] == "bad_json", messages
            return messages
    raise AssertionError(f"closed before the marker's error: {messages}")


async def test_a_producer_that_disconnects_ends_its_meeting_with_its_last_words(
    listener: Listener, tmp_path: Path
) -> None:
    audio = np.concatenate([speech.silence(0.3), speech.espeak(THIRD, tmp_path)])
    async with await connect_when_free(listener.url) as ws:
        # no trailing silence: the utterance is still open when the producer goes away
        messages = await send_and_wait_until_fed(ws, pcm16(audio))
    assert "transcript.final" not in [m["type"] for m in messages]
    ended = await listener.record("meeting.ended")
    assert ended["reason"] == "disconnect" and ended["finals"] >= 1
    lines, rendered = meeting_files(ended)
    assert_notes_say(lines, rendered, {"monday", "meeting"})


async def test_a_producer_gone_at_once_has_all_it_sent_transcribed(
    listener: Listener, tmp_path: Path
) -> None:
    """The producer closes right after its last frame, long before the model has caught up:
    the audio queued for the decoder is still transcribed into the meeting."""
    audio = np.concatenate([speech.silence(0.3), speech.espeak(FIRST, tmp_path)])
    data = pcm16(audio)
    async with await connect_when_free(listener.url) as ws:
        for i in range(0, len(data), 3200):
            await ws.send(data[i : i + 3200])
    ended = await listener.record("meeting.ended")
    assert ended["reason"] == "disconnect" and ended["finals"] >= 1
    lines, rendered = meeting_files(ended)
    assert_notes_say(lines, rendered, {"morning", "weekly"})


async def test_a_fatal_error_mid_sentence_keeps_the_sentence(
    listener: Listener, tmp_path: Path
) -> None:
    """A fatal protocol error closes the producer, but what it said is transcribed first."""
    audio = np.concatenate([speech.silence(0.3), speech.espeak(SECOND, tmp_path)])
    data = pcm16(audio)  # no trailing silence: the sentence is still open
    async with await connect_when_free(listener.url) as ws:
        reader = asyncio.create_task(receive_all(ws))
        for i in range(0, len(data), 3200):
            await ws.send(data[i : i + 3200])
        await ws.send(SessionStart().to_json())  # fatal: the audio started the session
        messages = await reader
    assert ws.close_code == 1008 and ws.close_reason == "unexpected start"
    assert [m["code"] for m in messages if m["type"] == "error"] == ["unexpected_start"]
    finals = [m for m in messages if m["type"] == "transcript.final"]
    ended = await listener.record("meeting.ended")
    assert ended["reason"] == "error" and ended["finals"] == len(finals) >= 1
    lines, rendered = meeting_files(ended)
    assert lines == [without_seq(f) for f in finals]
    assert_notes_say(lines, rendered, {"comments", "friday"})


async def test_sigterm_finalises_the_open_meeting_and_exits_0(
    tmp_path: Path, tiny_en_dir: Path
) -> None:
    proc = Listener(tmp_path / "meetings", tiny_en_dir, tmp_path / "meeting.log")
    audio = np.concatenate([speech.silence(0.3), speech.espeak(FIRST, tmp_path)])
    try:
        async with connect(proc.url) as ws:
            messages = await send_and_wait_until_fed(ws, pcm16(audio))
            proc.proc.send_signal(signal.SIGTERM)
            messages += await receive_all(ws)
        code = await asyncio.to_thread(proc.wait)
    finally:
        proc.proc.kill()
    assert code == 0, proc.log.read_text()[-2000:]
    assert ws.close_code == 1001 and ws.close_reason == "meeting recorder shutting down"
    assert messages[-1]["type"] == "session.ended" and messages[-1]["reason"] == "shutdown"
    finals = [m for m in messages if m["type"] == "transcript.final"]
    assert {"morning", "weekly"} <= words(" ".join(f["text"] for f in finals)), messages
    ended = proc.next_record("meeting.ended")
    assert ended["reason"] == "shutdown"
    lines, rendered = meeting_files(ended)
    assert lines == [without_seq(f) for f in finals]
    assert all({"morning", "weekly"} <= words(text) for text in rendered.values()), rendered


def test_listen_takes_the_meetings_language(tmp_path: Path, tiny_en_dir: Path) -> None:
    """`--language` reaches a listening meeting (producers that name none get it): one the
    model does not speak is refused at start-up, as in the other modes."""
    out = subprocess.run(
        [sys.executable, "-m", "streamasr.cli", "meeting", "--listen", "127.0.0.1:0"]
        + ["--out", str(tmp_path / "meetings"), "--model", str(tiny_en_dir), "--language", "es"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "does not speak language 'es'" in out.stderr, out.stderr


async def test_a_producer_whose_connection_drops_resumes_the_same_meeting(
    listener: Listener, tmp_path: Path
) -> None:
    """The recorder holds a producer's session when its TCP connection drops; the producer
    reconnects with session.resume, sends again what the recorder lacks, and the meeting goes
    on in the same notes with every final once."""
    first, rate = native_speech(FIRST, tmp_path)
    second, _ = native_speech(SECOND, tmp_path)
    data = np.concatenate([first, second]).astype("<i2").tobytes()
    frame = rate // 10 * 2  # 100 ms
    cut = len(first) * 2 + (len(second) // 2) * 2  # mid second sentence
    cut -= cut % frame
    received: list[dict[str, Any]] = []
    ws = await connect_when_free(listener.url)
    await ws.send(SessionStart(AudioFormat("pcm_s16le", rate, 1), partials=False).to_json())
    started = await listener.record("meeting.started")
    for i in range(0, cut, frame):
        await ws.send(data[i : i + frame])
    async with asyncio.timeout(TIMEOUT_S):  # the first sentence's final, then the line drops
        while not any(m["type"] == "transcript.final" for m in received):
            received.append(parse_server_message(str(await ws.recv())))
    ws.transport.abort()

    token = next(m["resume_token"] for m in reversed(received) if "resume_token" in m)
    resume = {
        "type": "session.resume",
        "session_id": received[0]["session_id"],
        "resume_token": token,
        "last_seq": received[-1]["seq"],
    }
    async with connect(listener.url) as ws:
        await ws.send(json.dumps(resume))
        async with asyncio.timeout(TIMEOUT_S):  # what it missed, then session.resumed
            while received[-1]["type"] != "session.resumed":
                received.append(parse_server_message(str(await ws.recv())))
        resumed = received[-1]
        offset = round(resumed["t"] * rate) * 2
        for i in range(offset, len(data), frame):
            await ws.send(data[i : i + frame])
        await ws.send(SessionEnd().to_json())
        messages = received + await receive_all(ws)
    assert resumed["same_session"] is True
    assert [m["seq"] for m in messages] == list(range(len(messages)))
    finals = [m for m in messages if m["type"] == "transcript.final"]
    ended = await listener.record("meeting.ended")
    assert ended["dir"] == started["dir"] and ended["reason"] == "end"  # one meeting
    lines, rendered = meeting_files(ended)
    assert lines == [without_seq(f) for f in finals]
    assert_notes_say(lines, rendered, {"morning", "weekly", "comments", "friday"})


async def test_a_producer_shows_a_slide_and_the_notes_read_it(
    listener: Listener, tmp_path: Path
) -> None:
    audio, rate = native_speech(FIRST, tmp_path)
    image = render_slide("Weekly Meeting", ["Linh Nguyen", "Kubernetes"])
    async with await connect_when_free(listener.url) as ws:
        reader = asyncio.create_task(receive_all(ws))
        await ws.send(SessionStart(AudioFormat("pcm_s16le", rate, 1), partials=False).to_json())
        await ws.send(SlideMessage(image, t=0.25).to_json())
        await ws.send(audio.astype("<i2").tobytes())
        slide = await listener.record("slide")  # read while the producer is connected
        await ws.send(SessionEnd().to_json())
        messages = await reader
    assert not [m for m in messages if m["type"] == "error"], messages
    assert slide["t"] == 0.25 and "Linh Nguyen" in slide["text"]
    assert {"Linh Nguyen", "Kubernetes"} <= set(slide["terms"])
    ended = await listener.record("meeting.ended")
    notes = Path(ended["dir"])
    assert (notes / slide["image"]).read_bytes() == image
    (line,) = [json.loads(x) for x in (notes / "slides.jsonl").read_text().splitlines()]
    assert line == {k: v for k, v in slide.items() if k not in ("meeting", "ocr_s")}
    assert "> Weekly Meeting" in (notes / "transcript.md").read_text()
