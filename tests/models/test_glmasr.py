"""GLM-ASR adapter against transformers' GlmAsr processor and generate, on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import builders
import numpy as np
import pytest
import torch
from streamasr.kernels import use_backend

from streamasr.config import DecodeConfig
from streamasr.engine.session import bias_text
from streamasr.errors import ModelNotFoundError
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.audio_llm import instruction_with_bias
from streamasr.models.base import TranscribeRequest, run_one
from streamasr.models.glm_encoder import (
    audio_token_count,
    audio_tokens_for_samples,
    mel_frames_for,
)
from streamasr.models.glmasr import GlmAsrAdapter, glmasr_parts
from streamasr.models.loader import load_model, model_family

EXACT = DecodeConfig(max_repeat_ngram=0)  # no loop guard: the decode is plain greedy


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return builders.build_glmasr(tmp_path_factory.mktemp("glmasr"), std=0.5)


@pytest.fixture(scope="module")
def glm(glm_dir: Path) -> GlmAsrAdapter:
    model = load_model(str(glm_dir))
    assert isinstance(model, GlmAsrAdapter)
    return model


def reference(glm: GlmAsrAdapter, audio: np.ndarray, budget: int, prefix: list[int]) -> list[int]:
    """transformers' greedy generate on the processor's inputs, prefix appended, eos dropped."""
    inputs = glm.processor.apply_transcription_request(audio)
    ids = torch.cat([inputs["input_ids"], torch.tensor([prefix], dtype=torch.long)], dim=1)
    inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    out = glm.hf.generate(**inputs, do_sample=False, max_new_tokens=budget)
    new = out[0, ids.shape[1] :].tolist()
    return prefix + [t for t in new if t not in glm.eos_ids]


def test_family_and_features(glm_dir: Path, glm: GlmAsrAdapter) -> None:
    assert model_family(glm_dir) == "glmasr"
    assert (glm.info.features.n_mels, glm.info.features.window_frames) == (128, 3000)


@pytest.mark.parametrize(
    "seconds,extra",
    [(1, 0), (1, 37), (1, 321), (10, 0), (10, 159), (10, 900), (10, 961), (70, 0), (70, 1)]
    + [(70, 961), (70, 1234)],
)
def test_prompt_and_token_count_equal_the_processor(
    glm: GlmAsrAdapter, seconds: int, extra: int
) -> None:
    n = seconds * 16000 + extra  # extra samples: partial 10 ms hops, partial 8-frame groups
    audio = np.random.default_rng(seconds).standard_normal(n).astype(np.float32) * 0.1
    inputs = glm.processor.apply_transcription_request(audio)
    expected = int((inputs["input_ids"] == glm.template.audio_token).sum())
    # Our engine decodes 30 s windows one at a time; their counts add up to the processor's.
    windows = [len(audio[i : i + 480000]) for i in range(0, n, 480000)]
    ours = sum(audio_token_count(mel_frames_for(w)) for w in windows)
    assert ours == audio_tokens_for_samples(n) == expected
    assert glm.template.ids(ours) == inputs["input_ids"][0].tolist()
    if extra == 0:
        assert ours == {1: 12, 10: 125, 70: 875}[seconds]
    # Counting the last window's frames as n // 160 loses a token exactly when n // 160 is
    # 6 mod 8 and a partial hop is left: 1 s + 321 and the 10 s + 961 tails.
    floor = ours - audio_token_count(mel_frames_for(windows[-1]))
    floor += audio_token_count(windows[-1] // 160)
    assert expected - floor == (1 if extra in (321, 961) else 0)


@pytest.mark.parametrize("extra", [37, 159, 321, 961])
def test_partial_hop_audio_embeddings_equal_transformers(glm: GlmAsrAdapter, extra: int) -> None:
    """Given the processor's frame count ceil(n / 160), the adapter keeps exactly the audio
    embeddings transformers splices in, for lengths that are not whole 10 ms hops."""
    n = 160000 + extra
    audio = np.random.default_rng(extra).standard_normal(n).astype(np.float32) * 0.1
    inputs = glm.processor.apply_transcription_request(audio)
    ref = glm.hf.get_audio_features(
        inputs["input_features"], inputs["input_features_mask"], return_dict=True
    ).pooler_output  # (tokens, d)
    ours = glm.audio_embeddings(inputs["input_features"][0].numpy(), mel_frames_for(n))
    assert ours.shape[0] == int((inputs["input_ids"] == glm.template.audio_token).sum())
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_partial_hop_decode_equals_generate(
    glm: GlmAsrAdapter, sentences: list[np.ndarray]
) -> None:
    """A length whose n // 160 is 6 mod 8 plus a partial hop (one token more than the floor
    count gives) decodes to generate's tokens when the adapter gets ceil(n / 160) frames."""
    audio = sentences[0][: len(sentences[0]) // 1280 * 1280 - 320 + 1]  # n // 160 = 8k - 2
    assert (len(audio) // 160) % 8 == 6 and len(audio) % 160 == 1
    mel = LogMelBuffer(n_mels=128)
    mel.append(audio)
    budget = builders.default_budget(len(audio))
    result = run_one(
        glm,
        TranscribeRequest(
            mel.features(pad_to_frames=3000),
            num_frames=mel_frames_for(len(audio)),
            options=EXACT,
        ),
    )
    assert list(result.tokens) == reference(glm, audio, budget, [])


def test_encoder_and_projector_equal_transformers(glm: GlmAsrAdapter) -> None:
    mel = np.random.default_rng(3).standard_normal((128, 3000)).astype(np.float32)
    mask = torch.zeros(1, 3000, dtype=torch.long)
    mask[0, :1000] = 1  # 10 s of real audio in a padded window -> 125 tokens
    ref = glm.hf.get_audio_features(torch.from_numpy(mel)[None], mask, return_dict=True)
    torch.testing.assert_close(
        glm.audio_embeddings(mel, 1000), ref.pooler_output, atol=1e-4, rtol=1e-4
    )


def test_unpadded_mel_needs_whole_8_frame_groups_in_transformers_not_here(
    glm: GlmAsrAdapter,
) -> None:
    mel = np.random.default_rng(4).standard_normal((128, 1006)).astype(np.float32)
    with pytest.raises(RuntimeError):  # its projector reshapes (B, 503, d) to (B, -1, 4 d)
        glm.hf.get_audio_features(
            torch.from_numpy(mel)[None], torch.ones(1, 1006), return_dict=True
        )
    assert glm.audio_embeddings(mel, 1006).shape == (125, 64)  # a trailing part-group is dropped
    ref = glm.hf.get_audio_features(
        torch.from_numpy(mel[:, :1000])[None], torch.ones(1, 1000), return_dict=True
    )
    ours = glm.audio_embeddings(mel[:, :1000], 1000)
    torch.testing.assert_close(ours, ref.pooler_output, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", [0, 1])
def test_offline_decode_equals_transformers_generate(
    glm: GlmAsrAdapter, sentences: list[np.ndarray], which: int
) -> None:
    audio = sentences[which][: len(sentences[which]) // 160 * 160]
    result = builders.offline_window(glm, audio, EXACT)
    assert list(result.tokens) == reference(glm, audio, builders.default_budget(len(audio)), [])
    assert result.text == glm.processor.tokenizer.decode(
        list(result.tokens), skip_special_tokens=True
    )
    assert (result.words, result.no_speech_prob) == ((), 0.0)


def test_both_kernel_backends_decode_like_generate(
    glm: GlmAsrAdapter, sentences: list[np.ndarray]
) -> None:
    """Triton (interpreted on a CPU) and the torch reference pick generate's greedy tokens.

    A 2 s window keeps the interpreted encoder short; transformers sees the same window, as it
    takes any whole number of 8-frame groups, with a mask over the 1.5 s of real audio.
    """
    mel = LogMelBuffer(n_mels=128)
    mel.append(sentences[1][:24000])
    features = mel.features(pad_to_frames=200)  # (128, 200)
    n = audio_token_count(mel.num_frames)
    ids = torch.tensor([glm.template.ids(n)])
    mask = torch.zeros(1, 200, dtype=torch.long)
    mask[0, : mel.num_frames] = 1
    out = glm.hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        input_features=torch.from_numpy(features)[None],
        input_features_mask=mask,
        do_sample=False,
        max_new_tokens=6,
    )
    expected = [t for t in out[0, ids.shape[1] :].tolist() if t not in glm.eos_ids]
    assert len(expected) >= 3  # several one-token decode steps, not just the prefill
    options = DecodeConfig(max_repeat_ngram=0, max_new_tokens=6)
    for backend in ("reference", "triton"):
        with use_backend(backend):
            result = run_one(
                glm,
                TranscribeRequest(
                    features,
                    num_frames=mel.num_frames,
                    options=options,
                ),
            )
        assert list(result.tokens) == expected, backend


def test_forced_prefix_continues_like_generate(
    glm: GlmAsrAdapter, sentences: list[np.ndarray]
) -> None:
    audio = sentences[0][: len(sentences[0]) // 160 * 160]
    prefix = glm.encode_text(" the quick")
    result = builders.offline_window(glm, audio, EXACT, prefix=prefix)
    budget = builders.default_budget(len(audio))
    assert list(result.tokens) == reference(glm, audio, budget, prefix)
    free = builders.offline_window(glm, audio, EXACT)
    again = builders.offline_window(glm, audio, EXACT, prefix=list(free.tokens[:3]))
    assert again.tokens == free.tokens  # forcing the greedy path's own start changes nothing


def test_cli_offline_prints_what_generate_decodes(
    glm: GlmAsrAdapter, glm_dir: Path, sentences: list[np.ndarray], tmp_path: Path
) -> None:
    path, audio = builders.speech_file(tmp_path, sentences[1])
    inputs = glm.processor.apply_transcription_request(audio)
    out = glm.hf.generate(
        **inputs, do_sample=False, max_new_tokens=builders.default_budget(len(audio))
    )
    text = glm.processor.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    expected = text[0].strip()
    assert expected  # a meaningful check: the random model says something here
    r = builders.run_cli(
        "transcribe", "--mode", "offline", "--model", str(glm_dir), "--format", "text", str(path)
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected + "\n"


def test_streamed_final_equals_offline_decode(
    glm: GlmAsrAdapter, sentences: list[np.ndarray]
) -> None:
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, sentences[0], silence, sentences[1], silence])
    finals = builders.stream_finals(glm, audio)
    assert len(finals) == 2
    for final in finals:
        offline = builders.offline_window(glm, audio[final.start_sample : final.end_sample])
        assert final.text == offline.text.strip()
        assert final.text  # not dropped as a hallucination: the comparison means something


KEYWORDS = ("Kubernetes", "Grafana")


def test_context_biasing_is_the_processors_prompt_with_a_context_sentence(
    glm: GlmAsrAdapter,
) -> None:
    """Keywords go where the processor puts a longer instruction, as a context sentence."""
    text = bias_text("", KEYWORDS)
    bias = glm.encode_text(" " + text)
    audio = np.zeros(3 * 16000, dtype=np.float32)
    instruction = instruction_with_bias(glm.processor.default_transcription_prompt)
    inputs = glm.processor.apply_transcription_request(audio, prompt=f"{instruction} {text}")
    n = audio_tokens_for_samples(len(audio))
    assert glm.template.ids(n, bias) == inputs["input_ids"][0].tolist()
    assert (
        glm.template.ids(n)
        == glm.processor.apply_transcription_request(audio)["input_ids"][0].tolist()
    )


def test_streamed_biased_final_equals_offline_biased_decode(
    glm: GlmAsrAdapter, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's keywords reach the decoder of its partials' and finals' chunked rows."""
    fed: list[int] = []
    embed = glm.lm.embed
    monkeypatch.setattr(glm.lm, "embed", lambda ids: (fed.extend(ids), embed(ids))[1])
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, sentences[0], silence])
    finals = builders.stream_finals(glm, audio, keywords=KEYWORDS)
    bias = glm.encode_text(" " + bias_text("", KEYWORDS))
    assert len(finals) == 1
    window = [*glm.template.bias_intro, *bias]
    assert any(fed[i : i + len(window)] == window for i in range(len(fed)))
    offline = builders.offline_window(
        glm, audio[finals[0].start_sample : finals[0].end_sample], bias=bias
    )
    assert finals[0].text == offline.text.strip()


def test_missing_weights_say_how_to_fetch_them(glm_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "GLM-ASR-Nano-2512"
    d.mkdir()
    (d / "config.json").write_text((glm_dir / "config.json").read_text())
    with pytest.raises(ModelNotFoundError) as err:
        load_model(str(d))
    msg = str(err.value)
    assert (
        "download zai-org/GLM-ASR-Nano-2512" in msg and "--model ./models/GLM-ASR-Nano-2512" in msg
    )


def test_parts_of_both_module_layouts() -> None:
    new = SimpleNamespace(
        model=SimpleNamespace(
            audio_tower="tower", multi_modal_projector="proj", language_model="llama"
        ),
        lm_head="head",
    )
    assert glmasr_parts(new) == ("tower", "proj", "llama", "head")
    old = SimpleNamespace(  # before transformers 5.10: no GlmAsrModel wrapper, a ForCausalLM inside
        audio_tower="tower",
        multi_modal_projector="proj",
        language_model=SimpleNamespace(model="llama", lm_head="head"),
    )
    assert glmasr_parts(old) == ("tower", "proj", "llama", "head")


def test_checkpoint_with_in_memory_key_names_loads_the_same(
    glm: GlmAsrAdapter, glm_dir: Path, tmp_path: Path
) -> None:
    """transformers saves the hub layout (`audio_tower.*`, `language_model.model.*`); a file
    written with the 5.10+ module names (`model.audio_tower.*`, ...) loads to the same model."""
    from safetensors.torch import save_file

    d = tmp_path / "renamed"
    d.mkdir()
    for f in glm_dir.iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    state = {k: v.contiguous() for k, v in glm.hf.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert any(k.startswith("model.audio_tower.") for k in state)
    mel = np.random.default_rng(5).standard_normal((128, 3000)).astype(np.float32)
    again = load_model(str(d))
    a = run_one(glm, TranscribeRequest(mel, num_frames=800, options=EXACT))
    b = run_one(
        again,
        TranscribeRequest(mel, num_frames=800, options=EXACT),
    )
    assert a.tokens == b.tokens
    assert json.loads((d / "config.json").read_text())["model_type"] == "glmasr"


def test_shorter_padded_window_decodes(glm: GlmAsrAdapter, sentences: list[np.ndarray]) -> None:
    """The engine's "utterance" mode pads less than 30 s (any even length): no 8-frame rule."""
    mel = LogMelBuffer(n_mels=128)
    mel.append(sentences[0])
    pad_to = mel.num_frames + 101 + (mel.num_frames + 101) % 2
    result = run_one(
        glm,
        TranscribeRequest(
            mel.features(pad_to_frames=pad_to),
            num_frames=mel.num_frames,
            prompt=[1, 2, 3],  # previous text: GLM-ASR's prompt has no slot for it, so unused
            options=EXACT,
            word_timestamps=True,
        ),
    )
    assert result.words == () and isinstance(result.text, str)


def test_a_processor_without_chat_template_gets_transformers_default(
    glm: GlmAsrAdapter, glm_dir: Path, tmp_path: Path
) -> None:
    """A hub download that skipped chat_template.jinja still builds the same prompt."""
    d = tmp_path / "no-template"
    d.mkdir()
    for f in glm_dir.iterdir():
        if f.name != "chat_template.jinja":
            (d / f.name).write_bytes(f.read_bytes())
    again = load_model(str(d))
    assert isinstance(again, GlmAsrAdapter)
    assert again.template == glm.template
