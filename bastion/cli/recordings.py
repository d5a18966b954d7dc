"""`bastion recordings ...`: list, replay, render, search, export, verify, prune.

What a session showed or typed is the agent's text: `text`, `screen` and `search` print
it escaped like every other value (`bastion.render`; line breaks are kept where they are
the transcript's or the screen's own). `play` alone writes the recorded terminal stream
to this terminal as it was recorded, escape sequences and all, because replaying them is
what it is for; `export` writes files, never the terminal.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from bastion import render
from bastion.cli.base import CliContext, F, cli, echo, json_option, pass_cli
from bastion.errors import InvalidInput, VerificationFailed
from bastion.timespec import format_time, parse_duration, parse_when

# -- recordings ---------------------------------------------------------------


def recording_filters(func: F) -> F:
    """--agent, --target, --task and --since, as `recordings list` and `search` take them."""
    for option in reversed(
        [
            click.option("--agent", help="Only this agent's sessions."),
            click.option("--target", help="Only sessions on this target."),
            click.option("--task", help="Only sessions of this task."),
            click.option(
                "--since", metavar="WHEN", help="A duration ago (2h, 7d) or an ISO 8601 time."
            ),
        ]
    ):
        func = option(func)
    return func


@cli.group()
def recordings() -> None:
    """Session recordings: list, replay, render, search, export, verify, prune."""


@recordings.command("list")
@recording_filters
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
        echo(render.to_json([r.to_dict() for r in found]))
        return
    if not found:
        echo(render.line("no recordings"))
        return
    echo(
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
    """Play a recording in this terminal: space pauses, `.` steps while paused, q quits.

    The recorded output goes to this terminal unescaped: it is replayed, not quoted.
    """
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
    echo(render.many_lines(screen_at(path, "end" if at == "end" else _offset(at))))


@recordings.command("text")
@click.argument("session_id", metavar="ID")
@pass_cli
def recordings_text(obj: CliContext, session_id: str) -> None:
    """A grep-able transcript: what the screen showed and what was typed, with times."""
    from bastion.recording.search import iter_text

    path = _recording_path(obj, session_id)
    for chunk in iter_text(path):
        echo(render.many_lines(chunk), nl=False)


@recordings.command("search")
@click.argument("pattern")
@click.option("--regex", is_flag=True, help="PATTERN is a regular expression.")
@click.option("-i", "--ignore-case", is_flag=True)
@recording_filters
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
            echo(render.to_json([m.as_dict() for m in matches]))
            return
        found = 0
        for match in matches:
            found += 1
            marker = "> " if match.kind == "input" else ""
            seconds = format_seconds(match.seconds)
            echo(render.line("{}  {}  {}{}", match.session_id, seconds, marker, match.line))
    except re.error as exc:
        raise InvalidInput(f"invalid --regex pattern {pattern!r}: {exc}") from None
    if not found:
        echo(render.line("no matches"), err=True)


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
    echo(render.line("wrote {} ({}, {} bytes)", output, fmt, written))


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
        echo(
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
            echo(render.line("{} {}  {}", status, check.recording.session_id, check.detail))
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
        echo(
            render.line(
                "{} {} ({} on {})", verb, recording.session_id, recording.agent, recording.target
            )
        )
    echo(render.line("{} {} recordings", verb, len(pruned)))
