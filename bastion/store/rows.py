"""Stored rows to model values and back: the column mapping both backends share.

Both SQLite and PostgreSQL store times as fixed-width ISO 8601 text (so that text
order is time order and the SQL that compares them is the same), lists as JSON text
and booleans as integers. Nothing here runs SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

from bastion.models import (
    AccessRequest,
    Agent,
    Approval,
    ApprovalState,
    AuditEvent,
    EndReason,
    Node,
    Recording,
    RecordingState,
    RequestState,
    Session,
    SessionKind,
    SslMode,
    Target,
    TargetKind,
    WebRole,
    WebToken,
    WebTokenKind,
    WebUser,
)

# The key under which an audit event's details that aren't a JSON object are returned.
UNREADABLE_DETAILS = "unreadable_details"


class Row(Protocol):
    """A result row by column name (sqlite3.Row, or the dict psycopg's dict_row makes)."""

    def __getitem__(self, key: str) -> Any: ...


def ts(when: datetime) -> str:
    # Fixed width, so that text order is time order.
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def maybe_dt(text: str | None) -> datetime | None:
    return dt(text) if text else None


def agent(row: Row) -> Agent:
    seconds = row["max_ttl_seconds"]
    return Agent(
        name=row["name"],
        public_key=row["public_key"],
        key_fingerprint=row["key_fingerprint"],
        may_request=tuple(json.loads(row["may_request"])),
        max_ttl=timedelta(seconds=seconds) if seconds is not None else None,
        created_at=dt(row["created_at"]),
        created_by=row["created_by"],
    )


def request(row: Row) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        agent=row["agent"],
        key_fingerprint=row["key_fingerprint"],
        targets=tuple(json.loads(row["targets"])),
        task=row["task"],
        reason=row["reason"],
        ttl=timedelta(seconds=row["ttl_seconds"]),
        client=row["client"],
        node=row["node"],
        requested_at=dt(row["requested_at"]),
        expires_at=dt(row["expires_at"]),
        state=RequestState(row["state"]),
        decided_at=maybe_dt(row["decided_at"]),
        decided_by=row["decided_by"],
        decision_reason=row["decision_reason"],
        grant_id=row["grant_id"],
        certificate=row["certificate"],
    )


def session(row: Row) -> Session:
    return Session(
        id=row["id"],
        grant_id=row["grant_id"],
        agent=row["agent"],
        task=row["task"],
        target=row["target"],
        kind=SessionKind(row["kind"]),
        client=row["client"],
        command=row["command"],
        started_at=dt(row["started_at"]),
        node=row["node"],
        ended_at=maybe_dt(row["ended_at"]),
        end_reason=EndReason(row["end_reason"]) if row["end_reason"] else None,
        exit_status=row["exit_status"],
        bytes_up=row["bytes_up"],
        bytes_down=row["bytes_down"],
        detail=row["detail"],
    )


def approval(row: Row) -> Approval:
    return Approval(
        id=row["id"],
        kind=row["kind"],
        session_id=row["session_id"],
        grant_id=row["grant_id"],
        agent=row["agent"],
        task=row["task"],
        target=row["target"],
        text=row["body"],
        reasons=tuple(json.loads(row["reasons"])),
        requested_at=dt(row["requested_at"]),
        expires_at=dt(row["expires_at"]),
        state=ApprovalState(row["state"]),
        decided_at=maybe_dt(row["decided_at"]),
        decided_by=row["decided_by"],
        decision_reason=row["decision_reason"],
    )


def recording(row: Row) -> Recording:
    return Recording(
        session_id=row["session_id"],
        path=row["path"],
        node=row["node"],
        agent=row["agent"],
        grant_id=row["grant_id"],
        task=row["task"],
        target=row["target"],
        kind=SessionKind(row["kind"]),
        started_at=dt(row["started_at"]),
        state=RecordingState(row["state"]),
        ended_at=maybe_dt(row["ended_at"]),
        size=row["size"],
        sha256=row["sha256"],
    )


def target(row: Row) -> Target:
    return Target(
        name=row["name"],
        kind=TargetKind(row["kind"]),
        host=row["host"],
        port=row["port"],
        user=row["login"],
        host_key=row["host_key"],
        database=row["dbname"],
        sslmode=SslMode(row["sslmode"]) if row["sslmode"] else None,
        sslrootcert=row["sslrootcert"],
        created_at=dt(row["created_at"]),
        created_by=row["created_by"],
    )


class UnreadableTime(datetime):
    """A stored event time that is not ISO 8601, kept as the text that was found.

    It hashes and prints as that text, so the audit chain check names the event as
    edited instead of failing to read it; as a point in time it is the epoch.
    """

    raw: str

    def __new__(cls, raw: str) -> UnreadableTime:
        self = super().__new__(cls, 1970, 1, 1, tzinfo=UTC)
        self.raw = raw
        return self

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.raw

    def astimezone(self, tz: tzinfo | None = None) -> UnreadableTime:
        return self

    def strftime(self, format: str) -> str:
        return f"unreadable time {self.raw!r}"

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"UnreadableTime({self.raw!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnreadableTime, (self.raw,))


def audit(row: Row) -> AuditEvent:
    """One stored event; a field that can't be read comes back as the text that is stored.

    Such an event no longer hashes to its stored hash, so `audit verify` names it
    rather than crashing on it, and `audit list` still shows it.
    """
    raw_details = row["details"]
    try:
        details = json.loads(raw_details)
    except (TypeError, ValueError):
        details = None
    if not isinstance(details, dict):
        details = {UNREADABLE_DETAILS: raw_details}
    try:
        at = dt(row["at"])
        if at.tzinfo is None:
            raise ValueError("no time zone")
    except (TypeError, ValueError):
        at = UnreadableTime(str(row["at"]))
    return AuditEvent(
        seq=row["seq"],
        at=at,
        actor=row["actor"],
        action=row["action"],
        details=details,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def node(row: Row) -> Node:
    return Node(
        name=row["name"],
        address=row["address"],
        started_at=dt(row["started_at"]),
        heartbeat_at=dt(row["heartbeat_at"]),
        stopped_at=maybe_dt(row["stopped_at"]),
        lost_at=maybe_dt(row["lost_at"]),
    )


def web_user(row: Row) -> WebUser:
    return WebUser(
        name=row["name"],
        role=WebRole(row["role"]),
        password_hash=row["password_hash"],
        created_at=dt(row["created_at"]),
        created_by=row["created_by"],
    )


def web_token(row: Row) -> WebToken:
    return WebToken(
        token_hash=row["token_hash"],
        kind=WebTokenKind(row["kind"]),
        user=row["user_name"],
        created_at=dt(row["created_at"]),
        expires_at=dt(row["expires_at"]),
        client=row["client"],
    )
