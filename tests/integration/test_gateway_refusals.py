"""Who the gateway lets in, and what a grant's certificate allows once in.

Every refused certificate looks the same to the client, an ordinary
"Permission denied (publickey)." (the only method offered: no password, no
keyboard-interactive), and leaves an audit `login.refused` event naming the reason.
Certificates the bastion never issued are made with `ssh-keygen -s`, signed by the
bastion's own CA (`keys/ca`) or by another one.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.service import Bastion, GrantRequest
from tests.integration.conftest import (
    LOOPBACK,
    EchoServer,
    Grant,
    Server,
    cli_json,
    keygen,
    make_home,
    unique_sleep,
    wait_until,
)
from tests.peers import Sshd

DENIED = "Permission denied (publickey)."


def attempt(gateway: Server, login: str, key: Path) -> tuple[Any, list[dict[str, Any]]]:
    """`ssh LOGIN@bastion -i KEY 'echo should-not-run'`; the result and new login.refused events."""
    seq = gateway.audit_seq()
    result = gateway.ssh(login, key, "echo should-not-run")
    # The refusal is audited when the connection closes, a moment after the client exits.
    events = wait_until(lambda: gateway.audit("login.refused", after=seq), timeout=5)
    return result, events


def assert_refused(gateway: Server, login: str, key: Path, reason: str) -> dict[str, Any]:
    """Refused with `DENIED`, nothing ran, and one refusal event whose reason holds `reason`."""
    result, events = attempt(gateway, login, key)
    assert result.returncode == 255
    assert result.stdout == ""
    assert DENIED in result.stderr
    matching = [e for e in events if reason in e["details"]["reason"]]
    assert matching, [e["details"]["reason"] for e in events]
    event = matching[0]
    assert event["actor"] == "gateway"
    assert event["details"]["login"] == login
    assert event["details"]["client"].startswith("127.0.0.1:")
    assert not gateway.audit("login.accepted", after=event["seq"] - 1)
    return event


def copy_key(key: Path, to: Path) -> Path:
    """The agent's key pair under a new name (so a forged certificate can sit beside it)."""
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(key, to)
    shutil.copy(f"{key}.pub", f"{to}.pub")
    to.chmod(0o600)
    return to


def ssh_keygen_sign(
    ca: Path,
    key: Path,
    key_id: str,
    serial: int,
    principals: list[str] | None,
    *options: str,
) -> Path:
    """`ssh-keygen -s CA -I KEY_ID -z SERIAL [-n P,...] OPTIONS KEY.pub`: KEY-cert.pub."""
    argv = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-z", str(serial)]
    if principals is not None:
        argv += ["-n", ",".join(principals)]
    subprocess.run([*argv, *options, f"{key}.pub"], check=True, capture_output=True)
    return Path(f"{key}-cert.pub")


def keygen_listing(cert: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
    ).stdout


# -- what gets in ------------------------------------------------------------------


def test_granted_certificate_logs_in(gateway: Server) -> None:
    grant = gateway.issue("prod-web", "gated-web")
    seq = gateway.audit_seq()

    result = gateway.ssh("prod-web", grant.key, "echo in")

    assert (result.returncode, result.stdout, result.stderr) == (0, "in\n", "")
    [event] = gateway.audit("login.accepted", after=seq)
    assert event["actor"] == "bot"
    assert event["details"]["grant"] == grant.id
    assert event["details"]["serial"] == grant.serial
    assert event["details"]["key_id"] == grant.key_id
    assert event["details"]["login"] == "prod-web"
    assert not gateway.audit("login.refused", after=seq)


# -- certificates the bastion refuses ------------------------------------------------


def test_plain_key_is_refused(gateway: Server, tmp_path: Path) -> None:
    key = keygen(tmp_path / "plain" / "id_ed25519")
    assert_refused(
        gateway, "prod-web", key, "a plain key is not accepted: a grant certificate is required"
    )


def test_certificate_of_another_ca_is_refused(gateway: Server, tmp_path: Path) -> None:
    grant = gateway.issue("prod-web")
    other_ca = keygen(tmp_path / "other-ca" / "ca")
    key = copy_key(grant.key, tmp_path / "forged" / "id_ed25519")
    ssh_keygen_sign(other_ca, key, grant.key_id, grant.serial, ["prod-web"], "-V", "-1m:+10m")

    assert_refused(gateway, "prod-web", key, "certificate is not signed by this bastion's CA")
    assert gateway.sessions(grant) == []


