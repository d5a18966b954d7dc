"""`bastion target add-ssh | add-postgres | list | show | remove`, and their bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bastion.store.sqlite import SqliteStore
from tests.cli.conftest import (
    ALREADY_EXISTS,
    INVALID_INPUT,
    KEY_MATERIAL,
    NOT_FOUND,
    add_postgres_target,
    add_ssh_target,
    assert_error,
    audit_events,
    cert,
    make_key,
    ok,
    ok_json,
    pub,
    run,
    snapshot,
)

PASSWORD = "pg-Secret-9f3a"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """`login` (the bastion's upstream identity) and `host` (the target's host key)."""
    make_key(tmp_path / "keys", "login")
    make_key(tmp_path / "keys", "host")
    return tmp_path / "keys"


def add_ssh(home: Path, keys: Path, name: str = "prod-web", **options: str) -> list[str]:
    args = {
        "--host": "127.0.0.1",
        "--port": "2201",
        "--user": "deploy",
        "--identity": str(keys / "login"),
        "--host-key": str(pub(keys / "host")),
        **options,
    }
    # Nothing listens at these addresses: the registration check is tested against real
    # peers in tests/integration/test_target_checks.py.
    items = [item for pair in args.items() for item in pair]
    return ["target", "add-ssh", name, *items, "--no-check"]


def add_pg(home: Path, name: str = "prod-db", **options: str) -> list[str]:
    args = {
        "--host": "127.0.0.1",
        "--port": "5432",
        "--database": "appdb",
        "--user": "app",
        **options,
    }
    args = {k: v for k, v in args.items() if v is not None}
    items = [item for pair in args.items() for item in pair]
    return ["target", "add-postgres", name, *items, "--no-check"]


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pg.password"
    path.write_text(PASSWORD + "\n")
    return path


# -- ssh targets -------------------------------------------------------------------


def test_add_ssh_target(home: Path, keys: Path) -> None:
    host_key = pub(keys / "host").read_text().split()

    result = ok(home, *add_ssh(home, keys))

    assert result.stdout.startswith("added ssh target prod-web\n")
    shown = ok_json(home, "target", "show", "prod-web")
    assert shown["name"] == "prod-web"
    assert shown["kind"] == "ssh"
    assert (shown["host"], shown["port"], shown["user"]) == ("127.0.0.1", 2201, "deploy")
    assert shown["host_key"] == f"{host_key[0]} {host_key[1]}"  # pinned, comment dropped
    event = audit_events(home)[-1]
    assert event["action"] == "target.added"
    assert event["details"]["name"] == "prod-web"
    assert event["details"]["host_key"] == shown["host_key"]
    # The identity is the secret the gateway logs in with: stored, never shown.
    login = (keys / "login").read_text()
    for output in (result.stdout, json.dumps(shown), json.dumps(audit_events(home))):
        assert "PRIVATE KEY" not in output
    store = SqliteStore(home / "state.db")
    try:
        secret = store.get_target_secret("prod-web")
        assert secret is not None
        assert secret.value == login
    finally:
        store.close()


def test_host_key_as_a_line(home: Path, keys: Path) -> None:
    line = pub(keys / "host").read_text().strip()
    ok(home, *add_ssh(home, keys, **{"--host-key": line}))
    assert ok_json(home, "target", "show", "prod-web")["host_key"] == " ".join(line.split()[:2])


def test_host_key_from_keyscan_output(home: Path, keys: Path, tmp_path: Path) -> None:
    # What `ssh-keyscan -p 2201 127.0.0.1` writes, and a line for another port.
    ed = " ".join(pub(keys / "host").read_text().split()[:2])
    other = " ".join(pub(make_key(tmp_path / "more", "port22")).read_text().split()[:2])
    scanned = tmp_path / "web.keys"
    scanned.write_text(
        f"# 127.0.0.1:2201 SSH-2.0-OpenSSH_9.2p1\n[127.0.0.1]:2201 {ed}\n[127.0.0.1]:22 {other}\n"
    )
    out = ok(home, *add_ssh(home, keys, **{"--host-key": str(scanned)})).stdout
    assert "not checked (--no-check): nothing connected to the target" in out
    assert ok_json(home, "target", "show", "prod-web")["host_key"] == ed

    result = run(home, *add_ssh(home, keys, "web2", **{"--host-key": str(scanned), "--port": "23"}))
    assert_error(result, INVALID_INPUT, f"{scanned}: no key for [127.0.0.1]:23 (its 2 known_hosts")
    args = add_ssh(home, keys, "web3", **{"--host-key": str(scanned)})
    result = run(home, *args, "--host-key-type", "ecdsa-sha2-nistp256")
    assert_error(
        result, INVALID_INPUT, f"{scanned}: no ecdsa-sha2-nistp256 key (it has ssh-ed25519)"
    )


def test_scan_options_are_checked_first(home: Path, keys: Path) -> None:
    before = snapshot(home)
    result = run(home, *add_ssh(home, keys), "--scan")
    assert_error(result, INVALID_INPUT, "give exactly one of --host-key or --scan")
    assert_error(run(home, *add_ssh(home, keys), "--yes"), INVALID_INPUT, "--yes only goes with")
    assert snapshot(home) == before


def test_the_check_refuses_an_unreachable_target(home: Path, keys: Path) -> None:
    # Nothing listens on port 1 of the loopback: the check's connection is refused.
    args = [a for a in add_ssh(home, keys, **{"--port": "1"}) if a != "--no-check"]
    before = snapshot(home)
    line = assert_error(run(home, *args), 9, "can't reach target prod-web (127.0.0.1:1)")
    assert line.endswith("; nothing was stored (--no-check adds it without connecting)")
    assert snapshot(home) == before


def test_port_defaults_to_22(home: Path, keys: Path) -> None:
    args = add_ssh(home, keys)
    del args[5:7]  # --port 2201
    ok(home, *args)
    assert ok_json(home, "target", "show", "prod-web")["port"] == 22


@pytest.mark.parametrize(
    ("host_key", "fragment"),
    [
        ("ssh-ed25519 AAAAnotbase64", "--host-key: not an OpenSSH public key"),
        ("not a key at all", "--host-key: not an OpenSSH public key"),
        ("", "--host-key: no OpenSSH public key or known_hosts line"),
    ],
)
def test_bad_host_key_line(home: Path, keys: Path, host_key: str, fragment: str) -> None:
    before = snapshot(home)
    result = run(home, *add_ssh(home, keys, **{"--host-key": host_key}))
    assert_error(result, INVALID_INPUT, fragment)
    assert snapshot(home) == before


def test_bad_host_key_files(home: Path, keys: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello\n")
    two = tmp_path / "two.pub"  # two different keys of one type: which one is the host's?
    two.write_text(pub(keys / "host").read_text() + pub(keys / "login").read_text())
    # A certificate is not a host key to pin.
    signed = make_key(tmp_path / "certified", "key")
    subprocess_sign(keys / "host", signed)
    cases = [
        (garbage, f"{garbage}: not an OpenSSH public key"),
        (two, f"{two}: different ssh-ed25519 keys for the host (lines 1, 2)"),
        (keys / "host", f"{keys / 'host'}: this is a private key; give the .pub file"),
        (cert(signed), f"{cert(signed)}: is a certificate; give the plain public key"),
    ]
    before = snapshot(home)
    for path, fragment in cases:
        result = run(home, *add_ssh(home, keys, **{"--host-key": str(path)}))
        assert_error(result, INVALID_INPUT, fragment)
    assert snapshot(home) == before


def subprocess_sign(ca_key: Path, key: Path) -> None:
    """Make `key-cert.pub` with plain ssh-keygen (a certificate from some other CA)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca_key), "-I", "test", "-n", "x", str(pub(key))],
        check=True,
        capture_output=True,
    )


