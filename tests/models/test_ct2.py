"""The CTranslate2 reader (synthetic and real files) and the conversion to transformers Whisper."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from builders import tiny_random_whisper
from ct2_writer import (
    PROJECTION_ALIAS,
    bf16_bits,
    bf16_values,
    ct2_bytes,
    quantize_rows,
    whisper_variables,
    write_ct2,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.models import convert as convert_mod
from streamasr.models.convert import convert_ct2_whisper
from streamasr.models.ct2 import (
    BFLOAT16,
    config_scalars,
    dequantize,
    parse_ct2,
    read_ct2,
)

RNG = np.random.default_rng(0)


def synthetic() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(stored variables, the float32 values they stand for) covering every dtype path."""
    w8 = RNG.normal(size=(5, 7)).astype(np.float32)
    q, scale = quantize_rows(w8)
    f32 = RNG.normal(size=(3, 4)).astype(np.float32)
    f16 = RNG.normal(size=(2, 3, 2)).astype(np.float16)
    bf = RNG.normal(size=(6,)).astype(np.float32)
    stored = {
        "a/f32": f32,
        "a/f16": f16,
        "a/bf16": bf16_bits(bf),
        "a/q/weight": q,
        "a/q/weight_scale": scale,
        "a/num_heads": np.array(6, dtype="<i2"),
        "a/flag": np.array(1, dtype="i1"),
    }
    expected = {
        "a/f32": f32,
        "a/f16": f16.astype(np.float32),
        "a/bf16": bf16_values(bf),
        "a/q/weight": w8,
    }
    return stored, expected


