"""Batched decoding across streams on real tiny.en: equal to one-at-a-time, shared, isolated."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech

from streamasr.config import DecodeConfig, SessionConfig
from streamasr.engine.driver import LocalSession
from streamasr.engine.scheduler import Scheduler, SchedulerConfig
from streamasr.events import Event, TranscriptFinal, TranscriptPartial
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import DecodeResult, TranscribeRequest, run_one
from streamasr.models.whisper import WhisperModel

TEXTS = (
    ("en-us", "Turn left at the second corner and walk past the bakery."),
    ("en-gb", "The museum is closed on Mondays."),
    ("en-us", "I will call you back in ten minutes."),
)


@pytest.fixture(scope="module")
def model(tiny_en_dir: Path) -> WhisperModel:
    return WhisperModel.from_dir(tiny_en_dir, name="tiny.en")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    d = tmp_path_factory.mktemp("sched")
    return [speech.espeak(text, d, voice=voice) for voice, text in TEXTS]


def features(audio: np.ndarray, pad_frames: int = 100) -> tuple[np.ndarray, int]:
    buf = LogMelBuffer(n_mels=80)
    buf.append(audio)
    return buf.features(pad_to_frames=buf.num_frames + pad_frames), buf.num_frames


def requests(model: WhisperModel, clips: list[np.ndarray]) -> list[TranscribeRequest]:
    """Rows that differ in every way a batch must keep apart."""
    out = []
    for i, clip in enumerate(clips):
        feats, n = features(clip[: len(clip) * (i + 2) // 4])  # half, 3/4, all
        out.append(
            TranscribeRequest(
                feats,
                n,
                prompt=model.encode_text(" Hello there.") if i == 1 else [],
                options=DecodeConfig(),
                word_timestamps=i != 2,
                prefix=model.encode_text(" Turn left") if i == 0 else [],
            )
        )
    feats, n = features(clips[1])
    cache = model.new_encoder_cache()
    model.encode_tail(cache, _mel(feats[:, :100]), commit_frames=25)  # a stream mid-utterance
    out.append(
        TranscribeRequest(feats, n, [], DecodeConfig(), True, [], cache=cache, commit_frames=50)
    )
    return out


def _mel(feats: np.ndarray) -> object:
    import torch

    return torch.from_numpy(feats).unsqueeze(0)


def single(model: WhisperModel, r: TranscribeRequest) -> object:
    """`r` decoded alone, on a copy of its stream's cache."""
    import copy

    return run_one(model, replace(r, cache=copy.deepcopy(r.cache)))


def test_a_batch_decodes_each_row_as_if_alone(model: WhisperModel, clips: list[np.ndarray]) -> None:
    reqs = requests(model, clips)
    alone = [single(model, r) for r in reqs]
    together = model.run(reqs)
    for a, b in zip(alone, together, strict=True):
        assert b.tokens == a.tokens  # type: ignore[attr-defined]
        assert b.text.strip()
        assert b.no_speech_prob == pytest.approx(a.no_speech_prob, abs=1e-4)  # type: ignore[attr-defined]
        assert [w.word for w in b.words] == [w.word for w in a.words]  # type: ignore[attr-defined]
        for wa, wb in zip(a.words, b.words, strict=True):  # type: ignore[attr-defined]
            assert abs(wa.start_sample - wb.start_sample) <= 320
    assert reqs[3].cache.length == 50  # the chunked row committed its frames


def stream(
    model: object, audio: np.ndarray, config: SessionConfig, runner: Any = None
) -> list[Event]:
    session = LocalSession(model, config, runner=runner)  # type: ignore[arg-type]
    events: list[Event] = []
    for start in range(0, len(audio), 800):
        events += session.feed(audio[start : start + 800])
    return events + session.close()


@pytest.mark.parametrize("encoder", ["window", "chunked"])
def test_concurrent_sessions_share_batches_and_keep_their_transcripts(
    model: WhisperModel, clips: list[np.ndarray], encoder: str
) -> None:
    config = SessionConfig(encoder=encoder, final_window="utterance")
    audios = [np.concatenate([speech.silence(0.3), c, speech.silence(1.0)]) for c in clips]
    expected = [stream(model, a, config) for a in audios]
    scheduler = Scheduler(model, SchedulerConfig(max_batch=8, budget_ms=20))
    results: dict[int, list[Event]] = {}

    def run(i: int) -> None:
        results[i] = stream(model, audios[i], config, scheduler)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(audios))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    scheduler.close()
    for i, events in enumerate(expected):
        want = [e.text for e in events if isinstance(e, TranscriptFinal | TranscriptPartial)]
        got = [e.text for e in results[i] if isinstance(e, TranscriptFinal | TranscriptPartial)]
        assert got == want
        assert any(isinstance(e, TranscriptFinal) and e.text for e in results[i])
    assert scheduler.stats.largest_batch >= 2  # calls of different sessions ran together
    assert scheduler.stats.rows > scheduler.stats.passes  # on average more than one a step


