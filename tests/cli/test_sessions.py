"""`bastion sessions kill`: what it asks of the gateway, what it says, and its errors.

No gateway runs here: the sessions are rows written as a gateway writes them, and the
kill is what lands in the audit feed (the gateways' side is tested end to end in
`tests/integration/test_sessions_kill.py`).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bastion.clock import SystemClock
from bastion.config import open_home
from bastion.models import EndReason, Session, SessionKind
from bastion.service import Bastion
from tests.cli.conftest import (
    ALREADY_EXISTS,
    NOT_FOUND,
    assert_error,
    audit_events,
    ok,
    ok_json,
    pub,
    run,
)

CLIENT = "127.0.0.1:40022"


def issue(home: Path, agent_key: Path, target: str, task: str) -> dict[str, Any]:
    return ok_json(  # type: ignore[no-any-return]
        home,
        *("grant", "issue", "--agent", "bot", "--target", target, "--task", task),
        *("--pubkey", str(pub(agent_key))),
    )


def open_session(
    home: Path,
    grant: dict[str, Any],
    kind: SessionKind,
    client: str = CLIENT,
    node: str = "node-1",
    ended: bool = False,
) -> str:
    """A session row as a gateway writes it (an ended one if `ended`)."""
    now = datetime.now(UTC)
    session = Session(
        id=f"s-{secrets.token_hex(6)}",
        grant_id=grant["id"],
        agent="bot",
        task=grant["task"],
        target="prod-web",
        kind=kind,
        client=client,
        command="sleep 600" if kind is SessionKind.EXEC else None,
        started_at=now - timedelta(seconds=5),
        node=node,
    )
    bastion = Bastion.open(open_home(str(home)), SystemClock(), "gateway")
    try:
        with bastion.store.transaction() as tx:
            tx.insert_session(session)
            if ended:
                tx.end_session(
                    replace(session, ended_at=now, end_reason=EndReason.EXIT, exit_status=0)
                )
    finally:
        bastion.close()
    return session.id


@pytest.fixture
def grant(home: Path, web: str, agent_key: Path) -> dict[str, Any]:
    return issue(home, agent_key, web, "t-kill")


def test_kill_names_every_session_of_the_connection_and_what_the_agent_can_still_do(
    home: Path, grant: dict[str, Any]
) -> None:
    exec_id = open_session(home, grant, SessionKind.EXEC)
    shell_id = open_session(home, grant, SessionKind.SHELL)
    forward_id = open_session(home, grant, SessionKind.FORWARD)
    elsewhere = open_session(home, grant, SessionKind.EXEC, client="127.0.0.1:40023")
    open_session(home, grant, SessionKind.EXEC, ended=True)

    out = ok(home, "--as", "alice", "sessions", "kill", exec_id, "--reason", "stop").stdout

    first, second = out.splitlines()
    assert first.startswith(
        f"kill requested for session {exec_id} (bot on prod-web): node node-1 closes its SSH"
        f" connection from {CLIENT} within a second, with all 3 of its sessions ("
    )
    for sid, kind in ((exec_id, "exec"), (shell_id, "shell"), (forward_id, "forward")):
        assert f"{sid} {kind}" in first
    assert elsewhere not in first
    assert second.startswith(f"grant {grant['id']} stays valid until ")
    assert second.endswith(
        ": the agent can log in again with its certificate (to stop that: bastion grant revoke"
        f" {grant['id']}, or kill with --revoke)"
    )
    [event] = [e for e in audit_events(home) if e["action"] == "session.kill_requested"]
    assert event["actor"] == "alice"
    details = event["details"]
    assert (details["session"], details["grant"], details["reason"]) == (
        exec_id,
        grant["id"],
        "stop",
    )
    assert (details["client"], details["node"], details["revoke"]) == (CLIENT, "node-1", False)
    assert sorted(details["sessions"]) == sorted([exec_id, shell_id, forward_id])
    assert not [e for e in audit_events(home) if e["action"] == "grant.revoked"]
    assert ok_json(home, "grant", "show", grant["id"])["state"] == "active"


def test_kill_with_revoke_revokes_the_grant_in_the_same_step(
    home: Path, grant: dict[str, Any]
) -> None:
    exec_id = open_session(home, grant, SessionKind.EXEC)
    other = open_session(home, grant, SessionKind.SHELL, client="127.0.0.1:40023")

    out = ok(home, "sessions", "kill", exec_id, "--revoke", "--reason", "incident 9").stdout

    first, second = out.splitlines()
    assert first.endswith(f"with its one session ({exec_id} exec)")
    assert second == (
        f"grant {grant['id']} revoked: its certificate logs in no more;"
        " its 1 other open session(s) close too"
    )
    assert other not in first
    events = [e for e in audit_events(home) if e["action"].startswith(("session.", "grant.rev"))]
    assert [e["action"] for e in events] == ["session.kill_requested", "grant.revoked"]
    kill, revoked = events
    assert kill["details"]["revoke"] is True
    assert revoked["details"]["grant"] == grant["id"]
    assert revoked["details"]["session"] == exec_id
    assert revoked["details"]["reason"] == "incident 9"
    shown = ok_json(home, "grant", "show", grant["id"])
    assert shown["state"] == "revoked"


def test_kill_with_revoke_of_an_already_revoked_grant_says_so(
    home: Path, grant: dict[str, Any]
) -> None:
    exec_id = open_session(home, grant, SessionKind.EXEC)
    ok(home, "--as", "bob", "grant", "revoke", grant["id"], "--reason", "earlier")

    out = ok(home, "sessions", "kill", exec_id, "--revoke").stdout

    assert out.splitlines()[1].startswith(f"grant {grant['id']} was already revoked at ")
    assert out.splitlines()[1].endswith(" by bob")
    [kill] = [e for e in audit_events(home) if e["action"] == "session.kill_requested"]
    assert (kill["details"]["revoke"], kill["details"]["reason"]) == (False, "no reason given")
    assert len([e for e in audit_events(home) if e["action"] == "grant.revoked"]) == 1


def test_kill_of_an_unknown_session_is_one_line_exit_3(home: Path) -> None:
    before = len(audit_events(home))
    line = assert_error(run(home, "sessions", "kill", "s-nope"), NOT_FOUND, "'s-nope'")
    assert line == ("bastion: error: unknown session 's-nope' (see `bastion sessions list`)")
    assert_error(run(home, "sessions", "kill", "s-nope", "--revoke"), NOT_FOUND, "'s-nope'")
    assert len(audit_events(home)) == before


def test_kill_of_an_ended_session_is_one_line_exit_4_and_revokes_nothing(
    home: Path, grant: dict[str, Any]
) -> None:
    ended = open_session(home, grant, SessionKind.EXEC, ended=True)
    before = len(audit_events(home))

    line = assert_error(
        run(home, "sessions", "kill", ended, "--revoke"), ALREADY_EXISTS, "already ended"
    )

    assert f"session {ended} already ended at " in line
    assert len(audit_events(home)) == before
    assert ok_json(home, "grant", "show", grant["id"])["state"] == "active"


def test_kill_help_says_what_the_agent_can_still_do(home: Path) -> None:
    out = " ".join(ok(home, "sessions", "kill", "--help").stdout.split())
    assert "every session on it" in out
    assert "--revoke" in out
    assert "can log in again" in out
