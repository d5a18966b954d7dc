"""`bastion migrate` and `bastion nodes ...`: the store's schema and the nodes sharing it."""

from __future__ import annotations

import click

from bastion import render
from bastion.cli.base import CliContext, cli, echo, json_option, pass_cli
from bastion.cluster import migrate_store, node_statuses
from bastion.timespec import format_duration, format_time


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only say which migrations are pending.")
@pass_cli
def migrate(obj: CliContext, dry_run: bool) -> None:
    """Upgrade the state store's schema to this bastion's version."""
    report = migrate_store(obj.home(), dry_run=dry_run)
    where = report.location
    if not report.pending:
        echo(render.line("{}: schema version {}, up to date", where, report.from_version))
    elif dry_run:
        pending = ", ".join(str(v) for v in report.pending)
        echo(
            render.line(
                "{}: schema version {}, would apply {} (to version {})",
                where,
                report.from_version,
                pending,
                report.pending[-1],
            )
        )
    else:
        echo(
            render.line(
                "{}: migrated schema from version {} to {}",
                where,
                report.from_version,
                report.to_version,
            )
        )


@cli.group()
def nodes() -> None:
    """The bastion nodes sharing this state store."""


@nodes.command("list")
@json_option
@pass_cli
def nodes_list(obj: CliContext, as_json: bool) -> None:
    """List nodes with their last heartbeat and liveness."""
    service = obj.bastion()
    try:
        found = node_statuses(service)
    finally:
        service.close()
    if as_json:
        echo(
            render.to_json(
                [
                    {
                        **s.node.to_dict(),
                        "state": s.state,
                        "silent_seconds": s.silent_for.total_seconds(),
                    }
                    for s in found
                ]
            )
        )
        return
    if not found:
        echo(render.line("no nodes have registered (none has run `bastion serve` on this store)"))
        return
    echo(
        render.table(
            ["NODE", "ADDRESS", "STATE", "STARTED", "LAST HEARTBEAT"],
            [
                (
                    s.node.name,
                    s.node.address,
                    s.state,
                    format_time(s.node.started_at),
                    f"{format_time(s.node.heartbeat_at)} ({format_duration(s.silent_for)} ago)",
                )
                for s in found
            ],
        )
    )
