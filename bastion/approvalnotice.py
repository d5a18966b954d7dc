"""What is said about an approval wait: to the waiting client, and to the notification hooks.

A client held for approval (an SSH exec or shell, a PostgreSQL statement) is told at
once and reminded every `[approvals] remind_every` until the wait ends; the hooks hear
`approval.created` and `approval.decided`. This module builds those texts and payloads
and computes when the next reminder is due. Pure: no clock of its own (the caller passes
the times), no I/O; the loop that sleeps between reminders is the transport's.

Everything here that quotes the agent's command goes back through a terminal or into a
protocol message: control characters are escaped (a newline can't split the notice, an
escape sequence can't drive the terminal, a NUL can't cut a PostgreSQL string) and the
length is bounded.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from bastion.models import Approval
from bastion.termtext import escape_char, is_hidden
from bastion.timespec import format_duration

# A command quoted in a line on the client's terminal, and in a hook's payload.
LINE_TEXT_LIMIT = 300
HOOK_TEXT_LIMIT = 2000
HOOK_REASON_LIMIT = 500


def printable(text: str, limit: int) -> str:
    """`text` with control characters escaped, at most `limit` characters (then `…`).

    What is escaped is what the CLI escapes (`termtext`: C0 and C1 controls, bidi
    overrides and other invisible characters). Backslashes are escaped too, so the
    result reads unambiguously.
    """
    return _printable(text, limit)[0]


def _printable(text: str, limit: int) -> tuple[str, bool]:
    """`printable(text, limit)`, and whether it was cut short."""
    out: list[str] = []
    size = 0
    for ch in text:
        piece = escape_char(ch) if ch == "\\" or is_hidden(ch) else ch
        if size + len(piece) > limit:
            out.append("…")
            return "".join(out), True
        out.append(piece)
        size += len(piece)
    return "".join(out), False


def waited_text(seconds: float) -> str:
    """0:30, 4:05, 1:02:03: how long a client has waited, as a clock reads."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def wait_limit_text(timeout: timedelta) -> str:
    """`5m`, `4s`, `1h30m`: the wait's limit as the first notice says it."""
    return format_duration(timeout)


def approve_command(approval_id: str) -> str:
    return f"bastion approvals approve {approval_id}"


def deny_command(approval_id: str) -> str:
    return f"bastion approvals deny {approval_id} --reason TEXT"


# -- the schedule -----------------------------------------------------------------------


def next_reminder(started: float, now: float, interval: float) -> int:
    """Which reminder is due next: the first k >= 1 with started + k x interval after `now`.

    A schedule from the start, not a sleep after each reminder: it doesn't drift, and
    after a stall it skips the reminders it missed rather than sending them in a burst.
    """
    if interval <= 0:
        raise ValueError("the reminder interval must be positive")
    elapsed = max(0.0, now - started)
    return math.floor(elapsed / interval) + 1


# -- what the client sees -----------------------------------------------------------------


def ssh_reminder(approval: Approval, waited: float, timeout: timedelta) -> str:
    """The reminder line on an SSH session's stderr (the first notice's wording)."""
    return (
        f"[bastion] still waiting for approval (request {approval.id}):"
        f" {printable(approval.text, LINE_TEXT_LIMIT)} - waited {waited_text(waited)}"
        f" of {wait_limit_text(timeout)}; a human runs `{approve_command(approval.id)}`"
    )


def pg_reminder(approval: Approval, waited: float, timeout: timedelta) -> str:
    """The reminder NoticeResponse's message for a held PostgreSQL statement."""
    return (
        f"[bastion] still waiting for approval, request {approval.id};"
        f" waited {waited_text(waited)} of {wait_limit_text(timeout)};"
        f" a human runs `{approve_command(approval.id)}`"
    )


# -- what the hooks are told ------------------------------------------------------------


def approval_event(event: str, approval: Approval, node: str) -> dict[str, Any]:
    """The JSON payload of `approval.created` / `approval.decided` for the hooks.

    The shape of the access requests' events (`event`, `node`, the record, the lines a
    human runs), with the command or statement bounded: a hook is a chat message, and
    the full text stays in the store and the recording.
    """
    record = approval.to_dict()
    record["text"], record["text_truncated"] = _printable(approval.text, HOOK_TEXT_LIMIT)
    record["reasons"] = [printable(r, HOOK_REASON_LIMIT) for r in approval.reasons]
    payload: dict[str, Any] = {"event": event, "node": node, "approval": record}
    if event == "approval.created":
        payload["approve"] = approve_command(approval.id)
        payload["deny"] = deny_command(approval.id)
    return payload
