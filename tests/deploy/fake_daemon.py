"""The daemon (`Server.run`, signals and drain included) with the weightless FakeModel, in a
process of its own: a replica a test can kill.

    python tests/deploy/fake_daemon.py PORT RESUME_SECRET
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from fake_model import FakeModel  # noqa: E402

from streamasr.server.app import Server  # noqa: E402
from streamasr.server.config import ServerConfig  # noqa: E402


def main() -> None:
    port, secret = int(sys.argv[1]), sys.argv[2]
    config = ServerConfig(port=port, max_sessions=4, resume_secret=secret, drain_timeout_s=5.0)
    server = Server(config, model_factory=lambda _spec: FakeModel())
    asyncio.run(server.run(lambda s: print(f"ready {s.port}", flush=True)))


if __name__ == "__main__":
    main()
