"""The console's pages and actions: each a function of a `Call`, returning a response.

Reads and writes go through the service API (`Bastion`, `AccessRequests`,
`WebAccounts`) acting as the signed-in person, so every decision, revocation and kill is
audited under their name by the same code as the CLI's, and the service's rules (one
decision per request, no self-approval, timeouts) hold here unchanged. Who may call
which of these is decided before they run (`app.ROUTES`, `webpolicy`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from starlette.responses import RedirectResponse, Response

from bastion.accessrequests import AccessRequests
from bastion.errors import InvalidInput, NotFound
from bastion.models import (
    AccessRequest,
    Approval,
    ApprovalState,
    EndReason,
    RequestState,
    Session,
    SessionKind,
)
from bastion.recording import format as fmt
from bastion.recording.replay import Recording
from bastion.recording.search import Match
from bastion.recording.search import search as search_recordings
from bastion.timespec import parse_duration, parse_when
from bastion.web.app import Call
from bastion.webaccounts import WebAccounts

Decided = TypeVar("Decided", Approval, AccessRequest)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAGE_SIZE = 200
MAX_MATCHES = 200
_STATEMENT_FIELDS: dict[str, Any] = {
    "event": None,
    "sql": "",
    "params": None,
    "tags": None,
    "rows": None,
    "error": None,
    "duration_ms": 0,
    "verdict": "allowed",
}
_SESSION_FILTERS = ("agent", "target", "task", "grant", "end", "since", "until")


def _back(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


# -- sessions -----------------------------------------------------------------------


def sessions(call: Call) -> Response:
    filters = {name: call.arg(name) for name in _SESSION_FILTERS}
    now = call.console.clock.now()
    since = parse_when(filters["since"], now) if filters["since"] else None
    until = parse_when(filters["until"], now) if filters["until"] else None
    end = filters["end"]
    if end and end != "active" and end not in {r.value for r in EndReason}:
        raise InvalidInput(f"unknown end reason {end!r}")

    def keep(s: Session) -> bool:
        return (
            all(
                not filters[key] or getattr(s, attr) == filters[key]
                for key, attr in (
                    ("agent", "agent"),
                    ("target", "target"),
                    ("task", "task"),
                    ("grant", "grant_id"),
                )
            )
            and (since is None or s.started_at >= since)
            and (until is None or s.started_at <= until)
            and (
                not end
                or (end == "active" and s.active)
                or (s.end_reason is not None and s.end_reason.value == end)
            )
        )

    found = [s for s in call.service.list_sessions(limit=10_000) if keep(s)]
    return call.page(
        "sessions.html",
        sessions=found[:PAGE_SIZE],
        total=len(found),
        filters=filters,
        end_reasons=[r.value for r in EndReason],
    )


@dataclass(frozen=True)
class Marker:
    seconds: float
    label: str


def _recording_events(path: Path) -> tuple[list[Marker], list[dict[str, Any]]]:
    """The bastion event markers and, for a PostgreSQL session, its statement log."""
    markers: list[Marker] = []
    statements: list[dict[str, Any]] = []
    with Recording.open(path) as recording:
        for kind, time, body, end in recording.raw_frames():
            if kind == fmt.MARKER:
                label = recording.payload(body, end).decode("utf-8", "replace")
                markers.append(Marker(time, label))
            elif kind == fmt.QUERY:
                try:
                    entry = json.loads(recording.payload(body, end))
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    details = ", ".join(
                        f"{k}={v}" for k, v in entry.items() if k not in ("event", "sql")
                    )
                    statements.append(
                        {**_STATEMENT_FIELDS, **entry, "seconds": time, "details": details}
                    )
    return markers, statements


def session(call: Call) -> Response:
    service = call.service
    found = service.get_session(call.request.path_params["id"])
    approvals = [a for a in service.list_approvals(include_all=True) if a.session_id == found.id]
    grant = service.get_grant(found.grant_id)
    try:
        recording = service.get_recording(found.id)
    except NotFound:
        recording = None
    path: Path | None = None
    missing = ""
    try:
        path = service.recording_file(found.id) if recording else None
    except NotFound as exc:
        missing = str(exc)
    markers: list[Marker] = []
    statements: list[dict[str, Any]] = []
    if path is not None:
        markers, statements = _recording_events(path)
    start = _seconds(call.arg("t"))
    return call.page(
        "session.html",
        s=found,
        grant=grant,
        approvals=approvals,
        recording=recording,
        playable=path is not None and not (found.kind is SessionKind.FORWARD and statements),
        missing=missing,
        markers=markers,
        statements=statements,
        start=start,
        player_built=call.console.player_built,
    )


def live_page(call: Call) -> Response:
    found = call.service.get_session(call.request.path_params["id"])
    return call.page("live.html", s=found, player_built=call.console.player_built)


def kill(call: Call) -> Response:
    session_id = call.request.path_params["id"]
    call.service.kill_session(session_id, call.field("reason"))
    return _back(f"/sessions/{session_id}")


def _seconds(text: str) -> float:
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = parse_duration(text).total_seconds()
    if not value >= 0:
        raise InvalidInput(f"invalid time {text!r}")
    return value


# -- search -----------------------------------------------------------------------------


def search(call: Call) -> Response:
    pattern = call.arg("q")
    regex, ignore_case = call.arg("regex") == "1", call.arg("i") == "1"
    filters = {name: call.arg(name) for name in ("agent", "target", "task", "since")}
    matches: list[Match] = []
    more = False
    if pattern:
        now = call.console.clock.now()
        since = parse_when(filters["since"], now) if filters["since"] else None
        sources = [
            (str(path), recording.session_id)
            for recording, path in call.service.readable_recordings(
                agent=filters["agent"] or None,
                target=filters["target"] or None,
                task=filters["task"] or None,
                since=since,
            )
        ]
        try:
            for match in search_recordings(sources, pattern, regex=regex, ignore_case=ignore_case):
                if len(matches) == MAX_MATCHES:
                    more = True
                    break
                matches.append(match)
        except re.error as exc:
            raise InvalidInput(f"invalid regular expression {pattern!r}: {exc}") from None
    return call.page(
        "search.html",
        pattern=pattern,
        regex=regex,
        ignore_case=ignore_case,
        filters=filters,
        matches=matches,
        more=more,
    )


# -- approvals and access requests ------------------------------------------------------------


def approvals(call: Call) -> Response:
    service = call.service
    every = service.list_approvals(include_all=True)
    all_requests = AccessRequests(service).list_requests(include_all=True)
    now = call.console.clock.now()
    return call.page(
        "approvals.html",
        pending=[a for a in every if a.state is ApprovalState.PENDING and a.expires_at > now],
        decided=_latest_decided(every),
        waiting=[r for r in all_requests if r.state is RequestState.PENDING and r.expires_at > now],
        answered=_latest_decided(all_requests),
    )


def _latest_decided(items: Sequence[Decided]) -> list[Decided]:
    decided = [item for item in items if item.decided_at is not None]
    return sorted(decided, key=lambda item: item.decided_at or _EPOCH, reverse=True)[:10]


def _verdict(call: Call) -> bool:
    verdict = str(call.request.path_params["verdict"])
    if verdict not in ("approve", "deny"):
        raise NotFound(f"no such action {verdict!r}")
    return verdict == "approve"


def decide_approval(call: Call) -> Response:
    approve = _verdict(call)
    call.service.decide_approval(call.request.path_params["id"], approve, call.field("reason"))
    return _back("/approvals")


def decide_request(call: Call) -> Response:
    approve = _verdict(call)
    requests = AccessRequests(call.service)
    request_id = call.request.path_params["id"]
    if approve:
        ttl = call.field("ttl")
        requests.approve(request_id, parse_duration(ttl) if ttl else None, call.field("reason"))
    else:
        requests.deny(request_id, call.field("reason"))
    return _back("/approvals")


# -- grants and accounts ----------------------------------------------------------------------


def grants(call: Call) -> Response:
    now: datetime = call.console.clock.now()
    active = call.service.list_grants()
    return call.page("grants.html", grants=active, now=now)


def revoke(call: Call) -> Response:
    call.service.revoke_grant(call.request.path_params["id"], call.field("reason"))
    return _back("/grants")


def users(call: Call) -> Response:
    return call.page("users.html", users=WebAccounts(call.service).list_users())


def remove_user(call: Call) -> Response:
    name = call.request.path_params["name"]
    assert call.user is not None
    if name == call.user.name:
        raise InvalidInput("you can't remove your own account here (use the CLI)")
    WebAccounts(call.service).remove_user(name)
    return _back("/users")
