"""The settings of a Realtime transcription session: `session.update` and the older
`transcription_session.update` in, the `session` objects of `session.updated` out."""

from __future__ import annotations

from typing import Any

from streamasr.models.base import ModelInfo
from streamasr.server.protocol import check_keywords, check_prompt

FORMATS = {  # format type -> (encoding, sample rate)
    "audio/pcm": ("pcm_s16le", 24_000),
    "audio/pcmu": ("pcm_mulaw", 8_000),
    "audio/pcma": ("pcm_alaw", 8_000),
}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


class RealtimeError(Exception):
    """A client event refused with an `error` event; the session goes on."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _text(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RealtimeError(f"{name} must be a string", param=name)
    return value


class RealtimeSettings:
    """The format, transcription options, turn detection and noise reduction of a session."""

    def __init__(self, model: ModelInfo, session_id: str) -> None:
        self.model = model
        self.session_id = session_id
        self.format = "audio/pcm"
        self.transcription: dict[str, Any] = {"model": model.name, "language": None, "prompt": ""}
        self.turn_detection: dict[str, Any] | None = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
        }
        self.noise_reduction: Any = None

    def update(self, session: object, *, beta: bool, started: bool) -> None:
        """Apply a `session.update` (`beta`: a `transcription_session.update`); after the
        first append (`started`) the format, language, prompt and keywords are fixed."""
        if not isinstance(session, dict):
            raise RealtimeError("`session` must be an object", param="session")
        if beta:
            audio_in: dict[str, Any] = {}
            if "input_audio_format" in session:
                name = session["input_audio_format"]
                if not isinstance(name, str) or name not in BETA_FORMATS:
                    raise RealtimeError(
                        f"input_audio_format must be one of {', '.join(BETA_FORMATS)}",
                        param="session.input_audio_format",
                    )
                audio_in["format"] = {"type": BETA_FORMATS[name]}
            for old, new in (
                ("input_audio_transcription", "transcription"),
                ("turn_detection", "turn_detection"),
                ("input_audio_noise_reduction", "noise_reduction"),
            ):
                if old in session:
                    audio_in[new] = session[old]
        else:
            kind = session.get("type", "transcription")
            if kind != "transcription":
                raise RealtimeError(
                    "this server holds transcription sessions only: session.type must be "
                    "'transcription'",
                    param="session.type",
                )
            audio = session.get("audio") or {}
            audio_in = audio.get("input") or {} if isinstance(audio, dict) else {}
            if not isinstance(audio_in, dict):
                raise RealtimeError("session.audio.input must be an object")
        self._apply(audio_in, started)

    def _apply(self, audio_in: dict[str, Any], started: bool) -> None:
        """Validate all of an update, then apply it (an error changes nothing)."""
        fmt = self.format
        if "format" in audio_in:
            spec = audio_in["format"] or {"type": "audio/pcm"}
            name = spec.get("type", "audio/pcm") if isinstance(spec, dict) else None
            if not isinstance(name, str) or name not in FORMATS:
                raise RealtimeError(
                    f"audio.input.format.type must be one of {', '.join(FORMATS)}",
                    param="session.audio.input.format",
                )
            fmt = name
            rate = spec.get("rate", FORMATS[fmt][1])
            if rate != FORMATS[fmt][1]:
                raise RealtimeError(
                    f"{fmt} is {FORMATS[fmt][1]} Hz, not {rate}",
                    param="session.audio.input.format.rate",
                )
            if started and fmt != self.format:
                raise RealtimeError(
                    "the audio format cannot change once audio has been appended",
                    param="session.audio.input.format",
                )
        transcription = dict(self.transcription)
        if "transcription" in audio_in:
            given = audio_in["transcription"] or {}
            if not isinstance(given, dict):
                raise RealtimeError("transcription must be an object")
            transcription.update({k: v for k, v in given.items() if k == "model"})
            if "prompt" in given:
                transcription["prompt"] = check_prompt(_text(given["prompt"], "prompt"))
            if "keywords" in given:
                keywords = given["keywords"] or []
                if not isinstance(keywords, list):
                    raise RealtimeError("keywords must be a list of strings", param="keywords")
                transcription["keywords"] = list(check_keywords(keywords))
            steer = ("prompt", "keywords")
            if started and any(transcription.get(k) != self.transcription.get(k) for k in steer):
                raise RealtimeError(
                    "the prompt and keywords cannot change once audio has been appended",
                    param="session.audio.input.transcription",
                )
            if "language" in given:
                language = given["language"] or None
                try:
                    self.model.check_language(language or "auto")
                except ValueError as exc:
                    raise RealtimeError(
                        str(exc), param="session.audio.input.transcription.language"
                    ) from exc
                if started and language != self.transcription.get("language"):
                    raise RealtimeError(
                        "the language cannot change once audio has been appended",
                        param="session.audio.input.transcription.language",
                    )
                transcription["language"] = language
        turn = self.turn_detection
        if "turn_detection" in audio_in:
            turn = audio_in["turn_detection"]
            if turn is not None and (
                not isinstance(turn, dict) or turn.get("type") not in ("server_vad", "semantic_vad")
            ):
                raise RealtimeError(
                    "turn_detection is null, server_vad or semantic_vad",
                    param="session.audio.input.turn_detection",
                )
        self.format = fmt
        self.transcription = transcription
        self.turn_detection = turn
        if "noise_reduction" in audio_in:
            self.noise_reduction = audio_in["noise_reduction"]

    def session(self) -> dict[str, Any]:
        encoding, rate = FORMATS[self.format]
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = rate
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.session_id,
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": self.transcription,
                    "turn_detection": self.turn_detection,
                    "noise_reduction": self.noise_reduction,
                }
            },
            "include": None,
        }

    def beta_session(self) -> dict[str, Any]:
        beta = {v: k for k, v in BETA_FORMATS.items()}
        return {
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "client_secret": None,
            "modalities": ["text"],
            "input_audio_format": beta[self.format],
            "input_audio_transcription": self.transcription,
            "turn_detection": self.turn_detection,
            "input_audio_noise_reduction": self.noise_reduction,
        }
