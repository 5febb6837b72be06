"""VadSegmenter on espeak-ng speech: chunking invariance, quiet speech, silence, max-length cuts."""

from __future__ import annotations

import numpy as np
import pytest
import speech

from streamasr.config import VadConfig
from streamasr.vad.segmenter import UtteranceEnd, UtteranceStart, VadEvent, VadSegmenter

SR = 16000


def run(x: np.ndarray, chunk: int, config: VadConfig | None = None) -> list[VadEvent]:
    vad = VadSegmenter(config or VadConfig())
    events: list[VadEvent] = []
    for part in speech.chunks(x, chunk):
        events += vad.feed(part)
    assert vad.position == len(x)
    return events + vad.flush()


def spans(events: list[VadEvent]) -> list[tuple[int, int]]:
    """Utterances as (start, end), checking that events alternate start/end."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    for ev in events:
        if isinstance(ev, UtteranceStart):
            assert start is None
            start = ev.start_sample
        else:
            assert start is not None and ev.end_sample > start
            out.append((start, ev.end_sample))
            start = None
    assert start is None
    return out


@pytest.fixture(scope="module")
def dialogue(sentences: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """1 s silence, sentence, 1.5 s silence, sentence, 1 s silence; and the speech regions."""
    a, b = sentences
    parts = [speech.silence(1.0), a, speech.silence(1.5), b, speech.silence(1.0)]
    x = np.concatenate(parts)
    s0 = SR
    s1 = s0 + len(a) + int(1.5 * SR)
    return x, [(s0, s0 + len(a)), (s1, s1 + len(b))]


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_ms", [10, 30])
def test_chunking_invariance(
    dialogue: tuple[np.ndarray, list[tuple[int, int]]], mode: int, frame_ms: int
) -> None:
    x, _ = dialogue
    x = speech.to_peak_dbfs(x, -12)
    config = VadConfig(aggressiveness=mode, frame_ms=frame_ms)
    reference = run(x, len(x), config)
    assert reference
    for chunk_ms in (10, 37, 1000):
        assert run(x, chunk_ms * SR // 1000, config) == reference


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_quiet_speech_is_detected(
    dialogue: tuple[np.ndarray, list[tuple[int, int]]], mode: int
) -> None:
    x, regions = dialogue
    x = speech.to_peak_dbfs(x, -30)
    utterances = spans(run(x, 320, VadConfig(aggressiveness=mode)))
    for r0, r1 in regions:  # every sentence is mostly covered by utterances
        covered = sum(max(0, min(u1, r1) - max(u0, r0)) for u0, u1 in utterances)
        assert covered > 0.8 * (r1 - r0), (mode, utterances, regions)
    slack = int(0.35 * SR)  # pre-roll (300 ms) and the end pad
    for u0, u1 in utterances:  # nothing far outside the speech
        assert any(r0 - slack <= u0 and u1 <= r1 + slack for r0, r1 in regions), (u0, u1)


def test_default_mode_finds_the_two_sentences(
    dialogue: tuple[np.ndarray, list[tuple[int, int]]],
) -> None:
    x, regions = dialogue
    for dbfs in (0, -30):
        utterances = spans(run(speech.to_peak_dbfs(x, dbfs), 800))
        assert len(utterances) == 2
        for (u0, u1), (r0, r1) in zip(utterances, regions, strict=True):
            assert r0 - int(0.4 * SR) <= u0 <= r0  # pre-roll before the onset
            assert r1 - int(0.25 * SR) <= u1 <= r1 + int(0.1 * SR)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_digital_silence_gives_no_events(mode: int) -> None:
    vad = VadSegmenter(VadConfig(aggressiveness=mode))
    for _ in range(20):
        assert vad.feed(speech.silence(0.5)) == []
    assert vad.flush() == []
    assert not vad.in_speech and vad.position == 10 * SR


def test_preroll_is_clamped_at_zero_and_previous_end(sentences: list[np.ndarray]) -> None:
    a, _ = sentences
    config = VadConfig(preroll_ms=2000, stop_ms=300)
    x = np.concatenate([speech.silence(0.1), a, speech.silence(0.6), a])
    utterances = spans(run(x, 480, config))
    assert utterances[0][0] == 0
    for (_, end), (start, _) in zip(utterances[:-1], utterances[1:], strict=True):
        assert start >= end


def test_flush_closes_and_feeding_goes_on(sentences: list[np.ndarray]) -> None:
    a, _ = sentences
    vad = VadSegmenter()
    events = vad.feed(np.concatenate([speech.silence(0.5), a[: SR // 2]]))
    assert [type(e) for e in events] == [UtteranceStart] and vad.in_speech
    (end,) = vad.flush()
    assert isinstance(end, UtteranceEnd) and not end.cut
    assert events[0].start_sample < end.end_sample <= vad.position
    assert not vad.in_speech and vad.flush() == []
    more = vad.feed(np.concatenate([a[SR // 2 :], speech.silence(1.0)]))
    utterances = spans(more)
    assert utterances and utterances[0][0] >= end.end_sample


def test_max_length_cuts_at_the_quietest_point(sentences: list[np.ndarray]) -> None:
    a, b = sentences
    gap = speech.silence(0.2)  # shorter than stop_ms: one long utterance
    x = np.concatenate([speech.silence(0.5)] + [a, gap, b, gap] * 3 + [speech.silence(1.0)])
    config = VadConfig(max_utterance_ms=4000, min_cut_ms=1500)
    events = run(x, 800, config)
    assert events == run(x, 160, config) == run(x, len(x), config)
    cuts = [e for e in events if isinstance(e, UtteranceEnd) and e.cut]
    assert len(cuts) >= 3
    for i, ev in enumerate(events):
        if isinstance(ev, UtteranceEnd) and ev.cut:  # the next utterance starts right there
            assert events[i + 1] == UtteranceStart(ev.end_sample)
            frame = x[ev.end_sample - 240 : ev.end_sample + 240]
            assert np.abs(frame).max() < 1e-3 * np.abs(x).max()  # a quiet frame (a gap)
    utterances = spans(events)
    for start, end in utterances:
        assert end - start <= 4000 * SR // 1000
    for (_, end), (start, _) in zip(utterances[:-1], utterances[1:], strict=True):
        assert start >= end
    cut_starts = [start for start, _ in utterances[1:] if start in {c.end_sample for c in cuts}]
    previous = [s for s, _ in utterances]
    for c in cut_starts:
        earlier = max(s for s in previous if s < c)
        assert c - earlier >= 1500 * SR // 1000


def test_a_longer_stop_keeps_a_pause_inside_the_utterance(sentences: list[np.ndarray]) -> None:
    audio = np.concatenate([sentences[0], speech.silence(0.6), sentences[1], speech.silence(1.5)])

    def ends(stop_ms: int | None) -> int:
        seg = VadSegmenter(VadConfig())
        if stop_ms is not None:
            seg.set_stop_ms(stop_ms)
        events = [e for i in range(0, len(audio), 480) for e in seg.feed(audio[i : i + 480])]
        return sum(isinstance(e, UtteranceEnd) for e in events)

    assert ends(None) == 2 and ends(900) == 1