def test_encrypted_identity_is_refused(home: Path, keys: Path, tmp_path: Path) -> None:
    encrypted = make_key(tmp_path / "enc", "login", passphrase="hunter22")
    before = snapshot(home)
    result = run(home, *add_ssh(home, keys, **{"--identity": str(encrypted)}))
    line = assert_error(result, KEY_MATERIAL, "is encrypted")
    assert line == (
        f"bastion: error: --identity {encrypted} is encrypted; the bastion needs an unencrypted key"
    )
    assert snapshot(home) == before


@pytest.mark.parametrize(
    ("which", "fragment"),
    [
        ("public", "is not a private key"),
        ("garbage", "is not a private key"),
        ("missing", "can't read --identity"),
    ],
)
def test_bad_identity(home: Path, keys: Path, tmp_path: Path, which: str, fragment: str) -> None:
    paths = {"public": pub(keys / "login"), "missing": tmp_path / "nope"}
    paths["garbage"] = tmp_path / "garbage"
    paths["garbage"].write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    before = snapshot(home)
    result = run(home, *add_ssh(home, keys, **{"--identity": str(paths[which])}))
    assert_error(result, INVALID_INPUT, f"--identity {paths[which]}")
    assert fragment in result.stderr
    assert snapshot(home) == before


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("Prod-Web", {}, "invalid target name 'Prod-Web'"),
        ("root", {}, "invalid target name 'root': the name is reserved"),
        ("request", {}, "the name is reserved"),
        ("prod-web", {"--port": "0"}, "invalid port 0: must be 1-65535"),
        ("prod-web", {"--port": "65536"}, "invalid port 65536"),
        ("prod-web", {"--user": ""}, "--user must not be empty"),
    ],
)
def test_bad_ssh_target(
    home: Path, keys: Path, name: str, options: dict[str, str], fragment: str
) -> None:
    before = snapshot(home)
    assert_error(run(home, *add_ssh(home, keys, name, **options)), INVALID_INPUT, fragment)
    assert snapshot(home) == before


