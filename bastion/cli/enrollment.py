"""`bastion agent ...` (enrolled keys that may only ask) and `bastion requests ...` (decisions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from bastion import render
from bastion.accessrequests import AccessRequests
from bastion.cli.base import CliContext, cli, echo, json_option, parse_ttl, pass_cli
from bastion.models import AccessRequest, Agent
from bastion.timespec import format_duration, format_time

T = TypeVar("T")


def _call(obj: CliContext, action: Callable[[AccessRequests], T]) -> T:
    return obj.call(AccessRequests, action)


# -- agents ---------------------------------------------------------------------


@cli.group()
def agent() -> None:
    """Enrolled agent keys: they can only request access (`ssh … request@BASTION`)."""


@agent.command("enroll")
@click.argument("name")
@click.option(
    "--pubkey",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The agent's long-lived public key (.pub).",
)
@click.option(
    "--may-request",
    "may_request",
    required=True,
    multiple=True,
    help="Targets the agent may ask for: T1,T2 (repeatable), or '*' for any target.",
)
@click.option("--max-ttl", help="Longest grant the agent may ask for, e.g. 1h.")
@json_option
@pass_cli
def agent_enroll(
    obj: CliContext,
    name: str,
    pubkey: Path,
    may_request: tuple[str, ...],
    max_ttl: str | None,
    as_json: bool,
) -> None:
    """Enroll NAME's key. It grants no access: each grant still needs a human (or a rule)."""
    enrolled = _call(obj, lambda r: r.enroll(name, pubkey, list(may_request), parse_ttl(max_ttl)))
    if as_json:
        echo(render.to_json(enrolled.to_dict()))
        return
    host, port = _call(obj, lambda r: r.bastion.client_address())
    echo(render.line("enrolled {} ({})", enrolled.name, enrolled.key_fingerprint))
    echo(render.line("  may request: {}", _may(enrolled)))
    echo(
        render.line(
            "  the agent asks with: ssh -p {} -i KEY request@{} --"
            ' --target NAME --task TASK --ttl 30m --reason "why" > KEY-cert.pub',
            port,
            host,
        )
    )


@agent.command("list")
@json_option
@pass_cli
def agent_list(obj: CliContext, as_json: bool) -> None:
    """List enrolled agents."""
    found = _call(obj, lambda r: r.list_agents())
    if as_json:
        echo(render.to_json([a.to_dict() for a in found]))
        return
    if not found:
        echo(render.line("no enrolled agents"))
        return
    echo(
        render.table(
            ["NAME", "KEY", "MAY REQUEST", "MAX TTL", "ENROLLED", "BY"],
            [
                (
                    a.name,
                    a.key_fingerprint,
                    _may(a),
                    format_duration(a.max_ttl) if a.max_ttl else "-",
                    format_time(a.created_at),
                    a.created_by,
                )
                for a in found
            ],
        )
    )


@agent.command("show")
@click.argument("name")
@json_option
@pass_cli
def agent_show(obj: CliContext, name: str, as_json: bool) -> None:
    """Show one enrolled agent."""
    found = _call(obj, lambda r: r.get_agent(name))
    if as_json:
        echo(render.to_json(found.to_dict()))
        return
    echo(
        render.fields(
            [
                ("name", found.name),
                ("key", found.public_key),
                ("fingerprint", found.key_fingerprint),
                ("may request", _may(found)),
                ("max ttl", format_duration(found.max_ttl) if found.max_ttl else "-"),
                ("enrolled", f"{format_time(found.created_at)} by {found.created_by}"),
            ]
        )
    )


@agent.command("remove")
@click.argument("name")
@pass_cli
def agent_remove(obj: CliContext, name: str) -> None:
    """Remove an enrolled key (its pending requests can then only be denied)."""
    removed = _call(obj, lambda r: r.remove_agent(name))
    echo(render.line("removed {} ({})", removed.name, removed.key_fingerprint))


def _may(agent: Agent) -> str:
    return "any target" if "*" in agent.may_request else ", ".join(agent.may_request)


# -- requests -------------------------------------------------------------------


@cli.group()
def requests() -> None:
    """Access requests from enrolled agents: list, approve, deny."""


@requests.command("list")
@click.option("--all", "include_all", is_flag=True, help="Include decided ones.")
@click.option("--task", help="Only requests for this task.")
@json_option
@pass_cli
def requests_list(obj: CliContext, include_all: bool, task: str | None, as_json: bool) -> None:
    """List access requests (pending by default), oldest first."""
    found = _call(obj, lambda r: r.list_requests(include_all=include_all, task=task))
    if as_json:
        echo(render.to_json([q.to_dict() for q in found]))
        return
    if not found:
        echo(render.line("no pending requests" if not include_all else "no requests"))
        return
    echo(
        render.table(
            ["ID", "STATE", "AGENT", "TARGETS", "TASK", "TTL", "ASKED", "GRANT", "REASON"],
            [
                (
                    q.id,
                    q.state.value,
                    q.agent,
                    ",".join(q.targets),
                    q.task,
                    format_duration(q.ttl),
                    format_time(q.requested_at),
                    q.grant_id or "",
                    q.reason,
                )
                for q in found
            ],
        )
    )


@requests.command("show")
@click.argument("request_id", metavar="ID")
@json_option
@pass_cli
def requests_show(obj: CliContext, request_id: str, as_json: bool) -> None:
    """Show one request and its decision."""
    found = _call(obj, lambda r: r.get_request(request_id))
    if as_json:
        echo(render.to_json(found.to_dict()))
        return
    decided = (
        f"{found.state.value} by {found.decided_by} at {format_time(found.decided_at)}:"
        f" {found.decision_reason}"
        if found.decided_at
        else f"pending until {format_time(found.expires_at)}"
    )
    echo(
        render.fields(
            [
                ("id", found.id),
                ("agent", f"{found.agent} ({found.key_fingerprint})"),
                ("targets", ", ".join(found.targets)),
                ("task", found.task),
                ("reason", found.reason),
                ("ttl", format_duration(found.ttl)),
                ("asked", f"{format_time(found.requested_at)} from {found.client}"),
                ("decision", decided),
                ("grant", found.grant_id or "-"),
            ]
        )
    )


@requests.command("approve")
@click.argument("request_id", metavar="ID")
@click.option("--ttl", help="Grant a different TTL than asked, within the same limits.")
@click.option("--reason", default="", help="Recorded with the decision.")
@pass_cli
def requests_approve(obj: CliContext, request_id: str, ttl: str | None, reason: str) -> None:
    """Grant it: the waiting agent receives its certificate at once."""
    decided = _call(obj, lambda r: r.approve(request_id, parse_ttl(ttl), reason))
    _echo_decision(decided)


@requests.command("deny")
@click.argument("request_id", metavar="ID")
@click.option("--reason", required=True, help="Shown to the agent and recorded.")
@pass_cli
def requests_deny(obj: CliContext, request_id: str, reason: str) -> None:
    """Refuse it: the waiting agent is told why and exits 1."""
    _echo_decision(_call(obj, lambda r: r.deny(request_id, reason)))


def _echo_decision(q: AccessRequest) -> None:
    what = render.line(
        "{} {}: {} on {} for task {}", q.state.value, q.id, q.agent, ",".join(q.targets), q.task
    )
    if q.grant_id:
        what = render.line("{} -> grant {} ({})", what, q.grant_id, format_duration(q.ttl))
    echo(what)
