"""The header of a WAV stream that arrives in pieces: its format and where its samples start."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from streamasr.audio.resample import MAX_RATE, MIN_RATE
from streamasr.errors import AudioFormatError

# WAV format tag -> (PCM encoding of `decode_pcm`, bits per sample)
_WAV_TAGS = {1: ("pcm_s16le", 16), 3: ("pcm_f32le", 32), 6: ("pcm_alaw", 8), 7: ("pcm_mulaw", 8)}
MAX_WAV_HEADER_BYTES = 65_536  # a WAV header is 44 bytes, a few KiB with metadata chunks


@dataclass(frozen=True)
class WavFormat:
    encoding: str  # as `decode_pcm` names it
    sample_rate: int
    channels: int


def read_wav_header(data: bytes) -> tuple[WavFormat, int] | None:
    """The format of a WAV stream and the offset of its samples; None: the header is not all
    there yet. Raises AudioFormatError for anything but PCM, float or G.711 WAV."""
    if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
        raise AudioFormatError("the audio is neither WAV nor raw (no encoding was given)")
    offset, fmt = 12, None
    while len(data) >= offset + 8:
        chunk, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk == b"data":
            if fmt is None:
                raise AudioFormatError("the WAV stream has no fmt chunk before its data")
            return fmt, offset + 8  # the data size is not read: a live WAV may not know it
        if chunk == b"fmt ":
            if len(data) < offset + 8 + min(size, 40):
                return None
            fmt = _wav_format(data[offset + 8 : offset + 8 + size])
        offset += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _wav_format(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise AudioFormatError("the WAV fmt chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
    if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the tag opens the sub-format
        tag = struct.unpack_from("<H", body, 24)[0]
    encoding, want_bits = _WAV_TAGS.get(tag, ("", 0))
    if not encoding or bits != want_bits:
        raise AudioFormatError(
            f"WAV format {tag} with {bits}-bit samples is not supported: use 16-bit PCM, "
            "32-bit float, mu-law or A-law"
        )
    if channels not in (1, 2) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"WAV of {channels} channels at {rate} Hz is not supported")
    return WavFormat(encoding, rate, channels)
