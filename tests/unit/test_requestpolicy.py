"""requestpolicy: the `request@` command line, weekly hours, TTL limits, auto-approval.

All pure: time is an input (`now` is passed, aware), nothing is read from disk.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import InvalidInput
from bastion.requestpolicy import (
    USAGE,
    AutoApproval,
    Hours,
    RequestArgs,
    TargetRequestPolicy,
    Verdict,
    decide,
    limit_ttl,
    parse_hours,
    parse_request_command,
    request_line,
)
from bastion.timespec import format_duration

M = timedelta(minutes=1)
H = timedelta(hours=1)


def refused(command: str | None) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_request_command(command)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- parse_request_command: what the OpenSSH client sends ------------------------------


def test_the_line_the_ssh_client_sends() -> None:
    # `ssh … request@b -- --target prod-db --task hotfix-1422 --ttl 30m --reason "fix it now"`
    # arrives as the words joined by single spaces: the shell's quotes are gone.
    args = parse_request_command(
        "-- --target prod-db --task hotfix-1422 --ttl 30m --reason fix failing migration"
    )
    assert args == RequestArgs(
        targets=("prod-db",),
        task="hotfix-1422",
        ttl=30 * M,
        reason="fix failing migration",
    )


def test_without_the_leading_double_dash() -> None:
    args = parse_request_command("--target prod-db --task t-1 --reason why")
    assert args.targets == ("prod-db",)
    assert args.task == "t-1"
    assert args.reason == "why"


def test_ttl_is_optional() -> None:
    assert parse_request_command("--target a --task t --reason r").ttl is None


@pytest.mark.parametrize(
    "command",
    [
        "--reason fix the migration --target prod-db --task t-1 --ttl 1h",
        "--task t-1 --reason fix the migration --ttl 1h --target prod-db",
        "--ttl 1h --target prod-db --reason fix the migration --task t-1",
    ],
)
def test_options_in_any_order_and_reason_stops_at_the_next_option(command: str) -> None:
    assert parse_request_command(command) == RequestArgs(
        targets=("prod-db",), task="t-1", ttl=H, reason="fix the migration"
    )


def test_quoted_reason_is_one_word() -> None:
    # An agent that quotes twice (ssh … -- '--reason "a  b"') keeps its spacing.
    args = parse_request_command('--target a --task t --reason "two  spaces --target x"')
    assert args.reason == "two  spaces --target x"
    assert args.targets == ("a",)


def test_single_quoted_reason() -> None:
    args = parse_request_command("--target a --task t --reason 'it is \"fine\"'")
    assert args.reason == 'it is "fine"'


def test_equals_forms() -> None:
    args = parse_request_command("--target=prod-db --task=t-1 --ttl=45m --reason=short")
    assert args == RequestArgs(targets=("prod-db",), task="t-1", ttl=45 * M, reason="short")


def test_equals_reason_continues_with_the_following_words() -> None:
    args = parse_request_command("--target a --task t --reason=the replica is late")
    assert args.reason == "the replica is late"


def test_equals_inside_a_reason_word_is_just_text() -> None:
    args = parse_request_command("--target a --task t --reason set work_mem=64MB for x=1")
    assert args.reason == "set work_mem=64MB for x=1"


def test_targets_repeated_and_comma_lists_are_deduplicated_in_order() -> None:
    args = parse_request_command(
        "--target b,a --target a --target=c,b,,d --task t --reason r --target e"
    )
    assert args.targets == ("b", "a", "c", "d", "e")


def test_several_targets_after_one_option() -> None:
    # `--target` takes words until the next option, like `--reason`.
    args = parse_request_command("--target a b --task t --reason r")
    assert args.targets == ("a", "b")


def test_reason_surrounding_space_is_stripped() -> None:
    args = parse_request_command("--target a --task t --reason '  padded  '")
    assert args.reason == "padded"


def test_reason_of_exactly_the_maximum_length() -> None:
    reason = "x" * 500
    assert parse_request_command(f"--target a --task t --reason {reason}").reason == reason


def test_non_ascii_reason() -> None:
    args = parse_request_command("--target a --task t --reason réparer la migration …")
    assert args.reason == "réparer la migration …"


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, "", "   ", "\t\n"])
def test_empty(command: str | None) -> None:
    message = refused(command)
    assert message.startswith("say what you need.")
    assert USAGE in message


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("--target a --task t --reason 'unbalanced", "'unbalanced"),
        ('--target a --task t --reason "unbalanced', '"unbalanced'),
        ("--target a --task t --reason trailing\\", "trailing\\"),
    ],
)
def test_unbalanced_quotes_are_read_as_plain_words(command: str, reason: str) -> None:
    # What shlex can't read is what the OpenSSH client made of quotes: plain words.
    assert parse_request_command(command).reason == reason


@pytest.mark.parametrize(
    ("command", "word"),
    [
        ("--target a --task t --reason r --force", "--force"),
        ("--targets a --task t --reason r", "--targets"),
        ("--target a --task t --reason r --", "--"),
        ("-- -- --target a --task t --reason r", "--"),
        ("--target a --task t --reason a --- b", "---"),
        ("--target a --task t --reason=r --save=out", "--save=out"),
    ],
)
def test_unknown_option(command: str, word: str) -> None:
    message = refused(command)
    assert message.startswith(f"unknown option {word!r}.")
    assert USAGE in message


@pytest.mark.parametrize("command", ["--help", "-h", "help", "-- --help"])
def test_help_gives_the_usage(command: str) -> None:
    assert refused(command) == USAGE


@pytest.mark.parametrize(
    ("command", "start"),
    [
        ("--task t --reason r", "give --target."),
        ("--target --task t --reason r", "give --target."),
        ("--target , --task t --reason r", "give --target."),
        ("--target= --task t --reason r", "give --target."),
        ("--target a --reason r", "give --task once, as one word."),
        ("--target a --task --reason r", "give --task once, as one word."),
        ("--target a --task t --task u --reason r", "--task given twice."),
        ("--target a --task=t u --reason r", "give --task once, as one word."),
        ("--target a --task t", 'give --reason "why"'),
        ("--target a --task t --reason", 'give --reason "why"'),
        ("--target a --task t --reason ''", 'give --reason "why"'),
        ("--target a --task t --reason '   '", 'give --reason "why"'),
        ("--target a --task t --reason r --reason s", "--reason given twice."),
        ("--target a --task t --ttl 1h --ttl 2h --reason r", "--ttl given twice."),
        ("--target a --task t --ttl --reason r", "give --ttl as one duration like 30m."),
        ("--target a --task t --ttl=1h 2h --reason r", "give --ttl as one duration like 30m."),
        ("--target a --task t --ttl 30m 40m --reason r", "unexpected '40m'."),
        ("--target a --task t extra --reason r", "unexpected 'extra'."),
        ("stray --target a --task t --reason r", "unexpected 'stray'."),
        ("-- stray --target a --task t --reason r", "unexpected 'stray'."),
    ],
)
def test_missing_repeated_and_stray_words(command: str, start: str) -> None:
    message = refused(command)
    assert message.startswith(start), message


@pytest.mark.parametrize("ttl", ["soon", "30", "0s", "-5m", "1.5h", "99999999999999999d"])
def test_bad_ttl(ttl: str) -> None:
    message = refused(f"--target a --task t --ttl {ttl} --reason r")
    assert message.startswith("invalid duration"), message


def test_reason_too_long() -> None:
    message = refused("--target a --task t --reason " + "x" * 501)
    assert message == "--reason is longer than 500 characters"


def test_long_reason_in_many_words() -> None:
    # The limit is on the joined text, not on a single word.
    message = refused("--target a --task t --reason " + " ".join(["abcd"] * 101))
    assert message == "--reason is longer than 500 characters"


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\n", "\t", "\r"])
def test_reason_with_control_characters(char: str) -> None:
    # Quoted so that shlex keeps whitespace controls inside the word.
    message = refused(f"--target a --task t --reason 'a{char}b'")
    assert message == "--reason must not contain control characters"


def test_unquoted_reason_may_say_help() -> None:
    # BUG: the words `help` and `-h` anywhere (here: inside an unquoted reason) turn the
    # whole request into the usage message. A reason such as "need help with the
    # migration" is natural English and must not be refused.
    args = parse_request_command("--target a --task t --reason need help with the migration")
    assert args.reason == "need help with the migration"


def test_unquoted_reason_may_contain_an_apostrophe() -> None:
    # BUG: `ssh … -- --reason "can't reach the replica"` arrives as
    # `--reason can't reach the replica` (the client drops the shell's quotes), and shlex
    # then refuses the whole request for its unbalanced quote.
    args = parse_request_command("--target a --task t --reason can't reach the replica")
    assert args.reason == "can't reach the replica"


# -- properties --------------------------------------------------------------------

_OPTION_WORDS = st.sampled_from(
    ["--target", "--task", "--ttl", "--reason", "--", "--target=", "--ttl=", "-h", "help", ","]
)
_WORDS = st.one_of(
    _OPTION_WORDS,
    st.text(max_size=12),
    st.sampled_from(["'", '"', "\\", "30m", "0s", "prod-db", "a,b", "x=y", "\x00", "\n"]),
)
_COMMANDISH = st.lists(_WORDS, max_size=20).map(" ".join)


@settings(max_examples=400)
@given(st.one_of(st.none(), st.text(max_size=600), _COMMANDISH))
def test_any_text_parses_or_is_invalid_input(command: str | None) -> None:
    try:
        parsed = parse_request_command(command)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert isinstance(parsed, RequestArgs)
    assert parsed.targets and all(parsed.targets)
    assert len(set(parsed.targets)) == len(parsed.targets)
    assert parsed.reason == parsed.reason.strip() and 0 < len(parsed.reason) <= 500
    assert parsed.ttl is None or parsed.ttl > timedelta(0)


_TARGET = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
_TASK = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/#+-]{0,30}", fullmatch=True)
# Words as a reason may hold them unquoted: no whitespace, no control characters, no
# quotes or backslashes (shlex reads those), nothing option-like.
_REASON_CHAR = st.characters(
    blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="'\"\\"
)
_REASON_WORD = st.text(_REASON_CHAR, min_size=1, max_size=15).filter(
    lambda w: not w.startswith("--") and w not in ("-h", "help") and w.strip() == w
)


@settings(max_examples=300)
@given(
    targets=st.lists(_TARGET, min_size=1, max_size=4, unique=True),
    task=_TASK,
    ttl=st.one_of(st.none(), st.integers(min_value=1, max_value=10**7)),
    reason_words=st.lists(_REASON_WORD, min_size=1, max_size=20),
    order=st.permutations(["target", "task", "ttl", "reason"]),
    leading_dashes=st.booleans(),
    split_targets=st.booleans(),
)
def test_the_joined_line_parses_back(
    targets: list[str],
    task: str,
    ttl: int | None,
    reason_words: list[str],
    order: list[str],
    leading_dashes: bool,
    split_targets: bool,
) -> None:
    reason = " ".join(reason_words)  # at most 20 words of 15: under the 500 limit
    groups = {
        "target": (
            [w for t in targets for w in ("--target", t)]
            if split_targets
            else ["--target", ",".join(targets)]
        ),
        "task": ["--task", task],
        "ttl": ["--ttl", format_duration(timedelta(seconds=ttl))] if ttl else [],
        "reason": ["--reason", *reason_words],
    }
    words = (["--"] if leading_dashes else []) + [w for g in order for w in groups[g]]
    parsed = parse_request_command(" ".join(words))  # what the OpenSSH client sends
    assert parsed == RequestArgs(
        targets=tuple(targets),
        task=task,
        ttl=timedelta(seconds=ttl) if ttl else None,
        reason=reason,
    )


_QUOTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=200
).filter(lambda r: r == r.strip() and r and not r.startswith("--") and r not in ("-h", "help"))


@given(reason=_QUOTABLE, task=_TASK)
def test_a_shell_quoted_reason_parses_back_verbatim(reason: str, task: str) -> None:
    command = f"--target a --task {task} --reason {shlex.quote(reason)}"
    parsed = parse_request_command(command)
    assert (parsed.reason, parsed.task) == (reason, task)


# -- hours ---------------------------------------------------------------------------

# 2024-01-08 is a Monday.
MONDAY = datetime(2024, 1, 8)


def on(day: int, hh: int, mm: int = 0) -> datetime:
    """Weekday `day` (0 = Monday) of that week, at hh:mm (naive, local)."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm)


