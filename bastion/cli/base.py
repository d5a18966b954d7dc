"""The root `bastion` group, the context passed to every command, and `init`/`serve`.

Commands are thin: they turn options into a service call and its result into text
(or `--json`). Errors are `BastionError`s; the root group prints their one-line
message as `bastion: error: ...` and exits with the code the error class carries.

Every command writes through `echo`, which takes the `render.Text` that `bastion.render`
builds (values escaped: an agent's command can't drive the approver's terminal) and
escapes anything else whole. `tests/unit/test_cli_output.py` holds that line: no other
code in the CLI writes to the terminal, except `recordings play`, which replays a
recorded terminal stream on purpose.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from bastion import render
from bastion.clock import Clock, SystemClock
from bastion.config import Home, ca_passphrase, open_home
from bastion.errors import BastionError
from bastion.service import Bastion, initialize
from bastion.timespec import parse_duration

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")
T = TypeVar("T")

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

    @contextmanager
    def api(self, make: Callable[[Bastion], S]) -> Iterator[S]:
        """A part of the service API built on an open `Bastion`, closed afterwards."""
        service = self.bastion()
        try:
            yield make(service)
        finally:
            service.close()

    def call(self, make: Callable[[Bastion], S], action: Callable[[S], T]) -> T:
        with self.api(make) as part:
            return action(part)


pass_cli = click.make_pass_decorator(CliContext)


def echo(text: render.Text, *, err: bool = False, nl: bool = True) -> None:
    """The CLI's one way to the terminal: `text` as `bastion.render` made it."""
    click.echo(render.for_terminal(text), err=err, nl=nl)


class BastionGroup(click.Group):
    """Maps `BastionError` to a one-line message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BastionError as exc:
            echo(render.line("bastion: error: {}", exc), err=True)
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


def parse_ttl(value: str | None) -> Any:
    return None if value is None else parse_duration(value)


# -- init ---------------------------------------------------------------------


@cli.command()
@pass_cli
def init(obj: CliContext) -> None:
    """Create the CA, host key, state store and default config (idempotent)."""
    report = initialize(obj.home(), obj.clock, obj.actor, ca_passphrase())
    echo(render.line("bastion home: {}", report.home))
    for item in report.created:
        echo(render.line("  created {}", item))
    for item in report.kept:
        echo(render.line("  kept    {}", item))
    echo(render.line("CA public key (for sshd TrustedUserCAKeys): {}", report.ca_public_line))
    echo(render.line("host key (for clients' known_hosts):       {}", report.host_public_line))


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Override server.listen from bastion.toml.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines on stderr as text or one JSON object per line (default: server.log_format).",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (overrides metrics.listen).",
)
@pass_cli
def serve(
    obj: CliContext,
    listen: str | None,
    log_level: str,
    log_format: str | None,
    metrics_listen: str | None,
) -> None:
    """Run the SSH gateway (runs `init` first on a fresh home)."""
    from bastion import logs
    from bastion.daemon import run
    from bastion.daemon import serve as run_gateway

    home = obj.home()
    logs.configure(log_level, log_format or home.config.server.log_format)
    server = home.config.server
    run(run_gateway(home, obj.clock, obj.actor, listen, metrics_listen), server.event_loop)
