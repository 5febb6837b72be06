"""`streamasr serve` on the command line: refusals before anything starts, and the help text."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path

import pytest

from streamasr.cli import main
from streamasr.server.config import ServerConfig


def test_serve_refuses_a_public_address_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMASR_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on '0.0.0.0' without a token" in capsys.readouterr().err


def test_serve_reports_a_bad_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text("max_sessions = 'many'\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "bad value 'many' for max_sessions" in capsys.readouterr().err


def test_serve_reports_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--model", "--config", "--token", "--allow-origin"):
        assert flag in out


# Settings of the TOML file and the environment only: tuning that few operators touch.
TOML_ONLY = {
    "outgoing_queue",
    "max_backlog_s",
    "batch_budget_ms",
    "slow_partials_lag_s",
    "lag_warning_s",
    "static_dir",
}


def test_every_setting_but_the_tuning_ones_has_a_flag() -> None:
    from streamasr.cli import _build_parser

    serve = next(
        action.choices["serve"]
        for action in _build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    dests = {action.dest for action in serve._actions}
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert fields - TOML_ONLY <= dests, sorted(fields - TOML_ONLY - dests)
