"""Writing systems without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese):
where a transcript may be cut into words, for the stabiliser and for word timings.

Whisper's own timing code splits the text of these languages into groups of tokens that decode
to whole characters; streamasr does the same by script, so it needs no language tag and holds
for mixed text ("我用 Python 写代码").
"""

from __future__ import annotations

import unicodedata

_UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3000, 0x30FF),  # CJK symbols and punctuation, hiragana, katakana
    (0x3100, 0x312F),  # bopomofo
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half- and full-width forms (，。！？ and half-width katakana)
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def unspaced(ch: str) -> bool:
    """`ch` belongs to a script written without spaces between words."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _UNSPACED)


def starts_word(piece: str) -> bool:
    """A token whose text is `piece` may begin a word: it starts with a space, or with a whole
    character (not a combining mark, not part of a character split across tokens) of a script
    written without spaces."""
    if piece.startswith(" "):
        return True
    if not piece or "\ufffd" in piece:
        return False
    first = piece[0]
    return unspaced(first) and not unicodedata.category(first).startswith("M")


def is_punctuation(text: str) -> bool:
    """Non-empty text of punctuation only, ASCII ("," ".") or not ("，" "。" "、" "¿")."""
    return bool(text) and all(unicodedata.category(ch).startswith("P") for ch in text)
