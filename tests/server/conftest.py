"""Server fixtures: in-process servers on port 0 around the weightless FakeModel, and test audio."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import speech

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))  # fake_model

from fake_model import FakeModel  # noqa: E402

from streamasr.server.app import Server  # noqa: E402
from streamasr.server.config import ServerConfig  # noqa: E402

MakeServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """`await make_server(**config)`: a started server with FakeModel (4 sessions unless
    `max_sessions` says otherwise); shut down after the test."""
    servers: list[Server] = []

    async def make(
        *, model_factory: Callable[[str], Any] | None = None, start: bool = True, **overrides: Any
    ) -> Server:
        config = ServerConfig(**{"port": 0, "max_sessions": 4, **overrides})
        server = Server(config, model_factory=model_factory or (lambda _spec: FakeModel()))
        servers.append(server)
        if start:
            await server.startup()
        return server

    yield make
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    return await make_server()


@pytest.fixture(scope="session")
def speech_clips(sentences: list[np.ndarray]) -> list[np.ndarray]:
    """Eight clips of different lengths, so FakeModel gives each a different transcript."""
    both = np.concatenate(sentences)
    clips = []
    for i in range(8):
        n = int((1.2 + 0.6 * i) * 16_000)
        clips.append(np.concatenate([speech.silence(0.3), both[:n], speech.silence(1.0)]))
    return clips