def test_read_returns_exactly_what_was_written(tmp_path: Path) -> None:
    stored, _ = synthetic()
    ct2 = read_ct2(write_ct2(tmp_path / "model.bin", stored, {"alias/x": "a/f32"}))
    assert (ct2.version, ct2.spec_name, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.aliases == {"alias/x": "a/f32"}
    assert list(ct2.variables) == list(stored)
    for name, value in stored.items():
        got = ct2.variables[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name
    assert ct2.variables["a/bf16"].dtype == BFLOAT16
    assert read_ct2(tmp_path).variables.keys() == stored.keys()  # a dir holding model.bin


def test_dequantize_gives_float32_values(tmp_path: Path) -> None:
    stored, expected = synthetic()
    ct2 = read_ct2(write_ct2(tmp_path / "model.bin", stored))
    weights = dequantize(ct2.variables)
    assert set(weights) == set(expected)  # no scalars, no _scale companions
    assert all(w.dtype == np.float32 for w in weights.values())
    for name in ("a/f32", "a/f16", "a/bf16"):
        np.testing.assert_array_equal(weights[name], expected[name])
    step = 0.5 / stored["a/q/weight_scale"][:, None]  # half a quantization step per row
    assert np.all(np.abs(weights["a/q/weight"] - expected["a/q/weight"]) <= step * 1.0001)
    assert config_scalars(ct2.variables) == {"a/num_heads": 6, "a/flag": 1}


def test_int8_without_scale_and_bad_scale_shape_are_rejected() -> None:
    q = np.ones((3, 2), dtype=np.int8)
    with pytest.raises(ModelFormatError, match="no w_scale"):
        dequantize({"w": q})
    with pytest.raises(ModelFormatError, match="one scale per row"):
        dequantize({"w": q, "w_scale": np.ones(2, np.float32)})
    int16 = dequantize({"w": np.full((2, 2), 1000, dtype="<i2")})  # CT2's default int16 scale
    np.testing.assert_array_equal(int16["w"], np.ones((2, 2), np.float32))


def test_versions_other_than_1_to_6_are_rejected(tmp_path: Path) -> None:
    stored, _ = synthetic()
    for version in (0, 7, 2**31):
        path = write_ct2(tmp_path / f"v{version}.bin", stored, version=version)
        message = f"unsupported CTranslate2 binary version {version} "
        with pytest.raises(ModelFormatError, match=message):
            read_ct2(path)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_older_binary_versions(version: int) -> None:
    stored = {  # versions < 4 know only f32, i16 and i8 (by item size)
        "w": RNG.normal(size=(2, 3)).astype(np.float32),
        "q": np.arange(4, dtype="<i2"),
        "n": np.array(6, dtype="i1"),
    }
    ct2 = parse_ct2(ct2_bytes(stored, {"a": "w"}, version=version))
    assert ct2.version == version
    assert ct2.spec_name == ("WhisperSpec" if version >= 2 else "")
    assert ct2.aliases == ({"a": "w"} if version >= 3 else {})
    for name, value in stored.items():
        got = ct2.variables[name]
        assert (got.dtype, got.shape, got.tobytes()) == (value.dtype, value.shape, value.tobytes())


def test_every_truncation_is_a_model_format_error() -> None:
    stored, _ = synthetic()
    data = ct2_bytes(stored, PROJECTION_ALIAS)
    for cut in range(len(data)):
        with pytest.raises(ModelFormatError, match="truncated|corrupt"):
            parse_ct2(data[:cut], "cut")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d + b"\0", "unexpected bytes after the end"),
        (lambda d: d.replace(b"a/f32\0\x02", b"a/f32\0\x03"), "corrupt"),  # rank 2 -> 3
        (lambda d: d.replace(b"WhisperSpec\0", b"WhisperSpecX"), "not NUL-terminated"),
        (lambda d: d.replace(b"a/f16", b"a/\xff16"), "not UTF-8"),
        (lambda d: d.replace(b"a/num_heads\0\x00\x02", b"a/num_heads\0\x00\x09"), "dtype code 9"),
        (lambda d: d.replace(b"a/f16", b"a/f32"), "appears twice"),
    ],
)
def test_corrupt_files_are_model_format_errors(damage: Any, message: str) -> None:
    stored, _ = synthetic()
    data = ct2_bytes(stored)
    damaged = damage(data)
    assert damaged != data
    with pytest.raises(ModelFormatError, match=message):
        parse_ct2(damaged, "damaged")


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_ct2(tmp_path / "absent.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="truncated"):
        read_ct2(tmp_path / "empty.bin")


_STORED_DTYPES = [np.dtype(t) for t in ("<f4", "i1", "<i2", "<i4", "<f2")] + [BFLOAT16]
_arrays = st.builds(
    lambda dtype, shape, seed: (
        np.random.default_rng(seed)
        .integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        .view(dtype)
        .reshape(shape)
    ),
    st.sampled_from(_STORED_DTYPES),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 2**32 - 1),
)
_names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variables=st.dictionaries(_names, _arrays, max_size=5),
    aliases=st.dictionaries(_names, _names, max_size=2),
)
def test_round_trip_of_random_files(
    variables: dict[str, np.ndarray], aliases: dict[str, str]
) -> None:
    ct2 = parse_ct2(ct2_bytes(variables, aliases))
    assert ct2.aliases == aliases
    assert list(ct2.variables) == list(variables)
    for name, value in variables.items():
        got = ct2.variables[name]
        assert (got.dtype, got.shape, got.tobytes()) == (value.dtype, value.shape, value.tobytes())


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 10**6), byte=st.integers(0, 255), cut=st.booleans())
def test_damaged_files_only_raise_model_format_error(position: int, byte: int, cut: bool) -> None:
    stored, _ = synthetic()
    data = bytearray(ct2_bytes(stored, PROJECTION_ALIAS))
    position %= len(data)
    if cut:
        del data[position:]
    else:
        data[position] = byte
    try:
        ct2 = parse_ct2(bytes(data))
        dequantize(ct2.variables)
    except ModelFormatError:
        pass


# ------------------------------------------------------------------------- the real tiny.en file