def test_hours_parsed() -> None:
    hours = parse_hours("Mon-Fri 09:00-18:00")
    assert hours == Hours(
        days=frozenset(range(5)), start=time(9), end=time(18), text="Mon-Fri 09:00-18:00"
    )


@pytest.mark.parametrize(
    ("when", "inside"),
    [
        (on(0, 8, 59), False),
        (on(0, 9, 0), True),
        (on(2, 12, 30), True),
        (on(4, 17, 59), True),
        (on(4, 18, 0), False),
        (on(0, 23, 59), False),
        (on(0, 0, 0), False),
        (on(5, 12, 0), False),  # Saturday
        (on(6, 12, 0), False),  # Sunday
    ],
)
def test_business_hours_boundaries(when: datetime, inside: bool) -> None:
    assert parse_hours("Mon-Fri 09:00-18:00").contains(when) is inside


def test_seconds_before_the_end_are_inside() -> None:
    hours = parse_hours("Mon-Fri 09:00-18:00")
    assert hours.contains(on(0, 17, 59) + timedelta(seconds=59, microseconds=999999))
    assert not hours.contains(on(0, 8, 59) + timedelta(seconds=59, microseconds=999999))


def test_aware_times_are_read_as_their_own_wall_clock() -> None:
    hours = parse_hours("Mon-Fri 09:00-18:00")
    paris = ZoneInfo("Europe/Paris")
    assert hours.contains(on(0, 9).replace(tzinfo=paris))
    assert not hours.contains(on(0, 18).replace(tzinfo=paris))


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("Fri-Mon 09:00-18:00", {4, 5, 6, 0}),
        ("Sun-Sun 09:00-18:00", {6}),
        ("Sat-Fri 09:00-18:00", set(range(7))),
        ("Sat,Sun 10:00-12:00", {5, 6}),
        ("Mon,Wed-Fri 10:00-12:00", {0, 2, 3, 4}),
        ("Tue 10:00-12:00", {1}),
        ("Monday-Friday 10:00-12:00", set(range(5))),
        ("mon-FRI 10:00-12:00", set(range(5))),
        ("10:00-12:00", set(range(7))),
    ],
)
def test_day_ranges(text: str, days: set[int]) -> None:
    hours = parse_hours(text)
    assert hours.days == frozenset(days)
    for day in range(7):
        assert hours.contains(on(day, 11)) is (day in days)


