"""GLM-ASR and Tiny Audio streaming on tiny random models: the decoder's cached prompt prefix is
reused exactly, batched calls equal single ones, and a draft never changes a result."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import builders
import numpy as np
import pytest
import torch
from streamasr.kernels import use_backend

from streamasr.config import DecodeConfig, SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.engine.kv_cache import KVCache
from streamasr.events import Event, TranscriptFinal
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.audio_llm import AudioLlmAdapter, AudioLlmStream
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one
from streamasr.models.glm_encoder import audio_token_count
from streamasr.models.loader import load_model

CHUNKED = SessionConfig(encoder="chunked", polish_final=False, chunk_ms=500, lookahead_ms=200)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: a second intra-op thread only waits for the first, and on a
    shared CPU its spinning makes every call many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("glm-streaming")
    glm = builders.build_glmasr(root / "glmasr", std=0.5)
    qwen = builders.build_qwen3(root / "qwen3", std=2.0)
    tiny = builders.build_tiny_audio(root / "tiny-audio", glmasr_dir=glm, qwen3_dir=qwen, std=2.0)
    return {"glmasr": glm, "tinyaudio": tiny}


@pytest.fixture(scope="module", params=["glmasr", "tinyaudio"])
def model(request: pytest.FixtureRequest, dirs: dict[str, Path]) -> AudioLlmAdapter:
    loaded = load_model(str(dirs[request.param]))
    assert isinstance(loaded, AudioLlmAdapter)
    return loaded


@pytest.fixture(scope="module")
def speech_audio(sentences: list[np.ndarray]) -> np.ndarray:
    """One utterance between silences, cut to whole 10 ms hops."""
    silence = np.zeros(12800, dtype=np.float32)
    audio = np.concatenate([silence, sentences[1], silence])
    return audio[: len(audio) // 160 * 160]


def same(a: DecodeResult, b: DecodeResult) -> None:
    assert (a.tokens, a.text) == (b.tokens, b.text)
    assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=1e-4)


def stream(model: Any, audio: np.ndarray, config: SessionConfig, runner: Any = None) -> list[Event]:
    session = LocalSession(model, config, runner=runner)
    events: list[Event] = []
    for start in range(0, len(audio), 800):
        events += session.feed(audio[start : start + 800])
    return events + session.close()


def test_chunked_session_equals_decoding_its_audio_tokens_from_scratch(
    model: AudioLlmAdapter, speech_audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunked call, finals included, gives what a fresh prefill of the whole prompt
    built from the same audio tokens gives: reusing the stream's decoder prefix is exact."""
    calls: list[dict[str, Any]] = []
    stream_tokens, run = model._stream_tokens, model.run

    def audio_spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        audio = stream_tokens(*args, **kwargs)
        calls.append({"audio": audio.clone(), "reused": args[0].lm_audio})
        return audio

    def call_spy(requests: list[TranscribeRequest]) -> list[DecodeResult]:
        (r,) = requests  # a session runs its calls one at a time
        (result,) = run(requests)
        calls[-1].update(vars(r), result=result, reused=r.cache.lm_audio)
        return [result]

    monkeypatch.setattr(model, "_stream_tokens", audio_spy)
    monkeypatch.setattr(model, "run", call_spy)
    events = stream(model, speech_audio, CHUNKED)
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert len(finals) == 1 and finals[0].text  # a non-empty final: the check means something
    assert len(calls) >= 6 and max(c["reused"] for c in calls) >= 10  # a prefix was reused
    for call in calls:
        direct = model.decode(
            call["audio"],
            num_frames=call["num_frames"],
            options=call["options"],
            prefix=call["prefix"],
        )
        same(call["result"], direct)
    assert finals[0].text == calls[-1]["result"].text.strip()
    monkeypatch.undo()
    assert stream(model, speech_audio, CHUNKED) == events  # deterministic


