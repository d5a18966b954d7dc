"""`bastion doctor`: one line per check, exit 1 on any FAIL; each check's failure, for real.

A port held by a running bastion or by sshd is tested in
tests/integration/test_operations.py (they need those peers).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bastion.doctor import FAIL, OK, WARN, check_clock_skew
from tests.cli.conftest import ok, run
from tests.peers import free_port

BASTION_BIN = Path(sys.executable).with_name("bastion")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    ok(root, "init")
    (root / "bastion.toml").write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\n')
    return root


def doctor(home: Path, *args: str) -> tuple[int, dict[str, tuple[str, str]]]:
    result = run(home, "doctor", "--json", *args)
    report = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    return result.exit_code, {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}


def test_a_fresh_home_passes_every_check(home: Path) -> None:
    result = run(home, "doctor")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"bastion doctor: {home}"
    assert lines[-1] == "all checks passed"
    names = [line.split()[1] for line in lines[1:-1]]
    assert names == ["config", "ca", "host", "store", "clock", "recordings", "listen"]
    assert all(line.startswith("ok ") for line in lines[1:-1])
    assert "clock skew  n/a (SQLite: local clock)" in result.stdout
    assert "schema version" in result.stdout and "(current)" in result.stdout
    # The write probe left nothing behind.
    assert list((home / "recordings").iterdir()) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_world_readable_ca_key_fails(home: Path, mode: int) -> None:
    (home / "keys" / "ca").chmod(mode)

    code, checks = doctor(home)

    assert code == 1
    status, detail = checks["ca key"]
    assert status == FAIL
    assert f"mode {mode:04o}" in detail and "chmod 600" in detail
    assert checks["host key"][0] == OK


def test_text_report_marks_the_failure(home: Path) -> None:
    (home / "keys" / "host_ed25519").chmod(0o644)

    result = run(home, "doctor")

    assert result.exit_code == 1
    [line] = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert "host key" in line and "0644" in line
    assert result.stdout.splitlines()[-1] == "1 check(s) failed"


def test_key_owned_by_another_user_fails(home: Path) -> None:
    os.chown(home / "keys" / "ca", 65534, 65534)

    code, checks = doctor(home)

    assert code == 1
    assert checks["ca key"][0] == FAIL
    assert "owned by uid 65534" in checks["ca key"][1]


def test_missing_key_fails(home: Path) -> None:
    (home / "keys" / "host_ed25519").unlink()

    code, checks = doctor(home)

    assert code == 1
    assert checks["host key"] == (FAIL, f"{home}/keys/host_ed25519 is missing: run `bastion init`")


def test_missing_store_fails(home: Path) -> None:
    (home / "state.db").unlink()

    code, checks = doctor(home)

    assert code == 1
    assert checks["store"][0] == FAIL
    assert "bastion init" in checks["store"][1]


def test_store_newer_than_this_bastion_fails(home: Path) -> None:
    with sqlite3.connect(home / "state.db") as db:
        db.execute("INSERT INTO schema_version (version) VALUES (999)")

    code, checks = doctor(home)

    assert code == 1
    assert checks["store"][0] == FAIL
    assert "999" in checks["store"][1] and "upgrade bastion" in checks["store"][1]


def test_bad_config_is_one_failed_check(home: Path) -> None:
    (home / "bastion.toml").write_text('[server]\nlog_format = "xml"\n')

    code, checks = doctor(home)

    assert code == 1
    assert list(checks) == ["config"]
    assert checks["config"][0] == FAIL and "log_format" in checks["config"][1]


def test_recordings_path_not_a_directory_fails(home: Path) -> None:
    (home / "recordings").rmdir()
    (home / "recordings").write_text("not a directory")

    code, checks = doctor(home)

    assert code == 1
    assert checks["recordings"] == (FAIL, f"{home}/recordings is not a directory")


def test_missing_recordings_dir_is_a_warning(home: Path) -> None:
    (home / "recordings").rmdir()

    code, checks = doctor(home)

    assert code == 0
    assert checks["recordings"][0] == WARN


def test_read_only_recordings_dir_fails(home: Path) -> None:
    # Root writes through mode bits, so make it really read-only: a read-only bind mount
    # in a private mount namespace that only this doctor process sees.
    recordings = home / "recordings"
    script = (
        f"mount --bind {recordings} {recordings} && "
        f"mount -o remount,bind,ro {recordings} && "
        f"exec {BASTION_BIN} --home {home} doctor --json"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["recordings"]["status"] == FAIL
    assert "Read-only file system" in checks["recordings"]["detail"]


def test_port_held_by_something_else_fails(home: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]

        code, checks = doctor(home, "--listen", f"127.0.0.1:{port}")

    assert code == 1
    assert checks["listen"][0] == FAIL
    assert "not an SSH server" in checks["listen"][1]


def test_port_below_1024_without_the_capability_fails(home: Path) -> None:
    # As root the bind would succeed; a process without CAP_NET_BIND_SERVICE gets EACCES.
    script = f"exec {BASTION_BIN} --home {home} doctor --json --listen 127.0.0.1:1"
    result = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_bind_service", "sh", "-c", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["listen"]["status"] == FAIL
    assert "CAP_NET_BIND_SERVICE" in checks["listen"]["detail"]


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(0.2, OK), (-0.5, OK), (2.0, WARN), (-3.0, WARN), (5.0, FAIL), (-60.0, FAIL)],
)
def test_clock_skew_hook_thresholds(seconds: float, status: str) -> None:
    check = check_clock_skew(lambda: timedelta(seconds=seconds), "PostgresStore")
    assert check.status == status
    assert f"by {abs(seconds):.3f}s" in check.detail
    assert ("ahead of" if seconds >= 0 else "behind") in check.detail


def test_clock_skew_hook_failure_is_reported() -> None:
    def broken() -> timedelta:
        raise ConnectionError("server closed the connection")

    check = check_clock_skew(broken, "PostgresStore")
    assert check.status == FAIL
    assert "server closed the connection" in check.detail


def test_no_clock_skew_hook_is_not_applicable() -> None:
    check = check_clock_skew(None, "SQLite")
    assert (check.status, check.detail) == (OK, "n/a (SQLite: local clock)")
