"""Audio sources for a meeting: a file (optionally paced), raw PCM on stdin, or a sound device."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO, Protocol

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.audio.files import load_audio
from streamasr.errors import InputError

CHUNK_MS = 50  # how much audio each read returns


class AudioSource(Protocol):
    """Yields (n,) float32 mono chunks at 16 kHz until the audio ends or `stop()` is called."""

    def chunks(self) -> Iterator[np.ndarray]: ...

    def stop(self) -> None: ...


class FileSource:
    """A wav/flac/ogg file, fed `speed` times real time (inf: as fast as the model goes)."""

    def __init__(self, path: str, speed: float = float("inf"), chunk_ms: int = CHUNK_MS) -> None:
        if speed <= 0:
            raise InputError(f"--speed must be positive, got {speed}")
        self.audio = load_audio(path)
        self.speed = speed
        self.chunk = chunk_ms * SAMPLE_RATE // 1000
        self._stopped = False

    def chunks(self) -> Iterator[np.ndarray]:
        t0 = time.monotonic()
        for start in range(0, len(self.audio), self.chunk):
            if self._stopped:
                return
            end = min(start + self.chunk, len(self.audio))
            if self.speed != float("inf"):  # pace on the sample clock, as a live input would
                delay = t0 + end / SAMPLE_RATE / self.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield self.audio[start:end]

    def stop(self) -> None:
        self._stopped = True


class StdinSource:
    """Raw 16 kHz mono s16le PCM on a byte stream, e.g. `arecord -f S16_LE -r 16000 -c 1`."""

    def __init__(self, stream: BinaryIO | None = None, chunk_ms: int = CHUNK_MS) -> None:
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.chunk_bytes = 2 * chunk_ms * SAMPLE_RATE // 1000
        self._stopped = False

    def chunks(self) -> Iterator[np.ndarray]:
        tail = b""
        while not self._stopped:
            data = self.stream.read(self.chunk_bytes)
            if not data:
                return
            data = tail + data
            usable = len(data) - len(data) % 2
            tail = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0

    def stop(self) -> None:
        self._stopped = True


class DeviceSource:
    """A sound card input through sounddevice (PortAudio), resampled on the device if needed."""

    def __init__(self, device: str | None = None, chunk_ms: int = CHUNK_MS) -> None:
        try:
            import sounddevice  # optional: only live recording needs PortAudio
        except (ImportError, OSError) as exc:
            raise InputError(
                f"recording from a device needs sounddevice and PortAudio ({exc}); "
                "pip install sounddevice, apt-get install libportaudio2"
            ) from exc
        self._sd = sounddevice
        self.device: int | str | None = int(device) if device and device.isdigit() else device
        self.blocksize = chunk_ms * SAMPLE_RATE // 1000
        try:  # now, so a wrong --device fails before the model loads
            sounddevice.check_input_settings(
                device=self.device, channels=1, dtype="float32", samplerate=SAMPLE_RATE
            )
        except (ValueError, sounddevice.PortAudioError) as exc:
            raise InputError(f"cannot record from {self._label}: {exc}") from exc
        # bounded: about 50 s of audio; if the model falls that far behind, new blocks are dropped
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=1000)
        self._stopped = False
        self.dropped = 0

    def _callback(self, indata: np.ndarray, frames: int, t: object, status: object) -> None:
        try:
            self._queue.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.dropped += 1

    @property
    def _label(self) -> str:
        return "the default sound input" if self.device is None else f"sound input {self.device!r}"

    def chunks(self) -> Iterator[np.ndarray]:
        try:
            stream = self._sd.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="float32",
                device=self.device,
                blocksize=self.blocksize,
                callback=self._callback,
            )
        except (ValueError, self._sd.PortAudioError) as exc:  # unplugged since the check
            raise InputError(f"cannot record from {self._label}: {exc}") from exc
        with stream:
            while not self._stopped:
                try:  # a timeout, so a stop request is seen within a fraction of a second
                    yield self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue

    def stop(self) -> None:
        self._stopped = True
