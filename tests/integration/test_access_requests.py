"""Access requests over SSH with the real OpenSSH client: ask, a human decides, log in.

An agent's enrolled key logs in as `request@` and asks; the connection waits while a
human runs the real `bastion requests approve|deny` as another process; on approval
the certificate arrives on stdout, is saved beside the key as `KEY-cert.pub`, and the
next `ssh` to the target works with it. The webhook is a local HTTP server in the
test; the command hook is a shell script writing what it got to a file.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    CONFIG,
    LOOPBACK,
    EchoServer,
    RecordingWebhook,
    Server,
    Spawned,
    add_ssh_target,
    keygen,
    make_home,
    recording_webhook,
    wait_until,
)
from tests.peers import Sshd, free_port

REQUEST_TIMEOUT_S = 4
WAITING = r"bastion: waiting for approval \(request (r-[0-9a-f]+); up to (\S+)\)"


@pytest.fixture(scope="module")
def webhook() -> Iterator[type[RecordingWebhook]]:
    with recording_webhook("/hooks/bastion?token=s3cret") as hook:
        yield hook


def request_config(webhook_url: str, hook_script: Path) -> str:
    return (
        CONFIG
        + f"""
[requests]
timeout = "{REQUEST_TIMEOUT_S}s"
default_ttl = "10m"
max_ttl = "1h"
webhook = "{webhook_url}"
command = ["{hook_script}"]
hook_timeout = "2s"