def test_a_failing_call_fails_alone(model: WhisperModel, clips: list[np.ndarray]) -> None:
    good = requests(model, clips)[1]
    bad = TranscribeRequest(np.zeros((80, 3001), np.float32), 100, [], DecodeConfig(), False, [])
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=200))
    futures = [scheduler.submit(bad), scheduler.submit(good)]
    assert futures[1].result().text.strip()
    with pytest.raises(ValueError, match="mel frames"):
        futures[0].result()
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(good)


def test_scheduler_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        SchedulerConfig(max_batch=0)
    with pytest.raises(ValueError, match="budget_ms"):
        SchedulerConfig(budget_ms=-1)


def test_queued_calls_mark_the_scheduler_congested() -> None:
    import sys
    import time
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).parent))
    from fake_model import FakeModel

    class Slow(FakeModel):
        def decode(self, request: TranscribeRequest) -> DecodeResult:
            time.sleep(0.05)
            return super().decode(request)

    feats = np.zeros((80, 200), np.float32)
    request = TranscribeRequest(feats, 200, [], DecodeConfig(), False, [])
    scheduler = Scheduler(Slow(), SchedulerConfig(max_batch=1, budget_ms=0))  # type: ignore[arg-type]
    assert not scheduler.congested
    for f in [scheduler.submit(request) for _ in range(8)]:  # 8 calls, one at a time
        f.result()
    assert scheduler.congested  # the later ones waited for the earlier ones
    for _ in range(40):  # one call at a time: no waiting, and the average decays
        scheduler.submit(request).result()
    assert not scheduler.congested
    scheduler.close()


def test_rows_join_and_leave_between_steps(model: WhisperModel, clips: list[np.ndarray]) -> None:
    reqs = requests(model, clips)
    alone = [single(model, r) for r in reqs]
    batch = model.new_step_batch(3)
    results: dict[int, object] = {}

    def step() -> None:
        for tag, result in batch.step():
            assert tag not in results
            results[tag] = result

    assert batch.add(reqs[0], 0) is None
    for _ in range(3):  # row 0 is three tokens in when row 1 joins
        step()
    assert batch.add(reqs[1], 1) is None
    assert batch.add(reqs[2], 2) is None
    with pytest.raises(RuntimeError, match="full"):
        batch.add(reqs[3], 3)
    while len(results) < 1:  # the first to end leaves, and a later row moves into its slot
        step()
    assert batch.size == 2
    assert batch.add(reqs[3], 3) is None  # the freed slot is taken by a new row
    while batch.size:
        step()
    assert sorted(results) == [0, 1, 2, 3]
    for i, a in enumerate(alone):
        b = results[i]
        assert b.tokens == a.tokens  # type: ignore[attr-defined]
        assert b.avg_logprob == pytest.approx(a.avg_logprob, abs=1e-4)  # type: ignore[attr-defined]
        assert [w.word for w in b.words] == [w.word for w in a.words]  # type: ignore[attr-defined]
        for wa, wb in zip(a.words, b.words, strict=True):  # type: ignore[attr-defined]
            assert abs(wa.start_sample - wb.start_sample) <= 320


def test_a_short_call_does_not_wait_for_a_long_decode(
    model: WhisperModel, clips: list[np.ndarray]
) -> None:
    long_feats, long_n = features(np.concatenate(clips))
    long = TranscribeRequest(long_feats, long_n, [], DecodeConfig(), False, [])
    short_feats, short_n = features(clips[1][: len(clips[1]) // 3])
    short = TranscribeRequest(short_feats, short_n, [], DecodeConfig(), False, [])
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))
    order: list[str] = []
    f_long = scheduler.submit(long)
    f_long.add_done_callback(lambda _: order.append("long"))
    f_short = scheduler.submit(short)
    f_short.add_done_callback(lambda _: order.append("short"))
    assert len(f_long.result().tokens) > 3 * len(f_short.result().tokens)
    scheduler.close()
    assert order == ["short", "long"]  # it joined the running batch and left when it ended
    assert scheduler.stats.calls == 2


