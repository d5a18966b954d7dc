"""Registering targets against real peers: host keys from `ssh-keyscan`, `--scan`, and
the one connection `target add-ssh`/`add-postgres` make before storing anything.

- `--host-key` reads what `ssh-keyscan` writes (plain and `-H` hashed, `[host]:port`),
  and picks the key `ssh-keygen -F` finds for the host (differential, on files with
  several hosts, patterns, ports and key types, hashed by the real `ssh-keygen -H`);
- `--scan` shows the fingerprint exactly as `ssh-keygen -lf` prints it, and trusts it
  only with `--yes` or a "y" typed on a terminal;
- the check refuses a wrong host key, a refused login, an unreachable port, `sslmode
  require` against a server without TLS, a wrong password and a missing database, in one
  line, storing nothing; `--no-check` registers anyway and says so.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bastion import knownhosts
from bastion.cli import cli as bastion_cli
from bastion.errors import InvalidInput
from tests.integration.conftest import BASTION_BIN, cli, cli_json, keygen
from tests.integration.test_postgres_tls import tls_postgres  # noqa: F401 (a fixture)
from tests.peers import Postgres, Sshd, free_port

LOOPBACK = "127.0.0.1"
CHECK_FAILED = 9


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    cli(home, "init")
    return home


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    clean: dict[str, str | None] = {"BASTION_HOME": None, "BASTION_CA_PASSPHRASE": None}
    return CliRunner().invoke(
        bastion_cli, ["--home", str(home), *args], env={**clean, **(env or {})}
    )


def refused(result: Result, code: int, fragment: str) -> str:
    assert result.exit_code == code, (result.output, result.exception)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()[-1:]
    assert line.startswith("bastion: error: ") and fragment in line, result.stderr
    return line


def no_targets(home: Path) -> bool:
    return cli_json(home, "target", "list") == []


def add_ssh(sshd: Sshd, login_key: Path, *extra: str, port: int | None = None) -> list[str]:
    return [
        *("target", "add-ssh", "web", "--host", LOOPBACK, "--port", str(port or sshd.port)),
        *("--user", sshd.login_user, "--identity", str(login_key), *extra),
    ]


def keyscan(sshd: Sshd, *options: str) -> str:
    result = subprocess.run(
        ["ssh-keyscan", *options, "-p", str(sshd.port), LOOPBACK],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def pinned(home: Path) -> str:
    return str(cli_json(home, "target", "show", "web")["host_key"])


def sshd_key(sshd: Sshd) -> str:
    return " ".join(sshd.host_pub.split()[:2])


# -- host keys from ssh-keyscan ------------------------------------------------------


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_keyscan_output_registers(
    home: Path, sshd: Sshd, target_login_key: Path, tmp_path: Path, hashed: bool
) -> None:
    scanned = tmp_path / "web.keys"
    scanned.write_text(keyscan(sshd, *(["-H"] if hashed else [])))
    assert f"[{LOOPBACK}]:{sshd.port} " in scanned.read_text() or hashed

    out = cli(home, *add_ssh(sshd, target_login_key, "--host-key", str(scanned)))

    assert out.startswith("added ssh target web\n")
    assert "checked: host key and login work from here" in out
    assert pinned(home) == sshd_key(sshd)
    [event] = [e for e in cli_json(home, "audit", "list") if e["action"] == "target.added"]
    assert event["details"]["checked"] is True


def test_keyscan_for_another_port_is_refused(
    home: Path, sshd: Sshd, target_login_key: Path, tmp_path: Path
) -> None:
    scanned = tmp_path / "web.keys"
    scanned.write_text(keyscan(sshd))  # [127.0.0.1]:PORT lines
    result = run(home, *add_ssh(sshd, target_login_key, "--host-key", str(scanned), port=22))
    refused(result, 2, f"{scanned}: no key for {LOOPBACK} (its 1 known_hosts line(s)")
    assert no_targets(home)


# -- differential: the key ssh-keygen -F finds is the key bastion pins ----------------


def _pub(path: Path, kind: str, bits: str | None = None) -> str:
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)]
    subprocess.run([*argv, *(["-b", bits] if bits else [])], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def known_hosts_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("kh-keys")
    kinds = {"ed": ("ed25519", None), "ed2": ("ed25519", None), "ec": ("ecdsa", "256")}
    kinds |= {"ec384": ("ecdsa", "384"), "rsa": ("rsa", "3072")}
    return {name: _pub(base / name, *spec) for name, spec in kinds.items()}


def _ssh_keygen_find(known_hosts: Path, name: str) -> list[str]:
    """The key lines `ssh-keygen -F NAME -f FILE` finds (hashed or not)."""
    result = subprocess.run(
        ["ssh-keygen", "-F", name, "-f", str(known_hosts)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln and not ln.startswith("#")]
    return [" ".join(ln.split()[1:3]) for ln in lines]


@pytest.mark.parametrize("hash_it", [False, True], ids=["plain", "ssh-keygen-H"])
def test_the_key_ssh_keygen_finds(
    known_hosts_keys: dict[str, str], tmp_path: Path, hash_it: bool
) -> None:
    k = known_hosts_keys
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "# a comment\n\n"
        f"web1.internal {k['rsa']}\n"
        f"web1.internal {k['ec']}\n"
        f"web1.internal {k['ed']}\n"
        f"[web1.internal]:2222 {k['ed2']}\n"
        f"[web1.internal]:2222 {k['ec384']}\n"
        f"db1.internal,10.0.0.7 {k['ec384']}\n"
        f"[10.0.0.7]:5022 {k['rsa']}\n"
    )
    if hash_it:
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known_hosts)], check=True)
        assert "web1.internal" not in known_hosts.read_text()
    text = known_hosts.read_text()
    cases = [
        ("web1.internal", 22),
        ("web1.internal", 2222),
        ("db1.internal", 22),
        ("10.0.0.7", 22),
        ("10.0.0.7", 5022),
        ("web2.internal", 22),
        ("web1.internal", 2200),
    ]
    for host, port in cases:
        name = knownhosts.lookup_name(host, port)
        theirs = _ssh_keygen_find(known_hosts, name)
        found = knownhosts.find_host_keys(text, "kh", host, port) if theirs else []
        assert sorted(key.public_line for key in found) == sorted(theirs), name
        if theirs:
            chosen = knownhosts.select_host_key(text, "kh", host, port).public_line
            preference = [kind for kind in knownhosts.PREFERENCE]
            best = min(theirs, key=lambda line: preference.index(line.split()[0]))
            assert chosen == best
        else:
            with pytest.raises(InvalidInput, match=re.escape(f"no key for {name} ")):
                knownhosts.select_host_key(text, "kh", host, port)


# -- --scan ----------------------------------------------------------------------------


def _ssh_keygen_lf(sshd: Sshd) -> str:
    """`ssh-keyscan -p PORT 127.0.0.1 | ssh-keygen -lf -`: the line an operator compares."""
    result = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=keyscan(sshd), capture_output=True, text=True
    )
    [line] = result.stdout.splitlines()
    return line


def test_scan_with_yes(home: Path, sshd: Sshd, target_login_key: Path) -> None:
    result = run(home, *add_ssh(sshd, target_login_key, "--scan", "--yes"))

    assert result.exit_code == 0, result.output
    assert result.stderr == f"{LOOPBACK}:{sshd.port} offers host key {_ssh_keygen_lf(sshd)}\n"
    assert result.stdout.startswith("added ssh target web\n")
    assert pinned(home) == sshd_key(sshd)


def test_scan_for_a_type_the_target_lacks(home: Path, sshd: Sshd, target_login_key: Path) -> None:
    args = add_ssh(sshd, target_login_key, "--scan", "--yes", "--host-key-type", "ssh-rsa")
    line = refused(run(home, *args), CHECK_FAILED, f"can't scan the host key of {LOOPBACK}:")
    assert line.endswith("(does it have a ssh-rsa host key?)")
    assert no_targets(home)


def test_scan_without_a_terminal_or_yes_is_refused(
    home: Path, sshd: Sshd, target_login_key: Path
) -> None:
    result = run(home, *add_ssh(sshd, target_login_key, "--scan"))
    refused(result, 2, "--scan: confirm the host key with --yes (no terminal to ask on)")
    assert no_targets(home)


@pytest.mark.parametrize(("answer", "stored"), [(b"y\n", True), (b"\n", False), (b"n\n", False)])
def test_scan_asks_on_a_terminal(
    home: Path, sshd: Sshd, target_login_key: Path, answer: bytes, stored: bool
) -> None:
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    proc = subprocess.Popen(
        [str(BASTION_BIN), "--home", str(home), *add_ssh(sshd, target_login_key, "--scan")],
        stdin=secondary,
        stderr=secondary,
        stdout=subprocess.PIPE,
        env=env,
    )
    os.close(secondary)
    try:
        seen = _read_until(primary, b"Trust this host key? [y/N] ")
        assert _ssh_keygen_lf(sshd).encode() in seen
        os.write(primary, answer)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == (0 if stored else 2)
        assert (b"added ssh target web" in out) is stored
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(primary)
    assert no_targets(home) is not stored


def _read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, seen
        seen += os.read(fd, 4096)
    return seen


def test_scan_and_host_key_exclude_each_other(
    home: Path, sshd: Sshd, target_login_key: Path
) -> None:
    both = add_ssh(sshd, target_login_key, "--scan", "--host-key", str(sshd.host_pub_path))
    refused(run(home, *both), 2, "give exactly one of --host-key or --scan")
    refused(run(home, *add_ssh(sshd, target_login_key)), 2, "give exactly one of --host-key")
    assert no_targets(home)


# -- the check: SSH ----------------------------------------------------------------------


def test_wrong_host_key_is_refused(
    home: Path, sshd: Sshd, target_login_key: Path, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor")
    result = run(home, *add_ssh(sshd, target_login_key, "--host-key", f"{impostor}.pub"))
    line = refused(result, CHECK_FAILED, "does not match the pinned one")
    assert line == (
        "bastion: error: target web presented a host key that does not match the pinned one;"
        " refusing to connect; nothing was stored (--no-check adds it without connecting)"
    )
    assert no_targets(home)


def test_refused_login_is_refused(
    home: Path, sshd: Sshd, target_login_key: Path, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger")  # not in sshd's authorized keys
    args = add_ssh(sshd, stranger, "--host-key", str(sshd.host_pub_path))
    refused(run(home, *args), CHECK_FAILED, "target web refused the bastion's login 'bastion-t'")
    assert no_targets(home)


def test_unreachable_is_refused_and_no_check_registers_it(
    home: Path, sshd: Sshd, target_login_key: Path
) -> None:
    closed = free_port()
    args = add_ssh(sshd, target_login_key, "--host-key", str(sshd.host_pub_path), port=closed)
    refused(
        run(home, *args),
        CHECK_FAILED,
        f"can't reach target web ({LOOPBACK}:{closed}): connection refused; nothing was stored",
    )
    assert no_targets(home)

    out = cli(home, *args, "--no-check")

    assert "not checked (--no-check): nothing connected to the target" in out
    assert cli_json(home, "target", "show", "web")["port"] == closed
    [event] = [e for e in cli_json(home, "audit", "list") if e["action"] == "target.added"]
    assert event["details"]["checked"] is False


# -- the check: PostgreSQL -----------------------------------------------------------------


def add_pg(server: Postgres, *extra: str, database: str = "appdb", name: str = "db") -> list[str]:
    return [
        *("target", "add-postgres", name, "--host", LOOPBACK, "--port", str(server.port)),
        *("--database", database, "--user", "app", "--password-env", "PW", *extra),
    ]


def test_postgres_login_checked(home: Path, postgres: Postgres) -> None:
    out = cli(home, *add_pg(postgres), env={"PW": "app-secret"})
    assert "checked: TLS, login and database work from here" in out


@pytest.mark.parametrize(
    ("extra", "database", "password", "fragment"),
    [
        ((), "appdb", "wrong", "refused the bastion's login 'app': password authentication"),
        ((), "nosuchdb", "app-secret", 'database "nosuchdb" does not exist'),
        (("--sslmode", "require"), "appdb", "app-secret", "does not offer TLS (sslmode require)"),
    ],
    ids=["wrong-password", "missing-database", "require-without-tls"],
)
def test_postgres_refusals(
    home: Path,
    postgres: Postgres,
    extra: tuple[str, ...],
    database: str,
    password: str,
    fragment: str,
) -> None:
    result = run(home, *add_pg(postgres, *extra, database=database), env={"PW": password})
    line = refused(result, CHECK_FAILED, fragment)
    assert line.endswith("; nothing was stored (--no-check adds it without connecting)")
    assert password not in line
    assert no_targets(home)

    cli(home, *add_pg(postgres, *extra, "--no-check", database=database), env={"PW": password})
    assert cli_json(home, "target", "show", "db")["database"] == database


@pytest.fixture
def tls_server(tls_postgres: tuple[Postgres, Path, Path]) -> Iterator[tuple[Postgres, Path]]:  # noqa: F811
    server, right_ca, _ = tls_postgres
    yield server, right_ca


def test_postgres_tls_checked(home: Path, tls_server: tuple[Postgres, Path]) -> None:
    server, ca = tls_server
    cli(home, *add_pg(server, "--sslmode", "require"), env={"PW": "app-secret"})
    verify = ("--sslmode", "verify-full", "--sslrootcert", str(ca))
    out = cli(home, *add_pg(server, *verify, name="db2"), env={"PW": "app-secret"})
    assert "checked: TLS, login and database work from here" in out
    # The TLS-only server refuses a connection without TLS (pg_hba `hostnossl … reject`).
    result = run(home, *add_pg(server, name="db3"), env={"PW": "app-secret"})
    refused(result, CHECK_FAILED, "refused the bastion's login 'app'")
