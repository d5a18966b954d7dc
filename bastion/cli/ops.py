"""Operations commands: `bastion doctor`.

Renders what `bastion.doctor.diagnose` finds, one line per check, and exits 1 when a
check failed (0 otherwise, warnings included).
"""

from __future__ import annotations

import click

from bastion import render
from bastion.cli.base import CliContext, cli, echo, json_option, pass_cli
from bastion.config import resolve_home
from bastion.doctor import FAIL, diagnose

_MARK = {"ok": "ok  ", "warn": "warn", FAIL: "FAIL"}


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Check this address instead of server.listen.")
@json_option
@pass_cli
def doctor(obj: CliContext, listen: str | None, as_json: bool) -> None:
    """Check keys, state store, clock, recordings directory and listen port (exit 1 on FAIL)."""
    report = diagnose(resolve_home(obj.home_option), obj.clock, obj.actor, listen)
    if as_json:
        echo(render.to_json(report.to_dict()))
    else:
        echo(render.line("bastion doctor: {}", report.home))
        width = max(len(render.value(c.name)) for c in report.checks)
        for check in report.checks:
            mark = _MARK[check.status]
            echo(render.line("{}  {:<{}}  {}", mark, check.name, width, check.detail))
        failed = sum(c.status == FAIL for c in report.checks)
        echo(
            render.line("all checks passed")
            if not failed
            else render.line("{} check(s) failed", failed)
        )
    if not report.ok:
        raise SystemExit(1)
