"""A sans-I/O streaming session: samples in; speech and transcript events, and model calls, out.

The session never calls the model. Each operation (`feed`, `flush`, `close`) returns a `Step`
with the events it produced and the model calls it needs (`engine/calls.py`); while it waits
for the result of one of them (`awaiting`), the driver runs the calls and hands that result
back with `on_result`, which returns the next step. `LocalSession` (`engine/driver.py`) drives a
session in place; the daemon drives it on its event loop, the calls batched by the scheduler.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from streamasr import SAMPLE_RATE
from streamasr.audio.resample import StreamResampler
from streamasr.audio.ring import SampleRing
from streamasr.config import SessionConfig
from streamasr.engine.calls import ModelCall, Step
from streamasr.engine.offline import final_audio
from streamasr.engine.stabilizer import Stabilizer
from streamasr.events import (
    Event,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
    Word,
)
from streamasr.features.logmel import LogMelBuffer
from streamasr.models.base import (
    AsrModel,
    DecodeResult,
    TranscribeRequest,
    looks_like_hallucination,
)
from streamasr.models.timing import split_words
from streamasr.scripts import starts_word
from streamasr.vad.segmenter import UtteranceEnd, UtteranceStart, VadSegmenter

RING_SECONDS = 40  # > longest utterance (30 s) + pre-roll + the VAD's decision lag

T = TypeVar("T")
# Session code that may wait for model calls: it yields the id of each call whose result it
# waits for, is sent that result, and returns a T. An operation returns its events.
Waits = Generator[int, DecodeResult, T]
Op = Waits[list[Event]]
_streams = itertools.count()  # stream ids, unique in the process: the runners' cache keys


@dataclass(frozen=True)
class _Decoded:
    """A final decode, and the sample its audio starts at (its word timings count from there)."""

    result: DecodeResult
    origin: int


@dataclass(frozen=True)
class _Joinable:
    """The latest final with text, which the next utterance's final may continue (`_join`)."""

    lead_start: int  # where that final's own audio began (its lead)
    end: int  # where its speech ended
    tokens: tuple[int, ...]  # its text: the forced prefix of a final that continues it
    language: str | None  # the language it was decoded in
    prompt: tuple[int, ...]  # the previous text it was decoded after


@dataclass
class _Speculation:
    """A final decoded early, at `end`: done already, or a background call still to settle
    (dropped if the speaker goes on first)."""

    end: int
    decoded: _Decoded | None = None
    call: int | None = None  # the background call's id
    mel: LogMelBuffer | None = None  # what the call decodes, on the `window` encoder
    window: str = "full"


@dataclass
class _Utterance:
    segment_id: int
    start_sample: int
    mel_end: int  # absolute sample up to which audio is in the mel buffer
    stabilizer: Stabilizer
    decoded_at: int = -1  # mel_end at the last partial decode
    partial_text: str = ""  # text of the last partial sent
    shown: str = ""  # the last partial text that had words: a final never erases it
    lead_start: int = 0  # a final decodes the audio from here (`final_lead_ms` before the start)
    hypothesis: tuple[int, ...] = ()  # tokens of the last partial decode: the next one's draft
    speculative: _Speculation | None = None  # the early final
    joins: _Joinable | None = None  # the final this utterance's final continues, if it fits
    language: str | None = None  # of its latest decode, when the model tells
    language_probability: float | None = None


