"""Raw PCM bytes (s16le, f32le, G.711 mu-law or A-law; mono or stereo) to float32 mono samples
in [-1, 1]."""

from __future__ import annotations

import numpy as np

from streamasr.errors import AudioFormatError

# encoding name -> little-endian numpy dtype of one sample
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "pcm_s16le": np.dtype("<i2"),
    "pcm_f32le": np.dtype("<f4"),
    "pcm_mulaw": np.dtype("u1"),  # G.711 mu-law (telephony, North America and Japan)
    "pcm_alaw": np.dtype("u1"),  # G.711 A-law (telephony, elsewhere)
}
ENCODINGS: tuple[str, ...] = tuple(_DTYPES)
"""The encodings `decode_pcm` accepts."""


def sample_bytes(encoding: str) -> int:
    """Bytes of one sample of one channel."""
    return _DTYPES[encoding].itemsize


def _mulaw_table() -> np.ndarray:
    """The 256 linear values of G.711 mu-law codes, as in ITU-T G.711 (16-bit scale)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84) << exponent
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """The 256 linear values of G.711 A-law codes, as in ITU-T G.711 (16-bit scale)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a & 0x70) >> 4
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.float32)


# code -> float32 sample in [-1, 1]
_G711 = {"pcm_mulaw": _mulaw_table() / 32768.0, "pcm_alaw": _alaw_table() / 32768.0}


def check_format(encoding: str, channels: int) -> None:
    """Raise AudioFormatError unless `encoding` and `channels` are ones `decode_pcm` accepts."""
    if encoding not in _DTYPES:
        raise AudioFormatError(
            f"unknown PCM encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}"
        )
    if channels not in (1, 2):
        raise AudioFormatError(f"channels must be 1 or 2, got {channels}")


def decode_pcm(data: bytes, *, encoding: str, channels: int) -> np.ndarray:
    """Decode interleaved little-endian PCM into float32 mono in [-1, 1].

    `pcm_s16le` is scaled by 1/32768 (so -32768 maps to exactly -1.0); `pcm_f32le` must be finite
    and is clipped to [-1, 1]. Stereo is downmixed by averaging the two channels.
    Returns shape (n_frames,) float32. Raises AudioFormatError for an unknown encoding, a channel
    count other than 1 or 2, a byte count that is not a whole number of frames, or NaN/inf floats.
    """
    check_format(encoding, channels)
    dtype = _DTYPES[encoding]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise AudioFormatError(
            f"{len(data)} bytes is not a whole number of {encoding} frames "
            f"({frame_bytes} bytes per frame for {channels} channel(s))"
        )
    raw = np.frombuffer(data, dtype=dtype)  # (n_frames * channels,)
    if encoding == "pcm_s16le":
        x = raw.astype(np.float32) * np.float32(1.0 / 32768.0)
    elif encoding in _G711:
        x = _G711[encoding][raw]
    else:
        x = raw.astype(np.float32)
        if not np.isfinite(x).all():
            raise AudioFormatError("pcm_f32le data contains NaN or infinite samples")
        np.clip(x, -1.0, 1.0, out=x)
    if channels == 2:
        stereo = x.reshape(-1, 2)  # (n_frames, 2)
        x = (stereo[:, 0] + stereo[:, 1]) * np.float32(0.5)
    return x