[targets.replica-web]
auto_approve = true
auto_approve_agents = ["bot"]
auto_approve_max_ttl = "15m"
"""
    )


@pytest.fixture(scope="module")
def gw(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    webhook: type[RecordingWebhook],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("requests")
    home = make_home(base, sshd, target_login_key, echo_server.port)
    hook_script = base / "hook.sh"
    hook_script.write_text(f'#!/bin/sh\ncat >> "{base}/hook.jsonl"\necho >> "{base}/hook.jsonl"\n')
    hook_script.chmod(0o755)
    (home / "bastion.toml").write_text(request_config(webhook.url, hook_script))
    add_ssh_target(home, "replica-web", sshd, target_login_key)
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent_key(gw: Server, tmp_path: Path) -> Path:
    """A freshly enrolled key of agent `bot` (re-enrolled per test), asking for prod-web."""
    key = keygen(tmp_path / "agent_key", "bot@laptop")
    if any(a["name"] == "bot" for a in gw.cli_json_all("agent", "list")):
        gw.cli("agent", "remove", "bot")
    gw.cli(
        "agent", "enroll", "bot", "--pubkey", f"{key}.pub",
        "--may-request", "prod-web,replica-web,echo-db", "--max-ttl", "1h",
    )  # fmt: skip
    return key


def ask(gw: Server, key: Path, *args: str) -> Spawned:
    return gw.spawn("request", key, "--", *args)


def ask_prod_web(gw: Server, key: Path, task: str, *extra: str) -> Spawned:
    return ask(
        gw, key, "--target", "prod-web", "--task", task, *extra,
        "--reason", "fix failing migration",
    )  # fmt: skip


def test_request_approve_certificate_then_login(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "hotfix-1422", "--ttl", "20m")
    waiting = client.wait_stderr(WAITING)
    request_id = waiting.group(1)
    assert waiting.group(2) == f"{REQUEST_TIMEOUT_S}s"
    time.sleep(0.3)
    assert client.running()  # the connection stays open while a human decides
    [pending] = gw.cli_json_all("requests", "list")
    assert pending["id"] == request_id
    assert (pending["agent"], pending["targets"], pending["task"]) == (
        "bot",
        ["prod-web"],
        "hotfix-1422",
    )
    assert pending["reason"] == "fix failing migration"  # unquoted words, joined again
    assert pending["ttl_seconds"] == 20 * 60

    decided = gw.run_cli("requests", "approve", request_id, "--ttl", "15m", actor="alice")
    assert decided.returncode == 0, decided.stderr
    assert client.wait(10) == 0, client.stderr
    cert_line = client.stdout
    assert cert_line.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert cert_line.count("\n") == 1
    assert f"approved by alice (request {request_id})" in client.stderr

    # Saved beside the key, the certificate opens the target at once.
    Path(f"{agent_key}-cert.pub").write_text(cert_line)
    ran = gw.ssh("prod-web", agent_key, "echo in-through-request")
    assert (ran.returncode, ran.stdout) == (0, "in-through-request\n"), ran.stderr

    # The task and reason flow into the grant, its key id and the session record.
    [grant] = gw.cli_json_all("grant", "list", "--task", "hotfix-1422")
    assert grant["created_by"] == "alice"
    assert grant["reason"] == "fix failing migration"
    assert "task=hotfix-1422" in grant["key_id"]
    lifetime = datetime.fromisoformat(grant["valid_before"]) - datetime.fromisoformat(
        grant["created_at"]
    )
    assert lifetime.total_seconds() == 15 * 60
    [session] = gw.ended_sessions(grant["id"])  # type: ignore[arg-type]
    assert session["task"] == "hotfix-1422"
    listed = gw.cli_json_all("recordings", "list", "--task", "hotfix-1422")
    assert [r["session"] for r in listed] == [session["id"]]
    record = gw.cli_json_all("requests", "show", request_id)
    assert (record["state"], record["decided_by"], record["grant"]) == (
        "approved",
        "alice",
        grant["id"],
    )
    # The approval is audited with the grant it made.
    [event] = [e for e in gw.audit("request.decided") if e["details"]["request"] == request_id]
    assert (event["actor"], event["details"]["grant"]) == ("alice", grant["id"])


def test_deny_tells_the_agent_why_and_grants_nothing(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "deny-1")
    request_id = client.wait_stderr(WAITING).group(1)
    decided = gw.run_cli("requests", "deny", request_id, "--reason", "use the replica", actor="bob")
    assert decided.returncode == 0, decided.stderr
    assert client.wait(10) == 1
    assert client.stdout == ""
    assert client.stderr.endswith(
        f"bastion: request {request_id} denied by bob: use the replica\n"
    ), client.stderr
    assert gw.cli_json_all("grant", "list", "--all", "--task", "deny-1") == []


def test_nobody_deciding_times_out(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "timeout-1")
    request_id = client.wait_stderr(WAITING).group(1)
    assert client.wait(REQUEST_TIMEOUT_S + 5) == 2
    assert client.stdout == ""
    assert f"request {request_id} timed out" in client.stderr
    assert gw.cli_json_all("requests", "show", request_id)["state"] == "expired"
    late = gw.run_cli("requests", "approve", request_id, actor="alice")
    assert late.returncode != 0
    assert "already expired" in late.stderr
    assert gw.cli_json_all("grant", "list", "--all", "--task", "timeout-1") == []


def test_the_agent_cannot_approve_its_own_request(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "self-1")
    request_id = client.wait_stderr(WAITING).group(1)
    refused = gw.run_cli("requests", "approve", request_id, actor="bot")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        f"bastion: error: bot asked for {request_id} and can't decide it"
    )
    assert client.running()
    gw.cli("requests", "deny", request_id, "--reason", "test over", actor="alice")
    assert client.wait(10) == 1


def test_auto_approval_needs_no_human_and_is_audited(gw: Server, agent_key: Path) -> None:
    client = ask(
        gw, agent_key, "--target", "replica-web", "--task", "auto-1", "--ttl", "10m",
        "--reason", "read", "replica", "lag",
    )  # fmt: skip
    assert client.wait(10) == 0, client.stderr
    assert "waiting for approval" not in client.stderr
    assert "approved by auto-approval" in client.stderr
    Path(f"{agent_key}-cert.pub").write_text(client.stdout)
    ran = gw.ssh("replica-web", agent_key, "true")
    assert ran.returncode == 0, ran.stderr
    [grant] = gw.cli_json_all("grant", "list", "--task", "auto-1")
    assert grant["created_by"] == "auto-approval"
    [event] = [e for e in gw.audit("request.decided") if e["details"]["task"] == "auto-1"]
    assert event["actor"] == "auto-approval"
    assert "auto_approve" in event["details"]["reason"]


def test_auto_approval_does_not_cover_a_longer_ttl(gw: Server, agent_key: Path) -> None:
    # replica-web auto-approves up to 15m; 30m goes to a human.
    client = ask(
        gw, agent_key, "--target", "replica-web", "--task", "auto-2", "--ttl", "30m",
        "--reason", "long", "read",
    )  # fmt: skip
    request_id = client.wait_stderr(WAITING).group(1)
    gw.cli("requests", "deny", request_id, "--reason", "too long", actor="alice")
    assert client.wait(10) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "gated-web", "--task", "t", "--reason", "x"], "may not request target"),
        (["--target", "nope", "--task", "t", "--reason", "x"], "unknown target 'nope'"),
        (["--target", "prod-web", "--task", "t"], "give --reason"),
        (["--target", "prod-web", "--task", "t", "--ttl", "2h", "--reason", "x"], "longer than"),
        (["--target", "prod-web", "--reason", "x"], "give --task"),
        (["--frobnicate"], "unknown option '--frobnicate'"),
    ],
)
def test_requests_outside_policy_are_refused_before_anyone_is_asked(
    gw: Server, agent_key: Path, args: list[str], message: str
) -> None:
    before = len(gw.cli_json_all("requests", "list", "--all"))
    client = ask(gw, agent_key, *args)
    assert client.wait(10) == 3
    assert client.stdout == ""
    assert client.stderr.startswith("bastion: request refused: "), client.stderr
    assert message in client.stderr
    assert len(gw.cli_json_all("requests", "list", "--all")) == before
    assert any(message in e["details"]["reason"] for e in gw.audit("request.refused"))


def test_an_enrollment_key_alone_opens_nothing(gw: Server, agent_key: Path) -> None:
    # Not a target login ...
    login = gw.ssh("prod-web", agent_key, "true")
    assert login.returncode == 255
    assert "Permission denied" in login.stderr
    # ... not a shell on request@ ...
    shell = gw.ssh("request", agent_key)
    assert shell.returncode == 3
    assert "this login only takes an access request" in shell.stderr
    # ... and no forward, even to a target it may request.
    port = free_port()
    forward = gw.spawn(
        "request",
        agent_key,
        "-N",
        opts=["-L", f"{port}:echo-db:5432", "-o", "ExitOnForwardFailure=no"],
    )
    try:
        wait_until(lambda: _connectable(port), 10)
        with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
            sock.sendall(b"hello")
            sock.settimeout(5)
            # The channel was refused: closed at once (or reset, our bytes unread).
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
        refused = wait_until(
            lambda: [
                e for e in gw.audit("forward.refused") if e["details"]["grant"] == "(agent bot)"
            ]
        )
        assert "can only request access" in refused[-1]["details"]["reason"]
    finally:
        forward.stop()
    # A key that isn't enrolled can't even ask.
    stranger = keygen(agent_key.parent / "stranger")
    asked = gw.ssh(
        "request", stranger, "--", "--target", "prod-web", "--task", "t", "--reason", "x"
    )
    assert asked.returncode == 255
    assert "Permission denied" in asked.stderr


def _connectable(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_hanging_up_withdraws_the_request(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "hangup-1")
    request_id = client.wait_stderr(WAITING).group(1)
    client.stop()
    state = wait_until(
        lambda: (
            gw.cli_json_all("requests", "show", request_id)["state"] != "pending"
            and gw.cli_json_all("requests", "show", request_id)["state"]
        )
    )
    assert state == "withdrawn"


def test_hooks_hear_of_requests_and_decisions(
    gw: Server, agent_key: Path, webhook: type[RecordingWebhook]
) -> None:
    client = ask_prod_web(gw, agent_key, "hook-1")
    request_id = client.wait_stderr(WAITING).group(1)
    gw.cli("requests", "deny", request_id, "--reason", "hooks test", actor="alice")
    assert client.wait(10) == 1

    def events(source: list[dict[str, Any]]) -> list[str]:
        return [e["event"] for e in source if e["request"]["id"] == request_id]

    posted = wait_until(
        lambda: (
            len(events([r["body"] for r in webhook.received])) == 2
            and [r for r in webhook.received if r["body"]["request"]["id"] == request_id]
        )
    )
    assert [p["body"]["event"] for p in posted] == ["request.created", "request.decided"]
    assert posted[0]["content_type"] == "application/json"
    assert posted[0]["body"]["approve"] == f"bastion requests approve {request_id}"
    assert posted[1]["body"]["request"]["state"] == "denied"
    assert "certificate" not in posted[1]["body"]["request"]

    hook_file = gw.work / "hook.jsonl"
    lines = wait_until(lambda: len(events(_jsonl(hook_file))) == 2 and _jsonl(hook_file))
    assert events(lines) == ["request.created", "request.decided"]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_failing_webhook_blocks_nothing(
    gw: Server, agent_key: Path, webhook: type[RecordingWebhook]
) -> None:
    webhook.status = 500
    try:
        started = time.monotonic()
        client = ask(
            gw, agent_key, "--target", "replica-web", "--task", "hook-fail", "--reason", "x"
        )
        assert client.wait(10) == 0, client.stderr
        assert time.monotonic() - started < 3
        # The hook runs on its own thread, possibly after the agent has its certificate:
        # the webhook keeps failing until the bastion has logged the failure.
        assert wait_until(
            lambda: "webhook http://127.0.0.1:" in gw.log() and "answered HTTP 500" in gw.log()
        )
    finally:
        webhook.status = 204
    assert "s3cret" not in gw.log()  # the webhook's token is never logged


def test_expiry_message_says_how_to_ask_again(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "again-1")
    request_id = client.wait_stderr(WAITING).group(1)
    gw.cli("requests", "approve", request_id, "--ttl", "3s", actor="alice")
    assert client.wait(10) == 0
    Path(f"{agent_key}-cert.pub").write_text(client.stdout)
    session = gw.spawn("prod-web", agent_key, "sleep 600")
    assert session.wait(15) == 255
    line = session.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"\[bastion\] grant g-[0-9a-f]+ \(task again-1\) expired at \S+ - session closed;"
        rf" to ask again: ssh -p {gw.port} request@127\.0\.0\.1 -- --target prod-web"
        r' --task again-1 --ttl 30m --reason "…"',
        line,
    ), line
    # And asking again works with the expired certificate still beside the key (ssh offers
    # it first; request@ refuses certificates and takes the enrolled key next).
    again = ask_prod_web(gw, agent_key, "again-1")
    again_id = again.wait_stderr(WAITING).group(1)
    gw.cli("requests", "deny", again_id, "--reason", "done for today", actor="alice")
    assert again.wait(10) == 1


def test_an_agent_has_at_most_three_requests_waiting(gw: Server, agent_key: Path) -> None:
    waiting = [ask_prod_web(gw, agent_key, f"flood-{i}") for i in range(3)]
    ids = [client.wait_stderr(WAITING).group(1) for client in waiting]
    fourth = ask_prod_web(gw, agent_key, "flood-3")
    assert fourth.wait(10) == 3
    assert "3 requests of bot are already waiting" in fourth.stderr
    for request_id in ids:
        gw.cli("requests", "deny", request_id, "--reason", "flood test", actor="alice")
    assert [client.wait(10) for client in waiting] == [1, 1, 1]


def test_the_audit_chain_holds_after_all_of_it(gw: Server) -> None:
    verified = gw.run_cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr


def test_a_crash_leaves_no_request_pending(gw: Server, agent_key: Path) -> None:
    client = ask_prod_web(gw, agent_key, "crash-1")
    request_id = client.wait_stderr(WAITING).group(1)
    gw.stop(signal.SIGKILL)
    assert client.wait(10) == 255  # the connection is gone with the gateway
    assert gw.cli_json_all("requests", "show", request_id)["state"] == "pending"
    gw.start()
    record = gw.cli_json_all("requests", "show", request_id)
    assert (record["state"], record["decision_reason"]) == (
        "expired",
        "the bastion restarted while the request waited",
    )
    assert request_id not in gw.run_cli("requests", "list").stdout
