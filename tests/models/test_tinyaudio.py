"""Tiny Audio adapter against a plain transformers composition, on tiny random components.

The reference is what upstream's ASRModel does, spelled out: transformers' GLM-ASR audio tower
on the feature extractor's padded window, our projector, the first n frames spliced into the
ChatML prompt, then Qwen3ForCausalLM.generate with inputs_embeds (vocab resized to the tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import builders
import numpy as np
import pytest
import torch
from streamasr.kernels import use_backend

from streamasr.config import DecodeConfig
from streamasr.engine.session import bias_text
from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.audio_llm import instruction_with_bias
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.glm_encoder import audio_token_count
from streamasr.models.loader import load_model, model_family
from streamasr.models.tinyaudio import (
    ENV_DECODER,
    ENV_ENCODER,
    MlpAudioProjector,
    TinyAudioAdapter,
    component_specs,
    prompt_template,
    transcribe_prompt,
)

EXACT = DecodeConfig(max_repeat_ngram=0)
INSTRUCTION = "Transcribe the speech to text"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tinyaudio")
    glm = builders.build_glmasr(root / "GLM-ASR-Nano-2512", std=0.5)
    qwen = builders.build_qwen3(root / "Qwen3-0.6B", std=2.0)
    tiny = builders.build_tiny_audio(root / "tiny-audio", glmasr_dir=glm, qwen3_dir=qwen, std=2.0)
    return {"glm": glm, "qwen": qwen, "tiny": tiny}


@pytest.fixture(scope="module")
def tiny(dirs: dict[str, Path]) -> TinyAudioAdapter:
    model = load_model(str(dirs["tiny"]))
    assert isinstance(model, TinyAudioAdapter)
    return model


@pytest.fixture(scope="module")
def ref(dirs: dict[str, Path]) -> dict[str, Any]:
    """The reference composition's parts, loaded with transformers."""
    from safetensors.torch import load_file
    from transformers import (
        AutoTokenizer,
        GlmAsrForConditionalGeneration,
        Qwen3ForCausalLM,
        WhisperFeatureExtractor,
    )

    tok = AutoTokenizer.from_pretrained(dirs["tiny"])
    lm = Qwen3ForCausalLM.from_pretrained(dirs["qwen"]).eval()
    lm.resize_token_embeddings(len(tok), mean_resizing=True)  # as upstream's _init_tokenizer
    weights = load_file(str(dirs["tiny"] / "model.safetensors"))
    return {
        "tok": tok,
        "lm": lm,
        "tower": GlmAsrForConditionalGeneration.from_pretrained(dirs["glm"])
        .eval()
        .model.audio_tower,
        "proj": MlpAudioProjector.from_state_dict({k[10:]: v for k, v in weights.items()}),
        "fe": WhisperFeatureExtractor(feature_size=128),
    }


def upstream_tokens(mel_frames: int) -> int:
    """Upstream's count: its conv-layer formula, then (L - k) // k + 1 with k = 4."""
    n = mel_frames
    for pad, kernel, stride in [(1, 3, 1), (1, 3, 2)]:
        n = (n + 2 * pad - (kernel - 1) - 1) // stride + 1
    return (n - 4) // 4 + 1


