"""A virtual ALSA capture device that plays test speech, for sounddevice (PortAudio) tests.

PortAudio's ALSA backend lists the PCMs that ALSA's configuration defines, so a subprocess
started with `VirtualMic.env()` and `pass_fds=VirtualMic.pass_fds` sees an input device named
`VirtualMic.name`: an ALSA `file` PCM whose capture data comes from `infile`, a pipe the test
writes into, over a `null` slave.

Two facts of ALSA's `file` plugin shape this:
- the `null` slave never waits, so the pipe's writer is the device's clock: `VirtualMic` writes
  one block every block's duration (divided by `speed`), then silence until it is stopped, like
  a live microphone;
- each capture period is filled by one `read()` of the pipe, which returns at most what is in
  it, and the part of the period it does not fill keeps stale samples. PortAudio reads exactly
  one block per callback (`blocksize`), so every write is one whole block of that size, and
  under PIPE_BUF bytes, so atomic: a read then always finds whole blocks;
- the `null` slave takes any sample format and the `file` plugin does not convert, so the pipe
  carries the format the reader opens the stream with (`dtype`). A `plug` layer that would
  convert breaks the one-block reads above: it reads whatever the slave has available.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

ALSA_CONF = Path("/usr/share/alsa/alsa.conf")  # alsa-lib's top-level file (libasound2-data)
PIPE_BUF = 4096


DTYPES = {"float32": "<f4", "int16": "<i2"}  # sounddevice dtype -> the bytes in the pipe


class VirtualMic:
    """A mono capture device named `name` that plays `speech` ((n,) float32 in [-1, 1])."""

    def __init__(
        self,
        directory: Path,
        speech: np.ndarray,
        *,
        block_frames: int,
        dtype: str = "float32",
        rate: int = 16_000,
        speed: float = 1.0,
        name: str = "streamasr_test_mic",
    ) -> None:
        wire = np.dtype(DTYPES[dtype])
        self.block_bytes = wire.itemsize * block_frames
        if self.block_bytes > PIPE_BUF:
            raise ValueError(f"a block of {block_frames} frames is not one atomic pipe write")
        if not ALSA_CONF.is_file():
            raise FileNotFoundError(f"{ALSA_CONF} is missing (apt-get install libasound2-data)")
        self.name = name
        self.period_s = block_frames / rate / speed
        x = np.clip(np.asarray(speech, dtype=np.float32), -1.0, 1.0)
        if dtype == "int16":
            x = np.round(x * 32767.0)
        data = x.astype(wire).tobytes()
        data += bytes(-len(data) % self.block_bytes)  # whole blocks only
        self._speech = data
        self._read_fd, self._write_fd = os.pipe()
        self.config = directory / "virtual-mic.conf"
        self.config.write_text(
            f"pcm.{name} {{\n"
            "    type file\n"
            "    slave { pcm { type null } }\n"
            '    file "/dev/null"\n'
            f"    infile {self._read_fd}\n"  # a descriptor the subprocess inherits
            '    format "raw"\n'
            "}\n"
        )
        self.played = threading.Event()  # all the speech is in the pipe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)
        self._thread.start()

    @property
    def pass_fds(self) -> tuple[int]:
        return (self._read_fd,)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a subprocess that should see the device (the stock config too)."""
        env = dict(os.environ if base is None else base)
        env["ALSA_CONFIG_PATH"] = f"{ALSA_CONF}:{self.config}"
        return env

    def _play(self) -> None:
        silence = bytes(self.block_bytes)
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            start = n * self.block_bytes
            block = self._speech[start : start + self.block_bytes] or silence
            if start + self.block_bytes >= len(self._speech):
                self.played.set()
            n += 1
            time.sleep(max(0.0, t0 + n * self.period_s - time.monotonic()))
            try:
                os.write(self._write_fd, block)  # blocks while nobody reads: fine, it is a clock
            except OSError:  # stopped while blocked
                return

    def close(self) -> None:
        """Stop playing and close the pipe; call it once the subprocesses reading it are gone."""
        self._stop.set()
        os.close(self._read_fd)  # with no reader left, a write blocked on a full pipe fails
        self._thread.join(5)
        os.close(self._write_fd)
