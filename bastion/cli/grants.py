"""`bastion grant ...`: issue, list, show and revoke grants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bastion import render
from bastion.cli.base import CliContext, cli, echo, json_option, parse_ttl, pass_cli
from bastion.models import Grant
from bastion.service import GrantRequest
from bastion.timespec import format_duration, format_time

# -- grants -------------------------------------------------------------------


@cli.group()
def grant() -> None:
    """Issue, list and revoke short-lived grants (OpenSSH certificates)."""


@grant.command("issue")
@click.option("--agent", required=True, help="Name of the agent the grant is for.")
@click.option("--target", "targets", required=True, multiple=True, help="Target (repeatable).")
@click.option("--task", required=True, help="Task id the access is for, e.g. hotfix-1422.")
@click.option("--ttl", help="Lifetime: 90s, 30m, 2h, 1h30m (default from bastion.toml: 30m).")
@click.option(
    "--pubkey",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The agent's public key; the certificate is written beside it as *-cert.pub.",
)
@click.option(
    "--generate-key",
    "generate_key",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Make a fresh Ed25519 key pair for the agent in DIR.",
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write the certificate here."
)
@click.option("--reason", default="", help="Why the access is needed (recorded).")
@click.option("--source-address", metavar="CIDR[,CIDR...]", help="Only from these addresses.")
@click.option("--no-pty", is_flag=True, help="Refuse terminals (commands only).")
@click.option("--no-port-forwarding", is_flag=True, help="Refuse -L forwards.")
@click.option("--force-command", metavar="CMD", help="Run only this command.")
@json_option
@pass_cli
def grant_issue(
    obj: CliContext,
    agent: str,
    targets: tuple[str, ...],
    task: str,
    ttl: str | None,
    pubkey: Path | None,
    generate_key: Path | None,
    out: Path | None,
    reason: str,
    source_address: str | None,
    no_pty: bool,
    no_port_forwarding: bool,
    force_command: str | None,
    as_json: bool,
) -> None:
    """Sign an agent's key for some targets, for one task, for a short time."""
    request = GrantRequest(
        agent=agent,
        targets=targets,
        task=task,
        ttl=parse_ttl(ttl),
        pubkey=pubkey,
        generate_key_dir=generate_key,
        out=out,
        reason=reason,
        source_addresses=source_address,
        no_pty=no_pty,
        no_port_forwarding=no_port_forwarding,
        force_command=force_command,
    )
    service = obj.bastion()
    try:
        issued = service.issue_grant(request)
        now = obj.clock.now()
    finally:
        service.close()
    g = issued.grant
    if as_json:
        data = g.to_dict(now)
        data["certificate"] = str(issued.certificate_path)
        data["private_key"] = str(issued.private_key_path) if issued.private_key_path else None
        data["ssh"] = list(issued.ssh_lines)
        echo(render.to_json(data))
        return
    echo(render.line("issued grant {}", g.id))
    echo(
        render.fields(
            [
                ("agent", g.agent),
                ("task", g.task),
                ("targets", ", ".join(g.targets)),
                ("valid from", format_time(g.valid_after)),
                ("valid until", format_time(g.valid_before)),
                ("serial", g.serial),
                ("certificate", issued.certificate_path),
            ]
            + ([("private key", issued.private_key_path)] if issued.private_key_path else [])
        )
    )
    echo(render.line("connect with:"))
    for line in issued.ssh_lines:
        echo(render.line("  {}", line))


@grant.command("list")
@click.option("--all", "include_all", is_flag=True, help="Include expired and revoked grants.")
@click.option("--task", help="Only grants for this task.")
@json_option
@pass_cli
def grant_list(obj: CliContext, include_all: bool, task: str | None, as_json: bool) -> None:
    """List active grants (all with --all)."""
    service = obj.bastion()
    try:
        grants = service.list_grants(include_all=include_all, task=task)
    finally:
        service.close()
    now = obj.clock.now()
    if as_json:
        echo(render.to_json([g.to_dict(now) for g in grants]))
        return
    if not grants:
        echo(
            render.line("no grants" if include_all else "no active grants (--all shows ended ones)")
        )
        return
    echo(
        render.table(
            ["ID", "STATE", "AGENT", "TASK", "TARGETS", "VALID UNTIL", "LEFT"],
            [
                (
                    g.id,
                    g.state(now).value,
                    g.agent,
                    g.task,
                    ",".join(g.targets),
                    format_time(g.valid_before),
                    _time_left(g, now),
                )
                for g in grants
            ],
        )
    )


def _time_left(g: Grant, now: Any) -> str:
    left = g.valid_before - now
    if g.revocation is not None or left.total_seconds() <= 0:
        return "-"
    return format_duration(left)


@grant.command("show")
@click.argument("grant_id", metavar="ID")
@json_option
@pass_cli
def grant_show(obj: CliContext, grant_id: str, as_json: bool) -> None:
    """Show one grant."""
    service = obj.bastion()
    try:
        g = service.get_grant(grant_id)
    finally:
        service.close()
    now = obj.clock.now()
    if as_json:
        echo(render.to_json(g.to_dict(now)))
        return
    pairs: list[tuple[str, object]] = [
        ("id", g.id),
        ("state", g.state(now).value),
        ("agent", g.agent),
        ("task", g.task),
        ("reason", g.reason),
        ("targets", ", ".join(g.targets)),
        ("valid from", format_time(g.valid_after)),
        ("valid until", format_time(g.valid_before)),
        ("time left", _time_left(g, now)),
        ("issued by", render.line("{} at {}", g.created_by, format_time(g.created_at))),
        ("serial", g.serial),
        ("key id", g.key_id),
        ("key", g.key_fingerprint),
        ("pty", "yes" if g.permit_pty else "no"),
        ("port forwarding", "yes" if g.permit_port_forwarding else "no"),
    ]
    if g.source_addresses:
        pairs.append(("source address", ",".join(g.source_addresses)))
    if g.force_command is not None:
        pairs.append(("force command", g.force_command))
    if g.revocation is not None:
        pairs.append(
            (
                "revoked",
                render.line(
                    "at {} by {}: {}",
                    format_time(g.revocation.at),
                    g.revocation.by,
                    g.revocation.reason,
                ),
            )
        )
    echo(render.fields(pairs))


@grant.command("revoke")
@click.argument("grant_id", metavar="ID")
@click.option("--reason", default="", help="Why (shown to the agent and recorded).")
@pass_cli
def grant_revoke(obj: CliContext, grant_id: str, reason: str) -> None:
    """Revoke a grant; the gateway closes its live sessions."""
    service = obj.bastion()
    try:
        g = service.revoke_grant(grant_id, reason)
    finally:
        service.close()
    assert g.revocation is not None
    echo(
        render.line(
            "revoked grant {} ({}, task {}): {}", g.id, g.agent, g.task, g.revocation.reason
        )
    )