def test_wrap_around_days_keep_the_hours() -> None:
    hours = parse_hours("Fri-Mon 09:00-18:00")
    assert hours.contains(on(6, 9))  # Sunday
    assert not hours.contains(on(6, 18))
    assert not hours.contains(on(1, 12))  # Tuesday


def test_end_of_day_24_00() -> None:
    hours = parse_hours("Sat-Sun 00:00-24:00")
    assert hours.end is None
    assert hours.contains(on(5, 0, 0))
    assert hours.contains(on(6, 23, 59) + timedelta(seconds=59))
    assert not hours.contains(on(0, 0, 0))  # Monday begins outside


def test_hours_text_is_kept_stripped() -> None:
    assert parse_hours("  Mon 09:00-10:00 ").text == "Mon 09:00-10:00"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Mon-Fry 09:00-18:00", "unknown day 'Fry'"),
        ("Xyz 09:00-18:00", "unknown day 'Xyz'"),
        ("Mo-Fr 09:00-18:00", "unknown day in 'Mo-Fr'"),
        ("Mon,,Fri 09:00-18:00", "unknown day in ''"),
        ("Mon- 09:00-18:00", "unknown day in 'Mon-'"),
        ("Mon-Fri 18:00-09:00", "the end must be after the start"),
        ("Mon-Fri 09:00-09:00", "the end must be after the start"),
        ("Mon-Fri 09:00-25:00", "25:00 is not a time of day"),
        ("Mon-Fri 09:60-10:00", "09:60 is not a time of day"),
        ("Mon-Fri 24:30-10:00", "24:30 is not a time of day"),
        ("24:00-24:00", "a window starts before 24:00"),
        ("Mon-Fri 9:00-18:00", 'write like "Mon-Fri 09:00-18:00"'),
        ("Mon-Fri 09:00", 'write like "Mon-Fri 09:00-18:00"'),
        ("whenever", 'write like "Mon-Fri 09:00-18:00"'),
        ("", 'write like "Mon-Fri 09:00-18:00"'),
        ("Mon-Fri 09:00-18:00 UTC", 'write like "Mon-Fri 09:00-18:00"'),
    ],
)
def test_bad_hours(text: str, why: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_hours(text)
    message = str(caught.value)
    assert message.startswith(f"invalid hours {text!r}:"), message
    assert why in message, message


# -- limit_ttl -------------------------------------------------------------------------


def test_limit_ttl_default_capped_by_the_shortest_limit() -> None:
    limits = [("a", 2 * H), ("b", None), ("c", 20 * M)]
    assert limit_ttl(None, 30 * M, limits, M) == 20 * M
    assert limit_ttl(None, 10 * M, limits, M) == 10 * M
    assert limit_ttl(None, 30 * M, [("a", None)], M) == 30 * M
    assert limit_ttl(None, 30 * M, [], M) == 30 * M


def test_limit_ttl_requested_within_limits() -> None:
    limits = [("a", H), ("b", None)]
    assert limit_ttl(H, 30 * M, limits, M) == H  # equal to a limit is fine
    assert limit_ttl(M, 30 * M, limits, M) == M  # equal to the minimum is fine


def test_limit_ttl_names_the_limit_exceeded() -> None:
    limits = [("the first", 2 * H), ("the second", H), ("the third", None)]
    with pytest.raises(InvalidInput) as caught:
        limit_ttl(90 * M, 30 * M, limits, M)
    assert str(caught.value) == "--ttl 1h30m is longer than the second (1h)"


def test_limit_ttl_minimum() -> None:
    with pytest.raises(InvalidInput) as caught:
        limit_ttl(timedelta(seconds=30), 30 * M, [("a", H)], M)
    assert str(caught.value) == "--ttl 30s is shorter than the minimum (1m)"


# -- decide ----------------------------------------------------------------------------

KNOWN = frozenset({"prod-db", "replica-db", "prod-web"})
NOON_UTC_MONDAY = datetime(2024, 1, 8, 12, 0, tzinfo=UTC)


def args(*targets: str, ttl: timedelta | None = None, task: str = "t-1") -> RequestArgs:
    return RequestArgs(targets=targets or ("prod-db",), task=task, ttl=ttl, reason="why")


def verdict(
    request: RequestArgs,
    *,
    agent: str = "bot",
    may_request: tuple[str, ...] = ("prod-db", "replica-db", "prod-web"),
    agent_max_ttl: timedelta | None = None,
    targets: dict[str, TargetRequestPolicy] | None = None,
    max_ttl: timedelta = H,
    default_ttl: timedelta = 30 * M,
    min_ttl: timedelta = M,
    now: datetime = NOON_UTC_MONDAY,
) -> Verdict:
    return decide(
        agent=agent,
        may_request=may_request,
        agent_max_ttl=agent_max_ttl,
        args=request,
        known_targets=KNOWN,
        targets=targets or {},
        max_ttl=max_ttl,
        default_ttl=default_ttl,
        min_ttl=min_ttl,
        now=now,
    )


def decide_refused(request: RequestArgs, **options: object) -> str:
    with pytest.raises(InvalidInput) as caught:
        verdict(request, **options)  # type: ignore[arg-type]
    return str(caught.value)


def test_plain_request_asks_a_human_with_the_default_ttl() -> None:
    assert verdict(args()) == Verdict(ttl=30 * M, auto_rule=None)


def test_requested_ttl_is_kept() -> None:
    assert verdict(args(ttl=45 * M)).ttl == 45 * M


def test_unknown_target() -> None:
    assert decide_refused(args("nope")) == "unknown target 'nope'"
    # even for an agent that may request any target
    assert decide_refused(args("nope"), may_request=("*",)) == "unknown target 'nope'"


def test_target_outside_the_agents_list() -> None:
    message = decide_refused(args("prod-web"), may_request=("prod-db",))
    assert message == "agent bot may not request target 'prod-web'"


def test_one_target_outside_the_list_refuses_the_whole_request() -> None:
    message = decide_refused(args("prod-db", "prod-web"), may_request=("prod-db",))
    assert message == "agent bot may not request target 'prod-web'"


def test_star_allows_any_known_target() -> None:
    assert verdict(args("prod-db", "prod-web", "replica-db"), may_request=("*",)).ttl == 30 * M


def test_empty_list_allows_nothing() -> None:
    assert decide_refused(args(), may_request=()).startswith("agent bot may not request")


def test_not_requestable() -> None:
    policies = {"prod-db": TargetRequestPolicy(requestable=False)}
    message = decide_refused(args("replica-db", "prod-db"), targets=policies)
    assert message == "target 'prod-db' can't be requested; ask a human for a grant"
    # even with '*'
    assert "can't be requested" in decide_refused(args(), targets=policies, may_request=("*",))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_ttl": 40 * M}, "the longest a request may ask for (40m)"),
        ({"agent_max_ttl": 40 * M}, "agent bot's max-ttl (40m)"),
        (
            {"targets": {"prod-db": TargetRequestPolicy(max_ttl=40 * M)}},
            "target prod-db's request_max_ttl (40m)",
        ),
    ],
)
def test_each_ttl_limit_names_itself(options: dict[str, object], named: str) -> None:
    message = decide_refused(args(ttl=50 * M), **options)
    assert message == f"--ttl 50m is longer than {named}"
    # at the limit is fine
    assert verdict(args(ttl=40 * M), **options).ttl == 40 * M  # type: ignore[arg-type]


