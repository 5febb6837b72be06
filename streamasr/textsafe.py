"""Client-side safety: server text made inert for a terminal or a typing tool."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

# Terminal escape sequences, 7-bit (ESC ...) and 8-bit (C1) forms, removed whole so that no
# parameter bytes are left behind as text. An unterminated one loses only its introducer below,
# which leaves plain, inert text.
_ESCAPES = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"  # OSC, DCS..
    r"|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"  # CSI: ESC [ 2 J
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]"  # two-byte and nF: ESC c, ESC ( B
)
# Line and tab controls: text on one line, words kept apart.
_BREAKS = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]+")
# Joiners shape Persian, Indic scripts and emoji; they move nothing on screen.
_KEPT_FORMAT = frozenset("\u200c\u200d")


def _unsafe(ch: str) -> bool:
    """Controls (C0, DEL, C1), format characters (bidi overrides, zero-width, tags), surrogates."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs") and ch not in _KEPT_FORMAT


def safe_text(text: str) -> str:
    """`text` with escape sequences and non-printing characters removed, line breaks and tabs
    turned into one space; printable Unicode (accents, CJK, emoji) is kept as it is."""
    text = _BREAKS.sub(" ", _ESCAPES.sub("", text))
    return "".join(ch for ch in text if not _unsafe(ch))


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a supplementary character as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def safe_json(obj: Any) -> str:
    """`obj` as one JSON line that a terminal shows as it is: json.dumps already escapes C0
    controls; DEL, C1 and format characters are escaped too, so the data stays exact."""
    line = json.dumps(obj, ensure_ascii=False)
    # outside strings JSON is ASCII punctuation, so every match is inside a string
    return "".join(_json_escape(ch) if _unsafe(ch) else ch for ch in line)
