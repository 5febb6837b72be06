"""Session resume: a client that lost its connection continues its session (docs/protocol.md,
"Resume").

`session.started`, `session.resumed` and every `transcript.final` carry a `resume_token`: a
signed `Checkpoint` of where the session's transcript stands. A daemon that still holds the
session (the same replica, within `resume_grace_s`) hands it to the new connection and replays
the messages the client missed. Any other daemon that shares the secret (`resume_secret`)
starts a new session from the checkpoint: the transcript's clock and numbering go on, and the
audio after the last final the client received is asked for again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import zlib
from dataclasses import asdict, dataclass
from typing import Any

TAG_BYTES = 16  # of the HMAC-SHA256, in the token
MAX_TOKEN_CHARS = 16_384  # a session.start's prompt and keywords fit, compressed


class ResumeError(ValueError):
    """A token that this daemon did not sign, or that does not name the session."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a session's transcript stands when a message is sent."""

    session_id: str
    start: dict[str, Any]  # the session.start options in force (`SessionStart.to_dict`)
    seq: int  # the seq of the message that carries it
    segment: int  # the next utterance's segment_id
    sample: int  # the 16 kHz stream clock up to which every final has been sent


class ResumeTokens:
    """Signs and checks checkpoints; daemons that share `secret` accept each other's tokens."""

    def __init__(self, secret: str | None = None) -> None:
        # No secret: one of this process only, so only this daemon accepts its tokens.
        key = secret if secret else secrets.token_hex(32)
        self._key = hashlib.sha256(key.encode()).digest()

    def issue(self, checkpoint: Checkpoint) -> str:
        payload = zlib.compress(json.dumps(asdict(checkpoint), separators=(",", ":")).encode())
        return f"{_b64(payload)}.{_b64(self._tag(payload))}"

    def verify(self, token: str, session_id: str) -> Checkpoint:
        """The checkpoint in `token`; raises `ResumeError` unless this daemon (or one that
        shares its secret) signed it for `session_id`."""
        body, _, tag = token.partition(".")
        try:
            payload, signature = _unb64(body), _unb64(tag)
        except (binascii.Error, ValueError):
            raise ResumeError("the resume token is malformed") from None
        if not hmac.compare_digest(signature, self._tag(payload)):
            raise ResumeError("the resume token was not issued by this service")
        fields = json.loads(zlib.decompress(payload))  # signed: it is ours
        checkpoint = Checkpoint(**fields)
        if checkpoint.session_id != session_id:
            raise ResumeError("the resume token belongs to another session")
        return checkpoint

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ResumeState:
    """A client's half of resume: the session's id, its latest token and last `seq`, and the
    audio it sent (bytes in the session's format) for the last `keep_s` seconds, to send again
    from the `t` that `session.resumed` names."""

    def __init__(self, sample_rate: int, bytes_per_frame: int, keep_s: float = 60.0) -> None:
        self.rate = sample_rate
        self.frame = bytes_per_frame
        self.keep = int(keep_s * sample_rate) * bytes_per_frame
        self.session_id: str | None = None
        self.token: str | None = None
        self.last_seq = -1
        self._audio = bytearray()
        self._audio_start = 0  # byte offset in the stream of `_audio[0]`
        self.lost_s = 0.0  # audio sent that no resume could send again, summed

    @property
    def resumable(self) -> bool:
        return self.session_id is not None and self.token is not None

    def received(self, message: dict[str, Any]) -> None:
        """Every server message, in order."""
        self.last_seq = message.get("seq", self.last_seq)
        if message.get("type") in ("session.started", "session.resumed"):
            self.session_id = message.get("session_id", self.session_id)
        token = message.get("resume_token")
        if isinstance(token, str):
            self.token = token

    def sent(self, data: bytes) -> None:
        """Audio sent (or about to be)."""
        self._audio += data
        extra = len(self._audio) - self.keep
        if extra > 0:
            extra -= extra % self.frame
            del self._audio[:extra]
            self._audio_start += extra

    def resume_message(self) -> dict[str, Any]:
        assert self.session_id is not None and self.token is not None
        return {
            "type": "session.resume",
            "session_id": self.session_id,
            "resume_token": self.token,
            "last_seq": max(0, self.last_seq),
        }

    def again(self, t: float) -> bytes:
        """The audio to send again after `session.resumed` named `t` (seconds on the stream
        clock); what was sent after `t` but is no longer kept adds to `lost_s`."""
        offset = round(t * self.rate) * self.frame
        if offset < self._audio_start:  # sent, but no longer kept: the clock goes on from t
            self.lost_s += (self._audio_start - offset) / self.frame / self.rate
            data = bytes(self._audio)
            self._audio.clear()
            self._audio_start = offset
            return data
        cut = offset - self._audio_start
        data = bytes(self._audio[cut:])
        del self._audio[cut:]  # the stream ends at t now: what is sent again is sent anew
        return data