class Session:
    """One audio stream. Feed it mono samples at `sample_rate`; each operation returns a `Step`.

    The model is shared and stateless; the session uses it for its tokenizer and geometry and
    asks for decodes as `ModelCall`s. Its encoder caches are the runner's, keyed by `stream`.
    """

    def __init__(
        self, model: AsrModel, config: SessionConfig | None = None, sample_rate: int = SAMPLE_RATE
    ) -> None:
        self.model = model
        self.config = config or SessionConfig()
        self.stream = next(_streams)
        self._resampler = StreamResampler(sample_rate)
        self._vad = VadSegmenter(self.config.vad)
        self._ring = SampleRing(max_samples=RING_SECONDS * SAMPLE_RATE)
        self._mel = LogMelBuffer(n_mels=model.info.features.n_mels)
        self._utt: _Utterance | None = None
        self._next_segment = 0
        self._cut_at = 0  # where the VAD last cut speech at its length limit: no lead before it
        self._context: list[int] = []  # tokens of previous finals, the decoder prompt
        self._last: _Joinable | None = None  # the latest final, if it had text
        # the prompt and keywords, and how many of their tokens did not fit
        self._bias, self.bias_cut = bias_tokens(model, self.config)
        self._steered: tuple[str, ...] = ()  # keywords added by `steer`
        self._closed = False
        self.partials_paused = False  # set by a host that is behind real time: finals only
        self.step_scale = 1  # set by a host that is falling behind: partials this much rarer
        self._op: Op | None = None  # the operation waiting for a call's result
        self.awaiting: int | None = None  # the id of that call: `on_result` must come next
        self._step = Step()  # what the running operation produced so far
        self._next_call = 0
        info = model.info
        info.check_language(self.config.language, self.config.task)
        self._language: str | None = None  # the language of `_context` (the previous finals)
        # the language every decode is asked for; None: detected ("auto")
        self._pinned = None if self.config.language == "auto" else self.config.language
        self.encoder = info.encoders[0] if self.config.encoder == "auto" else self.config.encoder
        if self.encoder not in info.encoders:
            raise ValueError(f"model {info.name} has no {self.encoder} encoder; use the window one")
        self._chunked = self.encoder == "chunked"
        self._stops = dict(self.config.vad.stop_ms_by_language)
        self._stop_ms = self.config.vad.stop_ms
        self._endpoint(self._pinned)

    @property
    def position(self) -> int:
        """Samples received so far: the stream clock (16 kHz)."""
        return self._ring.end_sample

    # ---------------------------------------------------------------- public
    def feed(self, samples: np.ndarray) -> Step:
        if self._closed:
            raise RuntimeError("session is closed")
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be 1-D mono, got shape {x.shape}")
        return self._begin(self._feed(self._resampler.process(x)))

    def flush(self) -> Step:
        """Finalise pending speech now; the session keeps going."""
        return self._begin(self._flush())

    def close(self) -> Step:
        """The resampler's tail, then finalise for good."""
        return self._begin(self._close())

    def on_result(self, call: int, result: DecodeResult) -> Step:
        """The result of call `call`, the one the session waits for: the operation goes on."""
        if self._op is None or call != self.awaiting:
            raise RuntimeError(f"the session waits for call {self.awaiting}, not {call}")
        return self._advance(result)

    # ---------------------------------------------------------------- driving
    def _begin(self, op: Op) -> Step:
        if self._op is not None:
            op.close()
            raise RuntimeError(f"the session waits for the result of call {self.awaiting}")
        self._op = op
        return self._advance(None)

    def _advance(self, result: DecodeResult | None) -> Step:
        assert self._op is not None
        step = self._step = Step()
        try:
            self.awaiting = self._op.send(result)  # type: ignore[arg-type]  # None starts it
        except StopIteration as done:
            self._op, self.awaiting = None, None
            step.events.extend(done.value)
        except BaseException:
            self._op, self.awaiting = None, None
            raise
        return step

    def _call(
        self,
        request: TranscribeRequest,
        chunked: bool = False,
        later: bool = False,
        final: bool = False,
    ) -> int:
        """Ask for a decode; its id. The operation yields the id to wait for the result."""
        assert self._utt is not None
        call = ModelCall(
            self._next_call, request, self.stream, self._utt.segment_id, chunked, later, final
        )
        self._next_call += 1
        self._step.calls.append(call)
        return call.id

    def _cancel(self, spec: _Speculation | None) -> None:
        if spec is not None and spec.call is not None:
            self._step.cancelled.append(spec.call)

    # ---------------------------------------------------------------- operations
    def _feed(self, x: np.ndarray) -> Op:
        if x.size == 0:
            return []
        x = x.astype(np.float32, copy=False)
        self._ring.append(x)
        events = yield from self._on_vad(self._vad.feed(x))
        events += yield from self._maybe_partial()
        return events

    def _flush(self) -> Op:
        if self._closed:
            return []
        return (yield from self._on_vad(self._vad.flush()))

    def _close(self) -> Op:
        if self._closed:
            return []
        events = yield from self._feed(self._resampler.flush())
        events += yield from self._flush()
        self._closed = True
        return events

    # ---------------------------------------------------------------- internals
    def _on_vad(self, vad_events: list[UtteranceStart | UtteranceEnd]) -> Op:
        events: list[Event] = []
        for ev in vad_events:
            if isinstance(ev, UtteranceStart):
                events += self._open(ev.start_sample)
            else:
                if ev.cut:
                    self._cut_at = ev.end_sample
                events += yield from self._finish(ev.end_sample)
        return events

    def _open(self, start_sample: int) -> list[Event]:
        start = max(start_sample, self._ring.start_sample)
        lead = self.config.final_lead_ms * SAMPLE_RATE // 1000
        join = self.config.final_join_ms * SAMPLE_RATE // 1000
        last = self._last if self.model.info.continues_text else None
        self._mel.reset()
        self._utt = _Utterance(
            segment_id=self._next_segment,
            start_sample=start,
            # The lead may reach into the end of the previous utterance: the prompt holds its
            # text, and on the long held-out files such finals scored better than ones whose
            # lead stops there (docs/engine.md, "Lead-in"). After a cut at the length limit
            # the speech goes on, and the audio before the cut is the previous final's.
            lead_start=max(start - lead, self._cut_at, self._ring.start_sample),
            mel_end=start,
            stabilizer=Stabilizer(self.config.agreement, self._starts_word),
            joins=last if last is not None and join and start - last.end <= join else None,
        )
        self._next_segment += 1
        self._endpoint(self._pinned or self._language)  # until its own partials say
        return [SpeechStarted(start)]

    def _advance_mel(self, utt: _Utterance, end_sample: int) -> None:
        if end_sample > utt.mel_end:
            self._mel.append(self._ring.slice(utt.mel_end, end_sample))
            utt.mel_end = end_sample

    def _maybe_partial(self) -> Op:
        utt = self._utt
        if utt is None:
            return []
        self._advance_mel(utt, self._ring.end_sample)
        speculate_ms = self.config.final_speculation_ms
        pending_end = self._vad.pending_end if speculate_ms > 0 else None
        if utt.speculative is not None and utt.speculative.end != pending_end:
            self._cancel(utt.speculative)  # the speaker went on: that early final is of no use
            utt.speculative = None
        if pending_end is not None:
            # The speaker paused: decode the final now, inside the VAD's stop hangover, so it
            # is ready the moment the utterance closes. Partials wait while the pause lasts.
            if utt.speculative is not None:
                return []
            if self._vad.trailing_unvoiced_ms >= speculate_ms and not self._too_short(
                utt, pending_end
            ):
                utt.speculative = yield from self._speculate(utt, pending_end)
                return []
        if self.partials_paused or not self.config.partials:
            return []  # a final does not need the partial decodes
        step = self.config.step_ms * self.step_scale * SAMPLE_RATE // 1000
        min_first = self.config.min_first_ms * SAMPLE_RATE // 1000
        if utt.mel_end - utt.start_sample < min_first:
            return []
        if utt.decoded_at >= 0 and utt.mel_end - utt.decoded_at < step:
            return []
        utt.decoded_at = utt.mel_end
        result = yield from self._decode(
            self._mel,
            prefix=list(utt.stabilizer.committed),
            words=False,
            window=self.config.encode_window,
            chunked=self._chunked,
            hypothesis=utt.hypothesis,
        )
        kept = self._keep(result)
        tokens = result.tokens if kept else utt.stabilizer.committed
        if kept:
            self._note_language(utt, result)
        utt.hypothesis = tuple(tokens)
        committed = utt.stabilizer.update(tokens)
        text = self._text(tokens)
        if not text and not utt.partial_text:
            return []
        utt.partial_text = text
        utt.shown = text or utt.shown
        return [
            TranscriptPartial(
                segment_id=utt.segment_id,
                text=text,
                stable_text=self._text(committed),
                start_sample=utt.start_sample,
                end_sample=utt.mel_end,
                language=utt.language,
                language_probability=utt.language_probability,
            )
        ]

    def _too_short(self, utt: _Utterance, end: int) -> bool:
        return end - utt.start_sample < self.config.min_utterance_ms * SAMPLE_RATE // 1000

    def _final_result(self, utt: _Utterance, end: int) -> Waits[_Decoded | None]:
        """The final decode of the utterance's audio up to `end` (from `lead_start`, or from its
        start on the cached encoder states), reused if speculated; None when every decode the
        policy allows was rejected by the hallucination gate.
        """
        spec = utt.speculative
        if spec is not None:
            if spec.end == end:
                if spec.call is None:
                    return spec.decoded
                result = self._unjoin(utt, end, (yield spec.call))
                assert spec.mel is not None
                origin = self._final_start(utt, end)
                return (yield from self._settle(utt, end, result, origin, spec.window, spec.mel))
            self._cancel(spec)  # an early final of other audio (a flush, a cut)
        if self._chunked and not self.config.polish_final:
            # The final reuses the stream's cached encoder states: its mel runs up to the
            # newest audio (the VAD's hangover after `end`), which is silence.
            self._advance_mel(utt, self._ring.end_sample)
            result = yield from self._decode(
                self._mel,
                prefix=[],
                words=True,
                window=self.config.encode_window,
                chunked=True,
                hypothesis=utt.hypothesis,
            )
            return (
                yield from self._settle(
                    utt, end, result, utt.start_sample, self.config.encode_window
                )
            )
        mel = self._final_mel(utt, end)
        window = self.config.final_window
        result = yield from self._decode_final(utt, end, mel, window)
        origin = self._final_start(utt, end)
        return (yield from self._settle(utt, end, result, origin, window, mel))

    def _speculate(self, utt: _Utterance, end: int) -> Waits[_Speculation]:
        """The final of the audio up to `end`, asked for now as a background call: the session
        goes on meanwhile, and a runner that has not started it when the speaker goes on drops
        it. A chunked final shares the stream's encoder cache, so it is waited for."""
        if self._chunked and not self.config.polish_final:
            return _Speculation(end, decoded=(yield from self._final_result(utt, end)))
        mel = self._final_mel(utt, end)
        window = self.config.final_window
        request = self._request(
            mel, **self._final_args(utt, end), window=window, pad_ms=self.config.final_pad_ms
        )
        call = self._call(request, later=True, final=True)
        return _Speculation(end, call=call, mel=mel, window=window)

    def _settle(
        self,
        utt: _Utterance,
        end: int,
        result: DecodeResult,
        origin: int,
        window: str,
        mel: LogMelBuffer | None = None,
    ) -> Waits[_Decoded | None]:
        """The final from a first decode, which starts at sample `origin`.

        A rejected decode on a shorter window is decoded once more on the full window, the one
        Whisper was trained on: a rejection there means a loop the guard missed or noise,
        which the short window's missing end of audio causes far more often. So is an empty
        decode of an utterance whose partials showed words.
        """
        if self._final_ok(utt, result):
            return _Decoded(result, origin)
        if window != "full":
            mel = mel or self._final_mel(utt, end)
            result = yield from self._decode_final(utt, end, mel, "full")
            if self._final_ok(utt, result):
                return _Decoded(result, self._final_start(utt, end))
        return None

    def _final_ok(self, utt: _Utterance, result: DecodeResult) -> bool:
        """A final passes the gate, and says something if the partials did."""
        return self._keep(result) and bool(result.tokens or not utt.shown)

    def _join(self, utt: _Utterance, end: int) -> _Joinable | None:
        """The final that the final of the utterance up to `end` continues: the previous one,
        when this utterance began soon after it (`final_join_ms`) and their audio fits in one
        window with the padding a final has."""
        join = utt.joins
        if join is None or join.lead_start < self._ring.start_sample:
            return None
        spec = self.model.info.features
        pad = 0 if self.config.final_window == "full" else self.config.final_pad_ms
        room = spec.window_frames * 10 - pad  # ms
        return join if (end - join.lead_start) * 1000 // SAMPLE_RATE <= room else None

    def _final_start(self, utt: _Utterance, end: int) -> int:
        """The sample a final's audio starts at: its lead, or the lead of the final it joins."""
        join = self._join(utt, end)
        return utt.lead_start if join is None else join.lead_start

    def _final_mel(self, utt: _Utterance, end: int) -> LogMelBuffer:
        """The log-mel of the audio a final decodes: the utterance up to `end`, after its lead
        (or the lead of the final it continues)."""
        mel = LogMelBuffer(n_mels=self.model.info.features.n_mels)
        audio = self._ring.slice(self._final_start(utt, end), end)
        mel.append(final_audio(audio, self.config.decode))
        return mel

    def _final_args(self, utt: _Utterance, end: int) -> dict[str, Any]:
        """What a final decode continues and is offered: committed prefix, draft, word timings;
        for a final that continues the previous one, that final's text and language first."""
        committed = utt.stabilizer.committed if self.config.final_keeps_stable else ()
        join = self._join(utt, end)
        if join is None:
            return {"prefix": list(committed), "words": True, "hypothesis": utt.hypothesis}
        return {
            "prefix": [*join.tokens, *committed],
            "words": True,
            "hypothesis": (*join.tokens, *utt.hypothesis),
            "joins": join,
        }

    def _decode_final(
        self, utt: _Utterance, end: int, mel: LogMelBuffer, window: str
    ) -> Waits[DecodeResult]:
        """A final decode of the utterance's log-mel, re-encoded on `window`; what it says after
        the final it continues, if it continues one."""
        args = self._final_args(utt, end)
        result = yield from self._decode(
            mel, **args, window=window, pad_ms=self.config.final_pad_ms
        )
        return self._unjoin(utt, end, result)

    def _unjoin(self, utt: _Utterance, end: int, result: DecodeResult) -> DecodeResult:
        """`result` without the forced text of the final it continues: its tokens, text and
        words from there on (a word the new text begins inside keeps its new part only)."""
        join = self._join(utt, end)
        if join is None:
            return result
        tokens = result.tokens[len(join.tokens) :]
        words = result.words
        if words:
            before, _ = split_words(list(join.tokens), self.model.decode_tokens)
            k = len(before)
            words = words[k:]
            if k and len(result.words) >= k and result.words[k - 1].word != before[-1]:
                joined = result.words[k - 1]
                words = (replace(joined, word=joined.word[len(before[-1]) :]), *words)
        text = self.model.decode_tokens(list(tokens))
        return replace(result, tokens=tuple(tokens), text=text, words=tuple(words))

    def _finish(self, end_sample: int) -> Op:
        utt = self._utt
        if utt is None:
            return []
        end = max(end_sample, utt.start_sample)
        events: list[Event] = [SpeechStopped(end)]
        if self._too_short(utt, end):
            self._cancel(utt.speculative)
            self._utt = None
            return events
        decoded = yield from self._final_result(utt, end)
        self._utt = None
        self._last = None  # set again below by a final with text
        if decoded is None:
            # No decode passed the gate. Speech the partials showed is never erased: the final
            # is their committed text (else the last partial), marked as a fallback.
            if utt.shown:
                text = self._text(utt.stabilizer.committed) or utt.shown
                events.append(
                    TranscriptFinal(
                        utt.segment_id,
                        text,
                        utt.start_sample,
                        end,
                        fallback=True,
                        language=utt.language,
                        language_probability=utt.language_probability,
                    )
                )
            return events
        result, origin = decoded.result, decoded.origin
        text = self._text(result.tokens)
        if text:
            words = tuple(
                Word(
                    w.word,
                    min(max(utt.start_sample, origin + w.start_sample), end),
                    min(max(utt.start_sample, origin + w.end_sample), end),
                    w.probability,
                )
                for w in result.words
            )
            language, probability = self._note_language(utt, result)
            final = TranscriptFinal(
                utt.segment_id,
                text,
                utt.start_sample,
                end,
                words,
                language=language,
                language_probability=probability,
            )
            events.append(final)
            prompt = tuple(self._context) if self._language == result.language else ()
            self._last = _Joinable(utt.lead_start, end, result.tokens, result.language, prompt)
            self._remember(result)
        return events

    def _note_language(
        self, utt: _Utterance, result: DecodeResult
    ) -> tuple[str | None, float | None]:
        """The utterance's language after `result`: a decode asked for the language it already
        had keeps the probability it was detected with. The VAD waits for the longest pause of
        the languages the utterance was heard in: a partial's detection on a second or two
        flips ("zh", then "ja" on the same clause) and must not cut the sentence short."""
        if result.language != utt.language or result.language_probability is not None:
            utt.language, utt.language_probability = result.language, result.language_probability
        self._endpoint(utt.language, longer_only=True)
        return utt.language, utt.language_probability

    def _endpoint(self, language: str | None, longer_only: bool = False) -> None:
        """The pause that ends an utterance in `language` (`VadConfig.stop_ms_by_language`)."""
        default = self.config.vad.stop_ms
        stop_ms = self._stops.get(language, default) if language else default
        if longer_only:
            stop_ms = max(stop_ms, self._stop_ms)
        if stop_ms != self._stop_ms:
            self._stop_ms = stop_ms
            self._vad.set_stop_ms(stop_ms)

    def _remember(self, final: DecodeResult) -> None:
        """A final with text becomes the prompt of the next decodes, in its language."""
        if final.language != self._language:
            self._context = []  # the previous text is of another language
        self._language = final.language
        keep = self.config.decode.prompt_tokens
        self._context = (self._context + list(final.tokens))[-keep:]
        once = self.config.language_policy == "once"
        if once and self._pinned is None and self.model.info.detects_language:
            self._pinned = final.language

    def _decode(
        self,
        mel: LogMelBuffer,
        *,
        prefix: list[int],
        words: bool,
        window: str,
        pad_ms: int | None = None,
        chunked: bool = False,
        hypothesis: tuple[int, ...] = (),
        joins: _Joinable | None = None,
    ) -> Waits[DecodeResult]:
        """Decode `mel`, continuing `prefix` (which starts with the final it `joins`, if any);
        the latest `hypothesis` is offered as a draft. A decode with `words` (word timings) is
        a final's: the runner takes it before the partials waiting."""
        request = self._request(
            mel,
            prefix=prefix,
            words=words,
            window=window,
            pad_ms=pad_ms,
            hypothesis=hypothesis,
            joins=joins,
        )
        if chunked:
            # Commit whole chunks of encoder frames (20 ms each) that have `lookahead_ms` of
            # real audio after them; the rest of the window is recomputed on the next update.
            chunk, ahead = self.config.chunk_ms // 20, self.config.lookahead_ms // 20
            request.commit_frames = (mel.num_frames // 2 - ahead) // chunk * chunk
        return (yield self._call(request, chunked, final=words))

    def _request(
        self,
        mel: LogMelBuffer,
        *,
        prefix: list[int],
        words: bool,
        window: str,
        pad_ms: int | None,
        hypothesis: tuple[int, ...],
        joins: _Joinable | None = None,
    ) -> TranscribeRequest:
        """The model request of `mel` padded for `window`; a final that `joins` the previous one
        is prompted with the previous text that one was decoded after."""
        spec = self.model.info.features
        if window == "full":
            pad_to = spec.window_frames
        else:
            pad = self.config.window_pad_ms if pad_ms is None else pad_ms
            pad_to = mel.covered_frames + pad // 10
            pad_to = min(spec.window_frames, pad_to + pad_to % 2)
        agrees = hypothesis[: len(prefix)] == tuple(prefix)
        language, prior = self._languages(prefix, joins)
        prompt = self._context if joins is None else joins.prompt
        return TranscribeRequest(
            mel.features(pad_to_frames=pad_to),
            num_frames=mel.covered_frames,
            prompt=list(prompt) if self._language in (None, prior) else [],
            bias=self._bias,
            options=self.config.decode,
            word_timestamps=words and self.config.decode.word_timestamps,
            prefix=list(prefix),
            draft=list(hypothesis[len(prefix) :]) if agrees else [],
            language=language,
            task=self.config.task,
            prior_language=prior,
        )

    def _languages(self, prefix: list[int], joins: _Joinable | None) -> tuple[str, str | None]:
        """The language a decode is asked for ("auto": detect) and the one it keeps unless
        another is clearly more probable: the previous finals' language. Not the utterance's
        partials': detection on their second or two of audio errs too often to stick to
        (docs/engine.md, "Languages"). A forced prefix was decoded in the utterance's language,
        so a decode that continues it asks for that language. A final that continues the
        previous one (`joins`) detects over both utterances' audio, that one's language the
        prior."""
        utt = self._utt
        known = utt.language if utt is not None else None
        if self._pinned is not None:
            return self._pinned, self._pinned
        if joins is not None:
            return "auto", joins.language
        if prefix and known is not None:
            return known, known
        return "auto", self._language

    def steer(self, keywords: tuple[str, ...]) -> None:
        """Bias the next decodes with `keywords` too, after the session's own prompt and
        keywords (which keep their place at the head of the bias); `()` takes them away."""
        if keywords == self._steered:
            return
        self._steered = keywords
        config = replace(self.config, keywords=self.config.keywords + keywords)
        self._bias, self.bias_cut = bias_tokens(self.model, config)

    def _keep(self, r: DecodeResult) -> bool:
        return not looks_like_hallucination(r, self.config.decode)

    def _text(self, tokens: tuple[int, ...] | list[int]) -> str:
        return self.model.decode_tokens(list(tokens)).strip()

    def _starts_word(self, token: int) -> bool:
        return starts_word(self.model.decode_tokens([token]))


def bias_text(prompt: str, keywords: tuple[str, ...]) -> str:
    """The text of a session's context biasing: its prompt, then its keywords in a sentence,
    "Today we talked about A, B and C.": on tiny.en it missed half the terms that the bare list
    "A, B, C." missed, and was not copied into finals as the list was (`bench/biasing.py`)."""
    terms = [k.strip() for k in keywords if k.strip()]
    sentence = ""
    if terms:
        listed = terms[0] if len(terms) == 1 else f"{', '.join(terms[:-1])} and {terms[-1]}"
        sentence = f"Today we talked about {listed}."
    return " ".join(part for part in (prompt.strip(), sentence) if part)


def bias_tokens(model: AsrModel, config: SessionConfig) -> tuple[list[int], int]:
    """Tokens of `bias_text`, with the leading space Whisper's previous text has, cut to
    `max_bias_tokens`; and how many were cut."""
    text = bias_text(config.prompt, config.keywords)
    tokens = model.encode_text(" " + text) if text else []
    keep = config.decode.max_bias_tokens
    return tokens[:keep], max(0, len(tokens) - keep)
