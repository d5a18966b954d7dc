"""`bastion sessions ...` and `bastion approvals ...`: live access and human decisions."""

from __future__ import annotations

import shutil

import click

from bastion import render
from bastion.cli.base import CliContext, cli, echo, json_option, pass_cli
from bastion.models import Approval, SessionKill
from bastion.timespec import format_time

# How much of a command a one-line listing shows; `approvals show` shows all of it.
LIST_TEXT_LIMIT = 60
DECIDED_TEXT_LIMIT = 300

# -- sessions -----------------------------------------------------------------


@cli.group()
def sessions() -> None:
    """Sessions through the gateway: list, inspect, kill."""


@sessions.command("list")
@click.option("--active", is_flag=True, help="Only sessions still running.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@pass_cli
def sessions_list(obj: CliContext, active: bool, limit: int, as_json: bool) -> None:
    """List sessions, newest first."""
    service = obj.bastion()
    try:
        found = service.list_sessions(active_only=active, limit=limit)
    finally:
        service.close()
    if as_json:
        echo(render.to_json([s.to_dict() for s in found]))
        return
    if not found:
        echo(render.line("no active sessions" if active else "no sessions"))
        return
    echo(
        render.table(
            [
                "ID",
                "AGENT",
                "TARGET",
                "KIND",
                "GRANT",
                "TASK",
                "STARTED",
                "ENDED",
                "EXIT",
                "COMMAND",
            ],
            [
                (
                    s.id,
                    s.agent,
                    s.target,
                    s.kind.value,
                    s.grant_id,
                    s.task,
                    format_time(s.started_at),
                    s.end_reason.value if s.end_reason else "active",
                    "" if s.exit_status is None else s.exit_status,
                    "" if s.command is None else render.clip(s.command, LIST_TEXT_LIMIT),
                )
                for s in found
            ],
        )
    )


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@json_option
@pass_cli
def sessions_show(obj: CliContext, session_id: str, as_json: bool) -> None:
    """Show one session."""
    service = obj.bastion()
    try:
        s = service.get_session(session_id)
    finally:
        service.close()
    if as_json:
        echo(render.to_json(s.to_dict()))
        return
    echo(render.fields([(k.replace("_", " "), v) for k, v in s.to_dict().items()]))


@sessions.command("kill")
@click.argument("session_id", metavar="ID")
@click.option("--reason", default="", help="Shown to the agent and recorded.")
@click.option(
    "--revoke",
    is_flag=True,
    help="Also revoke the session's grant, so its certificate can't log in again.",
)
@pass_cli
def sessions_kill(obj: CliContext, session_id: str, reason: str, revoke: bool) -> None:
    """Close the SSH connection that carries a live session, with every session on it.

    The gateway running it acts within a second. Without --revoke the grant stays
    valid: the agent can log in again with its certificate.
    """
    service = obj.bastion()
    try:
        kill = service.kill_session(session_id, reason, revoke=revoke)
    finally:
        service.close()
    for line in _kill_report(kill):
        echo(line)


def _kill_report(kill: SessionKill) -> list[render.Text]:
    s, grant = kill.session, kill.grant
    closing = ", ".join(f"{c.id} {c.kind.value}" for c in kill.connection)
    count = len(kill.connection)
    lines = [
        render.line(
            "kill requested for session {} ({} on {}): node {} closes its SSH connection"
            " from {} within a second, with {} ({})",
            s.id,
            s.agent,
            s.target,
            s.node,
            s.client,
            "its one session" if count == 1 else f"all {count} of its sessions",
            closing,
        )
    ]
    if kill.revoked:
        also = len(kill.grant_sessions)
        lines.append(
            render.line("grant {} revoked: its certificate logs in no more", grant.id)
            if not also
            else render.line(
                "grant {} revoked: its certificate logs in no more;"
                " its {} other open session(s) close too",
                grant.id,
                also,
            )
        )
    elif grant.revocation is not None:
        lines.append(
            render.line(
                "grant {} was already revoked at {} by {}",
                grant.id,
                format_time(grant.revocation.at),
                grant.revocation.by,
            )
        )
    else:
        lines.append(
            render.line(
                "grant {} stays valid until {}: the agent can log in again with its"
                " certificate (to stop that: bastion grant revoke {}, or kill with --revoke)",
                grant.id,
                format_time(grant.valid_before),
                grant.id,
            )
        )
    return lines


# -- approvals ----------------------------------------------------------------


@cli.group()
def approvals() -> None:
    """Approve or deny destructive commands that wait for a human."""


@approvals.command("list")
@click.option("--all", "include_all", is_flag=True, help="Include decided and expired ones.")
@json_option
@pass_cli
def approvals_list(obj: CliContext, include_all: bool, as_json: bool) -> None:
    """List approval requests (pending by default)."""
    service = obj.bastion()
    try:
        found = service.list_approvals(include_all=include_all)
    finally:
        service.close()
    if as_json:
        echo(render.to_json([a.to_dict() for a in found]))
        return
    if not found:
        echo(render.line("no pending approvals" if not include_all else "no approvals"))
        return
    echo(
        render.table(
            ["ID", "STATE", "AGENT", "TARGET", "TASK", "SESSION", "EXPIRES", "LEN", "COMMAND"],
            [
                (
                    a.id,
                    a.state.value,
                    a.agent,
                    a.target,
                    a.task,
                    a.session_id,
                    format_time(a.expires_at),
                    len(a.text),
                    render.clip(a.text, LIST_TEXT_LIMIT),
                )
                for a in found
            ],
        )
    )


@approvals.command("show")
@click.argument("approval_id", metavar="ID")
@json_option
@pass_cli
def approvals_show(obj: CliContext, approval_id: str, as_json: bool) -> None:
    """Show one approval request with its whole command or statement."""
    service = obj.bastion()
    try:
        a = service.get_approval(approval_id)
    finally:
        service.close()
    if as_json:
        echo(render.to_json(a.to_dict()))
        return
    echo(render.fields(_approval_fields(a)))
    echo(render.line("statement:" if a.kind == "statement" else "command:"))
    echo(render.block(a.text, shutil.get_terminal_size().columns - 8))


def _approval_fields(a: Approval) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = [
        ("id", a.id),
        ("state", a.state.value),
        ("kind", a.kind),
        ("agent", a.agent),
        ("task", a.task),
        ("target", a.target),
        ("session", a.session_id),
        ("grant", a.grant_id),
        ("requested", format_time(a.requested_at)),
        ("expires", format_time(a.expires_at)),
    ]
    if a.decided_at is not None:
        pairs.append(
            (
                "decided",
                render.line(
                    "{} by {}: {}", format_time(a.decided_at), a.decided_by, a.decision_reason or ""
                ),
            )
        )
    pairs += [("why", reason) for reason in a.reasons]
    pairs.append(("length", render.length_note(a.text)))
    return pairs


@approvals.command("approve")
@click.argument("approval_id", metavar="ID")
@click.option("--reason", default="", help="Recorded with the decision.")
@pass_cli
def approvals_approve(obj: CliContext, approval_id: str, reason: str) -> None:
    """Let a waiting command run."""
    _decide(obj, approval_id, True, reason)


@approvals.command("deny")
@click.argument("approval_id", metavar="ID")
@click.option("--reason", required=True, help="Shown to the agent and recorded.")
@pass_cli
def approvals_deny(obj: CliContext, approval_id: str, reason: str) -> None:
    """Refuse a waiting command (it exits 126)."""
    _decide(obj, approval_id, False, reason)


def _decide(obj: CliContext, approval_id: str, approve: bool, reason: str) -> None:
    service = obj.bastion()
    try:
        a = service.decide_approval(approval_id, approve, reason)
    finally:
        service.close()
    echo(
        render.line(
            "{} {}: {} on {}: {}",
            a.state.value,
            a.id,
            a.agent,
            a.target,
            render.clip(a.text, DECIDED_TEXT_LIMIT),
        )
    )
