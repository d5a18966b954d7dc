"""`bastion sessions ...` and `bastion approvals ...`: live access and human decisions."""

from __future__ import annotations

import click

from bastion import render
from bastion.cli.base import CliContext, cli, json_option, pass_cli
from bastion.timespec import format_time

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
        click.echo(render.to_json([s.to_dict() for s in found]))
        return
    if not found:
        click.echo("no active sessions" if active else "no sessions")
        return
    click.echo(
        render.table(
            ["ID", "AGENT", "TARGET", "KIND", "GRANT", "TASK", "STARTED", "ENDED", "EXIT"],
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
        click.echo(render.to_json(s.to_dict()))
        return
    click.echo(render.fields([(k.replace("_", " "), v) for k, v in s.to_dict().items()]))


@sessions.command("kill")
@click.argument("session_id", metavar="ID")
@click.option("--reason", default="", help="Shown to the agent and recorded.")
@pass_cli
def sessions_kill(obj: CliContext, session_id: str, reason: str) -> None:
    """Close a live session (the gateway running it acts within a second)."""
    service = obj.bastion()
    try:
        s = service.kill_session(session_id, reason)
    finally:
        service.close()
    click.echo(f"kill requested for session {s.id} ({s.agent} on {s.target})")


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
        click.echo(render.to_json([a.to_dict() for a in found]))
        return
    if not found:
        click.echo("no pending approvals" if not include_all else "no approvals")
        return
    click.echo(
        render.table(
            ["ID", "STATE", "AGENT", "TARGET", "TASK", "SESSION", "EXPIRES", "COMMAND"],
            [
                (
                    a.id,
                    a.state.value,
                    a.agent,
                    a.target,
                    a.task,
                    a.session_id,
                    format_time(a.expires_at),
                    a.text,
                )
                for a in found
            ],
        )
    )


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
    click.echo(f"{a.state.value} {a.id}: {a.agent} on {a.target}: {a.text}")
