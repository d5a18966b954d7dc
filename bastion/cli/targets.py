"""`bastion target ...`: the hosts and databases agents may reach."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bastion import knownhosts, render
from bastion.cli.base import CliContext, F, cli, echo, json_option, pass_cli
from bastion.errors import InvalidInput
from bastion.keyfiles import parse_public_key
from bastion.models import SslMode, Target
from bastion.service import TargetCheck

# -- targets ------------------------------------------------------------------


@cli.group()
def target() -> None:
    """Register the hosts and databases agents may reach."""


def _no_check_option(func: F) -> F:
    return click.option(
        "--no-check",
        is_flag=True,
        help="Register the target without connecting to it first (it may be unreachable now).",
    )(func)


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
    metavar="FILE|LINE",
    help="The target's host key, pinned: a known_hosts file (ssh-keyscan's output), "
    "a .pub file or an OpenSSH public key line.",
)
@click.option(
    "--host-key-type",
    type=click.Choice(list(knownhosts.HOST_KEY_TYPES)),
    help="Which of the host's keys to pin (default: the strongest, ed25519 > ecdsa > rsa).",
)
@click.option(
    "--scan",
    is_flag=True,
    help="Fetch the host key from the target, show its fingerprint and ask to trust it.",
)
@click.option("--yes", is_flag=True, help="With --scan: trust the fingerprint shown, don't ask.")
@_no_check_option
@json_option
@pass_cli
def target_add_ssh(
    obj: CliContext,
    name: str,
    host: str,
    port: int,
    user: str,
    identity: Path,
    host_key: str | None,
    host_key_type: str | None,
    scan: bool,
    yes: bool,
    no_check: bool,
    as_json: bool,
) -> None:
    """Add an SSH target; it is connected to once first (host key, login), unless --no-check."""
    if scan == (host_key is not None):
        raise InvalidInput("give exactly one of --host-key or --scan")
    if yes and not scan:
        raise InvalidInput("--yes only goes with --scan")
    check = None if no_check else _target_check()
    if scan:
        host_key = _scan_and_confirm(check or _target_check(), host, port, host_key_type, yes)
    assert host_key is not None
    service = obj.bastion()
    try:
        added = service.add_ssh_target(
            name, host, port, user, identity, host_key, check=check, host_key_type=host_key_type
        )
    finally:
        service.close()
    _show_target(added, as_json, verb="added", checked=check is not None)


def _target_check() -> TargetCheck:
    # The gateway's own upstream code, composed by the daemon (the CLI can't import transport).
    from bastion.daemon import target_check

    return target_check()


def _scan_and_confirm(
    check: TargetCheck, host: str, port: int, key_type: str | None, yes: bool
) -> str:
    """The host key `host:port` offers, once a human (or --yes) has seen its fingerprint."""
    line = check.scan_host_key(host, port, key_type)
    key = parse_public_key(line, "the scanned host key")
    shown = knownhosts.describe(key, knownhosts.lookup_name(host, port))
    # On stderr, so that --json keeps stdout for the target alone.
    echo(render.line("{}:{} offers host key {}", host, port, shown), err=True)
    if yes:
        return line
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise InvalidInput(
            "--scan: confirm the host key with --yes (no terminal to ask on); nothing was stored"
        )
    if not click.confirm("Trust this host key?", default=False, err=True, prompt_suffix=" "):
        raise InvalidInput("host key not trusted; nothing was stored")
    return line


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
@_no_check_option
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
    no_check: bool,
    as_json: bool,
) -> None:
    """Add a PostgreSQL target; the bastion injects its credentials.

    It is connected to once first (TLS as --sslmode says, the login, the database),
    unless --no-check.
    """
    password = _read_password(password_file, password_env)
    check = None if no_check else _target_check()
    service = obj.bastion()
    try:
        added = service.add_postgres_target(
            name, host, port, database, user, password, SslMode(sslmode), sslrootcert, check=check
        )
    finally:
        service.close()
    _show_target(added, as_json, verb="added", checked=check is not None)


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
        echo(render.to_json([t.public_dict() for t in targets]))
        return
    if not targets:
        echo(render.line("no targets (add one with `bastion target add-ssh` or `add-postgres`)"))
        return
    rows = [
        (t.name, t.kind.value, f"{t.host}:{t.port}", t.user, t.database or "", t.created_by)
        for t in targets
    ]
    echo(render.table(["NAME", "KIND", "ADDRESS", "LOGIN", "DATABASE", "ADDED BY"], rows))


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
    echo(render.line("removed target {}", name))


def _show_target(
    t: Target, as_json: bool, verb: str | None = None, checked: bool | None = None
) -> None:
    if as_json:
        echo(render.to_json(t.public_dict()))
        return
    if verb:
        echo(render.line("{} {} target {}", verb, t.kind.value, t.name))
    if checked is True:
        what = "host key and login" if t.kind.value == "ssh" else "TLS, login and database"
        echo(render.line("checked: {} work from here", what))
    elif checked is False:
        echo(render.line("not checked (--no-check): nothing connected to the target"))
    pairs: list[tuple[str, object]] = [(k, v) for k, v in t.public_dict().items() if v is not None]
    echo(render.fields(pairs))
