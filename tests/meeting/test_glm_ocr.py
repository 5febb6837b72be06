"""GLM-OCR backend against transformers' own processor and greedy generate, on a tiny model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # builders

from builders import GLMASR_SPECIALS, scale_weights, train_tokenizer  # noqa: E402

from streamasr.errors import InputError, ModelFormatError  # noqa: E402
from streamasr.meeting.glm_ocr import GLM_OCR_ID, PROMPT, GlmOcr  # noqa: E402
from streamasr.meeting.ocr import load_ocr  # noqa: E402

SPECIALS = [
    *GLMASR_SPECIALS[:7],  # the GLM chat specials, <|endoftext|> to <|observation|>
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
]
# GLM-OCR's chat template, cut down to a user turn of images and text and the generation prompt.
CHAT_TEMPLATE = (
    "[gMASK]<sop>{%- for m in messages %}<|{{ m.role }}|>\n"
    "{%- if m.content is string %}{{ m.content }}{%- else %}{%- for item in m.content %}"
    "{%- if item.type == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}"
)
# The checkpoint's preprocessor_config.json, with a pixel budget of 4 to 32 image tokens.
PREPROCESSOR = {
    "size": {"shortest_edge": 28 * 28 * 2 * 4, "longest_edge": 28 * 28 * 2 * 32},
    "do_rescale": True,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Glm46VImageProcessor",
    "processor_class": "Glm46VProcessor",
}
NEW_TOKENS = 12  # random weights rarely stop by themselves: each generate runs to the bound


def build_glm_ocr(d: Path, seed: int = 0) -> Path:
    """A 2+2-layer GLM-OCR (vision width 32, text width 32, GQA 2:1) laid out like the hub repo."""
    from transformers import (
        GenerationConfig,
        GlmOcrConfig,
        GlmOcrForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(SPECIALS),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    cfg = GlmOcrConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 1024,
            # M-RoPE: the sections (time, height, width) add up to head_dim / 2
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 2, 2],
            },
            "eos_token_id": eos,
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "num_heads": 2,
            "intermediate_size": 64,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    model = GlmOcrForConditionalGeneration(cfg).eval()
    scale_weights(model, 0.1, seed)  # the greedy output depends on the image (not at 0.25)
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR), encoding="utf-8")
    return d


def slide(text: str, size: tuple[int, int] = (160, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((6, size[1] // 3), text, fill="black")
    return image


def transformers_processor(d: Path) -> Any:
    """transformers' Glm46VProcessor (GLM-OCR's processor_class) without its video slot, whose
    class needs torchvision; the tokenizer and the PIL image processor are the checkpoint's."""
    from transformers import AutoTokenizer, Glm46VProcessor
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil

    # ProcessorMixin takes its sub-processors from __init__'s parameters: no video_processor here
    class ImageOnly(Glm46VProcessor):
        def __init__(self, image_processor: Any, tokenizer: Any, chat_template: Any = None) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    tokenizer = AutoTokenizer.from_pretrained(d)
    image_processor = Glm46VImageProcessorPil.from_pretrained(d)
    return ImageOnly(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def reference(d: Path, image: Image.Image) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The processor's inputs for the model card's request, and greedy generate's new tokens
    from the saved model loaded on its own."""
    from transformers import GlmOcrForConditionalGeneration

    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": PROMPT}],
        }
    ]
    inputs = transformers_processor(d).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    model = GlmOcrForConditionalGeneration.from_pretrained(d).eval()
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return dict(inputs), out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_glm_ocr(tmp_path_factory.mktemp("glm-ocr"))


@pytest.fixture(scope="module")
def ocr(glm_dir: Path) -> GlmOcr:
    loaded = GlmOcr.load(str(glm_dir), compute="cpu")
    loaded.max_new_tokens = NEW_TOKENS
    return loaded


@pytest.mark.timeout(120)
# transformers' processor hands a tensor row to np.array (its mm_token_type_ids): not ours
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_inputs_and_tokens_equal_the_processor_and_greedy_generate(
    glm_dir: Path, ocr: GlmOcr
) -> None:
    for image in (slide("Quarterly results"), slide("Agenda: 1. Budget", (200, 120))):
        expected_inputs, expected_tokens = reference(glm_dir, image)
        inputs = ocr.inputs(image)
        assert set(inputs) == set(expected_inputs)
        for key, value in inputs.items():
            assert torch.equal(value, expected_inputs[key]), key
        assert ocr.tokens(image) == expected_tokens
        assert len(expected_tokens) > 0


@pytest.mark.timeout(120)
def test_the_text_depends_on_the_image_and_is_the_decoded_tokens(ocr: GlmOcr) -> None:
    first, second = slide("Quarterly results"), slide("Roadmap 2027")
    assert ocr.tokens(first) != ocr.tokens(second)
    text = ocr.tokenizer.decode(ocr.tokens(first), skip_special_tokens=True).strip()
    assert ocr.read(first) == text
    assert ocr.read(first.convert("RGBA")) == text  # screenshots with alpha read as RGB


@pytest.mark.timeout(120)
def test_load_ocr_takes_a_dir_and_glm_ocr_from_the_hub_cache(
    glm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    backend = load_ocr(str(glm_dir), compute="cpu")
    assert isinstance(backend, GlmOcr) and backend.name == "glm-ocr"
    # The hub cache's layout: refs/main names the commit whose snapshot holds the files.
    repo = tmp_path / "hub" / f"models--{GLM_OCR_ID.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(glm_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("glm-ocr", GLM_OCR_ID):
        assert isinstance(load_ocr(name, compute="cpu"), GlmOcr)


@pytest.mark.timeout(60)
def test_a_model_not_on_this_machine_says_how_to_fetch_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    for name in ("glm-ocr", "someone/other-ocr", str(tmp_path / "no-such-dir")):
        with pytest.raises(InputError) as caught:
            load_ocr(name, compute="cpu")
        message = str(caught.value)
        assert "hf download" in message and "snapshot_download" in message, message
    assert "hf download zai-org/GLM-OCR" in message  # a missing dir points at the real model


@pytest.mark.timeout(60)
def test_another_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelFormatError, match="not GLM-OCR"):
        GlmOcr.load(str(tmp_path), compute="cpu")