def test_a_failed_step_fails_its_rows_and_the_thread_goes_on(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamasr.models.whisper_decode import WhisperStepBatch

    good = requests(model, clips)[1]
    real_step = WhisperStepBatch.step
    failures = iter([True])

    def flaky_step(self: WhisperStepBatch) -> object:
        if next(failures, False):
            raise MemoryError("out of memory in a step")
        return real_step(self)

    monkeypatch.setattr(WhisperStepBatch, "step", flaky_step)
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))
    with pytest.raises(MemoryError):
        scheduler.submit(good).result()
    assert scheduler.submit(good).result().text.strip()  # the next call decodes normally
    scheduler.close()


def test_calls_that_join_together_share_one_encoder_pass(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three windows and a chunked stream's tail join in one `add_many`: one encoder pass over
    all four, each decoding as if alone; a call that cannot be encoded fails alone."""
    reqs = requests(model, clips)
    alone = [single(model, r) for r in reqs]
    passes: list[int] = []
    real = model.encode_tails

    def spy(tails: list) -> list:  # type: ignore[type-arg]
        passes.append(len(tails))
        return real(tails)

    monkeypatch.setattr(model, "encode_tails", spy)
    bad = TranscribeRequest(np.zeros((80, 3001), np.float32), 100, [], DecodeConfig(), False, [])
    batch = model.new_step_batch(5)
    added = batch.add_many([(r, i) for i, r in enumerate(reqs)])
    assert passes == [4] and added == [None] * 4
    assert reqs[3].cache.length == 50  # the tail committed its frames
    results: dict[int, object] = {}
    while batch.size:
        results.update(batch.step())
    for i, a in enumerate(alone):
        b = results[i]
        assert b.tokens == a.tokens  # type: ignore[attr-defined]
        assert b.avg_logprob == pytest.approx(a.avg_logprob, abs=1e-4)  # type: ignore[attr-defined]

    good = requests(model, clips)[:2]
    passes.clear()
    added = batch.add_many([(bad, "bad"), (good[0], 0), (good[1], 1)])
    assert isinstance(added[0], ValueError) and "mel frames" in str(added[0])
    assert added[1:] == [None, None] and batch.size == 2
    assert passes == [3, 1, 1, 1]  # the shared pass refused the bad window; then each alone


class _GatedEncoder:
    """Wraps `model.encode_tails`: a pass over a mel of `gated_frames` frames blocks until
    `release` is set; `passes` records every pass's mel lengths."""

    def __init__(self, model: WhisperModel, gated_frames: int) -> None:
        self.real = model.encode_tails
        self.gated_frames = gated_frames
        self.entered, self.release = threading.Event(), threading.Event()
        self.passes: list[list[int]] = []

    def __call__(self, tails: list) -> list:  # type: ignore[type-arg]
        frames = [int(t.mel.shape[-1]) for t in tails]
        self.passes.append(frames)
        if self.gated_frames in frames:
            self.entered.set()
            assert self.release.wait(60)
        return self.real(tails)


def test_rows_keep_stepping_while_another_call_is_encoded(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's encoder pass (a final's 30 s window) runs beside the decoding steps of the rows
    already in the batch: the long decode finishes while the other call is still encoding."""
    long_feats, long_n = features(np.concatenate(clips))
    long = TranscribeRequest(long_feats, long_n, [], DecodeConfig(), True, [])
    window = np.zeros((80, 3000), np.float32)
    window[:, :300] = features(clips[2])[0][:, :300]
    other = TranscribeRequest(window, 300, [], DecodeConfig(), False, [])
    alone = [single(model, r) for r in (long, other)]
    gate = _GatedEncoder(model, gated_frames=3000)
    monkeypatch.setattr(model, "encode_tails", gate)
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))
    f_long = scheduler.submit(long)
    while not gate.passes:  # the long call is encoded and decoding
        time.sleep(0.001)
    f_other = scheduler.submit(other)
    assert gate.entered.wait(30)
    assert f_long.result(timeout=60).tokens == alone[0].tokens  # type: ignore[attr-defined]
    assert not f_other.done()
    gate.release.set()
    assert f_other.result(timeout=60).tokens == alone[1].tokens  # type: ignore[attr-defined]
    scheduler.close()
    assert scheduler.threads == 2  # one encoding, one stepping


def test_a_call_cancelled_while_queued_never_runs(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_feats, first_n = features(clips[0])
    first = TranscribeRequest(first_feats, first_n, [], DecodeConfig(), False, [])
    later_feats, later_n = features(clips[1])
    later = TranscribeRequest(later_feats, later_n, [], DecodeConfig(), False, [])
    frames = first_feats.shape[1] + first_feats.shape[1] % 2  # the model pads the mel to even
    gate = _GatedEncoder(model, gated_frames=frames)
    monkeypatch.setattr(model, "encode_tails", gate)
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))
    f_first = scheduler.submit(first)
    assert gate.entered.wait(30)  # the encoder is busy with the first call
    f_later = scheduler.submit(later)
    assert f_later.cancel()
    gate.release.set()
    assert f_first.result(timeout=60).text.strip()
    again = scheduler.submit(later)  # the encoder took only a cancelled call: it goes on
    assert again.result(timeout=60).text.strip()
    scheduler.close()
    assert gate.passes == [[frames], [frames_of(later_feats)]]  # the cancelled one: never
    assert scheduler.stats.cancelled == 1 and scheduler.stats.calls == 2


def test_finals_are_encoded_before_the_partials_queued_before_them(
    model: WhisperModel, clips: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the encoder is busy, two partials and then a final are queued: the final is
    encoded next, in a pass of its own, then the partials together; each decodes as if alone."""
    busy_feats, busy_n = features(clips[0])
    busy = TranscribeRequest(busy_feats, busy_n, [], DecodeConfig(), False, [])
    gate = _GatedEncoder(model, gated_frames=frames_of(busy_feats))
    partials = [
        TranscribeRequest(*features(clips[i][: len(clips[i]) // 2]), [], DecodeConfig(), False, [])
        for i in (1, 2)
    ]
    final_feats, final_n = features(clips[2])
    final = TranscribeRequest(final_feats, final_n, [], DecodeConfig(), True, [])
    alone = [single(model, r) for r in (*partials, final)]
    monkeypatch.setattr(model, "encode_tails", gate)
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))
    first = scheduler.submit(busy)
    assert gate.entered.wait(30)
    queued = [scheduler.submit(r) for r in partials] + [scheduler.submit(final, final=True)]
    assert scheduler.queued == 3
    gate.release.set()
    results = [f.result(timeout=60) for f in queued]
    assert first.result(timeout=60).text.strip()
    scheduler.close()
    assert gate.passes[1:] == [
        [frames_of(final_feats)],
        [frames_of(r.features) for r in partials],
    ]
    for got, want in zip(results, alone, strict=True):
        assert got.tokens == want.tokens  # type: ignore[attr-defined]


def frames_of(feats: np.ndarray) -> int:
    return int(feats.shape[1] + feats.shape[1] % 2)  # the model pads the mel to even


def test_whole_batches_go_on_after_taking_only_cancelled_calls() -> None:
    """A model without a continuous batch: a pass that finds only cancelled calls queued
    leaves the inference thread serving the next ones."""
    from fake_model import FakeModel

    class Gated(FakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.release = threading.Event(), threading.Event()

        def decode(self, request: TranscribeRequest) -> DecodeResult:
            self.entered.set()
            assert self.release.wait(30)
            return super().decode(request)

    model = Gated()
    request = TranscribeRequest(np.zeros((80, 400), np.float32), 400, [], DecodeConfig(), False, [])
    scheduler = Scheduler(model, SchedulerConfig(max_batch=1, budget_ms=0))  # type: ignore[arg-type]
    first = scheduler.submit(request)
    assert model.entered.wait(30)
    dropped = [scheduler.submit(request) for _ in range(3)]
    assert all(f.cancel() for f in dropped)
    model.release.set()
    assert first.result(timeout=30).text == " w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    assert scheduler.submit(request).result(timeout=30).text == first.result().text
    scheduler.close()
    assert scheduler.stats.cancelled == 3 and scheduler.stats.calls == 2


def test_whole_batches_take_finals_first_and_never_mix_them_with_partials() -> None:
    """A model without a continuous batch: queued behind a running call, two partials and two
    finals run as two batches, the finals' first."""
    from fake_model import FakeModel

    class Gated(FakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.release = threading.Event(), threading.Event()
            self.batches: list[list[int]] = []

        def run(self, requests: list[TranscribeRequest]) -> list[DecodeResult]:
            self.batches.append([r.num_frames for r in requests])
            self.entered.set()
            assert self.release.wait(30)
            return super().run(requests)

    def request(frames: int) -> TranscribeRequest:
        return TranscribeRequest(np.zeros((80, 400), np.float32), frames, [], DecodeConfig())

    model = Gated()
    scheduler = Scheduler(model, SchedulerConfig(max_batch=4, budget_ms=0))  # type: ignore[arg-type]
    first = scheduler.submit(request(400))
    assert model.entered.wait(30)
    futures = [scheduler.submit(request(n), final=n > 250) for n in (100, 300, 200, 350)]
    model.release.set()
    assert first.result(timeout=30).text
    assert all(f.result(timeout=30).text for f in futures)
    scheduler.close()
    assert model.batches == [[400], [300, 350], [100, 200]]