def test_second_targets_limit_applies() -> None:
    policies = {"replica-db": TargetRequestPolicy(max_ttl=10 * M)}
    message = decide_refused(args("prod-db", "replica-db", ttl=20 * M), targets=policies)
    assert message == "--ttl 20m is longer than target replica-db's request_max_ttl (10m)"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 30 * M),
        ({"max_ttl": 20 * M}, 20 * M),
        ({"agent_max_ttl": 15 * M}, 15 * M),
        ({"targets": {"prod-db": TargetRequestPolicy(max_ttl=10 * M)}}, 10 * M),
        ({"agent_max_ttl": 2 * H}, 30 * M),
    ],
)
def test_default_ttl_is_capped_by_the_limits(
    options: dict[str, object], expected: timedelta
) -> None:
    assert verdict(args(), **options).ttl == expected  # type: ignore[arg-type]


def test_minimum_ttl() -> None:
    message = decide_refused(args(ttl=timedelta(seconds=30)))
    assert message == "--ttl 30s is shorter than the minimum (1m)"


def auto(**options: object) -> TargetRequestPolicy:
    return TargetRequestPolicy(auto=AutoApproval(**options))  # type: ignore[arg-type]


def test_auto_approval_with_no_conditions() -> None:
    result = verdict(args("replica-db"), targets={"replica-db": auto()})
    assert result == Verdict(ttl=30 * M, auto_rule="auto_approve")


