"""The `bastion` command line: parse, call the service, render, exit.

Commands are thin: they turn options into a service call and its result into text
(or `--json`). Errors are `BastionError`s; the root group prints their one-line
message as `bastion: error: ...` and exits with the code the error class carries.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from bastion import render
from bastion.clock import Clock, SystemClock
from bastion.config import Home, ca_passphrase, open_home
from bastion.errors import BastionError, InvalidInput, VerificationFailed
from bastion.models import Grant, SslMode, Target
from bastion.service import Bastion, GrantRequest, initialize
from bastion.timespec import format_duration, format_time, parse_duration, parse_when

F = TypeVar("F", bound=Callable[..., Any])

_ACTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass
class CliContext:
    home_option: str | None
    actor: str
    clock: Clock

    def home(self) -> Home:
        return open_home(self.home_option)

    def bastion(self) -> Bastion:
        return Bastion.open(self.home(), self.clock, self.actor, ca_passphrase())


pass_cli = click.make_pass_decorator(CliContext)


class BastionGroup(click.Group):
    """Maps `BastionError` to a one-line message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BastionError as exc:
            click.echo(f"bastion: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


@click.group(cls=BastionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    "home",
    metavar="DIR",
    help="Bastion home (default: $BASTION_HOME, else the current directory).",
)
@click.option(
    "--as", "actor", metavar="NAME", help="Who is acting, for the audit trail (default: OS user)."
)
@click.version_option(package_name="bastion")
@click.pass_context
def cli(ctx: click.Context, home: str | None, actor: str | None) -> None:
    """Just-in-time SSH and PostgreSQL access for agents, through one audited gateway."""
    if actor is not None and not _ACTOR.fullmatch(actor):
        raise click.BadParameter("use letters, digits, '.', '_', '@' or '-'", param_hint="--as")
    ctx.obj = CliContext(home_option=home, actor=actor or _default_actor(), clock=SystemClock())


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _duration(value: str | None) -> Any:
    return None if value is None else parse_duration(value)


# -- init ---------------------------------------------------------------------


@cli.command()
@pass_cli
def init(obj: CliContext) -> None:
    """Create the CA, host key, state store and default config (idempotent)."""
    report = initialize(obj.home(), obj.clock, obj.actor, ca_passphrase())
    click.echo(f"bastion home: {report.home}")
    for item in report.created:
        click.echo(f"  created {item}")
    for item in report.kept:
        click.echo(f"  kept    {item}")
    click.echo(f"CA public key (for sshd TrustedUserCAKeys): {report.ca_public_line}")
    click.echo(f"host key (for clients' known_hosts):       {report.host_public_line}")


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Override server.listen from bastion.toml.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@pass_cli
def serve(obj: CliContext, listen: str | None, log_level: str) -> None:
    """Run the SSH gateway (runs `init` first on a fresh home)."""
    import asyncio
    import logging

    from bastion.daemon import serve as run_gateway

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    asyncio.run(run_gateway(obj.home(), obj.clock, obj.actor, listen))


# -- targets ------------------------------------------------------------------


@cli.group()
def target() -> None:
    """Register the hosts and databases agents may reach."""


@target.command("add-ssh")
@click.argument("name")
@click.option("--host", required=True, help="Target host name or address.")
@click.option("--port", type=int, default=22, show_default=True)
@click.option("--user", required=True, help="Least-privilege login the bastion uses upstream.")
@click.option(
    "--identity",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Private key of that login (copied into the store, never shown again).",
)
@click.option(
    "--host-key",
    required=True,
    metavar="PUBKEY",
    help="The target's host key, pinned: an OpenSSH public key line or a .pub file.",
)
@json_option
@pass_cli
def target_add_ssh(
    obj: CliContext,
    name: str,
    host: str,
    port: int,
    user: str,
    identity: Path,
    host_key: str,
    as_json: bool,
) -> None:
    """Add an SSH target."""
    service = obj.bastion()
    try:
        added = service.add_ssh_target(name, host, port, user, identity, host_key)
    finally:
        service.close()
    _show_target(added, as_json, verb="added")


@target.command("add-postgres")
@click.argument("name")
@click.option("--host", required=True)
@click.option("--port", type=int, default=5432, show_default=True)
@click.option("--database", required=True, help="Database the bastion connects to.")
@click.option("--user", required=True, help="Least-privilege role the bastion logs in as.")
@click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the role's password.",
)
@click.option("--password-env", metavar="VAR", help="Environment variable holding the password.")
@click.option(
    "--sslmode",
    type=click.Choice([m.value for m in SslMode]),
    default=SslMode.DISABLE.value,
    show_default=True,
)
@click.option(
    "--sslrootcert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA certificate to verify the server with (verify-full).",
)
@json_option
@pass_cli
def target_add_postgres(
    obj: CliContext,
    name: str,
    host: str,
    port: int,
    database: str,
    user: str,
    password_file: Path | None,
    password_env: str | None,
    sslmode: str,
    sslrootcert: Path | None,
    as_json: bool,
) -> None:
    """Add a PostgreSQL target; the bastion injects its credentials."""
    password = _read_password(password_file, password_env)
    service = obj.bastion()
    try:
        added = service.add_postgres_target(
            name, host, port, database, user, password, SslMode(sslmode), sslrootcert
        )
    finally:
        service.close()
    _show_target(added, as_json, verb="added")