def _issue_in_the_past(gateway: Server, key: Path, hours_ago: float) -> Grant:
    """A 30-minute grant issued `hours_ago`, through the service API with a fixed clock."""
    clock = FixedClock(datetime.now(UTC) - timedelta(hours=hours_ago))
    service = Bastion.open(open_home(str(gateway.home)), clock, "clockwork")
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
    return Grant(id=issued.grant.id, task="t-old", key=key, data={})


def test_expired_certificate_is_refused(gateway: Server, tmp_path: Path) -> None:
    key = keygen(tmp_path / "old" / "id_ed25519")
    grant = _issue_in_the_past(gateway, key, hours_ago=2)

    assert_refused(gateway, "prod-web", key, "certificate has expired")
    assert gateway.sessions(grant) == []


def test_grant_that_ran_out_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web", options=["--ttl", "2s"])
    first = gateway.ssh("prod-web", grant.key, "echo in-time")
    assert (first.returncode, first.stdout) == (0, "in-time\n"), first.stderr
    time.sleep(max(0.0, grant.valid_before - time.time()) + 0.05)

    assert_refused(gateway, "prod-web", grant.key, "certificate has expired")


def test_certificate_not_yet_valid_is_refused(gateway: Server, tmp_path: Path) -> None:
    grant = gateway.issue("prod-web")
    key = copy_key(grant.key, tmp_path / "early" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, grant.key_id, grant.serial, ["prod-web"], "-V", "+1h:+2h",
    )  # fmt: skip

    assert_refused(gateway, "prod-web", key, "certificate is not yet valid")


def test_wrong_principal_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web")  # gated-web exists, but is not granted

    assert_refused(
        gateway, "gated-web", grant.key, "login 'gated-web' is not a principal of the certificate"
    )
    assert gateway.sessions(grant) == []


def test_login_name_that_is_no_target_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    assert_refused(
        gateway, "bastion-t", grant.key, "login 'bastion-t' is not a principal of the certificate"
    )


def test_certificate_with_empty_principals_is_refused(gateway: Server, tmp_path: Path) -> None:
    # Without -n, ssh-keygen signs for no principal; asyncssh alone would take it for any login.
    grant = gateway.issue("prod-web")
    key = copy_key(grant.key, tmp_path / "anyone" / "id_ed25519")
    cert = ssh_keygen_sign(
        gateway.home / "keys" / "ca", key, grant.key_id, grant.serial, None, "-V", "-1m:+10m"
    )
    listing = keygen_listing(cert)
    assert "Principals: (none)" in listing
    assert f'Key ID: "{grant.key_id}"' in listing

    for login in ("prod-web", "gated-web"):
        assert_refused(gateway, login, key, "certificate has no principals")
    assert gateway.sessions(grant) == []


def test_source_address_mismatch_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web", options=["--source-address", "10.0.0.0/8"])
    assert_refused(
        gateway, "prod-web", grant.key, "client address not in source-address 10.0.0.0/8"
    )

    near = gateway.issue("prod-web", options=["--source-address", "127.0.0.0/8,10.0.0.0/8"])
    allowed = gateway.ssh("prod-web", near.key, "echo near")
    assert (allowed.returncode, allowed.stdout) == (0, "near\n"), allowed.stderr


def test_revoked_grant_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    before = gateway.ssh("prod-web", grant.key, "true")
    assert before.returncode == 0, before.stderr
    gateway.cli("grant", "revoke", grant.id, "--reason", "leaked key", actor="alice")

    event = assert_refused(gateway, "prod-web", grant.key, f"grant {grant.id} is revoked")
    assert event["details"]["serial"] == grant.serial


def test_forged_key_id_and_serial_are_refused(gateway: Server, tmp_path: Path) -> None:
    # The same key, re-signed by the bastion's own CA with a made-up key id and serial that
    # still name the real grant: the store's serial/key id must match too.
    grant = gateway.issue("prod-web")
    key = copy_key(grant.key, tmp_path / "forged" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, f"grant={grant.id} agent=x task=y", 999, ["prod-web"], "-V", "-1m:+10m",
    )  # fmt: skip

    assert_refused(
        gateway, "prod-web", key, f"certificate serial/key id do not match grant {grant.id}"
    )


def test_right_key_id_with_wrong_serial_is_refused(gateway: Server, tmp_path: Path) -> None:
    grant = gateway.issue("prod-web")
    key = copy_key(grant.key, tmp_path / "forged" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, grant.key_id, grant.serial + 1000, ["prod-web"], "-V", "-1m:+10m",
    )  # fmt: skip

    assert_refused(
        gateway, "prod-web", key, f"certificate serial/key id do not match grant {grant.id}"
    )


