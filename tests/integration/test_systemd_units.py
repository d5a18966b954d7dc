"""The units in systemd/, checked by systemd's own tools.

`systemd-analyze verify` checks that every ExecStart binary exists, and the units name
the installed path `/opt/bastion/bin/bastion`. Each test therefore copies the units into
a temp dir with that one path replaced by this checkout's real `.venv/bin/bastion`
(nothing else changes), and verifies the copies. verify exits 0 even when it ignores a
bad line, so a test also requires its stderr to be empty. sysusers.d and tmpfiles.d are
applied for real with `--root` into a temp dir (they create a passwd file and
directories there, nothing on the host).

`scripts/test` installs the `systemd` package when `systemd-analyze` is missing; the
skip below is for a machine where even that wasn't possible.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import BASTION_BIN

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BIN = "/opt/bastion/bin/bastion"
UNITS = ("bastion.service", "bastion-prune.service", "bastion-prune.timer")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing and scripts/test could not install the systemd package",
)


def copy_units(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        (into / name).write_text(text.replace(INSTALLED_BIN, str(BASTION_BIN)))
    return into


def verify(directory: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS_DIR / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_units_verify_cleanly(tmp_path: Path) -> None:
    units = copy_units(tmp_path / "units")

    result = verify(units, *UNITS)

    assert (result.returncode, result.stderr) == (0, "")


def test_units_name_the_installed_binary_and_home() -> None:
    service = unit_settings("bastion.service")
    assert service["ExecStart"] == [f"{INSTALLED_BIN} --home /var/lib/bastion serve"]
    prune = unit_settings("bastion-prune.service")
    [command] = prune["ExecStart"]
    assert command.startswith(f"{INSTALLED_BIN} --home /var/lib/bastion ")
    assert "recordings prune --older-than ${BASTION_RETENTION}" in command
    assert prune["Environment"] == ["BASTION_RETENTION=90d"]


def test_the_prune_command_exists_with_that_flag() -> None:
    help_text = subprocess.run(
        [str(BASTION_BIN), "recordings", "prune", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--older-than" in help_text


def test_service_is_hardened_as_documented() -> None:
    service = unit_settings("bastion.service")
    expected = {
        "Type": ["notify"],
        "User": ["bastion"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "StateDirectory": ["bastion"],
        "LogsDirectory": ["bastion"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["WatchdogSec"] and service["TimeoutStopSec"] == ["30s"]
    assert service["LimitNOFILE"] == ["65536"]  # not systemd's soft 1024: sessions hold fds


def test_systemds_own_exposure_rating_is_low(tmp_path: Path) -> None:
    units = copy_units(tmp_path / "units")

    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=25", "--no-pager",
         "bastion.service"],
        cwd=units, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for bastion.service" in result.stdout


def test_low_port_drop_in_verifies_and_adds_only_net_bind(tmp_path: Path) -> None:
    units = copy_units(tmp_path / "units")
    drop_in = units / "bastion.service.d"
    drop_in.mkdir()
    shutil.copy(UNITS_DIR / "low-port.conf", drop_in / "low-port.conf")

    result = verify(units, "bastion.service")

    assert (result.returncode, result.stderr) == (0, "")
    lines = [
        line
        for line in (UNITS_DIR / "low-port.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == [
        "[Service]",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ]


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The negative control: the check above would notice a mistake.
    units = copy_units(tmp_path / "units")
    service = units / "bastion.service"
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy"))

    result = verify(units, "bastion.service")

    assert "Failed to parse service type" in result.stderr


def test_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(UNITS_DIR / "bastion.service", units / "bastion.service")

    result = verify(units, "bastion.service")

    assert result.returncode != 0
    assert f"{INSTALLED_BIN} is not executable" in result.stderr


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)

    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(UNITS_DIR / "bastion.sysusers")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create", str(UNITS_DIR / "bastion.tmpfiles")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    [entry] = [
        line
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("bastion:")
    ]
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert (home, shell) == ("/var/lib/bastion", "/usr/sbin/nologin")
    assert int(uid) < 1000  # a system user
    for path, mode in (
        ("var/lib/bastion", 0o700),
        ("var/lib/bastion/recordings", 0o700),
        ("var/log/bastion", 0o750),
    ):
        info = (root / path).stat()
        assert stat.S_IMODE(info.st_mode) == mode, path
        assert (info.st_uid, info.st_gid) == (int(uid), int(gid)), path