def _read_password(password_file: Path | None, password_env: str | None) -> str:
    if (password_file is None) == (password_env is None):
        raise InvalidInput("give exactly one of --password-file or --password-env")
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InvalidInput(f"can't read --password-file {password_file}: {reason}") from None
        return text.rstrip("\r\n")
    assert password_env is not None
    value = os.environ.get(password_env)
    if value is None:
        raise InvalidInput(f"--password-env {password_env}: the variable is not set")
    return value


@target.command("list")
@json_option
@pass_cli
def target_list(obj: CliContext, as_json: bool) -> None:
    """List targets."""
    service = obj.bastion()
    try:
        targets = service.list_targets()
    finally:
        service.close()
    if as_json:
        click.echo(render.to_json([t.public_dict() for t in targets]))
        return
    if not targets:
        click.echo("no targets (add one with `bastion target add-ssh` or `add-postgres`)")
        return
    rows = [
        (t.name, t.kind.value, f"{t.host}:{t.port}", t.user, t.database or "", t.created_by)
        for t in targets
    ]
    click.echo(render.table(["NAME", "KIND", "ADDRESS", "LOGIN", "DATABASE", "ADDED BY"], rows))


@target.command("show")
@click.argument("name")
@json_option
@pass_cli
def target_show(obj: CliContext, name: str, as_json: bool) -> None:
    """Show one target (never its secret)."""
    service = obj.bastion()
    try:
        found = service.get_target(name)
    finally:
        service.close()
    _show_target(found, as_json)


@target.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even if active grants name it.")
@pass_cli
def target_remove(obj: CliContext, name: str, force: bool) -> None:
    """Remove a target and its stored credential."""
    service = obj.bastion()
    try:
        service.remove_target(name, force=force)
    finally:
        service.close()
    click.echo(f"removed target {name}")


def _show_target(t: Target, as_json: bool, verb: str | None = None) -> None:
    if as_json:
        click.echo(render.to_json(t.public_dict()))
        return
    if verb:
        click.echo(f"{verb} {t.kind.value} target {t.name}")
    pairs: list[tuple[str, object]] = [(k, v) for k, v in t.public_dict().items() if v is not None]
    click.echo(render.fields(pairs))


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
        ttl=_duration(ttl),
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
        click.echo(render.to_json(data))
        return
    click.echo(f"issued grant {g.id}")
    click.echo(
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
    click.echo("connect with:")
    for line in issued.ssh_lines:
        click.echo(f"  {line}")


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
        click.echo(render.to_json([g.to_dict(now) for g in grants]))
        return
    if not grants:
        click.echo("no grants" if include_all else "no active grants (--all shows ended ones)")
        return
    click.echo(
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
        click.echo(render.to_json(g.to_dict(now)))
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
        ("issued by", f"{g.created_by} at {format_time(g.created_at)}"),
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
                f"at {format_time(g.revocation.at)} by {g.revocation.by}: {g.revocation.reason}",
            )
        )
    click.echo(render.fields(pairs))


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
    click.echo(f"revoked grant {g.id} ({g.agent}, task {g.task}): {g.revocation.reason}")


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


