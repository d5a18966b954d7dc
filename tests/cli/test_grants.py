"""`bastion grant issue | list | show | revoke`: output, options, and every bad input."""

from __future__ import annotations

import contextlib
import getpass
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.errors import StoreError
from bastion.models import Grant
from bastion.service import Bastion, GrantRequest
from bastion.store.sqlite import SqliteStore
from tests.cli.conftest import (
    ALREADY_EXISTS,
    CONFIG,
    INVALID_INPUT,
    NOT_FOUND,
    STORE,
    assert_error,
    audit_events,
    cert,
    make_key,
    mode,
    ok,
    ok_json,
    pub,
    run,
    snapshot,
)

UTC_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def issue_args(**options: Any) -> list[str]:
    """`grant issue` argv; options override the defaults (None drops one, True is a flag)."""
    merged: dict[str, Any] = {
        "--agent": "chatgpt-agent",
        "--target": "prod-web",
        "--task": "hotfix-1422",
        **options,
    }
    args = ["grant", "issue"]
    for option, value in merged.items():
        if value is None or value is False:
            continue
        if value is True:
            args.append(option)
        elif isinstance(value, list):
            for item in value:
                args += [option, str(item)]
        else:
            args += [option, str(value)]
    return args


def issue(home: Path, **options: Any) -> dict[str, Any]:
    result: dict[str, Any] = ok_json(home, *issue_args(**options))
    return result


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ssh_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def issue_at(
    home: Path, when: datetime, key: Path, task: str, ttl: timedelta = timedelta(minutes=30)
) -> Grant:
    """Issue through the service API at a past time: an expired grant without sleeping."""
    service = Bastion.open(open_home(str(home)), FixedClock(when), "clockwork")
    try:
        request = GrantRequest(
            agent="old-agent",
            targets=("prod-web",),
            task=task,
            ttl=ttl,
            pubkey=pub(key),
            out=key.parent / f"{task}-cert.pub",
        )
        return service.issue_grant(request).grant
    finally:
        service.close()


# -- issue -----------------------------------------------------------------------