@pytest.mark.parametrize("host", ["", "  "])
@pytest.mark.parametrize("kind", ["ssh", "postgres"])
def test_empty_host_is_refused(
    home: Path, keys: Path, password_file: Path, kind: str, host: str
) -> None:
    if kind == "ssh":
        args = add_ssh(home, keys, **{"--host": host})
    else:
        args = add_pg(home, **{"--host": host, "--password-file": str(password_file)})
    before = snapshot(home)

    result = run(home, *args)

    line = assert_error(result, INVALID_INPUT, "--host")
    assert line == "bastion: error: --host must not be empty"
    assert snapshot(home) == before


def test_duplicate_target_name(home: Path, keys: Path, password_file: Path) -> None:
    ok(home, *add_ssh(home, keys))
    before = snapshot(home)

    line = assert_error(run(home, *add_ssh(home, keys)), ALREADY_EXISTS, "already exists")
    assert line == "bastion: error: target 'prod-web' already exists"
    # A database can't take the name either.
    result = run(home, *add_pg(home, "prod-web", **{"--password-file": str(password_file)}))
    assert_error(result, ALREADY_EXISTS, "target 'prod-web' already exists")
    assert snapshot(home) == before


# -- postgres targets ------------------------------------------------------------


def every_output(home: Path) -> str:
    """Everything bastion would print about its targets and its audit trail."""
    commands = [
        ("target", "list"),
        ("target", "list", "--json"),
        ("target", "show", "prod-db"),
        ("target", "show", "prod-db", "--json"),
        ("audit", "list"),
        ("audit", "list", "--json"),
    ]
    return "\n".join(ok(home, *c).output for c in commands)


def test_add_postgres_with_password_file(home: Path, password_file: Path) -> None:
    added = ok(home, *add_pg(home, **{"--password-file": str(password_file)}))
    added_json = ok(
        home, *add_pg(home, "prod-db2", **{"--password-file": str(password_file)}), "--json"
    )

    shown = ok_json(home, "target", "show", "prod-db")
    assert shown["kind"] == "postgres"
    assert (shown["database"], shown["user"], shown["sslmode"]) == ("appdb", "app", "disable")
    assert json.loads(added_json.stdout)["name"] == "prod-db2"
    for output in (added.output, added_json.output, every_output(home)):
        assert PASSWORD not in output
    store = SqliteStore(home / "state.db")
    try:
        secret = store.get_target_secret("prod-db")
        assert secret is not None
        assert secret.value == PASSWORD  # the file's trailing newline is not part of it
    finally:
        store.close()


def test_add_postgres_with_password_env(home: Path) -> None:
    result = ok(home, *add_pg(home, **{"--password-env": "PGPW"}), env={"PGPW": PASSWORD})
    assert PASSWORD not in result.output
    assert PASSWORD not in every_output(home)
    store = SqliteStore(home / "state.db")
    try:
        secret = store.get_target_secret("prod-db")
        assert secret is not None
        assert secret.value == PASSWORD
    finally:
        store.close()


def test_verify_full_with_root_cert(home: Path, tmp_path: Path, password_file: Path) -> None:
    root = tmp_path / "root.crt"
    root.write_text("-----BEGIN CERTIFICATE-----\n...\n")
    ok(
        home,
        *add_pg(home, **{"--password-file": str(password_file), "--sslmode": "verify-full"}),
        *("--sslrootcert", str(root)),
    )
    shown = ok_json(home, "target", "show", "prod-db")
    assert (shown["sslmode"], shown["sslrootcert"]) == ("verify-full", str(root.resolve()))