# -- recordings ---------------------------------------------------------------


@cli.group()
def recordings() -> None:
    """Session recordings: list, replay, render, search, export, verify, prune."""


@recordings.command("list")
@click.option("--agent", help="Only this agent's sessions.")
@click.option("--target", help="Only sessions on this target.")
@click.option("--task", help="Only sessions of this task.")
@click.option("--since", metavar="WHEN", help="A duration ago (2h, 7d) or an ISO 8601 time.")
@json_option
@pass_cli
def recordings_list(
    obj: CliContext,
    agent: str | None,
    target: str | None,
    task: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """List recordings, oldest first."""
    when = parse_when(since, obj.clock.now()) if since else None
    service = obj.bastion()
    try:
        found = service.list_recordings(agent=agent, target=target, task=task, since=when)
    finally:
        service.close()
    if as_json:
        click.echo(render.to_json([r.to_dict() for r in found]))
        return
    if not found:
        click.echo("no recordings")
        return
    click.echo(
        render.table(
            ["SESSION", "AGENT", "TARGET", "TASK", "KIND", "STARTED", "STATE", "SIZE"],
            [
                (
                    r.session_id,
                    r.agent,
                    r.target,
                    r.task,
                    r.kind.value,
                    format_time(r.started_at),
                    r.state.value,
                    "" if r.size is None else r.size,
                )
                for r in found
            ],
        )
    )


@recordings.command("play")
@click.argument("session_id", metavar="ID")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Playback speed.")
@click.option("--idle-limit", type=float, help="Cap pauses at this many seconds.")
@click.option("--from", "start", default="0s", help="Start this far in, e.g. 30s or 1m20s.")
@pass_cli
def recordings_play(
    obj: CliContext, session_id: str, speed: float, idle_limit: float | None, start: str
) -> None:
    """Play a recording in this terminal: space pauses, `.` steps while paused, q quits."""
    from bastion.recording.player import play

    if speed <= 0:
        raise InvalidInput("--speed must be positive")
    path = _recording_path(obj, session_id)
    keys = sys.stdin.fileno() if sys.stdin.isatty() else None
    play(path, sys.stdout.buffer, speed, idle_limit, _offset(start), keys)


@recordings.command("screen")
@click.argument("session_id", metavar="ID")
@click.option("--at", "at", default="end", show_default=True, help="A time (1m20s) or `end`.")
@pass_cli
def recordings_screen(obj: CliContext, session_id: str, at: str) -> None:
    """Print the screen as it was at a moment of the session."""
    from bastion.recording.render import screen_at

    path = _recording_path(obj, session_id)
    click.echo(screen_at(path, "end" if at == "end" else _offset(at)))


@recordings.command("text")
@click.argument("session_id", metavar="ID")
@pass_cli
def recordings_text(obj: CliContext, session_id: str) -> None:
    """A grep-able transcript: what the screen showed and what was typed, with times."""
    from bastion.recording.search import iter_text

    path = _recording_path(obj, session_id)
    out = sys.stdout
    for chunk in iter_text(path):
        out.write(chunk)
    out.flush()


@recordings.command("search")
@click.argument("pattern")
@click.option("--regex", is_flag=True, help="PATTERN is a regular expression.")
@click.option("-i", "--ignore-case", is_flag=True)
@click.option("--agent", help="Only this agent's sessions.")
@click.option("--target", help="Only sessions on this target.")
@click.option("--task", help="Only sessions of this task.")
@click.option("--since", metavar="WHEN", help="A duration ago (2h, 7d) or an ISO 8601 time.")
@json_option
@pass_cli
def recordings_search(
    obj: CliContext,
    pattern: str,
    regex: bool,
    ignore_case: bool,
    agent: str | None,
    target: str | None,
    task: str | None,
    since: str | None,
    as_json: bool,
) -> None:
    """Find which session showed or typed PATTERN, and when."""
    import re

    from bastion.recording.search import format_seconds, search

    when = parse_when(since, obj.clock.now()) if since else None
    service = obj.bastion()
    try:
        sources = [
            (str(path), recording.session_id)
            for recording, path in service.readable_recordings(
                agent=agent, target=target, task=task, since=when
            )
        ]
    finally:
        service.close()
    try:
        matches = search(sources, pattern, regex=regex, ignore_case=ignore_case)
        if as_json:
            click.echo(render.to_json([m.as_dict() for m in matches]))
            return
        found = 0
        for match in matches:
            found += 1
            marker = "> " if match.kind == "input" else ""
            click.echo(f"{match.session_id}  {format_seconds(match.seconds)}  {marker}{match.line}")
    except re.error as exc:
        raise InvalidInput(f"invalid --regex pattern {pattern!r}: {exc}") from None
    if not found:
        click.echo("no matches", err=True)


@recordings.command("export")
@click.argument("session_id", metavar="ID")
@click.option(
    "-o", "--output", "output", required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["asciicast-v2", "asciicast-v3", "raw", "text"]),
    default="asciicast-v2",
    show_default=True,
)
@pass_cli
def recordings_export(obj: CliContext, session_id: str, output: Path, fmt: str) -> None:
    """Write a recording as asciicast (for `asciinema play`), raw bytes or text."""
    from bastion.recording.export import export_to

    path = _recording_path(obj, session_id)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with tmp.open("wb") as out:
            written = export_to(path, fmt, out)  # type: ignore[arg-type]
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(f"can't write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output} ({fmt}, {written} bytes)")


