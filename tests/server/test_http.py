"""Plain HTTP on the daemon's port: health before and after warm-up, metrics, static files,
the token and the Origin allowlist."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_model import FakeModel
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import (
    assert_served,
    http_get,
    pcm16,
    session,
    stream_session,
    ws_url,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamasr.models.base import DecodeResult, TranscribeRequest
from streamasr.server.app import Server
from streamasr.server.config import ServerConfig
from streamasr.server.worker import estimate_capacity


async def test_health_is_503_until_the_model_is_warm(make_server: Any) -> None:
    release = threading.Event()

    def slow_factory(_spec: str) -> FakeModel:
        release.wait(10)  # runs on the decode thread: the event loop keeps answering
        return FakeModel()

    server = await make_server(model_factory=slow_factory, start=False)
    startup = asyncio.create_task(server.startup())
    while server._host is None:  # the listener comes first, then the model
        await asyncio.sleep(0.01)
    before = await http_get(server, "/healthz")
    assert (before.status, before.body) == (503, b"starting\n")
    with pytest.raises(InvalidStatus) as refused:
        await connect(ws_url(server))
    assert refused.value.response.status_code == 503
    release.set()
    await startup
    after = await http_get(server, "/healthz")
    assert (after.status, after.body) == (200, b"ok\n")
    assert server.metrics.rejected.labels(reason="not_ready")._value.get() == 1


async def test_metrics_parse_and_count(server: Server, speech_clips: list[np.ndarray]) -> None:
    assert server._scheduler is not None
    model = server._scheduler.model
    warm_up_calls = len(model.calls)  # type: ignore[attr-defined]
    await stream_session(server, pcm16(speech_clips[2]), speed=8.0)
    await session(server, ["{bad json", '{"type": "session.end"}'])
    reply = await http_get(server, "/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(reply.body.decode())
        for s in family.samples
    }
    assert samples[("streamasr_ready", ())] == 1
    assert samples[("streamasr_sessions_total", ())] == 2
    assert samples[("streamasr_sessions_active", ())] == 0
    assert samples[("streamasr_errors_total", (("code", "bad_json"),))] == 1
    audio_s = len(speech_clips[2]) / 16_000
    assert samples[("streamasr_audio_seconds_total", ())] == pytest.approx(audio_s, abs=0.01)
    assert samples[("streamasr_final_latency_seconds_count", ())] == 1
    assert samples[("streamasr_language_sessions_total", (("language", "auto"),))] == 2
    speech_s = samples[("streamasr_language_speech_seconds_total", (("language", "unknown"),))]
    assert 0.5 * audio_s < speech_s <= audio_s  # the fake model cannot tell the language
    assert samples[("streamasr_partial_latency_seconds_count", ())] >= 1
    assert samples[("streamasr_decode_seconds_count", ())] >= 2
    # Every model call after the warm-up went through the inference threads.
    calls = len(model.calls) - warm_up_calls  # type: ignore[attr-defined]
    assert calls >= 2 and samples[("streamasr_inference_calls_total", ())] == calls
    assert samples[("streamasr_inference_rows_total", ())] == calls  # whole batches
    assert 1 <= samples[("streamasr_inference_passes_total", ())] <= calls
    assert samples[("streamasr_inference_busy_seconds_total", ())] > 0
    assert samples[("streamasr_inference_queued", ())] == 0
    assert samples[("streamasr_inference_threads", ())] == server.config.workers
    other = Server(ServerConfig())  # each server has its own registry
    assert b"streamasr_sessions_total 0.0" in other.metrics.exposition()


async def test_static_files_are_served_with_their_types(make_server: Any, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hi</p>")
    (tmp_path / "app.js").write_text("let x = 1;")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "style.css").write_text("p {}")
    (tmp_path / ".secret").write_text("no")
    server = await make_server(static_dir=str(tmp_path))
    for path, kind, body in [
        ("/", "text/html", b"<p>hi</p>"),
        ("/app.js", "text/javascript", b"let x = 1;"),
        ("/sub/style.css", "text/css", b"p {}"),
    ]:
        reply = await http_get(server, path)
        assert reply.status == 200 and reply.body == body
        assert reply.headers["Content-Type"].startswith(kind)
    for path in (
        "/missing.js",
        "/.secret",
        "/../" + tmp_path.name + "/app.js",
        "/%2e%2e/etc/passwd",
    ):
        assert (await http_get(server, path)).status == 404, path


async def test_the_package_placeholder_page_is_served(server: Server) -> None:
    reply = await http_get(server, "/")
    assert reply.status == 200 and reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'id="captions"' in reply.body and b"captions.js" in reply.body


async def test_token_is_required_for_the_stream_and_metrics(make_server: Any) -> None:
    server = await make_server(token="s3cret-of-16-chars")
    for headers, query in [({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?token=nope")]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(server, query), additional_headers=headers)
        assert refused.value.response.status_code == 401
    async with connect(
        ws_url(server), additional_headers={"Authorization": "Bearer s3cret-of-16-chars"}
    ):
        pass
    async with connect(ws_url(server, "?token=s3cret-of-16-chars")):
        pass
    assert (await http_get(server, "/metrics")).status == 401
    authorized = await http_get(server, "/metrics", {"Authorization": "Bearer s3cret-of-16-chars"})
    assert authorized.status == 200
    assert (await http_get(server, "/healthz")).status == 200  # open, for probes
    assert server.metrics.rejected.labels(reason="unauthorized")._value.get() == 3


async def test_origins_outside_the_allowlist_are_refused(make_server: Any) -> None:
    server = await make_server(allow_origins=("https://captions.example",))
    port = server.port
    allowed = [None, "https://captions.example", f"http://127.0.0.1:{port}"]
    for origin in allowed:
        headers = {"Origin": origin} if origin else {}
        async with connect(ws_url(server), additional_headers=headers):
            pass
    for origin in ["https://evil.example", "null", f"http://127.0.0.1:{port + 1}"]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(server), additional_headers={"Origin": origin})
        assert refused.value.response.status_code == 403, origin
    # DNS rebinding: a foreign name resolved to 127.0.0.1 is same-origin by Host, yet refused;
    # a same-origin GET carries no Origin, as browsers send it: its Host refuses it
    rebinding = {"Host": f"evil.example:{port}"}
    for path in ("/metrics", "/", "/healthz"):
        assert (await http_get(server, path, rebinding)).status == 403, path
    upgrade = {  # a WebSocket handshake as the rebinding page's browser would send it
        "Origin": f"http://evil.example:{port}".encode(),
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": b"13",
    }
    assert await raw_status(port, "/v1/stream", upgrade, host=f"evil.example:{port}") == 403
    assert server.metrics.rejected.labels(reason="origin")._value.get() == 4
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert (await http_get(server, "/healthz", {"Host": host})).status == 200, host
    listed = await make_server(allow_hosts=("captions.lan",))
    assert (await http_get(listed, "/healthz", {"Host": "captions.lan:8765"})).status == 200
    with_token = await make_server(token="t0k3n-long-enough")  # a token guards it instead
    assert (await http_get(with_token, "/healthz", rebinding)).status == 200
    await assert_served(server)


async def test_health_says_how_many_more_sessions_fit(make_server: Any) -> None:
    server = await make_server(max_sessions=1)
    idle = await http_get(server, "/healthz?free")
    assert (idle.status, idle.body) == (200, b"ok\n")
    assert (idle.headers["X-Sessions-Max"], idle.headers["X-Sessions-Free"]) == ("1", "1")
    async with connect(ws_url(server)):
        while not server.active_sessions:
            await asyncio.sleep(0.01)
        busy = await http_get(server, "/healthz")
        assert busy.status == 200  # healthy, only full
        assert (busy.headers["X-Sessions-Active"], busy.headers["X-Sessions-Free"]) == ("1", "0")
        full = await http_get(server, "/healthz?free=1")
        assert (full.status, full.body) == (503, b"full\n")
        assert (await http_get(server, "/healthz?free=0")).status == 200
        assert (await http_get(server, "/healthz?free=many")).status == 400
    while server.active_sessions:
        await asyncio.sleep(0.01)
    assert (await http_get(server, "/healthz?free")).status == 200


class SlowFinalModel(FakeModel):
    """Every decode takes 0.1 s: the start-up measure of a final sees that."""

    def decode(self, request: TranscribeRequest) -> DecodeResult:
        time.sleep(0.1)
        return super().decode(request)


async def test_max_sessions_0_is_derived_from_the_measured_cost_of_a_final(
    make_server: Any,
) -> None:
    server = await make_server(max_sessions=0, model_factory=lambda _: SlowFinalModel())
    # 1.7 s of finals over 0.1 s each: 17, a little fewer as the sleeps overrun.
    assert 13 <= server.capacity <= estimate_capacity(0.1) == 17
    reply = await http_get(server, "/healthz")
    assert reply.headers["X-Sessions-Max"] == str(server.capacity)
    assert server.metrics.sessions_max._value.get() == server.capacity


def test_capacity_estimate_scales_with_the_final_and_the_workers() -> None:
    assert estimate_capacity(0.21) == 8  # tiny.en on 2 cores, bfloat16 encoder
    assert estimate_capacity(0.31) == 5  # float32 encoder
    assert estimate_capacity(0.21, workers=2) == 16
    assert estimate_capacity(100.0) == 1
    assert estimate_capacity(1e-6) == estimate_capacity(0.0) == 256


def test_language_labels_stay_a_bounded_set() -> None:
    from streamasr.server.metrics import ServerMetrics

    metrics = ServerMetrics()
    metrics.count_session("es", ("en", "es"))
    metrics.count_session("zz", None)  # a prompt-driven model took a code nobody lists
    metrics.count_session("auto", None)
    metrics.count_final("es", 2.5)
    metrics.count_final(None, 1.0)
    text = metrics.exposition().decode()
    for line in (
        'streamasr_language_sessions_total{language="es"} 1.0',
        'streamasr_language_sessions_total{language="other"} 1.0',
        'streamasr_language_sessions_total{language="auto"} 1.0',
        'streamasr_language_speech_seconds_total{language="es"} 2.5',
        'streamasr_language_speech_seconds_total{language="unknown"} 1.0',
    ):
        assert line in text
    assert "zz" not in text


async def test_models_lists_the_loaded_model_and_its_languages(make_server: Any) -> None:
    server = await make_server(token="t0k-of-16-characters")
    assert (await http_get(server, "/v1/models")).status == 401
    reply = await http_get(server, "/v1/models", {"Authorization": "Bearer t0k-of-16-characters"})
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    (entry,) = json.loads(reply.body)["data"]
    assert entry == {
        "id": "fake",
        "object": "model",
        "owned_by": "streamasr",
        "languages": ["en"],
        "tasks": ["transcribe"],
        "language": "auto",  # of sessions that name none
    }


async def test_openapi_describes_every_front_door_without_a_token(make_server: Any) -> None:
    server = await make_server(token="t0k3n-of-16-characters")
    reply = await http_get(server, "/openapi.json")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    spec = json.loads(reply.body)
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for path in ("/healthz", "/metrics", "/v1/models", "/v1/stream", "/v1/realtime", "/v1/listen"):
        assert path in paths, path
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    fields = form["multipart/form-data"]["schema"]["properties"]
    assert fields["response_format"]["enum"] == ["json", "text", "srt", "vtt", "verbose_json"]
    assert (
        "language"
        not in paths["/v1/audio/translations"]["post"]["requestBody"]["content"][
            "multipart/form-data"
        ]["schema"]["properties"]
    )
    assert (await http_get(server, "/v1/models")).status == 401  # the APIs keep their token


async def raw_status(
    port: int, path: str, headers: dict[str, bytes], host: str = "127.0.0.1"
) -> int:
    """The status of a hand-made GET (urllib would refuse or fix these requests)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers.items())
    start = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
    writer.write(start + head + b"\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split()[1])


async def test_malformed_requests_get_their_answer_not_a_500(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server(token="t0k3n-long-enough")
    cases = [
        ("/", {"Origin": b"http://["}, 403),
        ("//[", {}, 404),
        ("/" + "a" * 300, {}, 404),  # a name over the file system's limit
        ("/metrics", {"Authorization": b"Bearer caf\xe9"}, 401),
        ("/metrics?token=caf%E9", {}, 401),
        ("/metrics?token=%FF%FE", {}, 401),
    ]
    for path, headers, status in cases:
        assert await raw_status(server.port, path, headers) == status, (path, headers)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    await assert_served_with_token(server, "t0k3n-long-enough")


async def assert_served_with_token(server: Server, token: str) -> None:
    reply = await http_get(server, "/metrics", {"Authorization": f"Bearer {token}"})
    assert reply.status == 200


async def test_tokens_in_the_query_never_reach_the_log(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-query-token-value"
    server = await make_server(token=secret)
    caplog.set_level(logging.DEBUG)
    async with connect(ws_url(server, f"?token={secret}")) as ws:
        await ws.send(json.dumps({"type": "session.end"}))
        assert json.loads(await ws.recv())["type"] == "session.started"
    assert (await http_get(server, f"/metrics?token={secret}")).status == 200
    daemon = "\n".join(  # the daemon's log; the test's own client logs its request itself
        r.getMessage() for r in caplog.records if r.name.startswith(("uvicorn", "streamasr"))
    )
    assert "/v1/stream?token=***" in daemon  # the line is there, its secret is not
    assert secret not in daemon
