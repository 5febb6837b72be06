"""GLM-OCR (zai-org/GLM-OCR, 0.9B parameters) as the slides' OCR backend: greedy recognition."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamasr.errors import ModelFormatError, ModelNotFoundError
from streamasr.models.placement import resolve_compute, resolve_dtype
from streamasr.models.resolve import hub_instructions, parse_spec

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

GLM_OCR_ID = "zai-org/GLM-OCR"
PROMPT = "Text Recognition:"  # the model card's task prompt for plain text
# A dense slide reads in a few hundred tokens; the bound stops a model that never emits its end
# token from holding the slide worker for minutes.
MAX_NEW_TOKENS = 1024


class GlmOcr:
    """GLM-OCR on one device. The inputs are built here, not by transformers' Glm46VProcessor
    (GLM-OCR's processor_class): it has a video slot whose class needs torchvision, which
    streamasr does not install (PyPI's torchvision wheels are built for CUDA torch and fail to
    import beside the CPU build). The PIL image processor and the tokenizer's chat template are
    the ones it wraps, and the image tokens are expanded by its rule (tests/meeting checks)."""

    name = "glm-ocr"

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, device: torch.device
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.max_new_tokens = MAX_NEW_TOKENS
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = str(tokenizer.convert_ids_to_tokens(self.image_token_id))

    @classmethod
    def load(cls, source: str, *, compute: str = "auto", dtype: str = "auto") -> GlmOcr:
        """`source`: a checkpoint dir, or a hub id already in the local Hugging Face cache (the
        OCR never downloads). bfloat16 on CUDA under `auto`, the dtype GLM-OCR ships in."""
        import torch
        from transformers import AutoTokenizer, GlmOcrForConditionalGeneration
        from transformers.models.glm46v.image_processing_pil_glm46v import (
            Glm46VImageProcessorPil,
        )

        device = resolve_compute(compute)
        placed = resolve_dtype(dtype, device, half=torch.bfloat16)
        model_dir = str(_model_dir(source))
        try:
            model: Any = GlmOcrForConditionalGeneration.from_pretrained(model_dir, dtype=placed)
            tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
            # The PIL backend on every machine: the torchvision one needs torchvision, and one
            # backend keeps the text of a slide the same on the CPU and on CUDA.
            image_processor: Any = Glm46VImageProcessorPil.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot load GLM-OCR from {model_dir}: {exc}") from exc
        if not tokenizer.chat_template:
            raise ModelFormatError(f"{model_dir} has no chat template (chat_template.jinja)")
        return cls(model.to(device).eval(), tokenizer, image_processor, device)

    def read(self, image: Image) -> str:
        return str(self.tokenizer.decode(self.tokens(image), skip_special_tokens=True)).strip()

    def tokens(self, image: Image) -> list[int]:
        """The greedy new tokens for `image`, the end token included when one came."""
        import torch

        inputs = self.inputs(image)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    def inputs(self, image: Image) -> dict[str, torch.Tensor]:
        """What Glm46VProcessor.apply_chat_template gives for the prompt and `image`, on the
        model's device, pixels in its dtype."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}
        ]
        prompt = str(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )
        # Slides come as RGBA screenshots or palette PNGs; the vision encoder takes RGB.
        vision = self.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        grid = vision["image_grid_thw"]
        count = int(grid[0].prod()) // int(self.image_processor.merge_size) ** 2
        text = prompt.replace(self.image_token, self.image_token * count, 1)
        # As the processor's apply_chat_template: special tokens unless the prompt starts with bos
        bos = self.tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        encoded = self.tokenizer(text, add_special_tokens=special, return_tensors="pt")
        ids = encoded["input_ids"]
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": encoded["attention_mask"].to(self.device),
            "mm_token_type_ids": (ids == self.image_token_id).long().to(self.device),
            "pixel_values": vision["pixel_values"].to(self.device, self.model.dtype),
            "image_grid_thw": grid.to(self.device),
        }


def _model_dir(source: str) -> Path:
    """The checkpoint dir of `source`: a local dir, or a hub id's snapshot in the local cache."""
    from streamasr.models.loader import model_family

    spec = parse_spec(source)  # a dir without a model's config.json fails here
    if spec.kind == "hub":
        model_dir = _cached(spec.location)
    elif spec.kind == "transformers":
        model_dir = Path(spec.location)
    elif spec.kind == "missing":
        raise ModelNotFoundError(
            f"OCR model {source!r} does not exist: pass a GLM-OCR dir, or glm-ocr for "
            f"{GLM_OCR_ID} from the Hugging Face cache.\n{_fetch_hint(GLM_OCR_ID)}"
        )
    else:  # a built-in or CTranslate2 Whisper
        raise ModelFormatError(f"{source!r} is a Whisper speech model, not a GLM-OCR one")
    if (family := model_family(model_dir)) != "glm_ocr":
        raise ModelFormatError(f"{source}: model_type {family!r} is not GLM-OCR (glm_ocr)")
    return model_dir


def _cached(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, a bad id: either way it is not here
        raise ModelNotFoundError(
            f"OCR model {repo_id!r} is not in this machine's Hugging Face cache, and the OCR "
            f"never downloads ({type(exc).__name__}).\n{_fetch_hint(repo_id)}"
        ) from exc


def _fetch_hint(repo_id: str) -> str:
    return (
        f"With network access, `hf download {repo_id}` fills this machine's cache; or:\n"
        f"{hub_instructions(repo_id, '--ocr')}"
    )