def _recording_path(obj: CliContext, session_id: str) -> Path:
    service = obj.bastion()
    try:
        return service.recording_file(session_id)
    finally:
        service.close()


def _offset(text: str) -> float:
    text = text.strip()
    if text in ("0", "0s", ""):
        return 0.0
    try:
        return float(text)
    except ValueError:
        return parse_duration(text).total_seconds()


@recordings.command("verify")
@click.argument("session_id", metavar="ID", required=False)
@click.option("--all", "check_all", is_flag=True, help="Verify every recording.")
@json_option
@pass_cli
def recordings_verify(
    obj: CliContext, session_id: str | None, check_all: bool, as_json: bool
) -> None:
    """Check recordings against their signed seals; exit 8 if any was edited or lost."""
    if (session_id is None) == (not check_all):
        raise InvalidInput("give a recording ID or --all")
    service = obj.bastion()
    try:
        ids = [r.session_id for r in service.list_recordings()] if check_all else [session_id or ""]
        checks = [service.verify_recording(i) for i in ids]
    finally:
        service.close()
    if as_json:
        click.echo(
            render.to_json(
                [
                    {"session": c.recording.session_id, "ok": c.ok, "detail": c.detail}
                    for c in checks
                ]
            )
        )
    else:
        for check in checks:
            status = "OK  " if check.ok else "FAIL"
            click.echo(f"{status} {check.recording.session_id}  {check.detail}")
    bad = [c for c in checks if not c.ok]
    if bad:
        raise VerificationFailed(f"{len(bad)} of {len(checks)} recordings failed verification")


@recordings.command("prune")
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 90d.")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@pass_cli
def recordings_prune(obj: CliContext, older_than: str, dry_run: bool) -> None:
    """Delete recordings of sessions that ended longer ago than --older-than (audited)."""
    age = parse_duration(older_than)
    service = obj.bastion()
    try:
        pruned = service.prune_recordings(age, dry_run=dry_run)
    finally:
        service.close()
    verb = "would delete" if dry_run else "deleted"
    for recording in pruned:
        click.echo(f"{verb} {recording.session_id} ({recording.agent} on {recording.target})")
    click.echo(f"{verb} {len(pruned)} recordings")


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
        click.echo(render.to_json([e.to_dict() for e in events]))
        return
    if not events:
        click.echo("no audit events")
        return
    click.echo(
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
    click.echo(f"audit chain OK: {result.events} events, head {result.last_hash or '-'}")


def main() -> None:
    sys.exit(cli.main(prog_name="bastion", standalone_mode=True))
