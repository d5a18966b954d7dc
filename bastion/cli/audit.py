"""`bastion audit ...`: the tamper-evident audit trail."""

from __future__ import annotations

from typing import Any

import click

from bastion import render
from bastion.cli.base import CliContext, cli, echo, json_option, pass_cli
from bastion.timespec import format_time, parse_when

# -- audit --------------------------------------------------------------------


@cli.group()
def audit() -> None:
    """Read and verify the tamper-evident audit trail."""


@audit.command("list")
@click.option("--since", metavar="WHEN", help="A duration ago (2h, 7d) or an ISO 8601 time.")
@json_option
@pass_cli
def audit_list(obj: CliContext, since: str | None, as_json: bool) -> None:
    """List audit events, oldest first."""
    when = parse_when(since, obj.clock.now()) if since else None
    service = obj.bastion()
    try:
        events = service.audit_events(when)
    finally:
        service.close()
    if as_json:
        echo(render.to_json([e.to_dict() for e in events]))
        return
    if not events:
        echo(render.line("no audit events"))
        return
    echo(
        render.table(
            ["SEQ", "TIME", "ACTOR", "ACTION", "DETAILS"],
            [(e.seq, format_time(e.at), e.actor, e.action, _summary(e.details)) for e in events],
        )
    )


def _summary(details: dict[str, Any]) -> str:
    keys = ("grant", "name", "agent", "task", "targets", "reason", "serial")
    parts = []
    for key in keys:
        if key in details and details[key] not in (None, "", []):
            value = details[key]
            parts.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
    return " ".join(parts)


@audit.command("verify")
@pass_cli
def audit_verify(obj: CliContext) -> None:
    """Recompute the audit hash chain; exit non-zero naming the first broken event."""
    service = obj.bastion()
    try:
        result = service.verify_audit()
    finally:
        service.close()
    echo(render.line("audit chain OK: {} events, head {}", result.events, result.last_hash or "-"))
