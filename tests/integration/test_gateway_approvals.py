"""The approval gate: a destructive `exec` waits for a human's `bastion approvals approve`.

Each test makes a directory on the target (as the target's login, through the gateway)
and asks to `rm -rf` it: whether the directory is still there says, from the target's
side, whether the command ran. Decisions are made with the real `bastion` executable,
as another process, while the gateway holds the agent's command.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import APPROVAL_TIMEOUT_S, Server, Spawned, wait_until

REQUEST = r"\[bastion\] approval required \(request (a-[0-9a-f]+)\): (.*) - waiting up to (\S+)\n"


@pytest.fixture
def victim(gateway: Server) -> Iterator[Path]:
    """A directory on the target owned by its login, for `rm -rf` to remove (or not)."""
    path = Path(f"/tmp/bastion-approval-{secrets.token_hex(4)}")
    grant = gateway.issue("prod-web")
    made = gateway.ssh("prod-web", grant.key, f"mkdir -p {path}/inner && touch {path}/inner/f")
    assert made.returncode == 0, made.stderr
    assert (path / "inner" / "f").exists()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def approval(gateway: Server, approval_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = gateway.cli_json_all("approvals", "list", "--all")
    [match] = [a for a in found if a["id"] == approval_id]
    return match


def test_destructive_command_waits_and_runs_once_approved(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    command = f"rm -rf {victim} && echo removed"
    client = gateway.spawn("prod-web", grant.key, command)

    request = client.wait_stderr(REQUEST)
    request_id = request.group(1)
    assert request.group(2) == command
    assert request.group(3) == f"{APPROVAL_TIMEOUT_S}s"
    # While it waits: nothing ran, the client waits, a human can see what is asked.
    time.sleep(0.3)
    assert client.running()
    assert victim.exists()
    [pending] = gateway.cli_json_all("approvals", "list")
    assert pending["id"] == request_id
    assert pending["state"] == "pending"
    assert (pending["text"], pending["grant"], pending["agent"]) == (command, grant.id, "bot")
    assert pending["session"] == gateway.active_session(grant)["id"]
    assert request_id in gateway.run_cli("approvals", "list").stdout

    decided = gateway.run_cli("approvals", "approve", request_id, actor="alice")

    assert decided.returncode == 0, decided.stderr
    assert decided.stdout == f"approved {request_id}: bot on prod-web: {command}\n"
    assert client.wait(10) == 0
    assert client.stdout == "removed\n"
    assert client.stderr == (
        f"[bastion] approval required (request {request_id}): {command}"
        f" - waiting up to {APPROVAL_TIMEOUT_S}s\n"
        f"[bastion] approved by alice (request {request_id})\n"
    )
    assert not victim.exists()
    record = approval(gateway, request_id)
    assert (record["state"], record["decided_by"]) == ("approved", "alice")
    [session] = gateway.ended_sessions(grant)
    assert (session["end_reason"], session["exit_status"]) == ("exit", 0)
    actions = [
        e["action"]
        for e in gateway.audit()
        if request_id in (e["details"].get("id"), e["details"].get("approval"))
    ]
    assert actions == ["approval.requested", "approval.decided"]


def test_stdin_sent_while_waiting_reaches_the_command(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    argv = gateway.ssh_argv("prod-web", grant.key, f"rm -rf {victim} && sort")
    client = Spawned(argv, stdin=subprocess.PIPE)
    assert client.proc.stdin is not None
    client.proc.stdin.write(b"b\na\n")
    client.proc.stdin.close()  # EOF, too, before the command runs
    request_id = client.wait_stderr(REQUEST).group(1)

    assert gateway.run_cli("approvals", "approve", request_id).returncode == 0

    assert client.wait(10) == 0
    assert client.stdout == "a\nb\n"


def test_denied_command_exits_126_with_the_reason(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
    request_id = client.wait_stderr(REQUEST).group(1)

    decided = gateway.run_cli(
        "approvals", "deny", request_id, "--reason", "not during the incident", actor="alice"
    )

    assert decided.returncode == 0, decided.stderr
    assert client.wait(5) == 126
    assert client.stdout == ""
    assert client.stderr.splitlines()[-1] == (
        f"[bastion] denied by alice: not during the incident (request {request_id})"
    )
    assert victim.exists()
    [session] = gateway.ended_sessions(grant)
    assert (session["end_reason"], session["exit_status"]) == ("denied", 126)
    record = approval(gateway, request_id)
    assert (record["state"], record["decision_reason"]) == ("denied", "not during the incident")


def test_unanswered_request_times_out_with_126(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
    request_id = client.wait_stderr(REQUEST).group(1)
    asked_at = time.time()

    assert client.wait(APPROVAL_TIMEOUT_S + 5) == 126

    waited = (client.exited_at or 0) - asked_at
    assert APPROVAL_TIMEOUT_S - 0.5 <= waited <= APPROVAL_TIMEOUT_S + 1.5, waited
    assert client.stderr.splitlines()[-1] == (
        f"[bastion] approval request {request_id} timed out after {APPROVAL_TIMEOUT_S}s;"
        " the command did not run"
    )
    assert victim.exists()
    assert approval(gateway, request_id)["state"] == "expired"
    late = gateway.run_cli("approvals", "approve", request_id)
    assert late.returncode == 4
    assert f"approval {request_id} is already expired" in late.stderr


def test_an_approval_cannot_be_decided_twice(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
    request_id = client.wait_stderr(REQUEST).group(1)
    assert gateway.run_cli("approvals", "approve", request_id, actor="alice").returncode == 0

    again = gateway.run_cli("approvals", "approve", request_id, actor="carol")
    overturn = gateway.run_cli("approvals", "deny", request_id, "--reason", "no", actor="carol")

    assert client.wait(5) == 0
    for result in (again, overturn):
        assert result.returncode == 4
        assert result.stdout == ""
        assert result.stderr == (
            f"bastion: error: approval {request_id} is already approved (by alice)\n"
        )
    assert approval(gateway, request_id)["decided_by"] == "alice"


def test_approving_another_command_does_not_release_this_one(gateway: Server, victim: Path) -> None:
    other = Path(f"{victim}-other")
    grant = gateway.issue("prod-web")
    made = gateway.ssh("prod-web", grant.key, f"mkdir {other}")
    assert made.returncode == 0, made.stderr
    try:
        first = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
        second = gateway.spawn("prod-web", grant.key, f"rm -rf {other}")
        first_id = first.wait_stderr(REQUEST).group(1)
        second_id = second.wait_stderr(REQUEST).group(1)
        assert first_id != second_id

        assert gateway.run_cli("approvals", "approve", first_id).returncode == 0

        assert first.wait(5) == 0
        assert not victim.exists()
        time.sleep(0.5)  # more than the gateway's change-feed poll
        assert second.running()
        assert other.exists()
        assert approval(gateway, second_id)["state"] == "pending"
        gateway.cli("approvals", "deny", second_id, "--reason", "one is enough")
        assert second.wait(5) == 126
        assert other.exists()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_an_approved_command_run_again_needs_a_new_approval(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    command = f"rm -rf {victim}; mkdir {victim}"  # leaves the directory for the second run
    first = gateway.spawn("prod-web", grant.key, command)
    first_id = first.wait_stderr(REQUEST).group(1)
    assert gateway.run_cli("approvals", "approve", first_id).returncode == 0
    assert first.wait(5) == 0

    second = gateway.spawn("prod-web", grant.key, command)

    second_id = second.wait_stderr(REQUEST).group(1)
    assert second_id != first_id
    time.sleep(0.5)
    assert second.running()
    gateway.cli("approvals", "deny", second_id, "--reason", "once was enough")
    assert second.wait(5) == 126


def test_the_agent_cannot_approve_its_own_request(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
    request_id = client.wait_stderr(REQUEST).group(1)

    own = gateway.run_cli("approvals", "approve", request_id, actor="bot")

    assert own.returncode == 2
    assert f"bot asked for {request_id} and can't approve it" in own.stderr
    assert client.running()
    assert approval(gateway, request_id)["state"] == "pending"
    gateway.cli("approvals", "deny", request_id, "--reason", "no")
    assert client.wait(5) == 126
    assert victim.exists()


@pytest.mark.parametrize(
    "template",
    [
        "sh -c 'rm -rf {dir}'",
        "true && rm -r {dir}",
        "echo {dir} | xargs rm -rf",
        "timeout 5 rm -fr {dir}",
    ],
)
def test_destructive_commands_are_found_inside_others(
    gateway: Server, victim: Path, template: str
) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, template.format(dir=victim))
    request_id = client.wait_stderr(REQUEST).group(1)
    gateway.cli("approvals", "deny", request_id, "--reason", "no")
    assert client.wait(5) == 126
    assert victim.exists()


def test_harmless_commands_do_not_wait(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh("prod-web", grant.key, f"rm -f {victim}/inner/f; ls {victim}/inner")

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (victim / "inner" / "f").exists()


def test_client_leaving_while_waiting_expires_the_request(gateway: Server, victim: Path) -> None:
    grant = gateway.issue("prod-web")
    client = gateway.spawn("prod-web", grant.key, f"rm -rf {victim}")
    request_id = client.wait_stderr(REQUEST).group(1)

    client.stop()

    record = wait_until(
        lambda: (a := approval(gateway, request_id))["state"] != "pending" and a, timeout=5
    )
    assert record["state"] == "expired"
    assert record["decision_reason"] == "the session ended while waiting"
    assert gateway.run_cli("approvals", "approve", request_id).returncode == 4
    assert victim.exists()
    [session] = gateway.ended_sessions(grant)
    assert session["end_reason"] == "client-closed"