def test_grant_certificate_for_another_key_is_refused(gateway: Server, tmp_path: Path) -> None:
    # Everything the grant's certificate says, but for a key the grant was not issued for.
    grant = gateway.issue("prod-web")
    key = keygen(tmp_path / "stranger" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, grant.key_id, grant.serial, ["prod-web"], "-V", "-1m:+10m",
    )  # fmt: skip

    assert_refused(
        gateway, "prod-web", key, f"certificate key is not the key grant {grant.id} was issued for"
    )


def test_certificate_naming_no_grant_is_refused(gateway: Server, tmp_path: Path) -> None:
    key = keygen(tmp_path / "nogrant" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, "grant=g-00000000 agent=bot task=x", 7, ["prod-web"], "-V", "-1m:+10m",
    )  # fmt: skip

    assert_refused(gateway, "prod-web", key, "no grant matches the certificate's key id")


def _sign_with_unknown_critical_option(gateway: Server, tmp_path: Path) -> Path:
    grant = gateway.issue("prod-web")
    key = copy_key(grant.key, tmp_path / "critical" / "id_ed25519")
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, grant.key_id, grant.serial, ["prod-web"],
        "-V", "-1m:+10m", "-O", "critical:frobnicate@example.com=yes",
    )  # fmt: skip
    return key


def test_unknown_critical_option_is_refused(gateway: Server, tmp_path: Path) -> None:
    key = _sign_with_unknown_critical_option(gateway, tmp_path)

    result, events = attempt(gateway, "prod-web", key)

    assert result.returncode == 255
    assert result.stdout == ""
    assert DENIED in result.stderr
    assert events, "the refusal is audited"


def test_unknown_critical_option_refusal_names_the_option(gateway: Server, tmp_path: Path) -> None:
    key = _sign_with_unknown_critical_option(gateway, tmp_path)

    _, events = attempt(gateway, "prod-web", key)

    assert any("frobnicate@example.com" in e["details"]["reason"] for e in events), [
        e["details"]["reason"] for e in events
    ]


def test_password_and_keyboard_interactive_are_not_offered(gateway: Server, tmp_path: Path) -> None:
    # The server lists "publickey" as its only method: the client has nothing else to try.
    argv = gateway.ssh_argv(
        "prod-web",
        keygen(tmp_path / "unused" / "id_ed25519"),
        "true",
        opts=["-v", "-o", "PreferredAuthentications=password,keyboard-interactive"],
    )
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)

    assert result.returncode == 255
    assert DENIED in result.stderr
    assert "Authentications that can continue: publickey\n" in result.stderr
    assert "No more authentication methods to try." in result.stderr


# -- what a certificate allows once in --------------------------------------------------


def test_no_pty_grant_refuses_a_terminal(gateway: Server) -> None:
    grant = gateway.issue("prod-web", options=["--no-pty"])

    refused = gateway.ssh("prod-web", grant.key, "tty", opts=["-tt"])
    term = gateway.spawn_pty("prod-web", grant.key)
    assert term.wait() == 255
    plain = gateway.ssh("prod-web", grant.key, "echo no terminal needed")

    assert (refused.returncode, refused.stdout) == (255, "")
    assert "PTY allocation request failed" in refused.stderr
    assert "PTY allocation request failed" in term.output
    assert (plain.returncode, plain.stdout) == (0, "no terminal needed\n"), plain.stderr


def test_force_command_is_honoured(gateway: Server) -> None:
    grant = gateway.issue("prod-web", options=["--force-command", "echo forced; exit 3"])

    results = [
        gateway.ssh("prod-web", grant.key, "echo asked for this"),
        gateway.ssh("prod-web", grant.key, "exit 7"),
        gateway.ssh("prod-web", grant.key),  # a shell request
    ]

    for result in results:
        assert (result.returncode, result.stdout) == (3, "forced\n"), result.stderr
    records = gateway.ended_sessions(grant, count=3)
    assert [r["command"] for r in records] == ["echo forced; exit 3"] * 3
    assert {r["exit_status"] for r in records} == {3}