def test_auto_approval_needs_a_rule_on_every_target() -> None:
    policies = {"replica-db": auto()}
    assert verdict(args("replica-db", "prod-db"), targets=policies).auto_rule is None
    both = {"replica-db": auto(), "prod-db": auto(max_ttl=H)}
    assert verdict(args("replica-db", "prod-db"), targets=both).auto_rule is not None


def test_auto_approval_fails_if_any_targets_rule_fails() -> None:
    policies = {"replica-db": auto(), "prod-db": auto(agents=("other",))}
    assert verdict(args("replica-db", "prod-db"), targets=policies).auto_rule is None


def test_auto_approval_agent_list() -> None:
    policies = {"replica-db": auto(agents=("bot", "helper"))}
    approved = verdict(args("replica-db"), targets=policies)
    assert approved.auto_rule == "auto_approve; agents bot,helper"
    assert verdict(args("replica-db"), targets=policies, agent="stranger").auto_rule is None


def test_auto_approval_max_ttl() -> None:
    policies = {"replica-db": auto(max_ttl=20 * M)}
    assert verdict(args("replica-db", ttl=20 * M), targets=policies).auto_rule == (
        "auto_approve; ttl <= 20m"
    )
    assert verdict(args("replica-db", ttl=21 * M), targets=policies).auto_rule is None
    # the default TTL (30m) counts when no --ttl is given
    no_ttl = verdict(args("replica-db"), targets=policies)
    assert no_ttl == Verdict(ttl=30 * M, auto_rule=None)


