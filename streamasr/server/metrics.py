"""Prometheus metrics of one server, in a registry of its own (never the process-global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamasr import SAMPLE_RATE
from streamasr.events import TranscriptFinal, TranscriptPartial

if TYPE_CHECKING:
    from streamasr.engine.scheduler import Scheduler

CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds; decode calls run 1 ms (fake model) .. a few s (a long final on a busy CPU)
DECODE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# seconds from the audio reaching the server to the message leaving it
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class ServerMetrics:
    """The daemon's counters, gauges and histograms; `exposition()` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.ready = Gauge("streamasr_ready", "1 once the model is loaded and warm", registry=r)
        self.sessions_active = Gauge(
            "streamasr_sessions_active", "Open WebSocket sessions", registry=r
        )
        self.sessions_max = Gauge(
            "streamasr_sessions_max",
            "Sessions this daemon takes at once (max_sessions, or derived at start-up)",
            registry=r,
        )
        self.sessions = Counter("streamasr_sessions", "Sessions accepted", registry=r)
        self.rejected = Counter(
            "streamasr_rejected_connections",
            "Connections refused: busy (max sessions), unauthorized, origin, not_ready",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "streamasr_errors", "Error messages sent to clients, by code", ["code"], registry=r
        )
        self.audio_seconds = Counter(
            "streamasr_audio_seconds", "Seconds of audio received", registry=r
        )
        self.decode_seconds = Histogram(
            "streamasr_decode_seconds",
            "Wall time of each engine call (feed, flush, close) in the worker pool",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.partial_latency = Histogram(
            "streamasr_partial_latency_seconds",
            "From the arrival of the audio at a partial's end to the partial being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "streamasr_final_latency_seconds",
            "From the arrival of the audio at a final's end (speech stop) to the final being sent",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag_warnings = Counter(
            "streamasr_lag_warnings",
            "Times a session fell behind real time (warned, partials paused)",
            registry=r,
        )
        self.dropped_partials = Counter(
            "streamasr_dropped_partials",
            "Partials replaced in a slow client's queue before they were sent",
            registry=r,
        )
        self.language_sessions = Counter(
            "streamasr_language_sessions",
            "Sessions by the language they asked for: auto, or a code the model lists",
            ["language"],
            registry=r,
        )
        self.language_speech_seconds = Counter(
            "streamasr_language_speech_seconds",
            "Seconds of speech finalised, by the language of its final (unknown: the model "
            "cannot tell)",
            ["language"],
            registry=r,
        )

    def count_session(self, language: str, spoken: tuple[str, ...] | None) -> None:
        """A session that asked for `language`; codes the model does not list (a prompt-driven
        model takes any) count as "other", so a client cannot grow the label set."""
        known = language == "auto" or (spoken is not None and language in spoken)
        self.language_sessions.labels(language=language if known else "other").inc()

    def count_final(self, language: str | None, seconds: float) -> None:
        self.language_speech_seconds.labels(language=language or "unknown").inc(seconds)

    def observe_sent(
        self, message: object, arrived: Callable[[int], float | None], now: float
    ) -> None:
        """The metrics of a message on its way out at `now`: speech by language, and the
        latency of a transcript from the arrival of its audio's end (`arrived(sample)`, the
        session's `ArrivalClock.time_of`)."""
        if not isinstance(message, TranscriptPartial | TranscriptFinal):
            return
        if isinstance(message, TranscriptFinal) and message.text:
            seconds = (message.end_sample - message.start_sample) / SAMPLE_RATE
            self.count_final(message.language, seconds)
        t = arrived(message.end_sample)
        if t is not None:
            hist = (
                self.final_latency if isinstance(message, TranscriptFinal) else self.partial_latency
            )
            hist.observe(max(0.0, now - t))

    def watch(self, scheduler: Scheduler) -> None:
        """Export the inference threads' counters, read from `scheduler` at each scrape."""
        self.registry.register(_SchedulerCollector(scheduler))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric of this server."""
        return generate_latest(self.registry)


class _SchedulerCollector(Collector):
    """The shared scheduler's statistics as Prometheus metrics. busy / (threads x wall time) is
    how much of its compute the daemon uses; rows / passes is the mean batch."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self.scheduler.snapshot()
        for name, doc, value in (
            (
                "busy_seconds",
                "Time the inference threads spent in model calls, summed",
                stats.busy_s,
            ),
            ("calls", "Model calls answered", stats.calls),
            ("passes", "Batched model passes (decoding steps)", stats.passes),
            ("rows", "Calls summed over the passes: rows / passes is the mean batch", stats.rows),
            (
                "cancelled",
                "Calls dropped before they ran: early finals made useless by more speech",
                stats.cancelled,
            ),
        ):
            yield CounterMetricFamily(f"streamasr_inference_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "streamasr_inference_queued",
            "Model calls waiting to join a batch",
            value=self.scheduler.queued,
        )
        yield GaugeMetricFamily(
            "streamasr_inference_threads",
            "Inference threads: per batch, one encoding calls and one stepping rows",
            value=self.scheduler.threads,
        )