def test_issue_prints_the_grant_and_how_to_connect(home: Path, web: str, agent_key: Path) -> None:
    before = datetime.now(UTC)
    result = ok(home, *issue_args(**{"--pubkey": pub(agent_key)}))
    after = datetime.now(UTC)

    lines = result.stdout.splitlines()
    match = re.fullmatch(r"issued grant (g-[0-9a-f]{8})", lines[0])
    assert match, lines[0]
    grant_id = match.group(1)
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in lines[1:9])
    assert fields["agent"] == "chatgpt-agent"
    assert fields["task"] == "hotfix-1422"
    assert fields["targets"] == "prod-web"
    assert re.fullmatch(UTC_TIME, fields["valid from"])
    assert re.fullmatch(UTC_TIME, fields["valid until"])
    valid_from = datetime.strptime(fields["valid from"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    valid_until = datetime.strptime(fields["valid until"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    slack = timedelta(seconds=1)
    assert before - timedelta(seconds=60) - slack <= valid_from <= after - timedelta(seconds=60)
    assert before + timedelta(minutes=30) - slack <= valid_until <= after + timedelta(minutes=30)
    assert fields["serial"] == "1"
    assert fields["certificate"] == str(cert(agent_key))
    assert fields["private key"] == str(agent_key)
    assert lines[9:] == ["connect with:", f"  ssh -p 2222 -i {agent_key} prod-web@127.0.0.1"]

    # The certificate is beside the key, by OpenSSH's naming convention.
    certificate = cert(agent_key).read_text()
    assert certificate.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert certificate.endswith(f" chatgpt-agent@{grant_id}\n")
    assert mode(cert(agent_key)) == 0o644
    event = audit_events(home)[-1]
    assert event["action"] == "grant.issued"
    assert event["details"]["grant"] == grant_id
    assert event["details"]["key_id"] == f"grant={grant_id} agent=chatgpt-agent task=hotfix-1422"


def test_issue_json(home: Path, web: str, agent_key: Path) -> None:
    data = issue(home, **{"--pubkey": pub(agent_key), "--ttl": "1h30m"})

    assert re.fullmatch(r"g-[0-9a-f]{8}", data["id"])
    assert data["state"] == "active"
    assert (data["agent"], data["task"], data["targets"]) == (
        "chatgpt-agent",
        "hotfix-1422",
        ["prod-web"],
    )
    assert data["reason"] == ""
    window = parse_time(data["valid_before"]) - parse_time(data["valid_after"])
    assert window == timedelta(hours=1, minutes=30, seconds=60)
    assert parse_time(data["created_at"]) - parse_time(data["valid_after"]) == timedelta(seconds=60)
    assert abs(parse_time(data["created_at"]) - datetime.now(UTC)) < timedelta(seconds=10)
    assert data["serial"] == 1
    assert data["key_id"] == f"grant={data['id']} agent=chatgpt-agent task=hotfix-1422"
    assert data["key_fingerprint"] == ssh_fingerprint(pub(agent_key))
    assert (data["permit_pty"], data["permit_port_forwarding"]) == (True, False)
    assert (data["source_addresses"], data["force_command"]) == ([], None)
    assert data["revoked_at"] is None
    assert data["certificate"] == str(cert(agent_key))
    assert data["private_key"] == str(agent_key)
    assert data["ssh"] == [f"ssh -p 2222 -i {agent_key} prod-web@127.0.0.1"]
    assert cert(agent_key).is_file()


def test_generate_key(home: Path, web: str, tmp_path: Path) -> None:
    key_dir = tmp_path / "fresh" / "agent"

    data = issue(home, **{"--generate-key": key_dir})

    key = key_dir / "id_ed25519"
    assert mode(key_dir) == 0o700
    assert mode(key) == 0o600
    assert mode(pub(key)) == 0o644
    assert cert(key).is_file()
    assert sorted(p.name for p in key_dir.iterdir()) == [
        "id_ed25519",
        "id_ed25519-cert.pub",
        "id_ed25519.pub",
    ]
    # A real OpenSSH key: ssh-keygen derives the .pub from it.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    ).stdout
    assert derived.split()[:2] == pub(key).read_text().split()[:2]
    assert pub(key).read_text().split()[2] == "chatgpt-agent@bastion"
    assert data["private_key"] == str(key)
    assert data["certificate"] == str(cert(key))
    assert data["key_fingerprint"] == ssh_fingerprint(pub(key))
    assert data["ssh"] == [f"ssh -p 2222 -i {key} prod-web@127.0.0.1"]


def test_generate_key_never_overwrites_a_key(home: Path, web: str, tmp_path: Path) -> None:
    key_dir = tmp_path / "agent"
    issue(home, **{"--generate-key": key_dir})
    before = snapshot(home, key_dir)

    result = run(home, *issue_args(**{"--generate-key": key_dir}))

    line = assert_error(result, ALREADY_EXISTS, f"{key_dir / 'id_ed25519'} already exists")
    assert f"--pubkey {key_dir / 'id_ed25519'}.pub" in line
    assert snapshot(home, key_dir) == before


def test_out_writes_the_certificate_there(home: Path, web: str, agent_key: Path) -> None:
    out = agent_key.parent / "elsewhere.cert"

    data = issue(home, **{"--pubkey": pub(agent_key), "--out": out})

    assert data["certificate"] == str(out)
    assert out.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert not cert(agent_key).exists()


def test_a_certificate_is_replaced_by_the_next_one(home: Path, web: str, agent_key: Path) -> None:
    first = issue(home, **{"--pubkey": pub(agent_key)})
    second = issue(home, **{"--pubkey": pub(agent_key), "--task": "task-2"})
    out = agent_key.parent / "elsewhere.cert"
    issue(home, **{"--pubkey": pub(agent_key), "--out": out})
    third = issue(home, **{"--pubkey": pub(agent_key), "--out": out, "--task": "task-3"})

    assert f"grant={second['id']} " in ssh_keygen_l(cert(agent_key))
    assert first["id"] not in cert(agent_key).read_text()
    assert f"grant={third['id']} " in ssh_keygen_l(out)
    assert sorted(p.name for p in agent_key.parent.iterdir()) == [
        "elsewhere.cert",
        "id_ed25519",
        "id_ed25519-cert.pub",
        "id_ed25519.pub",
    ]


def ssh_keygen_l(path: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_commit_leaves_no_certificate(
    home: Path, web: str, agent_key: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    if existing:
        issue(home, **{"--pubkey": pub(agent_key)})  # the cert of an earlier grant stays
    before = snapshot(home, agent_key.parent)
    monkeypatch.setattr(SqliteStore, "transaction", failing_transaction())

    result = run(home, *issue_args(**{"--pubkey": pub(agent_key), "--task": "t-2"}))

    assert_error(result, STORE, f"can't commit to state store {home / 'state.db'}")
    assert snapshot(home, agent_key.parent) == before  # no grant, no certificate, no temp file


def test_a_failed_commit_removes_a_generated_key(
    home: Path, web: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_dir = tmp_path / "agent"
    key_dir.mkdir()
    before = snapshot(home, key_dir)
    monkeypatch.setattr(SqliteStore, "transaction", failing_transaction())

    result = run(home, *issue_args(**{"--generate-key": key_dir}))

    assert_error(result, STORE, "can't commit to state store")
    assert snapshot(home, key_dir) == before


def failing_transaction() -> Callable[[SqliteStore], AbstractContextManager[Any]]:
    """A `SqliteStore.transaction` that does the work, then fails to commit (rolls back)."""
    original = SqliteStore.transaction

    class _Abort(Exception):
        pass

    @contextlib.contextmanager
    def transaction(self: SqliteStore) -> Iterator[Any]:
        try:
            with original(self) as tx:
                yield tx
                raise _Abort  # rolls back, as a failed COMMIT does
        except _Abort:
            raise StoreError(f"can't commit to state store {self._path}: disk I/O error") from None

    return transaction


def test_pubkey_alone_gives_no_private_key_path(home: Path, web: str, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    lone = tmp_path / "lone.pub"
    lone.write_text(pub(key).read_text())

    data = issue(home, **{"--pubkey": lone})

    assert data["private_key"] is None
    assert data["certificate"] == str(tmp_path / "lone-cert.pub")
    assert data["ssh"] == ["ssh -p 2222 prod-web@127.0.0.1"]


def test_every_option_is_recorded(home: Path, web: str, agent_key: Path) -> None:
    data = issue(
        home,
        **{
            "--pubkey": pub(agent_key),
            "--ttl": "2h",
            "--reason": "fix the outage in INC-7",
            "--source-address": "10.1.2.3/8, 192.0.2.7",
            "--no-pty": True,
            "--force-command": "systemctl status nginx",
        },
    )

    assert parse_time(data["valid_before"]) - parse_time(data["created_at"]) == timedelta(hours=2)
    assert data["reason"] == "fix the outage in INC-7"
    assert data["source_addresses"] == ["10.0.0.0/8", "192.0.2.7/32"]
    assert data["permit_pty"] is False
    assert data["force_command"] == "systemctl status nginx"
    assert ok_json(home, "grant", "show", data["id"]) == {
        k: v for k, v in data.items() if k not in ("certificate", "private_key", "ssh")
    }
    details = audit_events(home)[-1]["details"]
    assert details["reason"] == "fix the outage in INC-7"
    assert details["source_addresses"] == ["10.0.0.0/8", "192.0.2.7/32"]
    assert details["force_command"] == "systemctl status nginx"
    assert details["permit_pty"] is False
    shown = ok(home, "grant", "show", data["id"]).stdout
    assert re.search(r"^reason: +fix the outage in INC-7$", shown, re.M)
    assert re.search(r"^pty: +no$", shown, re.M)
    assert re.search(r"^source address: +10\.0\.0\.0/8,192\.0\.2\.7/32$", shown, re.M)
    assert re.search(r"^force command: +systemctl status nginx$", shown, re.M)


@pytest.mark.parametrize(
    ("targets", "no_port_forwarding", "forwarding"),
    [
        (["prod-web"], False, False),
        (["prod-db"], False, True),
        (["prod-web", "prod-db"], False, True),
        (["prod-db"], True, False),
    ],
)
def test_port_forwarding_only_for_databases(
    home: Path,
    web: str,
    db: str,
    agent_key: Path,
    targets: list[str],
    no_port_forwarding: bool,
    forwarding: bool,
) -> None:
    data = issue(
        home,
        **{
            "--pubkey": pub(agent_key),
            "--target": targets,
            "--no-port-forwarding": no_port_forwarding,
        },
    )
    assert data["permit_port_forwarding"] is forwarding
    assert data["permit_pty"] is True


def test_several_targets(home: Path, web: str, db: str, agent_key: Path) -> None:
    data = issue(
        home, **{"--pubkey": pub(agent_key), "--target": ["prod-db", "prod-web", "prod-db"]}
    )
    assert data["targets"] == ["prod-db", "prod-web"]
    assert data["ssh"] == [
        f"ssh -p 2222 -i {agent_key} -N -L 15432:prod-db:5432 prod-db@127.0.0.1"
        "   # then: psql -h 127.0.0.1 -p 15432 -d appdb",
        f"ssh -p 2222 -i {agent_key} prod-web@127.0.0.1",
    ]


def test_ttl_policy_comes_from_config(home: Path, web: str, agent_key: Path) -> None:
    (home / "bastion.toml").write_text(
        "[grants]\ndefault_ttl = '45m'\nmax_ttl = '12h'\n"
        "[server]\nadvertise = 'bastion.example:22'\n"
    )
    default = issue(home, **{"--pubkey": pub(agent_key)})
    assert parse_time(default["valid_before"]) - parse_time(default["created_at"]) == timedelta(
        minutes=45
    )
    assert default["ssh"] == [f"ssh -p 22 -i {agent_key} prod-web@bastion.example"]
    long = issue(home, **{"--pubkey": pub(agent_key), "--ttl": "10h"})
    assert parse_time(long["valid_before"]) - parse_time(long["created_at"]) == timedelta(hours=10)


def test_each_grant_has_its_own_id_and_a_higher_serial(
    home: Path, web: str, agent_key: Path
) -> None:
    grants = [issue(home, **{"--pubkey": pub(agent_key)}) for _ in range(3)]
    assert [g["serial"] for g in grants] == [1, 2, 3]
    assert len({g["id"] for g in grants}) == 3


# -- bad input: a one-line error, a non-zero exit, and nothing written ------------


BAD_ISSUES = [
    # (id, options, bastion.toml, exit code, message fragment)
    ("garbage-pubkey", {"--pubkey": "{garbage}"}, None, INVALID_INPUT,
     "{garbage}: not an OpenSSH public key"),
    ("empty-pubkey", {"--pubkey": "{empty}"}, None, INVALID_INPUT,
     "{empty}: expected exactly one OpenSSH public key line"),
    ("private-key-as-pubkey", {"--pubkey": "{key}"}, None, INVALID_INPUT,
     "{key}: this is a private key; give the .pub file"),
    ("certificate-as-pubkey", {"--pubkey": "{other_cert}"}, None, INVALID_INPUT,
     "{other_cert}: is a certificate; give the plain public key"),
    ("weak-rsa-pubkey", {"--pubkey": "{rsa1024}"}, None, INVALID_INPUT,
     "{rsa1024}: a 1024-bit RSA key is too weak; use an Ed25519 key or RSA of at least 2048"
     " bits"),
    ("missing-pubkey", {"--pubkey": "{tmp}/nope.pub"}, None, INVALID_INPUT,
     "can't read public key {tmp}/nope.pub: no such file or directory"),
    ("unknown-target", {"--target": "nope"}, None, NOT_FOUND,
     "unknown target 'nope' (see `bastion target list`)"),
    ("one-unknown-target", {"--target": ["prod-web", "nope"]}, None, NOT_FOUND,
     "unknown target 'nope'"),
    ("ttl-over-max", {"--ttl": "9h"}, None, INVALID_INPUT,
     "TTL 9h is over the maximum of 8h: grants are just-in-time; issue a new grant when"
     " this one ends (the maximum is grants.max_ttl in bastion.toml)"),
    ("ttl-30-days", {"--ttl": "30d"}, None, INVALID_INPUT, "TTL 30d is over the maximum of 8h"),
    ("ttl-over-configured-max", {"--ttl": "2h"}, "[grants]\nmax_ttl = '1h'\ndefault_ttl = '30m'",
     INVALID_INPUT, "TTL 2h is over the maximum of 1h"),
    ("ttl-below-min", {"--ttl": "30s"}, None, INVALID_INPUT,
     "TTL 30s is below the minimum of 1m"),
    ("ttl-malformed", {"--ttl": "5x"}, None, INVALID_INPUT, "invalid duration '5x'"),
    ("ttl-zero", {"--ttl": "0m"}, None, INVALID_INPUT, "invalid duration '0m'"),
    ("ttl-units-reversed", {"--ttl": "1m30h"}, None, INVALID_INPUT, "invalid duration '1m30h'"),
    ("ttl-enormous", {"--ttl": "99999999999d"}, None, INVALID_INPUT,
     "invalid duration '99999999999d'"),
    ("empty-agent", {"--agent": ""}, None, INVALID_INPUT, "invalid agent name ''"),
    ("agent-with-space", {"--agent": "chat gpt"}, None, INVALID_INPUT,
     "invalid agent name 'chat gpt'"),
    ("empty-task", {"--task": ""}, None, INVALID_INPUT, "invalid task ''"),
    ("task-with-space", {"--task": "fix it"}, None, INVALID_INPUT, "invalid task 'fix it'"),
    ("source-not-ip", {"--source-address": "example.com"}, None, INVALID_INPUT,
     "invalid --source-address 'example.com': not an IP address or CIDR block"),
    ("source-bad-prefix", {"--source-address": "10.0.0.0/8,10.0.0.0/33"}, None, INVALID_INPUT,
     "invalid --source-address '10.0.0.0/33'"),
    ("source-empty", {"--source-address": ""}, None, INVALID_INPUT,
     "invalid --source-address '': give CIDR[,CIDR...]"),
    ("force-command-empty", {"--force-command": " "}, None, INVALID_INPUT,
     "--force-command must not be empty"),
    ("no-key", {"--pubkey": None}, None, INVALID_INPUT,
     "give exactly one of --pubkey FILE.pub or --generate-key DIR"),
    ("both-keys", {"--generate-key": "{tmp}/gen"}, None, INVALID_INPUT,
     "give exactly one of --pubkey FILE.pub or --generate-key DIR"),
    ("generate-key-bad-target", {"--pubkey": None, "--generate-key": "{tmp}/gen",
                                 "--target": "nope"}, None, NOT_FOUND, "unknown target 'nope'"),
    ("out-unwritable", {"--out": "{tmp}/no/such/dir/cert.pub"}, None, INVALID_INPUT,
     "can't write certificate {tmp}/no/such/dir/cert.pub: No such file or directory"),
    ("generate-key-out-unwritable", {"--pubkey": None, "--generate-key": "{tmp}/made",
                                     "--out": "{tmp}/no/such/dir/cert.pub"}, None, INVALID_INPUT,
     "can't write certificate"),
    ("out-is-the-pubkey", {"--out": "{pub}"}, None, INVALID_INPUT,
     "--out {pub} is the agent's public key"),
    ("out-is-the-private-key", {"--out": "{key}"}, None, INVALID_INPUT,
     "--out {key} is the agent's private key"),
    ("out-is-the-pubkey-spelled-otherwise", {"--out": "{tmp}/agent/../agent/id_ed25519.pub"}, None,
     INVALID_INPUT, "is the agent's public key"),
    ("out-is-a-link-to-the-key", {"--out": "{link}"}, None, INVALID_INPUT,
     "--out {link} is the agent's private key"),
    ("out-is-the-generated-key", {"--pubkey": None, "--generate-key": "{tmp}/gen",
                                  "--out": "{tmp}/gen/id_ed25519"}, None, INVALID_INPUT,
     "--out {tmp}/gen/id_ed25519 is the agent's private key"),
    ("out-is-not-a-certificate", {"--out": "{garbage}"}, None, ALREADY_EXISTS,
     "--out {garbage} exists and is not an OpenSSH certificate; refusing to overwrite it"),
    ("out-is-empty", {"--out": "{empty}"}, None, ALREADY_EXISTS,
     "--out {empty} exists and is not an OpenSSH certificate"),
    ("out-is-the-ca-key", {"--out": "{home}/keys/ca"}, None, ALREADY_EXISTS,
     "--out {home}/keys/ca exists and is not an OpenSSH certificate"),
    ("cert-path-is-not-a-certificate", {"--pubkey": "{notcert}.pub"}, None, ALREADY_EXISTS,
     "{notcert}-cert.pub exists and is not an OpenSSH certificate"),
    ("broken-toml", {}, "[grants\nmax_ttl = '8h'", CONFIG, "{home}/bastion.toml is not valid TOML"),
    ("unknown-toml-key", {}, "[grants]\nmax_tll = '8h'", CONFIG,
     "unknown key 'grants.max_tll' in {home}/bastion.toml"),
    ("ill-typed-toml-value", {}, "[grants]\nmax_ttl = 8", CONFIG,
     "'grants.max_ttl' in {home}/bastion.toml must be a duration string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "config", "exit_code", "fragment"),
    [case[1:] for case in BAD_ISSUES],
    ids=[case[0] for case in BAD_ISSUES],
)
def test_bad_issue_writes_nothing(
    home: Path,
    web: str,
    agent_key: Path,
    tmp_path: Path,
    options: dict[str, Any],
    config: str | None,
    exit_code: int,
    fragment: str,
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "garbage.pub").write_text("ssh-ed25519 this-is-not-base64 x\n")
    (files / "empty.pub").write_text("")
    other = make_key(tmp_path / "other")
    other_ca = make_key(tmp_path / "other-ca")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(other_ca), "-I", "x", "-n", "prod-web", str(pub(other))],
        check=True,
        capture_output=True,
    )
    (tmp_path / "made").mkdir()
    (tmp_path / "link").symlink_to(agent_key)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(files / "rsa1024")],
        check=True,
    )
    notcert = make_key(tmp_path / "notcert")
    notcert.with_name("id_ed25519-cert.pub").write_text("my notes, not a certificate\n")
    names = {
        "garbage": files / "garbage.pub",
        "empty": files / "empty.pub",
        "key": agent_key,
        "pub": pub(agent_key),
        "link": tmp_path / "link",
        "notcert": notcert,
        "other_cert": cert(other),
        "rsa1024": files / "rsa1024.pub",
        "tmp": tmp_path,
        "home": home,
    }
    options = {"--pubkey": pub(agent_key), **options}
    options = {k: v.format(**names) if isinstance(v, str) else v for k, v in options.items()}
    if config is not None:
        (home / "bastion.toml").write_text(config + "\n")
    before = snapshot(home, tmp_path)

    result = run(home, *issue_args(**options))

    assert_error(result, exit_code, fragment.format(**names))
    assert snapshot(home, tmp_path) == before  # no grant, no event, no serial, no file


# -- list, show, revoke ------------------------------------------------------------


@pytest.fixture
def three_grants(home: Path, web: str, agent_key: Path) -> dict[str, str]:
    """One active, one expired (issued 2 h ago for 30 min) and one revoked grant."""
    expired = issue_at(home, datetime.now(UTC) - timedelta(hours=2), agent_key, "old-task")
    active = issue(home, **{"--pubkey": pub(agent_key), "--task": "task-a"})["id"]
    revoked = issue(home, **{"--pubkey": pub(agent_key), "--task": "task-b"})["id"]
    ok(home, "grant", "revoke", revoked, "--reason", "agent misbehaved")
    return {"active": active, "expired": expired.id, "revoked": revoked}


def listed(home: Path, *args: str) -> dict[str, str]:
    """grant id -> state, from the text table of `grant list`."""
    lines = ok(home, "grant", "list", *args).stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "AGENT", "TASK", "TARGETS", "VALID", "UNTIL", "LEFT"]
    return {line.split()[0]: line.split()[1] for line in lines[1:]}


def test_list_shows_active_grants_by_default(home: Path, three_grants: dict[str, str]) -> None:
    assert listed(home) == {three_grants["active"]: "active"}
    assert [g["id"] for g in ok_json(home, "grant", "list")] == [three_grants["active"]]


def test_list_all_shows_ended_grants_with_their_state(
    home: Path, three_grants: dict[str, str]
) -> None:
    expected = {grant_id: state for state, grant_id in three_grants.items()}
    assert listed(home, "--all") == expected
    assert {g["id"]: g["state"] for g in ok_json(home, "grant", "list", "--all")} == expected
    rows = ok(home, "grant", "list", "--all").stdout.splitlines()[1:]
    left = {row.split()[0]: row.split()[-1] for row in rows}
    assert left[three_grants["expired"]] == "-"
    assert left[three_grants["revoked"]] == "-"
    assert re.fullmatch(r"\d+m(\d+s)?", left[three_grants["active"]])


def test_list_by_task(home: Path, three_grants: dict[str, str]) -> None:
    assert listed(home, "--all", "--task", "old-task") == {three_grants["expired"]: "expired"}
    assert listed(home, "--all", "--task", "task-b") == {three_grants["revoked"]: "revoked"}
    assert listed(home, "--task", "task-a") == {three_grants["active"]: "active"}
    assert ok(home, "grant", "list", "--task", "old-task").stdout == (
        "no active grants (--all shows ended ones)\n"
    )
    assert ok_json(home, "grant", "list", "--all", "--task", "nope") == []


def test_list_empty(home: Path) -> None:
    assert ok(home, "grant", "list").stdout == "no active grants (--all shows ended ones)\n"
    assert ok(home, "grant", "list", "--all").stdout == "no grants\n"
    assert ok_json(home, "grant", "list") == []


def test_show_grant(home: Path, three_grants: dict[str, str]) -> None:
    text = ok(home, "grant", "show", three_grants["revoked"]).stdout
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in text.splitlines())
    assert fields["id"] == three_grants["revoked"]
    assert fields["state"] == "revoked"
    assert fields["task"] == "task-b"
    assert fields["targets"] == "prod-web"
    assert fields["time left"] == "-"
    assert re.fullmatch(rf"at {UTC_TIME} by \S+: agent misbehaved", fields["revoked"])
    assert fields["key id"] == f"grant={three_grants['revoked']} agent=chatgpt-agent task=task-b"
    assert fields["pty"] == "yes"
    assert fields["port forwarding"] == "no"
    assert "force command" not in fields and "source address" not in fields

    expired = ok_json(home, "grant", "show", three_grants["expired"])
    assert (expired["state"], expired["agent"], expired["created_by"]) == (
        "expired",
        "old-agent",
        "clockwork",
    )


def test_show_unknown_grant(home: Path) -> None:
    line = assert_error(run(home, "grant", "show", "g-00000000"), NOT_FOUND, "g-00000000")
    assert line == ("bastion: error: unknown grant 'g-00000000' (see `bastion grant list --all`)")


def test_revoke(home: Path, web: str, agent_key: Path) -> None:
    grant_id = issue(home, **{"--pubkey": pub(agent_key)})["id"]

    result = ok(home, "grant", "revoke", grant_id)

    assert result.stdout == (
        f"revoked grant {grant_id} (chatgpt-agent, task hotfix-1422): no reason given\n"
    )
    shown = ok_json(home, "grant", "show", grant_id)
    assert shown["state"] == "revoked"
    assert shown["revoke_reason"] == "no reason given"
    event = audit_events(home)[-1]
    assert event["action"] == "grant.revoked"
    assert event["details"]["grant"] == grant_id
    assert event["details"]["state_before"] == "active"
    assert event["details"]["serial"] == shown["serial"]


def test_revoke_twice_is_an_error(home: Path, web: str, agent_key: Path) -> None:
    grant_id = issue(home, **{"--pubkey": pub(agent_key)})["id"]
    ok(home, "--as", "alice", "grant", "revoke", grant_id, "--reason", "done")
    before = snapshot(home)

    line = assert_error(run(home, "grant", "revoke", grant_id), ALREADY_EXISTS, grant_id)

    assert re.fullmatch(
        rf"bastion: error: grant {grant_id} was already revoked at {UTC_TIME} by alice", line
    )
    assert snapshot(home) == before
    assert ok_json(home, "grant", "show", grant_id)["revoke_reason"] == "done"


def test_revoke_an_expired_grant(home: Path, web: str, agent_key: Path) -> None:
    grant = issue_at(home, datetime.now(UTC) - timedelta(hours=2), agent_key, "old-task")
    ok(home, "grant", "revoke", grant.id, "--reason", "clean up")
    assert audit_events(home)[-1]["details"]["state_before"] == "expired"
    assert ok_json(home, "grant", "show", grant.id)["state"] == "revoked"


def test_revoke_unknown_grant(home: Path) -> None:
    before = snapshot(home)
    assert_error(run(home, "grant", "revoke", "g-nope"), NOT_FOUND, "unknown grant 'g-nope'")
    assert snapshot(home) == before


# -- who acted -------------------------------------------------------------------


def test_as_name_is_recorded_as_the_actor(home: Path, agent_key: Path, tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("pw")
    ok(
        home,
        *("--as", "alice@ops", "target", "add-postgres", "prod-db", "--host", "127.0.0.1"),
        *("--database", "appdb", "--user", "app", "--password-file", str(password_file)),
        "--no-check",
    )
    grant_id = ok_json(
        home, "--as", "bob", *issue_args(**{"--pubkey": pub(agent_key), "--target": "prod-db"})
    )["id"]
    ok(home, "--as", "carol", "grant", "revoke", grant_id)
    ok(home, "--as", "dave", "target", "remove", "prod-db")

    actors = [(e["action"], e["actor"]) for e in audit_events(home)[1:]]
    assert actors == [
        ("target.added", "alice@ops"),
        ("grant.issued", "bob"),
        ("grant.revoked", "carol"),
        ("target.removed", "dave"),
    ]
    shown = ok_json(home, "grant", "show", grant_id)
    assert (shown["created_by"], shown["revoked_by"]) == ("bob", "carol")


def test_default_actor_is_the_os_user(home: Path, web: str) -> None:
    assert audit_events(home)[-1]["actor"] == getpass.getuser()
    assert ok_json(home, "target", "show", web)["created_by"] == getpass.getuser()


@pytest.mark.parametrize("name", ["", "two words", "-x", "a" * 65])
def test_bad_actor_name(home: Path, name: str) -> None:
    before = snapshot(home)
    result = run(home, "--as", name, "grant", "list")
    assert result.exit_code == 2
    assert "--as" in result.stderr
    assert snapshot(home) == before


def _register_node(home: Path, name: str, address: str, heartbeat: datetime) -> None:
    store = SqliteStore(home / "state.db")
    try:
        with store.transaction() as tx:
            tx.register_node(name, address, heartbeat)
    finally:
        store.close()


def test_ssh_lines_name_the_address_a_live_node_listens_on(
    home: Path, web: str, agent_key: Path
) -> None:
    # `scripts/serve --listen 127.0.0.1:22222` overrides bastion.toml's 2222: the node
    # registered what it bound, and that is what an agent must be told.
    (home / "bastion.toml").write_text("[server]\nnode = 'here'\n")
    now = datetime.now(UTC)
    _register_node(home, "elsewhere", "127.0.0.1:40001", now)
    _register_node(home, "here", "127.0.0.1:22222", now - timedelta(seconds=1))
    assert issue(home, **{"--pubkey": pub(agent_key)})["ssh"] == [
        f"ssh -p 22222 -i {agent_key} prod-web@127.0.0.1"
    ]


def test_ssh_lines_skip_a_silent_node_and_name_a_wildcard_nodes_host(
    home: Path, web: str, agent_key: Path
) -> None:
    now = datetime.now(UTC)
    _register_node(home, "gone", "127.0.0.1:40002", now - timedelta(hours=1))
    assert issue(home, **{"--pubkey": pub(agent_key)})["ssh"] == [
        f"ssh -p 2222 -i {agent_key} prod-web@127.0.0.1"  # bastion.toml's listen
    ]
    _register_node(home, "bastion-2.internal", "0.0.0.0:2200", now)
    assert issue(home, **{"--pubkey": pub(agent_key)})["ssh"] == [
        f"ssh -p 2200 -i {agent_key} prod-web@bastion-2.internal"
    ]
    (home / "bastion.toml").write_text("[server]\nadvertise = 'bastion.example:22'\n")
    assert issue(home, **{"--pubkey": pub(agent_key)})["ssh"] == [
        f"ssh -p 22 -i {agent_key} prod-web@bastion.example"  # advertise wins over nodes
    ]