def test_auto_approval_does_not_lift_a_limit() -> None:
    policies = {"replica-db": auto()}
    message = decide_refused(args("replica-db", ttl=2 * H), targets=policies)
    assert "longer than the longest a request may ask for" in message


PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("now", "approved"),
    [
        # Winter: Paris is UTC+1.
        (datetime(2024, 1, 8, 7, 59, tzinfo=UTC), False),  # 08:59 Paris, Monday
        (datetime(2024, 1, 8, 8, 0, tzinfo=UTC), True),  # 09:00 Paris
        (datetime(2024, 1, 12, 16, 59, tzinfo=UTC), True),  # 17:59 Paris, Friday
        (datetime(2024, 1, 12, 17, 0, tzinfo=UTC), False),  # 18:00 Paris
        # Summer: UTC+2.
        (datetime(2024, 7, 1, 7, 0, tzinfo=UTC), True),  # 09:00 Paris, Monday
        (datetime(2024, 7, 1, 6, 59, tzinfo=UTC), False),
        # Sunday 23:30 UTC is already Monday in Paris, but 00:30: outside the hours.
        (datetime(2024, 1, 14, 23, 30, tzinfo=UTC), False),
        # Saturday noon.
        (datetime(2024, 1, 13, 11, 0, tzinfo=UTC), False),
        # An aware `now` in another zone means the same instant.
        (datetime(2024, 1, 8, 3, 0, tzinfo=timezone(timedelta(hours=-5))), True),  # 09:00 Paris
        (datetime(2024, 1, 8, 2, 59, tzinfo=timezone(timedelta(hours=-5))), False),
    ],
)
def test_auto_approval_hours_in_the_rules_time_zone(now: datetime, approved: bool) -> None:
    rule = auto(hours=parse_hours("Mon-Fri 09:00-18:00"), timezone=PARIS)
    result = verdict(args("replica-db"), targets={"replica-db": rule}, now=now)
    assert (result.auto_rule is not None) is approved
    if approved:
        assert result.auto_rule == "auto_approve; hours Mon-Fri 09:00-18:00 Europe/Paris"


