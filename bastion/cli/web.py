"""`bastion web ...`: run the web console, manage its accounts, print a login link."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from bastion import render, webpolicy
from bastion.cli.base import CliContext, cli, echo, json_option, parse_ttl, pass_cli
from bastion.config import DEFAULT_WEB_LISTEN
from bastion.errors import InvalidInput
from bastion.models import WebRole
from bastion.timespec import format_time
from bastion.webaccounts import WebAccounts

T = TypeVar("T")


def _call(obj: CliContext, action: Callable[[WebAccounts], T]) -> T:
    return obj.call(WebAccounts, action)


@cli.group(invoke_without_command=True)
@click.option(
    "--listen", metavar="HOST:PORT", help="Address (default: web.listen, else 127.0.0.1:8443)."
)
@click.option("--tls-cert", metavar="FILE", help="PEM certificate (chain); with --tls-key.")
@click.option("--tls-key", metavar="FILE", help="PEM private key of --tls-cert.")
@click.pass_context
def web(ctx: click.Context, listen: str | None, tls_cert: str | None, tls_key: str | None) -> None:
    """The auditors' and approvers' web console: run it, or manage its accounts."""
    if ctx.invoked_subcommand is not None:
        if listen or tls_cert or tls_key:
            raise InvalidInput("--listen, --tls-cert and --tls-key go with `bastion web` alone")
        return
    from bastion import logs
    from bastion.daemon import run, serve_web

    obj = ctx.find_object(CliContext)
    assert obj is not None
    home = obj.home()
    logs.configure("info", home.config.server.log_format)
    run(serve_web(home, obj.clock, listen, tls_cert, tls_key), home.config.server.event_loop)


@web.group("user")
def web_user() -> None:
    """Console accounts: auditor (reads), approver (+ decides, revokes), admin (everything)."""


@web_user.command("add")
@click.argument("name")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in WebRole]),
    help="auditor: read only; approver: + approve, deny, revoke; admin: + kill, accounts.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option(
    "--no-password", is_flag=True, help="No password: the person signs in by login link only."
)
@json_option
@pass_cli
def web_user_add(
    obj: CliContext, name: str, role: str, password_stdin: bool, no_password: bool, as_json: bool
) -> None:
    """Create a console account (the password is asked for, or read with --password-stdin)."""
    webpolicy.check_user_name(name)
    password: str | None = None
    if password_stdin and no_password:
        raise InvalidInput("give --password-stdin or --no-password, not both")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not no_password:
        if not sys.stdin.isatty():
            raise InvalidInput("no terminal to ask for the password: use --password-stdin")
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if password is not None:
        webpolicy.check_password(password)
    user = _call(obj, lambda a: a.add_user(name, webpolicy.parse_role(role), password))
    if as_json:
        echo(render.to_json(user.to_dict()))
        return
    how = "a password" if user.password_hash else "login links only"
    echo(render.line("added web user {} ({}, {})", user.name, user.role.value, how))


@web_user.command("list")
@json_option
@pass_cli
def web_user_list(obj: CliContext, as_json: bool) -> None:
    """List console accounts."""
    users = _call(obj, lambda a: a.list_users())
    if as_json:
        echo(render.to_json([u.to_dict() for u in users]))
        return
    if not users:
        echo(render.line("no web users"))
        return
    echo(
        render.table(
            ["NAME", "ROLE", "PASSWORD", "CREATED", "BY"],
            [
                (
                    u.name,
                    u.role.value,
                    "yes" if u.password_hash else "no",
                    format_time(u.created_at),
                    u.created_by,
                )
                for u in users
            ],
        )
    )


@web_user.command("remove")
@click.argument("name")
@pass_cli
def web_user_remove(obj: CliContext, name: str) -> None:
    """Remove a console account; its browser sessions end at once."""
    user = _call(obj, lambda a: a.remove_user(name))
    echo(render.line("removed web user {} ({})", user.name, user.role.value))


@web.command("login-link")
@click.argument("name")
@click.option("--ttl", help="How long the link works (default: web.login_link_ttl, 15m).")
@click.option("--base-url", metavar="URL", help="The console's address as the person reaches it.")
@pass_cli
def web_login_link(obj: CliContext, name: str, ttl: str | None, base_url: str | None) -> None:
    """Print a one-time sign-in link for NAME (shown once; only its hash is kept)."""
    with obj.api(WebAccounts) as accounts:
        token, link = accounts.login_link(name, parse_ttl(ttl))
        web_config = accounts.bastion.home.config.web
    if base_url is None:
        scheme = "https" if web_config.tls_cert else "http"
        base_url = f"{scheme}://{web_config.listen or DEFAULT_WEB_LISTEN}"
    echo(render.line("{}/link/{}", base_url.rstrip("/"), token))
    echo(
        render.line(
            "one-time sign-in link for {}, valid until {}", name, format_time(link.expires_at)
        ),
        err=True,
    )
