"""Certificates from `bastion grant issue`, read by the real `ssh-keygen -L` and used
against a real OpenSSH sshd that trusts the bastion's CA (`TrustedUserCAKeys`).

The sshd here is a dedicated one (not the shared `sshd` fixture): it trusts this
module's bastion CA, and `AuthorizedPrincipalsFile` lets a certificate naming the
principal `prod-web` log in as root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bastion.cli import cli
from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.service import Bastion, GrantRequest
from tests.peers import SSHD_BIN, Sshd, ssh_command, write_known_hosts

# Forbidden in every certificate, whatever the grant.
NEVER = {"permit-agent-forwarding", "permit-X11-forwarding", "permit-user-rc"}
CLEAN_ENV = {"BASTION_HOME": None, "BASTION_CA_PASSPHRASE": None}


def bastion(home: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], env=CLEAN_ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def issue(home: Path, key_dir: Path, *options: str) -> dict[str, Any]:
    """`grant issue --generate-key KEY_DIR --json` for agent `bot`, task `t-1`."""
    out = bastion(
        home,
        *("grant", "issue", "--agent", "bot", "--task", "t-1"),
        *("--generate-key", str(key_dir), "--json", *options),
    )
    data: dict[str, Any] = json.loads(out)
    return data


def keygen(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def fingerprint(pub_path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub_path)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


@dataclass
class Listing:
    """What `ssh-keygen -L` says about a certificate."""

    fields: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)

    @property
    def valid(self) -> tuple[datetime, datetime]:
        # "from 2026-11-28T12:21:46 to 2026-11-28T12:52:46", in TZ=UTC (see below).
        _, start, _, end = self.fields["Valid"].split()
        return (
            datetime.fromisoformat(start).replace(tzinfo=UTC),
            datetime.fromisoformat(end).replace(tzinfo=UTC),
        )

    @property
    def critical_options(self) -> dict[str, str]:
        return dict(item.partition(" ")[::2] for item in self.lists["Critical Options"])


def keygen_list(cert_path: Path) -> Listing:
    result = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},  # it prints times in local time
    )
    lines = result.stdout.splitlines()
    assert lines[0] == f"{cert_path}:"
    listing = Listing()
    section = ""
    for line in lines[1:]:
        if line.startswith(" " * 16):  # an item of the section above
            listing.lists[section].append(line.strip())
            continue
        name, _, value = line.strip().partition(":")
        value = value.strip()
        if name in ("Principals", "Critical Options", "Extensions"):
            section = name
            listing.lists[name] = []
            assert value in ("", "(none)"), line
        else:
            listing.fields[name] = value
    return listing


def close_to(actual: datetime, expected: datetime) -> bool:
    return abs(actual - expected) <= timedelta(seconds=2)


# -- the bastion home these tests share ----------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialized home with SSH targets prod-web and staging-web and database prod-db."""
    base = tmp_path_factory.mktemp("certs")
    home = base / "home"
    bastion(home, "init")
    login = keygen(base / "target-keys" / "login")
    host = keygen(base / "target-keys" / "host")
    for name in ("prod-web", "staging-web"):
        bastion(
            home,
            *("target", "add-ssh", name, "--host", "127.0.0.1", "--user", "deploy"),
            *("--identity", str(login), "--host-key", f"{host}.pub", "--no-check"),
        )
    (base / "pw").write_text("pw\n")
    bastion(
        home,
        *("target", "add-postgres", "prod-db", "--host", "127.0.0.1", "--database", "appdb"),
        *("--user", "app", "--password-file", str(base / "pw"), "--no-check"),
    )
    return home


# -- ssh-keygen -L ---------------------------------------------------------------


def test_certificate_content(home: Path, tmp_path: Path) -> None:
    issued_at = datetime.now(UTC)
    grant = issue(home, tmp_path / "agent", "--target", "prod-web", "--ttl", "45m")
    key = tmp_path / "agent" / "id_ed25519"

    listing = keygen_list(Path(grant["certificate"]))

    assert grant["certificate"] == f"{key}-cert.pub"
    assert listing.fields["Type"] == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert listing.fields["Public key"] == f"ED25519-CERT {fingerprint(Path(f'{key}.pub'))}"
    ca = fingerprint(home / "keys" / "ca.pub")
    assert listing.fields["Signing CA"] == f"ED25519 {ca} (using ssh-ed25519)"
    assert listing.fields["Key ID"] == f'"grant={grant["id"]} agent=bot task=t-1"'
    assert listing.fields["Serial"] == str(grant["serial"])
    assert listing.lists["Principals"] == ["prod-web"]
    valid_after, valid_before = listing.valid
    assert close_to(valid_after, issued_at - timedelta(seconds=60))
    assert close_to(valid_before, issued_at + timedelta(minutes=45))
    assert close_to(valid_after, datetime.fromisoformat(grant["valid_after"]))
    assert close_to(valid_before, datetime.fromisoformat(grant["valid_before"]))
    assert listing.critical_options == {}
    assert listing.lists["Extensions"] == ["permit-pty"]