@pytest.mark.parametrize(
    ("options", "env", "fragment"),
    [
        (
            {"--password-env": "PGPW"},
            {"PGPW": None},
            "--password-env PGPW: the variable is not set",
        ),
        ({"--password-env": "PGPW"}, {"PGPW": ""}, "the target's password is empty"),
        ({}, {}, "give exactly one of --password-file or --password-env"),
        (
            {"--password-env": "PGPW", "--password-file": "PWFILE"},
            {"PGPW": "x"},
            "give exactly one of --password-file or --password-env",
        ),
        (
            {"--password-file": "PWFILE", "--sslmode": "verify-full"},
            {},
            "--sslmode verify-full needs --sslrootcert",
        ),
        (
            {"--password-file": "PWFILE", "--sslrootcert": "PWFILE"},
            {},
            "--sslrootcert is only used with --sslmode verify-full",
        ),
        (
            {"--password-file": "PWFILE", "--sslmode": "verify-full", "--sslrootcert": "/nope"},
            {},
            "--sslrootcert /nope: no such file",
        ),
        ({"--password-file": "/nope"}, {}, "can't read --password-file /nope"),
        ({"--password-file": "PWFILE", "--database": ""}, {}, "must not be empty"),
        ({"--password-file": "PWFILE", "--port": "99999"}, {}, "invalid port 99999"),
    ],
)
def test_bad_postgres_target(
    home: Path,
    password_file: Path,
    options: dict[str, str],
    env: dict[str, str | None],
    fragment: str,
) -> None:
    options = {k: str(password_file) if v == "PWFILE" else v for k, v in options.items()}
    args = add_pg(home, **options)
    before = snapshot(home)

    result = run(home, *args, env=env)

    assert_error(result, INVALID_INPUT, fragment)
    assert PASSWORD not in result.output
    assert snapshot(home) == before


# -- list, show, remove ----------------------------------------------------------


def test_list_targets(home: Path) -> None:
    assert ok(home, "target", "list").stdout.startswith("no targets")
    assert ok_json(home, "target", "list") == []
    add_ssh_target(home, "prod-web")
    add_postgres_target(home, "prod-db")

    lines = ok(home, "target", "list").stdout.splitlines()

    assert lines[0].split() == ["NAME", "KIND", "ADDRESS", "LOGIN", "DATABASE", "ADDED", "BY"]
    assert lines[1].split()[:5] == ["prod-db", "postgres", "127.0.0.1:5432", "app", "appdb"]
    assert lines[2].split()[:4] == ["prod-web", "ssh", "127.0.0.1:2201", "deploy"]
    listed = ok_json(home, "target", "list")
    assert [(t["name"], t["kind"]) for t in listed] == [
        ("prod-db", "postgres"),
        ("prod-web", "ssh"),
    ]


def test_show_target(home: Path) -> None:
    add_ssh_target(home, "prod-web")
    text = ok(home, "target", "show", "prod-web").stdout
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert fields["name"].strip() == "prod-web"
    assert fields["kind"].strip() == "ssh"
    assert fields["host_key"].strip().startswith("ssh-ed25519 ")


def test_unknown_target(home: Path) -> None:
    for command in (("show", "nope"), ("show", "nope", "--json"), ("remove", "nope")):
        line = assert_error(run(home, "target", *command), NOT_FOUND, "unknown target 'nope'")
        assert line == "bastion: error: unknown target 'nope' (see `bastion target list`)"


def test_remove_target(home: Path) -> None:
    add_postgres_target(home, "prod-db")

    assert ok(home, "target", "remove", "prod-db").stdout == "removed target prod-db\n"

    assert ok_json(home, "target", "list") == []
    event = audit_events(home)[-1]
    assert (event["action"], event["details"]) == (
        "target.removed",
        {"name": "prod-db", "active_grants": []},
    )
    store = SqliteStore(home / "state.db")
    try:
        assert store.get_target_secret("prod-db") is None
    finally:
        store.close()
    assert_error(run(home, "target", "remove", "prod-db"), NOT_FOUND, "unknown target")


def test_remove_target_with_an_active_grant_needs_force(home: Path, agent_key: Path) -> None:
    add_ssh_target(home, "prod-web")
    grant = ok_json(
        home,
        *("grant", "issue", "--agent", "bot", "--target", "prod-web", "--task", "t-1"),
        *("--pubkey", str(pub(agent_key))),
    )
    before = snapshot(home)

    line = assert_error(run(home, "target", "remove", "prod-web"), ALREADY_EXISTS, grant["id"])
    assert "has active grants" in line and "--force" in line
    assert snapshot(home) == before

    ok(home, "target", "remove", "prod-web", "--force")
    assert audit_events(home)[-1]["details"] == {"name": "prod-web", "active_grants": [grant["id"]]}