def test_shell_request_waits_for_approval_where_configured(gateway: Server) -> None:
    # `[targets.gated-web] shell_requires_approval = true` in the home's bastion.toml.
    grant = gateway.issue("gated-web")
    term = gateway.spawn_pty("gated-web", grant.key)

    request = term.expect(r"\[bastion\] approval required \(request (a-[0-9a-f]+)\)")
    assert "<interactive shell>" in term.output
    decided = gateway.run_cli("approvals", "approve", request.group(1), actor="alice")
    assert decided.returncode == 0, decided.stderr
    term.expect(r"\[bastion\] approved by alice")
    term.expect(r"\$ $")
    term.type('echo "O""PEN"\r')
    term.expect(r"OPEN\r\n")
    term.type("exit\r")
    assert term.wait() == 0


# -- algorithms: what OpenSSH's sshd refuses by default, the gateway refuses too --------


def _rsa_key(path: Path, bits: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", str(bits), "-N", "", "-f", str(path)], check=True
    )
    return path


def test_sha1_rsa_signature_is_refused_and_sha2_accepted(gateway: Server, tmp_path: Path) -> None:
    key = _rsa_key(tmp_path / "rsa" / "id_rsa", 3072)
    cli_json(
        gateway.home, "grant", "issue", "--agent", "bot", "--task", "rsa-sha1",
        "--target", "prod-web", "--pubkey", f"{key}.pub",
    )  # fmt: skip
    sha1 = ["-o", "PubkeyAcceptedAlgorithms=ssh-rsa-cert-v01@openssh.com"]
    seq = gateway.audit_seq()

    refused = gateway.ssh("prod-web", key, "echo should-not-run", opts=sha1)

    assert (refused.returncode, refused.stdout) == (255, "")
    assert DENIED in refused.stderr
    events = wait_until(lambda: gateway.audit("login.refused", after=seq), timeout=5)
    reasons = [e["details"]["reason"] for e in events]
    assert any("ssh-rsa signatures (SHA-1) are not accepted" in r for r in reasons), reasons
    assert not gateway.audit("login.accepted", after=seq)
    # The same certificate signing with SHA-2 (the stock client's choice) gets in.
    accepted = gateway.ssh("prod-web", key, "echo rsa-sha2")
    assert (accepted.returncode, accepted.stdout) == (0, "rsa-sha2\n"), accepted.stderr


def test_certificate_for_a_weak_rsa_key_is_refused(gateway: Server, tmp_path: Path) -> None:
    # `grant issue` refuses such a key; a certificate the CA signed before it did is refused
    # at login.
    grant = gateway.issue("prod-web")
    key = _rsa_key(tmp_path / "weak" / "id_rsa", 1024)
    ssh_keygen_sign(
        gateway.home / "keys" / "ca",
        key, grant.key_id, grant.serial, ["prod-web"], "-V", "-1m:+10m",
    )  # fmt: skip

    assert_refused(gateway, "prod-web", key, "a 1024-bit RSA key is too weak")


