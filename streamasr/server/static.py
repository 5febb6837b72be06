"""Static files for plain HTTP GETs: a folder served as-is, with content types, no traversal."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

PACKAGE_STATIC = Path(__file__).resolve().parent / "static"

# the types a web page needs, fixed here so they do not depend on the host's mime.types
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str


def content_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


class StaticFiles:
    """Files under `root` by URL path; `/` and folders map to their index.html."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def lookup(self, url_path: str) -> StaticFile | None:
        """The file at `url_path` (already stripped of its query), or None: not found/refused."""
        parts = [p for p in unquote(url_path).split("/") if p]
        if any(p in ("..", ".") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None  # no traversal, no hidden files
        path = self.root.joinpath(*parts)
        try:  # a name over the file system's limit raises, as a missing one does
            if path.is_dir():
                path = path / "index.html"
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return None
        return StaticFile(resolved.read_bytes(), content_type(resolved.name))
