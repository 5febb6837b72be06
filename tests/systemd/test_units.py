"""The unit files in systemd/: systemd-analyze verify passes cleanly; settings match the daemon."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from streamasr.cli import _build_parser
from streamasr.meeting.store import default_out_dir
from streamasr.server.config import ServerConfig

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:  # a hard failure: a skip would leave the units untested
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    return path


def verify(unit: Path, tmp_path: Path, user: bool) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"  # a user manager needs XDG_RUNTIME_DIR, even to verify
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    cmd = [analyze(), *(["--user"] if user else []), "verify", str(unit)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def service(unit: Path) -> dict[str, str]:
    """The [Service] settings; a repeated key (Environment=) has its values joined by newlines."""
    return service_of(unit.read_text())


def service_of(text: str) -> dict[str, str]:
    section, settings = "", dict[str, str]()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = f"{settings[key]}\n{value}" if key in settings else value
    return settings


@pytest.mark.parametrize(
    ("name", "user"), [("streamasr.service", False), ("streamasr-meeting.service", True)]
)
def test_systemd_analyze_verify_is_clean(name: str, user: bool, tmp_path: Path) -> None:
    result = verify(UNITS / name, tmp_path, user)
    # verify exits 0 on unknown keys and bad values, only warning about them: demand silence
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above would see a typo: verify reports it on stderr."""
    bad = tmp_path / "streamasr.service"
    bad.write_text(
        (UNITS / "streamasr.service").read_text().replace("ProtectHome=yes", "ProtectHome=bogus")
    )
    assert "bogus" in verify(bad, tmp_path, user=False).stderr


def test_daemon_unit_settings() -> None:
    s = service(UNITS / "streamasr.service")
    assert s["Type"] == "notify"  # streamasr.server.app sends READY=1 after warm-up
    assert float(s["TimeoutStopSec"]) > ServerConfig().drain_timeout_s
    assert s["KillSignal"] == "SIGTERM" and s["Restart"] == "on-failure"
    assert s["DynamicUser"] == "yes" and s["CacheDirectory"] == "streamasr"
    assert "STREAMASR_CACHE_DIR=%C/streamasr" in s["Environment"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges"):
        assert s[key] in ("strict", "yes"), key
    assert s["CapabilityBoundingSet"] == "" and s["UMask"] == "0077"
    assert s["ProtectProc"] == "invisible"
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert_limits(s)


def assert_limits(s: dict[str, str]) -> None:
    """Memory, task and descriptor caps are set, to a fixed size or a share of RAM."""
    assert re.fullmatch(r"\d+[KMG]|\d+%", s["MemoryMax"]), s["MemoryMax"]
    assert 64 <= int(s["TasksMax"]) <= 4096, s["TasksMax"]
    assert 256 <= int(s["LimitNOFILE"]) <= 65_536, s["LimitNOFILE"]


@pytest.mark.parametrize("name", ["streamasr.service", "streamasr-meeting.service"])
def test_exec_start_is_a_valid_command_line(name: str) -> None:
    argv = shlex.split(service(UNITS / name)["ExecStart"])
    assert argv[:2] == ["/usr/bin/env", "streamasr"]
    _build_parser().parse_args(argv[2:])  # exits (SystemExit) on a flag the CLI does not have


def test_meeting_unit_writes_to_its_state_directory() -> None:
    s = service(UNITS / "streamasr-meeting.service")
    assert s["StateDirectory"] == "streamasr/meetings"
    assert default_out_dir({"STATE_DIRECTORY": "/home/u/.local/state/streamasr/meetings"}) == Path(
        "/home/u/.local/state/streamasr/meetings"
    )
    assert default_out_dir({}).parts[-3:] == ("share", "streamasr", "meetings")


def test_meeting_unit_is_sandboxed() -> None:
    s = service(UNITS / "streamasr-meeting.service")
    assert s["UMask"] == "0077" and s["StateDirectoryMode"] == "0700"  # transcripts are private
    assert s["ProtectSystem"] == "strict" and s["ProtectHome"] == "read-only"
    assert s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert "ReadWritePaths" not in s  # StateDirectory= and CacheDirectory= are writable anyway
    assert s["RestrictAddressFamilies"] == "AF_UNIX"  # the microphone needs no network...
    assert "--listen" not in shlex.split(s["ExecStart"])  # ...which --listen would need
    assert_limits(s)


def test_documented_listen_drop_in_verifies(tmp_path: Path) -> None:
    """systemd/README.md's drop-in for --listen: valid, and it opens the IP families."""
    text = (UNITS / "README.md").read_text()
    drop_in = re.search(r"```ini\n(.*?)```", text, re.S)
    assert drop_in is not None
    d = service_of(drop_in.group(1))
    assert set(d["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6"}
    argv = shlex.split(d["ExecStart"].split("\n")[-1])
    assert "--listen" in argv
    _build_parser().parse_args(argv[2:])
    units = tmp_path / ".config" / "systemd" / "user"  # the user search path under HOME=tmp_path
    (units / "streamasr-meeting.service.d").mkdir(parents=True)
    unit = units / "streamasr-meeting.service"
    shutil.copyfile(UNITS / "streamasr-meeting.service", unit)
    (units / "streamasr-meeting.service.d" / "listen.conf").write_text(drop_in.group(1))
    result = verify(unit, tmp_path, user=True)
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), result.stderr