def test_sha1_key_exchange_is_refused(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    for kex in ("diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"):
        opts = ["-o", f"KexAlgorithms={kex}"]
        result = gateway.ssh("prod-web", grant.key, "echo x", opts=opts, log_level="INFO")
        assert result.returncode == 255
        assert "no matching key exchange method found" in result.stderr, result.stderr
    assert gateway.ssh("prod-web", grant.key, "echo x").stdout == "x\n"


def _asyncssh_connect(server: Server, grant: Grant, **options: Any) -> Any:
    """asyncssh's client to `server` as prod-web with `grant`'s key and certificate,
    nothing read from ~/.ssh, the host key pinned."""
    cert = Path(f"{grant.key}-cert.pub")
    host_key = asyncssh.read_public_key(str(server.home / "keys" / "host_ed25519.pub"))
    return asyncssh.connect(
        LOOPBACK,
        server.port,
        username="prod-web",
        client_keys=[
            (asyncssh.read_private_key(str(grant.key)), asyncssh.read_certificate(str(cert)))
        ],
        known_hosts=([host_key], [], []),
        agent_path=None,
        config=None,
        **options,
    )


def test_post_quantum_key_exchange(gateway: Server) -> None:
    # OpenSSH 10 warns on every connection whose key exchange is not post-quantum; its
    # default is mlkem768x25519-sha256. (This machine's OpenSSH 9.2 client predates it:
    # asyncssh's client offers that one method alone.)
    grant = gateway.issue("prod-web")

    async def run() -> str:
        async with _asyncssh_connect(gateway, grant, kex_algs=["mlkem768x25519-sha256"]) as conn:
            result = await conn.run("echo post-quantum", check=True)
            return str(result.stdout)

    assert asyncio.run(run()) == "post-quantum\n"


# -- sessions per connection -----------------------------------------------------------


def test_sessions_on_one_connection_are_limited(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """`server.max_sessions` (sshd's MaxSessions): one connection carries that many shells
    or commands at once; one more is refused before anything is recorded or opened on the
    target, with the reason, and a freed slot can be used again."""
    base = tmp_path_factory.mktemp("max-sessions")
    extra = "\n[server]\nmax_sessions = 3\n"
    server = Server(
        make_home(base, sshd, target_login_key, echo_server.port, extra_config=extra), base
    )
    server.start()
    try:
        grant = server.issue("prod-web", options=["--ttl", "5m"])

        async def run() -> tuple[str, str, int, int]:
            async with _asyncssh_connect(server, grant) as conn:
                held = [await conn.create_process(unique_sleep()) for _ in range(3)]
                try:
                    await conn.run("echo one-too-many")
                except asyncssh.ChannelOpenError as exc:
                    refusal = exc.reason
                else:
                    refusal = "not refused"
                held[0].close()
                await held[0].wait_closed()
                again = await conn.run("echo a-slot-again", check=True)
                for proc in held[1:]:
                    proc.close()
                    await proc.wait_closed()
                # Five opened at once (asyncssh opens each channel in a task of its own):
                # three get in.
                burst = await asyncio.gather(
                    *[conn.create_process("sleep 2") for _ in range(5)], return_exceptions=True
                )
                opened = [p for p in burst if not isinstance(p, BaseException)]
                refused = [e for e in burst if isinstance(e, asyncssh.ChannelOpenError)]
                for proc in opened:
                    await proc.wait_closed()
                return refusal, str(again.stdout), len(opened), len(refused)

        refusal, again, opened, refused = asyncio.run(run())

        assert refusal == "too many sessions on this connection (at most 3)"
        assert again == "a-slot-again\n"
        assert (opened, refused) == (3, 2)
        records = server.ended_sessions(grant, count=7)
        assert "echo one-too-many" not in [r["command"] for r in records]  # never opened
        assert [r["command"] for r in records].count("echo a-slot-again") == 1
        assert [r["command"] for r in records].count("sleep 2") == 3

        # OpenSSH's ControlMaster: the master's fourth session is refused, and the mux
        # client then connects on its own (a connection of its own has its own budget).
        control = tmp_path / "ctl"
        master = server.spawn("prod-web", grant.key, opts=["-N", "-M", "-S", str(control)])
        wait_until(control.exists, 10)
        mux = ["-S", str(control)]
        held = [server.spawn("prod-web", grant.key, unique_sleep(), opts=mux) for _ in range(3)]
        wait_until(lambda: len([r for r in server.sessions(grant) if not r["end_reason"]]) == 3)
        fallback = server.ssh("prod-web", grant.key, "echo on-its-own", opts=mux)
        assert "Session open refused by peer" in fallback.stderr
        assert (fallback.returncode, fallback.stdout) == (0, "on-its-own\n")
        for proc in [*held, master]:
            proc.stop()
    finally:
        server.stop()


def test_connections_still_authenticating_are_limited(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`server.max_startups` (sshd's MaxStartups): idle TCP connections that never
    authenticate hold their places; past the limit a new connection is closed at once.
    Authenticated connections don't count."""
    base = tmp_path_factory.mktemp("max-startups")
    extra = "\n[server]\nmax_startups = 3\n"
    server = Server(
        make_home(base, sshd, target_login_key, echo_server.port, extra_config=extra), base
    )
    server.start()
    idle: list[socket.socket] = []
    try:
        grant = server.issue("prod-web", options=["--ttl", "5m"])
        # Authenticated sessions, more than the limit (one at a time): they don't count.
        held = []
        for count in range(1, 5):
            held.append(server.spawn("prod-web", grant.key, unique_sleep()))
            wait_until(lambda n=count: len(server.sessions(grant)) == n, 10)
        idle = [socket.create_connection((LOOPBACK, server.port)) for _ in range(3)]
        wait_until(lambda: "SSH-2.0-" in idle[-1].recv(256).decode(errors="replace"), 5)

        refused = server.ssh("prod-web", grant.key, "echo refused", log_level="INFO")

        assert (refused.returncode, refused.stdout) == (255, "")
        assert "Connection closed" in refused.stderr or "reset" in refused.stderr, refused.stderr
        assert "3 connections are authenticating (server.max_startups" in server.log()
        for sock in idle:
            sock.close()
        idle = []
        wait_until(lambda: server.ssh("prod-web", grant.key, "echo in").stdout == "in\n", 10)
        for proc in held:
            proc.stop()
    finally:
        for sock in idle:
            sock.close()
        server.stop()