def test_auto_approval_hours_without_a_zone_use_nows_own() -> None:
    rule = auto(hours=parse_hours("Mon-Fri 09:00-18:00"))
    tokyo = ZoneInfo("Asia/Tokyo")
    inside = datetime(2024, 1, 8, 9, 0, tzinfo=tokyo)
    outside = datetime(2024, 1, 8, 8, 59, tzinfo=tokyo)
    assert verdict(args("replica-db"), targets={"replica-db": rule}, now=inside).auto_rule
    assert verdict(args("replica-db"), targets={"replica-db": rule}, now=outside).auto_rule is None


def test_auto_approval_all_conditions_described() -> None:
    rule = auto(
        agents=("bot",),
        hours=parse_hours("Mon-Fri 09:00-18:00"),
        timezone=UTC,
        max_ttl=H,
    )
    result = verdict(args("replica-db"), targets={"replica-db": rule})
    assert result.auto_rule == (
        "auto_approve; agents bot; hours Mon-Fri 09:00-18:00 UTC; ttl <= 1h"
    )


def test_auto_approval_of_several_targets_describes_each_rule_once() -> None:
    same = auto(max_ttl=H)
    policies = {"replica-db": same, "prod-db": same, "prod-web": auto(agents=("bot",))}
    result = verdict(args("replica-db", "prod-db", "prod-web"), targets=policies)
    assert result.auto_rule == "auto_approve; agents bot; auto_approve; ttl <= 1h"


# -- request_line -------------------------------------------------------------------------


def test_request_line_on_a_non_standard_port() -> None:
    line = request_line("bastion.example.com", 2222, ["prod-db", "replica-db"], "hotfix-1422")
    assert line == (
        "ssh -p 2222 request@bastion.example.com -- --target prod-db,replica-db"
        ' --task hotfix-1422 --ttl 30m --reason "…"'
    )


def test_request_line_on_port_22_has_no_port() -> None:
    line = request_line("b.example", 22, ["prod-db"], "t-1")
    assert line.startswith("ssh request@b.example -- --target prod-db --task t-1")


def test_request_line_parses_back() -> None:
    line = request_line("b.example", 2222, ("prod-db", "replica-db"), "hotfix-1422")
    # The shell runs the line: it strips the quotes around the reason, then ssh sends
    # what follows the host, joined by spaces.
    sent = " ".join(shlex.split(line)[4:])
    assert parse_request_command(sent) == RequestArgs(
        targets=("prod-db", "replica-db"), task="hotfix-1422", ttl=30 * M, reason="…"
    )