def test_default_ttl_is_30_minutes(home: Path, tmp_path: Path) -> None:
    issued_at = datetime.now(UTC)
    grant = issue(home, tmp_path / "agent", "--target", "prod-web")
    valid_after, valid_before = keygen_list(Path(grant["certificate"])).valid
    assert close_to(valid_after, issued_at - timedelta(seconds=60))
    assert close_to(valid_before, issued_at + timedelta(minutes=30))


def test_serials_are_unique_and_increasing(home: Path, tmp_path: Path) -> None:
    serials = [
        int(
            keygen_list(
                Path(issue(home, tmp_path / f"agent{i}", "--target", "prod-web")["certificate"])
            ).fields["Serial"]
        )
        for i in range(3)
    ]
    assert serials[0] < serials[1] < serials[2]


def test_principals_are_the_granted_targets(home: Path, tmp_path: Path) -> None:
    grant = issue(home, tmp_path / "agent", "--target", "staging-web", "--target", "prod-web")
    assert keygen_list(Path(grant["certificate"])).lists["Principals"] == [
        "staging-web",
        "prod-web",
    ]


def test_critical_options_when_given(home: Path, tmp_path: Path) -> None:
    grant = issue(
        home,
        tmp_path / "agent",
        *("--target", "prod-web", "--force-command", "uptime --pretty"),
        *("--source-address", "10.1.2.3/8,192.0.2.7"),
    )
    assert keygen_list(Path(grant["certificate"])).critical_options == {
        "force-command": "uptime --pretty",
        "source-address": "10.0.0.0/8,192.0.2.7/32",
    }


@pytest.mark.parametrize(
    ("options", "extensions"),
    [
        (["--target", "prod-web"], ["permit-pty"]),
        (["--target", "prod-web", "--no-pty"], []),
        (["--target", "prod-web", "--no-port-forwarding"], ["permit-pty"]),
        (["--target", "prod-db"], ["permit-port-forwarding", "permit-pty"]),
        (["--target", "prod-db", "--no-pty"], ["permit-port-forwarding"]),
        (["--target", "prod-db", "--no-port-forwarding"], ["permit-pty"]),
        (["--target", "prod-web", "--target", "prod-db"], ["permit-port-forwarding", "permit-pty"]),
        (["--target", "prod-db", "--no-pty", "--no-port-forwarding"], []),
    ],
)
def test_extensions_are_only_what_the_grant_allows(
    home: Path, tmp_path: Path, options: list[str], extensions: list[str]
) -> None:
    grant = issue(home, tmp_path / "agent", *options)
    listed = keygen_list(Path(grant["certificate"]))
    assert listed.lists["Extensions"] == extensions
    assert not NEVER & set(listed.lists["Extensions"])
    assert listed.critical_options == {}


def issue_in_the_past(home: Path, key: Path, hours_ago: float) -> dict[str, Any]:
    """A 30-minute grant issued `hours_ago` through the service with a fixed clock."""
    clock = FixedClock(datetime.now(UTC) - timedelta(hours=hours_ago))
    service = Bastion.open(open_home(str(home)), clock, "clockwork")
    try:
        issued = service.issue_grant(
            GrantRequest(
                agent="bot",
                targets=("prod-web",),
                task="t-old",
                ttl=timedelta(minutes=30),
                pubkey=Path(f"{key}.pub"),
            )
        )
    finally:
        service.close()
    return {"id": issued.grant.id, "certificate": str(issued.certificate_path), "at": clock.now()}


def test_certificate_issued_in_the_past_is_expired(home: Path, tmp_path: Path) -> None:
    key = keygen(tmp_path / "agent" / "id_ed25519")
    grant = issue_in_the_past(home, key, hours_ago=2)
    valid_after, valid_before = keygen_list(Path(grant["certificate"])).valid
    assert valid_after == grant["at"].replace(microsecond=0) - timedelta(seconds=60)
    assert valid_before == grant["at"].replace(microsecond=0) + timedelta(minutes=30)
    assert valid_before < datetime.now(UTC)


# -- a real sshd trusting the bastion CA -------------------------------------------