def grow(audio: np.ndarray, step: int = 8000) -> list[tuple[np.ndarray, int, int]]:
    """(features, num_frames, commit_frames) of a stream updated every `step` samples, as the
    session's chunked mode makes them: 0.5 s of padding, 0.5 s blocks, 0.2 s look-ahead."""
    mel = LogMelBuffer(n_mels=128)
    out = []
    for start in range(0, len(audio), step):
        mel.append(audio[start : start + step])
        pad = mel.covered_frames + 50
        commit = (mel.num_frames // 2 - 10) // 25 * 25
        out.append((mel.features(pad_to_frames=pad + pad % 2), mel.covered_frames, commit))
    return out


def test_decoder_prefix_is_extended_not_recomputed(
    model: AudioLlmAdapter, speech_audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call feeds the decoder the newly committed audio tokens, then only the uncommitted
    ones and the prompt's end; every prefix position is computed once per utterance."""
    fed: list[int] = []
    forward = model.lm.forward

    def counting(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fed.append(x.shape[1])
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model.lm, "forward", counting)
    before, after = len(model.template.before), len(model.template.after)
    st = model.new_encoder_cache()
    assert isinstance(st, AudioLlmStream)
    for i, (features, frames, commit) in enumerate(grow(speech_audio)):
        reused, fed[:] = st.lm_audio, []
        run_one(model, TranscribeRequest(features, frames, cache=st, commit_frames=commit))
        n = audio_token_count(frames)
        assert st.n_audio == st.encoder.length // 4 == min(commit, features.shape[1] // 2) // 4
        assert st.lm_audio == min(st.n_audio, n)
        assert st.lm is not None and st.lm.length == before + st.lm_audio  # trimmed back
        assert sum(fed) == (before if i == 0 else 0) + (n - reused) + after
    assert st.lm_audio >= 30  # most of the utterance's audio tokens were in the prefix
    assert st.prefix_fed == before + st.lm_audio  # each prefix position was computed once


def replay(model: AudioLlmAdapter, steps: list[tuple[np.ndarray, int, int]]) -> AudioLlmStream:
    """A stream after the calls of `steps`."""
    st = model.new_encoder_cache()
    for features, frames, commit in steps:
        run_one(model, TranscribeRequest(features, frames, cache=st, commit_frames=commit))
    return st


Requests = Callable[[list[AudioLlmStream]], list[TranscribeRequest]]


def ragged(model: AudioLlmAdapter, sentences: list[np.ndarray]) -> tuple[Requests, Any]:
    """Rows that differ in every way a batch must keep apart: windows of different lengths, a
    forced prefix, a draft, a fresh stream and one mid-utterance (its decoder prefix cached).
    Returns them as a function of two streams, and a maker of such pairs of streams."""
    steps = grow(sentences[0])
    window, frames, _ = steps[-1]
    short, short_frames, short_commit = grow(sentences[1][:20000])[-1]
    free = run_one(model, TranscribeRequest(window, frames))
    assert len(free.tokens) >= 4

    def requests(streams: list[AudioLlmStream]) -> list[TranscribeRequest]:
        opts = DecodeConfig()
        return [
            TranscribeRequest(window, frames, [], opts, False, []),
            TranscribeRequest(short, short_frames, [], opts, False, list(free.tokens[:2])),
            TranscribeRequest(window, frames, [], opts, False, [], draft=list(free.tokens[:3])),
            TranscribeRequest(short, short_frames, [], opts, False, [], streams[0], short_commit),
            TranscribeRequest(window, frames, [], opts, False, [], streams[1], 1000, [5, 6, 7]),
        ]

    def streams() -> list[AudioLlmStream]:
        pair = [model.new_encoder_cache(), replay(model, steps[:-2])]
        assert pair[1].lm_audio >= 10
        return pair

    return requests, streams


def poison_new_caches(model: AudioLlmAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    new_cache = model.lm.new_cache

    def poisoned(*args: Any, **kwargs: Any) -> KVCache:
        # Fresh storage may hold anything, NaN included: no row may read what it did not write.
        cache = new_cache(*args, **kwargs)
        cache.k.fill_(float("nan"))
        cache.v.fill_(float("nan"))
        return cache

    monkeypatch.setattr(model.lm, "new_cache", poisoned)


def same_streams(a: list[AudioLlmStream], b: list[AudioLlmStream]) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.encoder.length, x.lm_audio, x.prefix_fed) == (
            y.encoder.length,
            y.lm_audio,
            y.prefix_fed,
        )
        n = x.encoder.length
        torch.testing.assert_close(x.encoder.out[:, :n], y.encoder.out[:, :n])
        torch.testing.assert_close(x.encoder.k[..., :n, :], y.encoder.k[..., :n, :])
        torch.testing.assert_close(x.audio[: x.n_audio], y.audio[: y.n_audio])
        assert x.lm is not None and y.lm is not None and x.lm.length == y.lm.length
        torch.testing.assert_close(x.lm.k[..., : x.lm.length, :], y.lm.k[..., : y.lm.length, :])


def test_a_batched_run_equals_one_run_each(
    model: AudioLlmAdapter, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three windows and two streams' tails: one encoder pass for all five; each result, and
    each stream's encoder and decoder caches, as with one call each."""
    requests, streams = ragged(model, sentences)
    a, b = streams(), streams()
    poison_new_caches(model, monkeypatch)
    passes: list[int] = []
    encode_tails = model.encoder.encode_tails

    def spy(tails: list[Any], **kwargs: Any) -> list[torch.Tensor]:
        passes.append(len(tails))
        return encode_tails(tails, **kwargs)

    monkeypatch.setattr(model.encoder, "encode_tails", spy)
    batched = model.run(requests(a))
    assert passes == [5]
    for request, result in zip(requests(b), batched, strict=True):
        same(result, model.run([request])[0])
    same_streams(a, b)


def test_rows_join_and_leave_a_continuous_batch(
    model: AudioLlmAdapter, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, five calls joining one step apart as slots free up, the short ones first
    (so the batch cache grows under rows already decoding): each equals its call alone."""
    requests, streams = ragged(model, sentences)
    a, b = streams(), streams()
    poison_new_caches(model, monkeypatch)
    batch = model.new_step_batch(2)
    waiting = [1, 3, 0, 2, 4]
    queued = requests(a)
    results: dict[int, DecodeResult] = {}
    most = 0
    while waiting or batch.size:
        if waiting and batch.size < batch.capacity:
            i = waiting.pop(0)
            done = batch.add(queued[i], i)
            if done is not None:
                results[i] = done
        most = max(most, batch.size)
        for i, result in batch.step():
            results[i] = result
    assert most == 2 and sorted(results) == [0, 1, 2, 3, 4]
    for i, request in enumerate(requests(b)):
        same(results[i], model.run([request])[0])
    same_streams(a, b)


@pytest.fixture(scope="module")
def glm(dirs: dict[str, Path]) -> AudioLlmAdapter:
    loaded = load_model(str(dirs["glmasr"]))
    assert isinstance(loaded, AudioLlmAdapter)
    return loaded


def test_any_draft_gives_the_undrafted_result_in_fewer_steps(
    glm: AudioLlmAdapter, sentences: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    features, frames, _ = grow(sentences[0])[-1]
    steps: list[int] = []
    step = glm.lm.step
    monkeypatch.setattr(glm.lm, "step", lambda *a, **k: steps.append(1) or step(*a, **k))

    def run(prefix: list[int], draft: list[int] | None, **options: Any) -> DecodeResult:
        steps.clear()
        return run_one(
            glm,
            TranscribeRequest(
                features,
                num_frames=frames,
                options=DecodeConfig(**options),
                prefix=prefix,
                draft=draft,
            ),
        )

    plain = run([], None)
    plain_steps, truth = len(steps), list(plain.tokens)
    assert len(truth) >= 6 and plain_steps >= len(truth) - 1  # the last one may end the budget
    garbage = glm.encode_text(" purple elephants dance on the moon")
    drafts = {
        "exact": truth,
        "first half": truth[: len(truth) // 2],
        "right then wrong": truth[:3] + garbage,
        "wrong from the start": garbage,
        "too long": truth + garbage,
        "not a token": truth[:2] + [10**9],
    }
    for name, draft in drafts.items():
        result = run([], draft)
        assert result.tokens == plain.tokens and len(steps) <= plain_steps, name
        same(result, plain)
    run([], truth)
    assert steps == []  # every token, the end token too, was read off the prefill
    forced = run(truth[:2], None)
    same(run(truth[:2], truth[2:]), forced)
    tight = run([], None, max_new_tokens=4)
    assert len(tight.tokens) == 4
    same(run([], truth, max_new_tokens=4), tight)


def test_concurrent_chunked_sessions_through_the_scheduler_keep_their_transcripts(
    glm: AudioLlmAdapter, sentences: list[np.ndarray]
) -> None:
    """Sessions whose calls run as shared batches (`run`), each row with its own
    stream's cached prefix, give the events each gives alone."""
    import threading

    from streamasr.engine.scheduler import Scheduler, SchedulerConfig

    silence = np.zeros(6400, dtype=np.float32)
    audios = [np.concatenate([silence, s, silence]) for s in (sentences[0], sentences[1][:30000])]
    expected = [stream(glm, a, CHUNKED) for a in audios]
    scheduler = Scheduler(glm, SchedulerConfig(max_batch=4, budget_ms=20))
    results: dict[int, list[Event]] = {}

    def run(i: int) -> None:
        results[i] = stream(glm, audios[i], CHUNKED, scheduler)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(audios))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.close()
    assert [results[i] for i in range(len(audios))] == expected
    assert all(any(isinstance(e, TranscriptFinal) and e.text for e in r) for r in expected)
    assert scheduler.stats.largest_batch >= 2  # calls of both sessions ran together


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ragged_steps_equal_each_rows_own_decode(glm: AudioLlmAdapter, backend: str) -> None:
    """`CausalLm.step` over rows of different lengths (grouped KV heads, one batch cache)
    gives each row's logits of a one-row decode, on both kernel backends."""
    lm = glm.lm
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 3, 12]
    prompts = [torch.randint(0, 200, (n,), generator=gen).tolist() for n in lengths]
    tokens = torch.randint(0, 200, (3, len(lengths)), generator=gen)  # (steps, B)
    with use_backend(backend):
        batch = lm.new_cache(20, batch=len(lengths))
        batch.k.zero_()
        batch.v.zero_()
        expected = []
        for b, ids in enumerate(prompts):
            lm.forward(lm.embed(ids)[None], batch.row(b))
            own = lm.new_cache(20)
            lm.forward(lm.embed(ids)[None], own)
            expected.append(
                [lm.forward(lm.embed([int(t)])[None], own)[0, -1] for t in tokens[:, b]]
            )
        at = torch.tensor(lengths)
        for i, step_tokens in enumerate(tokens):
            logits = lm.step(lm.embed(step_tokens.tolist())[:, None], batch, at + i)  # (B, V)
            for b in range(len(lengths)):
                torch.testing.assert_close(logits[b], expected[b][i], rtol=1e-4, atol=1e-4)


def test_cli_streams_with_the_chunked_encoder(
    glm: AudioLlmAdapter,
    dirs: dict[str, Path],
    sentences: list[np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streamasr.cli import main
    from streamasr.formats import RENDERERS

    path, audio = builders.speech_file(tmp_path, sentences[0])
    finals = [
        e
        for e in stream(glm, audio, SessionConfig(encoder="chunked"))
        if isinstance(e, TranscriptFinal)
    ]
    assert finals and finals[0].text
    threads = str(torch.get_num_threads())  # the CLI sets torch's threads: keep this process's
    args = ["transcribe", "--encoder", "chunked", "--model", str(dirs["glmasr"]), str(path)]
    assert main([*args, "--format", "text", "--threads", threads]) == 0
    assert capsys.readouterr().out == RENDERERS["text"](finals)
