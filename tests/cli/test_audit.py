"""`bastion audit list | verify`: every state change is recorded; tampering is named."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.auditchain import event_hash
from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.service import Bastion
from tests.cli.conftest import (
    INVALID_INPUT,
    add_postgres_target,
    assert_error,
    audit_events,
    ok,
    ok_json,
    pub,
    run,
)

VERIFICATION_FAILED = 8


@pytest.fixture
def history(home: Path, agent_key: Path) -> list[str]:
    """A home with one event of each kind so far: init, add, issue, revoke, remove."""
    add_postgres_target(home, "prod-db")
    grant = ok_json(
        home,
        *("grant", "issue", "--agent", "bot", "--target", "prod-db", "--task", "t-1"),
        *("--pubkey", str(pub(agent_key))),
    )
    ok(home, "grant", "revoke", grant["id"], "--reason", "done")
    ok(home, "target", "remove", "prod-db")
    return ["ca.initialized", "target.added", "grant.issued", "grant.revoked", "target.removed"]


def test_every_state_change_is_an_audit_event(home: Path, history: list[str]) -> None:
    events = ok_json(home, "audit", "list")
    assert [e["action"] for e in events] == history
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0]["prev_hash"] == "0" * 64
    for previous, event in itertools.pairwise(events):
        assert event["prev_hash"] == previous["hash"]
    for event in events:
        at = datetime.fromisoformat(event["at"])
        assert at.utcoffset() == timedelta(0)
        assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)
        assert isinstance(event["details"], dict)
    issued = events[2]["details"]
    assert (issued["agent"], issued["task"], issued["targets"]) == ("bot", "t-1", ["prod-db"])


def test_audit_list_text(home: Path, history: list[str]) -> None:
    lines = ok(home, "audit", "list").stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "ACTOR", "ACTION", "DETAILS"]
    rows = [line.split(maxsplit=4) for line in lines[1:]]
    assert [row[3] for row in rows] == history
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[1]) for row in rows)
    assert rows[1][4] == "name=prod-db"
    assert "agent=bot task=t-1 targets=prod-db" in rows[2][4]
    assert "reason=done" in rows[3][4]


def test_audit_list_since(home: Path) -> None:
    three_hours_ago = FixedClock(datetime.now(UTC) - timedelta(hours=3))
    old = Bastion.open(open_home(str(home)), three_hours_ago, "clockwork")
    try:
        old.add_postgres_target("old-db", "127.0.0.1", 5432, "appdb", "app", "pw", check=None)
    finally:
        old.close()
    add_postgres_target(home, "new-db")

    def since(when: str) -> list[str]:
        events = ok_json(home, "audit", "list", "--since", when)
        return [e["details"].get("name", e["action"]) for e in events]

    assert since("1h") == ["ca.initialized", "new-db"]
    assert since("4h") == ["ca.initialized", "old-db", "new-db"]
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert since(two_hours_ago) == ["ca.initialized", "new-db"]
    assert "old-db" not in ok(home, "audit", "list", "--since", "1h").stdout
    assert "old-db" in ok(home, "audit", "list").stdout
    assert ok(home, "audit", "list", "--since", "2099-01-01T00:00Z").stdout == "no audit events\n"


@pytest.mark.parametrize("when", ["yesterday", "5x", "2026-13-45"])
def test_audit_list_bad_since(home: Path, when: str) -> None:
    assert_error(
        run(home, "audit", "list", "--since", when), INVALID_INPUT, f"invalid time {when!r}"
    )


def test_verify_intact_chain(home: Path, history: list[str]) -> None:
    head = audit_events(home)[-1]["hash"]
    assert ok(home, "audit", "verify").stdout == f"audit chain OK: 5 events, head {head}\n"


def tamper(home: Path, sql: str, *params: object) -> None:
    """Change the stored audit trail behind bastion's back, as an attacker with the file would."""
    with sqlite3.connect(home / "state.db") as conn:
        assert conn.execute(sql, params).rowcount == 1


def assert_broken_at(home: Path, seq: int, action: str, why: str) -> None:
    line = assert_error(run(home, "audit", "verify"), VERIFICATION_FAILED, f"event {seq} ")
    assert re.fullmatch(
        rf"bastion: error: audit chain broken at event {seq} \({re.escape(action)} at"
        rf" \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\): {re.escape(why)}",
        line,
    ), line


def test_edited_details_are_named(home: Path, history: list[str]) -> None:
    details = audit_events(home)[2]["details"]
    details["targets"] = ["prod-db", "prod-everything"]
    tamper(home, "UPDATE audit_events SET details = ? WHERE seq = 3", json.dumps(details))

    assert_broken_at(home, 3, "grant.issued", "its content does not match its hash (edited)")


def test_edited_actor_is_named(home: Path, history: list[str]) -> None:
    tamper(home, "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 4")
    assert_broken_at(home, 4, "grant.revoked", "its content does not match its hash (edited)")


def test_edited_time_is_named(home: Path, history: list[str]) -> None:
    at = audit_events(home)[1]["at"]
    earlier = (datetime.fromisoformat(at) - timedelta(days=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.%f+00:00"
    )
    tamper(home, "UPDATE audit_events SET at = ? WHERE seq = 2", earlier)
    assert_broken_at(home, 2, "target.added", "its content does not match its hash (edited)")


def test_deleted_event_is_named(home: Path, history: list[str]) -> None:
    tamper(home, "DELETE FROM audit_events WHERE seq = 3")
    assert_broken_at(home, 4, "grant.revoked", "sequence gap: expected event 3, found 4")


def test_rehashed_edit_breaks_the_next_link(home: Path, history: list[str]) -> None:
    # A forger who edits an event and recomputes its hash is caught at the next event.
    edited = audit_events(home)[1]
    forged_hash = event_hash(
        edited["seq"],
        datetime.fromisoformat(edited["at"]),
        "someone-else",
        edited["action"],
        edited["details"],
        edited["prev_hash"],
    )
    tamper(
        home, "UPDATE audit_events SET actor = 'someone-else', hash = ? WHERE seq = 2", forged_hash
    )
    assert_broken_at(
        home, 3, "grant.issued", "its previous-hash does not match the event before it"
    )


@pytest.mark.parametrize(
    ("column", "value"), [("details", '{"name": "prod-db"'), ("at", "last tuesday")]
)
def test_unreadable_event_is_named(home: Path, history: list[str], column: str, value: str) -> None:
    tamper(home, f"UPDATE audit_events SET {column} = ? WHERE seq = 2", value)
    line = assert_error(run(home, "audit", "verify"), VERIFICATION_FAILED, "event 2 ")
    assert line.startswith("bastion: error: audit chain broken at event 2 ")


@pytest.mark.parametrize(
    ("column", "value"), [("details", '{"name": "prod-db"'), ("at", "last tuesday")]
)
def test_unreadable_event_is_listed_as_stored(
    home: Path, history: list[str], column: str, value: str
) -> None:
    tamper(home, f"UPDATE audit_events SET {column} = ? WHERE seq = 2", value)

    lines = ok(home, "audit", "list").stdout.splitlines()
    events = ok_json(home, "audit", "list")

    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert [e["action"] for e in events] == history
    if column == "details":
        assert events[1]["details"] == {"unreadable_details": value}
    else:
        assert events[1]["at"] == value
        assert f"unreadable time {value!r}" in lines[2]
