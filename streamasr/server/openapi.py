"""The daemon's OpenAPI 3.1 description, served at `/openapi.json`.

Written out rather than generated: the HTTP endpoints are few, and the WebSocket APIs, which
OpenAPI cannot describe, are listed as the GET that upgrades, with their message docs named.
"""

from __future__ import annotations

from typing import Any

from streamasr import __version__
from streamasr.server.openai_rest import RESPONSE_FORMATS, TRANSCRIPTIONS_PATH, TRANSLATIONS_PATH

OPENAPI_PATH = "/openapi.json"

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _form(translate: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "any libsndfile format"},
        "model": {"type": "string", "description": "accepted; the loaded model answers"},
        "prompt": {"type": "string", "description": "accepted; not applied yet"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": ["word", "segment"]},
            "description": "verbose_json: segments (the default), words, or both",
        },
        "stream": {
            "type": "boolean",
            "default": False,
            "description": "Server-Sent Events: transcript.text.delta per final, then "
            "transcript.text.done (json and text formats)",
        },
    }
    if not translate:
        fields["language"] = {"type": "string", "description": "ISO 639-1; default: detected"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": fields}
            }
        },
    }


def _audio(summary: str, translate: bool) -> dict[str, Any]:
    errors = {
        "400": "a bad field or unreadable audio",
        "401": "missing or wrong token",
        "413": "the upload is over max_upload_bytes",
        "429": "every session place is taken",
        "503": "the model is loading",
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": _form(translate),
            "responses": {
                "200": {
                    "description": "the transcript in the response_format asked for",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/plain": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                **{
                    code: {
                        "description": text,
                        "content": {"application/json": {"schema": _ERROR}},
                    }
                    for code, text in errors.items()
                },
            },
        }
    }


def _websocket(summary: str, doc: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": f"A WebSocket: the GET upgrades (101). Messages: {doc}.",
            "responses": {
                "101": {"description": "switching protocols"},
                "401": {"description": "missing or wrong token"},
                "403": {"description": "browser origin not allowed"},
                "503": {"description": "the model is loading"},
            },
        }
    }


def openapi() -> dict[str, Any]:
    plain = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamasr",
            "version": __version__,
            "description": "Streaming speech recognition: protocol v1, OpenAI's audio REST and "
            "Realtime transcription APIs, and Deepgram's live API, on one engine.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            }
        },
        "security": [{"bearer": []}, {"query": []}, {}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "200 ok when ready; X-Sessions-Free; ?free=N for load balancers",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": plain},
                        "503": {"description": "starting, stopping or full", "content": plain},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "exposition", "content": plain}},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "the loaded model, its languages and tasks (OpenAI's list shape)",
                    "responses": {"200": {"description": "model list"}},
                }
            },
            TRANSCRIPTIONS_PATH: _audio("transcribe a file (OpenAI)", translate=False),
            TRANSLATIONS_PATH: _audio("translate a file into English text (OpenAI)", True),
            "/v1/stream": _websocket("protocol v1", "docs/protocol.md"),
            "/v1/realtime": _websocket(
                "OpenAI Realtime transcription (?intent=transcription)", "docs/apis.md"
            ),
            "/v1/listen": _websocket("Deepgram live streaming", "docs/apis.md"),
        },
    }