@pytest.fixture(scope="module")
def ca_sshd(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """sshd trusting `home`'s CA, with root's authorized principal being `prod-web`."""
    missing = [t for t in (str(SSHD_BIN), "unshare", "ssh", "ssh-keygen") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the sshd peer needs root (private mount namespace, root login)")
    work = tmp_path_factory.mktemp("ca-sshd")
    principals = work / "authorized_principals"
    principals.write_text("prod-web\n")
    server = Sshd(work / "sshd")
    server.start(
        trusted_user_ca_keys=home / "keys" / "ca.pub",
        extra_config=f"AuthorizedPrincipalsFile {principals}",
    )
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Attempt:
    returncode: int
    stdout: str
    stderr: str
    log: str  # what sshd logged about this connection


def login(
    sshd: Sshd,
    key: Path,
    tmp_path: Path,
    command: str,
    expect_log: str,
    extra_opts: tuple[str, ...] = (),
) -> Attempt:
    """`ssh -i KEY root@127.0.0.1 COMMAND`; the client picks up KEY-cert.pub by itself."""
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, sshd.port, sshd.host_pub)
    offset = sshd.log_path.stat().st_size
    result = subprocess.run(
        ssh_command(sshd.port, key, "root", known_hosts, command, extra_opts=extra_opts),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # sshd's connection process may finish writing its log just after the client exits.
    deadline = time.monotonic() + 5
    while True:
        log = sshd.log_path.read_bytes()[offset:].decode(errors="replace")
        if expect_log in log or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return Attempt(result.returncode, result.stdout, result.stderr, log)


def test_granted_principal_logs_in(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    grant = issue(home, tmp_path / "agent", "--target", "prod-web")
    key = tmp_path / "agent" / "id_ed25519"

    accepted = f'Accepted certificate ID "grant={grant["id"]} agent=bot task=t-1"'
    attempt = login(ca_sshd, key, tmp_path, "true", accepted)

    assert attempt.returncode == 0, attempt.stderr
    assert accepted in attempt.log
    assert f"(serial {grant['serial']})" in attempt.log
    echoed = login(ca_sshd, key, tmp_path, "echo logged-in as $(id -un)", accepted)
    assert echoed.stdout == "logged-in as root\n"


def test_certificate_for_several_targets_including_the_principal(
    ca_sshd: Sshd, home: Path, tmp_path: Path
) -> None:
    issue(home, tmp_path / "agent", "--target", "staging-web", "--target", "prod-web")
    attempt = login(ca_sshd, tmp_path / "agent/id_ed25519", tmp_path, "true", "Accepted cert")
    assert attempt.returncode == 0, attempt.stderr


def test_wrong_principal_is_refused(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    issue(home, tmp_path / "agent", "--target", "staging-web")
    why = "Certificate does not contain an authorized principal"

    attempt = login(ca_sshd, tmp_path / "agent/id_ed25519", tmp_path, "true", why)

    assert attempt.returncode == 255
    assert "Permission denied (publickey)" in attempt.stderr
    assert why in attempt.log


def test_expired_certificate_is_refused(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    key = keygen(tmp_path / "agent" / "id_ed25519")
    issue_in_the_past(home, key, hours_ago=2)
    why = "Certificate invalid: expired"

    attempt = login(ca_sshd, key, tmp_path, "true", why)

    assert attempt.returncode == 255
    assert "Permission denied (publickey)" in attempt.stderr
    assert why in attempt.log


def test_source_address_is_enforced(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    issue(home, tmp_path / "far", "--target", "prod-web", "--source-address", "10.0.0.0/8")
    why = "not from a permitted source address (127.0.0.1)"

    refused = login(ca_sshd, tmp_path / "far/id_ed25519", tmp_path, "true", why)

    assert refused.returncode == 255
    assert why in refused.log
    # The same option naming loopback lets the login through.
    issue(home, tmp_path / "near", "--target", "prod-web", "--source-address", "127.0.0.0/8")
    allowed = login(ca_sshd, tmp_path / "near/id_ed25519", tmp_path, "true", "Accepted cert")
    assert allowed.returncode == 0, allowed.stderr


def test_force_command_is_honoured(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    issue(home, tmp_path / "agent", "--target", "prod-web", "--force-command", "echo forced")
    key = tmp_path / "agent" / "id_ed25519"

    for asked in ("echo asked", "cat /etc/hostname", "exit 7"):
        attempt = login(ca_sshd, key, tmp_path, asked, "forced-command")
        assert (attempt.returncode, attempt.stdout) == (0, "forced\n"), attempt.stderr
        assert "forced-command (key-option) 'echo forced'" in attempt.log


def test_no_pty_refuses_a_terminal(ca_sshd: Sshd, home: Path, tmp_path: Path) -> None:
    issue(home, tmp_path / "tty", "--target", "prod-web")
    issue(home, tmp_path / "notty", "--target", "prod-web", "--no-pty")

    allowed = login(
        ca_sshd, tmp_path / "tty/id_ed25519", tmp_path, "tty", "Accepted cert", ("-tt",)
    )
    refused = login(
        ca_sshd, tmp_path / "notty/id_ed25519", tmp_path, "tty", "Accepted cert", ("-tt",)
    )

    assert allowed.returncode == 0, allowed.stderr
    # With a terminal, sshd's own notices (no lastlog in its namespace) share the output.
    assert re.search(r"^/dev/pts/\d+\r?$", allowed.stdout, re.M), allowed.stdout
    # `-tt` insists on a terminal: refused one, the client gives up before the command.
    assert (refused.returncode, refused.stdout) == (255, "")
    assert "PTY allocation request failed" in refused.stderr
