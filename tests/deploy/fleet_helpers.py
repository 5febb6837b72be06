"""Helpers of the replica tests: free ports, and the check of clients that resumed."""

from __future__ import annotations

import json
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resumed_elsewhere(outcomes: list[tuple[int, str, str]], want: list[str]) -> int:
    """Check each `captions.py --json` run (exit code, stdout, stderr) ended well with every
    final of `want` once, in one gapless `seq`; the resumes that landed on another daemon."""
    elsewhere = 0
    for rc, out, err in outcomes:
        assert rc == 0, err + out
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["seq"] for e in events] == list(range(len(events))), err
        finals = [e for e in events if e["type"] == "transcript.final"]
        assert [f["text"] for f in finals] == want, err
        assert [f["segment_id"] for f in finals] == list(range(len(want)))
        elsewhere += sum(not e["same_session"] for e in events if e["type"] == "session.resumed")
    return elsewhere
