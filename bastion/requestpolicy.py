"""Pure decisions about access requests: the `request@` command line, TTL limits, auto-approval.

An enrolled agent asks with `ssh … request@bastion -- --target T --task X --ttl 30m
--reason "…"`. The OpenSSH client joins the words after the host with single spaces
and no quoting, so `--reason` takes every word up to the next option: the agent need
not quote twice. No I/O and no clock here; callers pass `now`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

from bastion.errors import InvalidInput
from bastion.timespec import format_duration, parse_duration

REQUEST_LOGIN = "request"
USAGE = (
    'usage: ssh … request@BASTION -- --target NAME[,NAME…] --task TASK [--ttl 30m] --reason "why"'
)
_OPTIONS = ("--target", "--task", "--ttl", "--reason")
_MAX_REASON = 500


@dataclass(frozen=True)
class RequestArgs:
    targets: tuple[str, ...]
    task: str
    ttl: timedelta | None
    reason: str


def parse_request_command(command: str | None) -> RequestArgs:
    """The exec command of a `request@` session -> what the agent asks for."""
    if command is None or not command.strip():
        raise InvalidInput(f"say what you need. {USAGE}")
    try:
        words = shlex.split(command)
    except ValueError:
        # The OpenSSH client drops the shell's quotes, so `--reason "can't reach it"`
        # arrives as `--reason can't reach it`: read it as plain words.
        words = command.split()
    if words and words[0] == "--":
        words = words[1:]
    if words and words[0] in ("--help", "-h", "help"):
        raise InvalidInput(USAGE)
    values: dict[str, list[str]] = {}
    current: str | None = None
    for word in words:
        name, eq, inline = word.partition("=")
        if name in _OPTIONS:
            if name in values and name != "--target":
                raise InvalidInput(f"{name} given twice. {USAGE}")
            current = name
            values.setdefault(name, [])
            if eq:
                values[name].append(inline)
            continue
        if word.startswith("--"):
            raise InvalidInput(f"unknown option {word!r}. {USAGE}")
        if current is None:
            raise InvalidInput(f"unexpected {word!r}. {USAGE}")
        values[current].append(word)
        if current != "--reason" and current != "--target":
            current = None  # single-word options take one word
    targets = tuple(
        dict.fromkeys(t for word in values.get("--target", []) for t in word.split(",") if t)
    )
    if not targets:
        raise InvalidInput(f"give --target. {USAGE}")
    task_words = values.get("--task", [])
    if len(task_words) != 1:
        raise InvalidInput(f"give --task once, as one word. {USAGE}")
    ttl_words = values.get("--ttl")
    ttl = None
    if ttl_words is not None:
        if len(ttl_words) != 1:
            raise InvalidInput(f"give --ttl as one duration like 30m. {USAGE}")
        ttl = parse_duration(ttl_words[0])
    reason = " ".join(values.get("--reason", [])).strip()
    if not reason:
        raise InvalidInput(f'give --reason "why": a human reads it before deciding. {USAGE}')
    if len(reason) > _MAX_REASON:
        raise InvalidInput(f"--reason is longer than {_MAX_REASON} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise InvalidInput("--reason must not contain control characters")
    return RequestArgs(targets=targets, task=task_words[0], ttl=ttl, reason=reason)


# -- auto-approval hours ---------------------------------------------------------

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"(?:(?P<days>[A-Za-z,-]+)\s+)?(?P<start>\d{2}:\d{2})-(?P<end>\d{2}:\d{2})")


@dataclass(frozen=True)
class Hours:
    """A weekly window such as `Mon-Fri 09:00-18:00` (end exclusive; `24:00` allowed)."""

    days: frozenset[int]  # 0 = Monday
    start: time
    end: time | None  # None: midnight at the end of the day
    text: str

    def contains(self, local: datetime) -> bool:
        if local.weekday() not in self.days:
            return False
        moment = local.time().replace(tzinfo=None)
        return self.start <= moment and (self.end is None or moment < self.end)


def _day(name: str, text: str) -> int:
    try:
        return _DAYS.index(name.lower()[:3]) if len(name) >= 3 else -1
    except ValueError:
        raise InvalidInput(f"invalid hours {text!r}: unknown day {name!r}") from None


def parse_hours(text: str) -> Hours:
    match = _HOURS.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f'invalid hours {text!r}: write like "Mon-Fri 09:00-18:00"')
    days: set[int] = set()
    spec = match["days"] or "Mon-Sun"
    for part in spec.split(","):
        first, dash, last = part.partition("-")
        a = _day(first, text)
        b = _day(last, text) if dash else a
        if a < 0 or b < 0:
            raise InvalidInput(f"invalid hours {text!r}: unknown day in {part!r}")
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    start, end = _clock(match["start"], text), _clock(match["end"], text)
    if start is None:
        raise InvalidInput(f"invalid hours {text!r}: a window starts before 24:00")
    if end is not None and end <= start:
        raise InvalidInput(f"invalid hours {text!r}: the end must be after the start")
    return Hours(days=frozenset(days), start=start, end=end, text=text.strip())


def _clock(value: str, text: str) -> time | None:
    hour, minute = int(value[:2]), int(value[3:])
    if (hour, minute) == (24, 0):
        return None
    if hour > 23 or minute > 59:
        raise InvalidInput(f"invalid hours {text!r}: {value} is not a time of day")
    return time(hour, minute)


# -- the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class AutoApproval:
    """When a target's requests are approved without a human (all must hold)."""

    agents: tuple[str, ...] = ()  # empty: any agent that may request the target
    hours: Hours | None = None
    timezone: tzinfo | None = None
    max_ttl: timedelta | None = None

    def describe(self) -> str:
        parts = ["auto_approve"]
        if self.agents:
            parts.append(f"agents {','.join(self.agents)}")
        if self.hours is not None:
            parts.append(f"hours {self.hours.text} {self.timezone}")
        if self.max_ttl is not None:
            parts.append(f"ttl <= {format_duration(self.max_ttl)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class TargetRequestPolicy:
    requestable: bool = True
    max_ttl: timedelta | None = None
    auto: AutoApproval | None = None


@dataclass(frozen=True)
class Verdict:
    ttl: timedelta
    auto_rule: str | None  # why it was approved without a human, or None: ask a human


def limit_ttl(
    requested: timedelta | None,
    default: timedelta,
    limits: Iterable[tuple[str, timedelta | None]],
    minimum: timedelta,
) -> timedelta:
    """The TTL asked for (or the default, capped), refused if above a limit."""
    named = [(name, limit) for name, limit in limits if limit is not None]
    if requested is None:
        return min([default, *(limit for _, limit in named)])
    for name, limit in named:
        if requested > limit:
            raise InvalidInput(
                f"--ttl {format_duration(requested)} is longer than {name}"
                f" ({format_duration(limit)})"
            )
    if requested < minimum:
        raise InvalidInput(
            f"--ttl {format_duration(requested)} is shorter than the minimum"
            f" ({format_duration(minimum)})"
        )
    return requested


def decide(
    *,
    agent: str,
    may_request: tuple[str, ...],
    agent_max_ttl: timedelta | None,
    args: RequestArgs,
    known_targets: frozenset[str],
    targets: dict[str, TargetRequestPolicy],
    max_ttl: timedelta,
    default_ttl: timedelta,
    min_ttl: timedelta,
    now: datetime,
) -> Verdict:
    """Refuse (InvalidInput) what may not be asked at all; else the TTL and who decides."""
    for name in args.targets:
        if name not in known_targets:
            raise InvalidInput(f"unknown target {name!r}")
        if "*" not in may_request and name not in may_request:
            raise InvalidInput(f"agent {agent} may not request target {name!r}")
        if not targets.get(name, TargetRequestPolicy()).requestable:
            raise InvalidInput(f"target {name!r} can't be requested; ask a human for a grant")
    limits: list[tuple[str, timedelta | None]] = [
        ("the longest a request may ask for", max_ttl),
        (f"agent {agent}'s max-ttl", agent_max_ttl),
    ]
    for name in args.targets:
        limits.append((f"target {name}'s request_max_ttl", targets.get(name, _NONE).max_ttl))
    ttl = limit_ttl(args.ttl, default_ttl, limits, min_ttl)
    rules = [targets.get(name, _NONE).auto for name in args.targets]
    if all(rule is not None and _auto_applies(rule, agent, ttl, now) for rule in rules):
        described = "; ".join(sorted({rule.describe() for rule in rules if rule is not None}))
        return Verdict(ttl=ttl, auto_rule=described)
    return Verdict(ttl=ttl, auto_rule=None)


_NONE = TargetRequestPolicy()


def _auto_applies(rule: AutoApproval, agent: str, ttl: timedelta, now: datetime) -> bool:
    if rule.agents and agent not in rule.agents:
        return False
    if rule.max_ttl is not None and ttl > rule.max_ttl:
        return False
    if rule.hours is not None:
        local = now.astimezone(rule.timezone) if rule.timezone is not None else now
        if not rule.hours.contains(local):
            return False
    return True


def request_line(host: str, port: int, targets: Iterable[str], task: str) -> str:
    """The exact line an agent runs to ask again (expiry and revocation messages)."""
    port_part = f"-p {port} " if port != 22 else ""
    return (
        f"ssh {port_part}request@{host} -- --target {','.join(targets)} --task {task}"
        ' --ttl 30m --reason "…"'
    )
