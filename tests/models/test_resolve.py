"""`--model` resolution: the built-in tiny.en cache, local dirs, hub ids, and the error messages."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from streamasr.errors import ModelError, ModelNotFoundError
from streamasr.models import convert as convert_mod
from streamasr.models import resolve as resolve_mod
from streamasr.models.resolve import (
    CONVERTER_VERSION,
    HUB_ALLOW_PATTERNS,
    HUB_IGNORE_PATTERNS,
    cache_root,
    file_sha256,
    hub_files,
    parse_spec,
    resolve_model_dir,
)

# Hub repo layouts of the supported families: (what loading needs, what it must not fetch).
# The kinds of files these repos hold; Tiny Audio's code files are those its push script uploads.
HUB_LAYOUTS = {
    "glmasr": (
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
        + ["tokenizer_config.json", "processor_config.json", "chat_template.jinja"],
        [".gitattributes", "README.md", "configuration_glmasr.py", "modeling_glmasr.py"],
    ),
    "tiny-audio": (
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        + ["special_tokens_map.json", "added_tokens.json", "chat_template.jinja"]
        + ["preprocessor_config.json", "processor_config.json", "requirements.txt"],
        [".gitattributes", "README.md", "asr_config.py", "asr_modeling.py", "asr_processing.py"]
        + ["asr_pipeline.py", "projectors.py", "alignment.py", "diarization.py", "handler.py"]
        + ["__pycache__/asr_modeling.cpython-311.pyc"],
    ),
    "qwen3-sharded": (
        ["config.json", "generation_config.json", "merges.txt", "vocab.json", "tokenizer.json"]
        + ["tokenizer_config.json", "model-00001-of-00002.safetensors"]
        + ["model-00002-of-00002.safetensors", "model.safetensors.index.json"]
        + ["additional_chat_templates/tool_use.jinja"],
        [".gitattributes", "LICENSE", "README.md"],
    ),
    "whisper": (
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"]
        + ["tokenizer_config.json", "vocab.json", "merges.txt", "normalizer.json"]
        + ["added_tokens.json", "special_tokens_map.json", "preprocessor_config.json"],
        ["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", ".gitattributes"],
    ),
    "ct2-whisper": (
        ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"],
        ["README.md", ".gitattributes"],
    ),
}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("STREAMASR_CACHE_DIR", str(root))
    return root


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Record conversions instead of doing them; each writes a stub transformers dir."""
    calls: list[tuple[Path, Path]] = []

    def fake(src: Path, dst: Path, *, overwrite: bool = False) -> Path:
        calls.append((src, dst))
        dst.mkdir(parents=True)
        (dst / "config.json").write_text('{"model_type": "whisper"}')
        return dst

    monkeypatch.setattr(convert_mod, "convert_ct2_whisper", fake)
    return calls


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("STREAMASR_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "streamasr"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "streamasr"
    monkeypatch.setenv("STREAMASR_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_hash_is_remembered_per_path_size_and_mtime(tmp_path: Path) -> None:
    path, memo = tmp_path / "model.bin", tmp_path / "memo.json"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(path, memo=memo) == digest
    stat = path.stat()
    path.write_bytes(b"xyz")  # same size; restore the mtime: the memo answers, stale
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path, memo=memo) == digest
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert file_sha256(path, memo=memo) == hashlib.sha256(b"xyz").hexdigest()
    assert len(json.loads(memo.read_text())) == 1  # the stale entry was replaced
    memo.write_text("{not json")
    assert file_sha256(path, memo=memo) == hashlib.sha256(b"xyz").hexdigest()


def test_transformers_dir_is_returned_as_is(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    assert parse_spec(str(tmp_path)).kind == "transformers"
    assert not cache.exists()


def test_ct2_dir_is_converted_once_into_the_cache(
    tmp_path: Path, cache: Path, conversions: list[tuple[Path, Path]]
) -> None:
    src = tmp_path / "faster-whisper-x"
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    (src / "config.json").write_text('{"suppress_ids": []}')  # CT2's config: no model_type
    first = resolve_model_dir(str(src))
    expected = cache / f"whisper-ct2-v{CONVERTER_VERSION}" / hashlib.sha256(b"weights").hexdigest()
    assert first == expected and conversions == [(src, expected)]
    assert resolve_model_dir(str(src)) == expected
    assert len(conversions) == 1


def test_builtin_second_resolve_hits_the_cache(
    tiny_en_dir: Path, tiny_en_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMASR_CACHE_DIR", str(tiny_en_cache))
    assert tiny_en_dir.parent.parent == tiny_en_cache
    assert (tiny_en_dir / "model.safetensors").is_file()
    mtime = (tiny_en_dir / "model.safetensors").stat().st_mtime_ns

    def no(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted or hashed again")

    monkeypatch.setattr(convert_mod, "convert_ct2_whisper", no)
    monkeypatch.setattr(resolve_mod.hashlib, "sha256", no)  # the 75 MB hash is remembered
    assert resolve_model_dir("tiny.en") == tiny_en_dir
    assert (tiny_en_dir / "model.safetensors").stat().st_mtime_ns == mtime


def test_missing_path_names_it_and_the_accepted_forms(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_dir(str(missing))
    text = str(err.value)
    assert str(missing) in text
    for form in ("tiny.en", "config.json", "model.bin", "hub id"):
        assert form in text
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_dir("not-a-model")
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_model_dir("  ")


def test_dir_without_a_model_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"no": "model_type"}')
    with pytest.raises(ModelNotFoundError, match="holds no model"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model_dir(str(tmp_path / "config.json"))


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_hub_id_says_how_to_get_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_dir("streamasr-tests/no-such-model")
    text = str(err.value)
    assert "offline" in text
    assert "huggingface-cli download streamasr-tests/no-such-model --local-dir" in text
    assert "snapshot_download('streamasr-tests/no-such-model'" in text
    assert "--model ./models/no-such-model" in text


@pytest.mark.parametrize("layout", sorted(HUB_LAYOUTS))
def test_hub_download_fetches_what_loading_needs_and_no_code(layout: str) -> None:
    needed, unwanted = HUB_LAYOUTS[layout]
    assert sorted(hub_files(unwanted + needed)) == sorted(needed)


def test_no_python_is_fetched_whatever_the_allow_patterns_say() -> None:
    code = ["modeling.py", "sub/tokenization_x.py", "stubs/x.pyi", "__pycache__/a.cpython-311.pyc"]
    assert hub_files(code + [f"{p}.json" for p in code]) == [f"{p}.json" for p in code]
    assert not any(p.endswith((".py", ".pyc", ".pyi")) for p in HUB_ALLOW_PATTERNS)


def test_hub_download_is_offline_aware_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    local = tmp_path / "snapshot"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "whisper"}')

    def fake(repo_id: str, **kwargs: Any) -> str:
        seen.append({"repo_id": repo_id, **kwargs})
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model_dir("owner/name") == local
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("owner/name") == local
    assert [s["local_files_only"] for s in seen] == [False, True]
    assert all(s["repo_id"] == "owner/name" and 0 < s["etag_timeout"] <= 10 for s in seen)
    assert all(s["allow_patterns"] == list(HUB_ALLOW_PATTERNS) for s in seen)
    assert all(s["ignore_patterns"] == list(HUB_IGNORE_PATTERNS) for s in seen)


def test_hub_failure_is_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(repo_id: str, **kwargs: Any) -> str:
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelNotFoundError, match="network is unreachable") as err:
        resolve_model_dir("owner/name")
    assert "huggingface-cli download owner/name" in str(err.value)


def test_unwritable_cache_is_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("STREAMASR_CACHE_DIR", str(tmp_path / "file" / "cache"))
    src = tmp_path / "ct2"
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    with pytest.raises(ModelError, match="STREAMASR_CACHE_DIR"):
        resolve_model_dir(str(src))
