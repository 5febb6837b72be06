"""streamasr.deploy.ray_serve on a local Ray (2 CPUs): two replicas of the daemon with the
weightless FakeModel behind Serve's proxy. Streams are spread over both; over the replicas'
room a client gets the daemon's own refusal; a killed replica's clients resume elsewhere with
every final once."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "engine"), str(TESTS / "server"), str(TESTS / "clients")]

from fleet_helpers import free_port, resumed_elsewhere  # noqa: E402
from server_helpers import dequantized, receive_all, reference_finals  # noqa: E402
from test_captions import captions, write_wav  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

pytestmark = pytest.mark.timeout(300)

STREAMS = 2  # per replica


ARGS = {
    "model_factory": "fake_model:FakeModel",
    "streams_per_replica": str(STREAMS),
    "min_replicas": "2",
    "max_replicas": "2",
    "num_cpus": "0.5",
    "resume_secret": "the replicas' shared secret",
}


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    try:
        import ray
        from ray import serve
    except ImportError:  # a hard failure: a skip would hide an untested deployment
        pytest.fail('Ray is not installed (pip install -e ".[dev]" brings ray[serve])')
    from streamasr.deploy.ray_serve import build

    port = free_port()
    engine = str(TESTS / "engine")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": engine}},  # fake_model, in the replicas
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(ARGS), name="streamasr", route_prefix="/")  # once the replicas run
        yield f"ws://127.0.0.1:{port}/v1/stream"
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_names() -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "REPLICA" in a["name"]
    )


async def open_session(url: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url)
    await ws.send(bytes(3200))
    return ws, json.loads(await ws.recv())


async def test_streams_fill_both_replicas_then_the_daemon_refuses(serve_url: str) -> None:
    assert len(replica_names()) == 2
    held = []
    try:
        for _ in range(2 * STREAMS):  # one replica alone has room for STREAMS only
            ws, first = await open_session(serve_url)
            held.append(ws)
            assert first["type"] == "session.started", first
        extra = await connect(serve_url)  # Serve lets one past each replica's room ...
        refused = await asyncio.wait_for(receive_all(extra), 10)
        assert refused.close_code == 1013  # ... and the daemon there refuses it, documented
        assert [(e["code"], e["fatal"]) for e in refused.of("error")] == [("server_busy", True)]
    finally:
        for ws in held:
            await ws.close()


async def test_a_killed_replicas_clients_resume_with_every_final(
    serve_url: str, clip: np.ndarray, tmp_path: Path
) -> None:
    import ray

    await asyncio.sleep(1.0)  # the previous test's sessions have closed
    wav = write_wav(tmp_path / "clip.wav", clip)
    args = ("--url", serve_url, "--json", "--speed", "2", str(wav))
    runs = []
    for _ in range(2 * STREAMS):  # one after the other: Serve places each on the less busy
        runs.append(asyncio.create_task(captions(*args, timeout_s=120)))
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.5)  # all streaming, STREAMS on each replica; mid second utterance
    victim = replica_names()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)  # its process dies
    outcomes = await asyncio.gather(*runs)
    # the killed replica's clients, each resumed once on another
    assert resumed_elsewhere(outcomes, reference_finals(clip)) == STREAMS


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """The (start, end) seconds of the finals a local session with FakeModel gives `audio`."""
    from fake_model import FakeModel

    from streamasr.engine.driver import LocalSession
    from streamasr.events import TranscriptFinal

    session = LocalSession(FakeModel())
    events = session.feed(audio) + session.close()
    return [
        (e.start_sample / 16_000, e.end_sample / 16_000)
        for e in events
        if isinstance(e, TranscriptFinal)
    ]


def check_drained(outcome: tuple[int, str, str], speech: list[tuple[float, float]]) -> None:
    """A client whose replica drained: it ended well, its finals in one gapless `seq`, each
    once (in order, none overlapping another), and together they cover all the speech. A
    drain finalises the utterance it cuts, so one said over a drain is two finals (or one,
    when what was left of it is too short to be an utterance)."""
    rc, out, err = outcome
    assert rc == 0, err + out
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events))), err
    reasons = [e["reason"] for e in events if e["type"] == "session.ended"]
    assert "shutdown" in reasons and reasons[-1] == "client", (reasons, err)
    finals = [e for e in events if e["type"] == "transcript.final"]
    ids = [f["segment_id"] for f in finals]  # a segment may have no final: the tail of the
    assert ids == sorted(set(ids)), ids  # utterance a drain cut, too short to decode, has none
    spans = [(f["start"], f["end"]) for f in finals if f["text"]]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    for start, end in speech:
        heard = sum(max(0.0, min(end, e) - max(start, s)) for s, e in spans)
        assert heard >= 0.8 * (end - start), (start, end, spans)


async def test_a_redeploy_drains_the_old_replicas_and_their_clients_resume(
    serve_url: str, clip: np.ndarray, tmp_path: Path
) -> None:
    """A rolling update replaces both replicas: each old one, once Serve marks it STOPPING,
    finalises its streams and closes them 1001 (`session.ended` "shutdown"), and its clients
    resume on another replica and go on; nothing waits for Serve's kill."""
    from ray import serve

    from streamasr.deploy.ray_serve import build

    await asyncio.sleep(1.0)  # the previous test's sessions have closed
    wav = write_wav(tmp_path / "clip.wav", clip)
    args = ("--url", serve_url, "--json", "--speed", "1", str(wav))
    runs = []
    for _ in range(STREAMS):
        runs.append(asyncio.create_task(captions(*args, timeout_s=150)))
        await asyncio.sleep(0.5)
    await asyncio.to_thread(serve.run, build(ARGS), name="streamasr", route_prefix="/")
    speech = speech_spans(dequantized(clip))
    for outcome in await asyncio.gather(*runs):
        check_drained(outcome, speech)