def upstream_prompt(tok: Any, n: int, instruction: str = INSTRUCTION) -> list[int]:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "<audio>" * n + " " + instruction},
    ]
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, enable_thinking=False
    )
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def reference(
    ref: dict[str, Any], tiny: TinyAudioAdapter, audio: np.ndarray, budget: int
) -> list[int]:
    feats = ref["fe"](audio, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
    n = upstream_tokens(int(feats["attention_mask"].sum()))
    return reference_from_features(ref, feats["input_features"], n, budget)


def reference_from_features(
    ref: dict[str, Any], features: torch.Tensor, n: int, budget: int
) -> list[int]:
    """The reference decode of log-mel `features` (1, 128, T) with `n` audio tokens."""
    with torch.no_grad():
        states = ref["tower"](features).last_hidden_state  # (1, T / 2, d)
        b, s, d = states.shape
        audio_embeds = ref["proj"](states.reshape(b, s // 4, 4 * d))[0, :n]
        ids = torch.tensor([upstream_prompt(ref["tok"], n)])
        x = ref["lm"].get_input_embeddings()(ids)
        audio_id = ref["tok"].convert_tokens_to_ids("<audio>")
        x = x.masked_scatter((ids == audio_id)[..., None], audio_embeds[None])
    eos = [ref["tok"].convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    out = ref["lm"].generate(
        input_ids=ids,
        inputs_embeds=x,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=budget,
        eos_token_id=eos,
        pad_token_id=ref["tok"].pad_token_id,
    )
    return [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]


def test_family_vocab_and_end_tokens(dirs: dict[str, Path], tiny: TinyAudioAdapter) -> None:
    assert model_family(dirs["tiny"]) == "asr_model"
    tok = tiny.tokenizer
    assert tiny.template.audio_token == tok.convert_tokens_to_ids("<audio>") == len(tok) - 1
    assert tiny.lm.vocab_limit == len(tok)  # the decoder's padding rows are never generated
    assert tiny.eos_ids == {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}


def test_projector_is_upstreams_mlp() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    w = {
        "linear_1.weight": torch.randn(24, 32, generator=g),
        "norm.weight": torch.randn(24, generator=g),
        "linear_2.weight": torch.randn(16, 24, generator=g),
        "norm_2.weight": torch.randn(16, generator=g),
    }
    norm, norm_2 = LlamaRMSNorm(24, eps=1e-6), LlamaRMSNorm(16, eps=1e-6)
    norm.weight.data, norm_2.weight.data = w["norm.weight"], w["norm_2.weight"]
    x = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        hidden = torch.nn.functional.gelu(norm(x @ w["linear_1.weight"].T))
        expected = norm_2(hidden @ w["linear_2.weight"].T)
        torch.testing.assert_close(MlpAudioProjector.from_state_dict(w)(x), expected)
        older = {k: v for k, v in w.items() if k != "norm_2.weight"}  # before 2026-05-06
        torch.testing.assert_close(
            MlpAudioProjector.from_state_dict(older)(x), hidden @ w["linear_2.weight"].T
        )


@pytest.mark.parametrize("samples", [16000, 16037, 16321, 160000, 160159, 160900, 160961, 480000])
def test_prompt_and_token_count_equal_upstreams(
    tiny: TinyAudioAdapter, ref: dict[str, Any], samples: int
) -> None:
    from streamasr.models.glm_encoder import mel_frames_for

    audio = np.zeros(samples, dtype=np.float32)
    mask = ref["fe"](audio, sampling_rate=16000, return_attention_mask=True)["attention_mask"]
    n = upstream_tokens(int(np.sum(mask)))
    assert audio_token_count(mel_frames_for(samples)) == n
    assert tiny.template.ids(n) == upstream_prompt(ref["tok"], n)


def test_context_biasing_is_upstreams_prompt_with_a_context_sentence(
    tiny: TinyAudioAdapter, ref: dict[str, Any]
) -> None:
    text = bias_text("We met in Reykjavik.", ("Kubernetes", "Grafana"))
    bias = tiny.encode_text(" " + text)
    longer = f"{instruction_with_bias(INSTRUCTION)} {text}"
    assert tiny.template.ids(12, bias) == upstream_prompt(ref["tok"], 12, longer)


@pytest.mark.parametrize("which", [0, 1])
def test_offline_decode_equals_the_reference(
    tiny: TinyAudioAdapter, ref: dict[str, Any], sentences: list[np.ndarray], which: int
) -> None:
    audio = sentences[which][: len(sentences[which]) // 160 * 160]
    result = builders.offline_window(tiny, audio, EXACT)
    assert list(result.tokens) == reference(ref, tiny, audio, builders.default_budget(len(audio)))


def test_both_kernel_backends_decode_like_the_reference(
    tiny: TinyAudioAdapter, ref: dict[str, Any], sentences: list[np.ndarray]
) -> None:
    """Triton (interpreted on a CPU) and the torch reference pick the reference's greedy tokens
    on a 2 s window (short, so the interpreted encoder is), 1.5 s of it real audio."""
    mel = LogMelBuffer(n_mels=128)
    mel.append(sentences[0][:24000])
    features = mel.features(pad_to_frames=200)  # (128, 200)
    n = audio_token_count(mel.num_frames)
    expected = reference_from_features(ref, torch.from_numpy(features)[None], n, 6)
    assert len(expected) >= 3  # several one-token decode steps, not just the prefill
    options = DecodeConfig(max_repeat_ngram=0, max_new_tokens=6)
    for backend in ("reference", "triton"):
        with use_backend(backend):
            result = run_one(
                tiny,
                TranscribeRequest(
                    features,
                    num_frames=mel.num_frames,
                    options=options,
                ),
            )
        assert list(result.tokens) == expected, backend


def test_cli_offline_prints_the_reference_text(
    tiny: TinyAudioAdapter,
    ref: dict[str, Any],
    dirs: dict[str, Path],
    sentences: list[np.ndarray],
    tmp_path: Path,
) -> None:
    path, audio = builders.speech_file(tmp_path, sentences[0])
    tokens = reference(ref, tiny, audio, builders.default_budget(len(audio)))
    expected = ref["tok"].decode(tokens, skip_special_tokens=True).strip()
    assert expected
    r = builders.run_cli(
        "transcribe",
        "--mode",
        "offline",
        "--model",
        str(dirs["tiny"]),
        "--format",
        "text",
        str(path),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


def test_streamed_final_equals_offline_decode(
    tiny: TinyAudioAdapter, sentences: list[np.ndarray]
) -> None:
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, sentences[1], silence])
    finals = builders.stream_finals(tiny, audio)
    assert len(finals) == 1
    offline = builders.offline_window(tiny, audio[finals[0].start_sample : finals[0].end_sample])
    assert finals[0].text == offline.text.strip() != ""


def test_transcribe_batch_takes_mixed_length_numpy_arrays(
    tiny: TinyAudioAdapter, sentences: list[np.ndarray]
) -> None:
    short = sentences[0][:8000].astype(np.float64)  # 0.5 s, float64
    long = np.concatenate([sentences[1], np.zeros(16000 * 31, dtype=np.float32), sentences[0]])
    texts = tiny.transcribe_batch([long, short])
    assert texts[1] == builders.offline_window(tiny, short.astype(np.float32)).text.strip()
    first = builders.offline_window(tiny, long[:480000]).text.strip()
    assert texts[0].startswith(first)  # 32 s+: two windows, joined
    with pytest.raises(ValueError):
        tiny.transcribe_batch([np.zeros((2, 100), dtype=np.float32)])
    with pytest.raises(ValueError):
        tiny.transcribe_batch([np.zeros(100, dtype=np.int16)])


def test_components_come_from_env_then_pointer_file_then_config(
    dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = json.loads((dirs["tiny"] / "config.json").read_text())
    d = tmp_path / "t"
    d.mkdir()
    assert component_specs(d, cfg) == ("zai-org/GLM-ASR-Nano-2512", "Qwen/Qwen3-0.6B")
    (d / "streamasr.json").write_text(json.dumps({"audio_model": "enc", "text_model": "/abs/dec"}))
    assert component_specs(d, cfg) == (str(d / "enc"), "/abs/dec")
    monkeypatch.setenv(ENV_ENCODER, "/env/enc")
    monkeypatch.setenv(ENV_DECODER, "/env/dec")
    assert component_specs(d, cfg) == ("/env/enc", "/env/dec")


def test_config_may_name_local_component_dirs(dirs: dict[str, Path], tmp_path: Path) -> None:
    d = builders.build_tiny_audio(
        tmp_path / "t", glmasr_dir=dirs["glm"], qwen3_dir=dirs["qwen"], std=2.0, pointer="config"
    )
    assert not (d / "streamasr.json").exists()
    assert isinstance(load_model(str(d)), TinyAudioAdapter)


def test_hub_ids_fetch_what_loading_needs_and_no_repo_code(
    tiny: TinyAudioAdapter,
    dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--model mazesmazes/tiny-audio` and its component hub ids through a stand-in hub that
    selects files as huggingface_hub does. Every tokenizer here keeps its chat template in
    chat_template.jinja; each repo also holds Python that would leave a mark if it ran and
    would change the instruction if its text were read."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    marker = tmp_path / "repo-code-ran"
    code = f"open({str(marker)!r}, 'w').close()\nTRANSCRIBE_PROMPT = 'Say it'\n".encode()
    repos = {
        "mazesmazes/tiny-audio": dirs["tiny"],
        "zai-org/GLM-ASR-Nano-2512": dirs["glm"],
        "Qwen/Qwen3-0.6B": dirs["qwen"],
    }
    fetched: dict[str, list[str]] = {}

    def snapshot_download(
        repo_id: str, *, allow_patterns: Any, ignore_patterns: Any, **kwargs: Any
    ) -> str:
        repo = {f.name: f.read_bytes() for f in repos[repo_id].iterdir()}
        repo.pop("streamasr.json", None)  # ours, not the hub's: components come from config.json
        repo.update({"asr_modeling.py": code, "README.md": b"model card"})
        names = filter_repo_objects(
            repo, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns
        )
        local = tmp_path / "hub" / repo_id.replace("/", "--")
        local.mkdir(parents=True, exist_ok=True)
        fetched[repo_id] = sorted(names)
        for name in fetched[repo_id]:
            (local / name).write_bytes(repo[name])
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    for variable in (ENV_ENCODER, ENV_DECODER, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    model = load_model("mazesmazes/tiny-audio")
    assert isinstance(model, TinyAudioAdapter)
    assert model.template == tiny.template  # the default instruction: asr_modeling.py unread
    glm = load_model("zai-org/GLM-ASR-Nano-2512")
    assert glm.processor.chat_template == (dirs["glm"] / "chat_template.jinja").read_text()
    assert set(fetched) == set(repos)
    for names in fetched.values():
        assert "chat_template.jinja" in names and "model.safetensors" in names
        assert not [n for n in names if n.endswith(".py")] and "README.md" not in names
    assert not marker.exists()


def test_instruction_from_streamasr_json_or_upstream_code(tmp_path: Path) -> None:
    assert transcribe_prompt(tmp_path) == INSTRUCTION
    (tmp_path / "asr_modeling.py").write_text('class ASRModel:\n    TRANSCRIBE_PROMPT = ""\n')
    assert transcribe_prompt(tmp_path) == ""  # upstream before 2026-05-01
    (tmp_path / "streamasr.json").write_text(json.dumps({"transcribe_prompt": "Say it"}))
    assert transcribe_prompt(tmp_path) == "Say it"


def test_missing_components_say_how_to_fetch_and_point_at_them(
    dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "tiny-audio"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes((dirs["tiny"] / name).read_bytes())
    with pytest.raises(ModelNotFoundError) as err:
        load_model(str(d))
    msg = str(err.value)
    assert "download zai-org/GLM-ASR-Nano-2512" in msg
    assert "streamasr.json" in msg and ENV_ENCODER in msg and "--model" in msg
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="download mazesmazes/tiny-audio"):
        load_model(str(d))


def test_a_tokenizer_without_chat_template_is_a_clear_error(ref: dict[str, Any]) -> None:
    import copy

    tok = copy.deepcopy(ref["tok"])
    tok.chat_template = None
    with pytest.raises(ModelFormatError, match="chat template"):
        prompt_template(tok, system_prompt="", instruction=INSTRUCTION, audio_token_id=1)
