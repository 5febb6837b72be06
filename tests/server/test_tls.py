"""TLS served by the daemon itself: https:// and wss:// with a certificate and key."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect

from streamasr.cli import main

TOKEN = "tls-test-token-0123456789"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(chain), str(key)


def status_of(url: str, context: ssl.SSLContext) -> int:
    with urllib.request.urlopen(url, context=context, timeout=30) as reply:
        return int(reply.status)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_and_wss_with_a_certificate(
    make_server: Any, ca: trustme.CA, cert_files: tuple[str, str]
) -> None:
    chain, key = cert_files
    server = await make_server(tls_cert=chain, tls_key=key, token=TOKEN)
    assert server.url.startswith("https://")
    context = client_context(ca)
    url = f"wss://127.0.0.1:{server.port}/v1/stream"
    async with connect(
        url, ssl=context, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        await ws.send(bytes(3200))
        await ws.send(json.dumps({"type": "session.end"}))
        kinds = [json.loads(m)["type"] async for m in ws]
    assert kinds == ["session.started", "session.ended"]
    health = f"https://127.0.0.1:{server.port}/healthz"
    assert await asyncio.to_thread(status_of, health, context) == 200
    with pytest.raises(Exception):  # noqa: B017 - plain ws:// to a TLS port gets no handshake
        async with connect(f"ws://127.0.0.1:{server.port}/v1/stream", open_timeout=5):
            pass


def test_unreadable_tls_files_are_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "none.pem")
    argv = ["serve", "--port", "0", "--model", "/nonexistent", "--tls-cert", missing]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot serve TLS with {missing}" in err


def test_a_key_without_its_certificate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--tls-key", "key.pem"]) == 2
    assert "tls_key needs tls_cert" in capsys.readouterr().err