@pytest.mark.slow
def test_real_tiny_en_file(tiny_en_src: Path) -> None:
    ct2 = read_ct2(tiny_en_src / "model.bin")
    assert (ct2.version, ct2.spec_name, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.aliases == PROJECTION_ALIAS
    tensors = {n: v for n, v in ct2.variables.items() if v.ndim}
    assert len(tensors) == 139 and {v.dtype for v in tensors.values()} == {np.dtype("<f2")}
    assert list(ct2.variables) == sorted(ct2.variables)
    scalars = config_scalars(ct2.variables)
    assert scalars["encoder/num_heads"] == scalars["decoder/num_heads"] == 6
    assert scalars["decoder/activation"] == 3  # GELU
    assert tensors["decoder/embeddings/weight"].shape == (51864, 384)


# ------------------------------------------------------- conversion of a small synthetic Whisper


@pytest.fixture(scope="module")
def random_whisper() -> Any:
    return tiny_random_whisper()


def ct2_dir_for(
    model: Any,
    dst: Path,
    src_tokenizer: Path,
    *,
    int8: bool = False,
    drop: str | None = None,
    extra: str | None = None,
) -> Path:
    """A CTranslate2 dir for `model`, with tiny.en's tokenizer files; optionally damaged."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    variables = whisper_variables(state, heads=4, encoder_layers=2, decoder_layers=2)
    if int8:  # linear weights and embeddings int8 with per-row scales, the rest float16
        for name in [n for n, v in variables.items() if v.ndim == 2 and n.endswith("weight")]:
            variables[name], variables[f"{name}_scale"] = quantize_rows(variables[name])
        for name in [n for n, v in variables.items() if v.dtype == np.float32 and v.ndim]:
            if not name.endswith("_scale"):
                variables[name] = variables[name].astype(np.float16)
    if drop:
        del variables[drop]
    if extra:
        variables[extra] = np.zeros(3, np.float32)
    dst.mkdir(parents=True)
    write_ct2(dst / "model.bin", dict(sorted(variables.items())), PROJECTION_ALIAS)
    for name in ("tokenizer.json", "vocabulary.txt", "config.json"):
        shutil.copy(src_tokenizer / name, dst / name)
    return dst


def logits(model: Any, mel: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        ids = torch.tensor([[50257, 50362, 464, 2068]])
        return model(input_features=mel, decoder_input_ids=ids).logits


@pytest.mark.slow
def test_synthetic_float32_conversion_is_exact(
    tmp_path: Path, random_whisper: Any, tiny_en_src: Path
) -> None:
    from safetensors.numpy import load_file
    from transformers import WhisperForConditionalGeneration

    src = ct2_dir_for(random_whisper, tmp_path / "ct2", tiny_en_src)
    out = convert_ct2_whisper(src, tmp_path / "hf")
    saved = load_file(str(out / "model.safetensors"))
    original = {k: v.numpy() for k, v in random_whisper.state_dict().items()}
    assert set(saved) == set(original) - {"proj_out.weight"}  # tied: transformers restores it
    for name, value in saved.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    loaded = WhisperForConditionalGeneration.from_pretrained(out).eval()
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(loaded, mel), logits(random_whisper, mel), rtol=0, atol=0)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no scratch left


@pytest.mark.slow
def test_synthetic_int8_conversion_is_close(
    tmp_path: Path, random_whisper: Any, tiny_en_src: Path
) -> None:
    from transformers import WhisperForConditionalGeneration

    src = ct2_dir_for(random_whisper, tmp_path / "ct2", tiny_en_src, int8=True)
    loaded = WhisperForConditionalGeneration.from_pretrained(
        convert_ct2_whisper(src, tmp_path / "hf")
    ).eval()
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    want, got = logits(random_whisper, mel), logits(loaded, mel)
    assert torch.corrcoef(torch.stack([want.flatten(), got.flatten()]))[0, 1] > 0.99


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"drop": "decoder/layer_1/ffn/linear_0/bias"}, "is missing"),
        ({"extra": "decoder/layer_0/mystery/weight"}, "no transformers counterpart"),
        ({"drop": "decoder/layer_1/attention/layer_norm/gamma"}, "is missing"),
    ],
)
def test_incomplete_or_unknown_tensors_are_rejected(
    tmp_path: Path, random_whisper: Any, tiny_en_src: Path, damage: dict[str, Any], message: str
) -> None:
    src = ct2_dir_for(random_whisper, tmp_path / "ct2", tiny_en_src, **damage)
    with pytest.raises(ModelFormatError, match=message):
        convert_ct2_whisper(src, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == [tmp_path / "ct2"]  # nothing half-written


def test_nonzero_k_bias_is_rejected() -> None:
    sd = convert_mod._StateDict(
        {"x/weight": np.zeros((6, 2), np.float32), "x/bias": np.arange(6, dtype=np.float32)}
    )
    with pytest.raises(ModelFormatError, match="k part is not zero"):
        sd.fused("x", ["q_proj", "k_proj", "v_proj"], 2)


def test_a_crash_leaves_no_half_written_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(src: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(convert_mod, "_write", crash)
    with pytest.raises(RuntimeError, match="killed"):
        convert_ct2_whisper(tmp_path / "src", tmp_path / "cache" / "dst")
    assert list((tmp_path / "cache").iterdir()) == []


def test_an_existing_dir_is_kept_unless_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(src: Path, out: Path) -> None:
        (out / "config.json").write_text("new")

    monkeypatch.setattr(convert_mod, "_write", fake)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text("old")
    assert convert_ct2_whisper(tmp_path, dst) == dst
    assert (dst / "config.json").read_text() == "old"
    convert_ct2_whisper(tmp_path, dst, overwrite=True)
    assert (dst / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]


# ------------------------------------------------------------------- the real tiny.en, converted


@pytest.mark.slow
def test_converted_config_matches_the_notes(tiny_en_dir: Path, tiny_en_src: Path) -> None:
    from transformers import GenerationConfig, WhisperConfig

    cfg = WhisperConfig.from_pretrained(tiny_en_dir)
    facts = dict(
        d_model=384,
        encoder_layers=4,
        decoder_layers=4,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_ffn_dim=1536,
        num_mel_bins=80,
        vocab_size=51864,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        bos_token_id=50256,
        scale_embedding=False,
        tie_word_embeddings=True,
        activation_function="gelu",
    )
    assert {k: getattr(cfg, k) for k in facts} == facts
    gen = GenerationConfig.from_pretrained(tiny_en_dir)
    ct2_config = json.loads((tiny_en_src / "config.json").read_text())
    assert gen.suppress_tokens == ct2_config["suppress_ids"]
    assert gen.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [220, 50256]
    assert gen.alignment_heads == ct2_config["alignment_heads"]
    assert (gen.no_timestamps_token_id, gen.is_multilingual) == (50362, False)
    assert gen.decoder_start_token_id == 50257
    assert getattr(gen, "lang_to_id", None) is None and getattr(gen, "task_to_id", None) is None
    saved = json.loads((tiny_en_dir / "generation_config.json").read_text())
    assert "lang_to_id" not in saved and "task_to_id" not in saved
    assert saved["_from_model_config"] is False


@pytest.mark.slow
def test_converted_model_loads_with_tied_embeddings(tiny_en_model: Any) -> None:
    emb = tiny_en_model.model.decoder.embed_tokens.weight
    assert tiny_en_model.proj_out.weight.data_ptr() == emb.data_ptr()
    assert tiny_en_model.dtype == torch.float32


@pytest.mark.slow
def test_converted_tokenizer(tiny_en_tokenizer: Any, tiny_en_src: Path) -> None:
    tok = tiny_en_tokenizer
    added = json.loads((tiny_en_src / "tokenizer.json").read_text())["added_tokens"]
    assert len(added) == 107
    specials = [t["content"] for t in added]
    assert tok.all_special_tokens == specials
    assert tok.all_special_ids == list(range(50256, 50363))
    assert len(tok) == 51864
    assert tok.convert_ids_to_tokens([50363, 50364, 51863]) == ["<|0.00|>", "<|0.02|>", "<|30.00|>"]
    assert tok.decode([50363, 50364], decode_with_timestamps=True) == "<|0.00|><|0.02|>"
    text = tok.encode(" Hello world.", add_special_tokens=False)
    ids = [50257, 50362, *text, 50256]
    assert tok.decode(ids) == "<|startoftranscript|><|notimestamps|> Hello world.<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == " Hello world."
    assert tok.decode([50257, 50363, *text, 50364, 50256], skip_special_tokens=True) == (
        " Hello world."
    )


@pytest.mark.slow
def test_converted_weights_equal_the_ct2_tensors(tiny_en_model: Any, tiny_en_src: Path) -> None:
    raw = read_ct2(tiny_en_src / "model.bin").variables
    sd = {k: v.numpy() for k, v in tiny_en_model.state_dict().items()}

    def ct2(name: str) -> np.ndarray:
        return raw[name].astype(np.float32)

    qkv, qkv_b = (
        ct2("encoder/layer_2/self_attention/linear_0/weight"),
        ct2("encoder/layer_2/self_attention/linear_0/bias"),
    )
    enc = "model.encoder.layers.2.self_attn"
    for i, p in enumerate("qkv"):
        np.testing.assert_array_equal(sd[f"{enc}.{p}_proj.weight"], qkv[i * 384 : (i + 1) * 384])
    np.testing.assert_array_equal(sd[f"{enc}.q_proj.bias"], qkv_b[:384])
    np.testing.assert_array_equal(sd[f"{enc}.v_proj.bias"], qkv_b[768:])
    assert f"{enc}.k_proj.bias" not in sd and not qkv_b[384:768].any()
    kv = ct2("decoder/layer_3/attention/linear_1/weight")
    cross = "model.decoder.layers.3.encoder_attn"
    np.testing.assert_array_equal(sd[f"{cross}.k_proj.weight"], kv[:384])
    np.testing.assert_array_equal(sd[f"{cross}.v_proj.weight"], kv[384:])
    np.testing.assert_array_equal(
        sd[f"{cross}.v_proj.bias"], ct2("decoder/layer_3/attention/linear_1/bias")[384:]
    )
    pairs = {
        "model.encoder.conv1.weight": "encoder/conv1/weight",
        "model.decoder.embed_tokens.weight": "decoder/embeddings/weight",
        "proj_out.weight": "decoder/embeddings/weight",
        "model.decoder.embed_positions.weight": "decoder/position_encodings/encodings",
        "model.decoder.layers.0.fc1.weight": "decoder/layer_0/ffn/linear_0/weight",
        "model.decoder.layers.0.final_layer_norm.bias": "decoder/layer_0/ffn/layer_norm/beta",
        "model.encoder.layer_norm.weight": "encoder/layer_norm/gamma",
    }
    for hf, name in pairs.items():
        np.testing.assert_array_equal(sd[hf], ct2(name), err_msg=hf)


@pytest.mark.slow
def test_converted_model_computes_what_ctranslate2_computes(
    tiny_en_model: Any, tiny_en_src: Path
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    ct = ctranslate2.models.Whisper(
        str(tiny_en_src), device="cpu", compute_type="float32", intra_threads=2
    )
    mel = np.random.default_rng(0).normal(size=(1, 80, 3000)).astype(np.float32)
    want = np.asarray(ct.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True))
    with torch.no_grad():
        got = tiny_en_model.model.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    ct_tokens = ct.generate(
        ctranslate2.StorageView.from_array(mel), [[50257, 50362]], max_length=12, beam_size=1
    )[0].sequences_ids[0]
    with torch.no_grad():
        hf_tokens = tiny_en_model.generate(torch.from_numpy(mel), max_new_tokens=10)[0].tolist()
    assert [t for t in hf_tokens if t < 50256] == ct_tokens
