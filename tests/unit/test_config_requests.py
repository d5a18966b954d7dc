"""bastion.toml: the [requests] section and the per-target request keys."""

from __future__ import annotations

import re
from datetime import UTC, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bastion.config import (
    DEFAULT_CONFIG_TEXT,
    ConfigError,
    RequestsConfig,
    TargetPolicy,
    load_config,
)
from bastion.requestpolicy import AutoApproval, Hours, TargetRequestPolicy, parse_hours

M = timedelta(minutes=1)


def write_config(home: Path, text: str) -> Path:
    path = home / "bastion.toml"
    path.write_text(text)
    return path


def config_error(home: Path, text: str) -> str:
    write_config(home, text)
    with pytest.raises(ConfigError) as caught:
        load_config(home)
    message = str(caught.value)
    assert "\n" not in message
    assert str(home / "bastion.toml") in message
    return message


# -- defaults ------------------------------------------------------------------------


def test_requests_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path).requests == RequestsConfig(
        timeout=10 * M,
        default_ttl=30 * M,
        max_ttl=60 * M,
        webhook="",
        command=(),
        hook_timeout=timedelta(seconds=5),
    )


def test_target_request_defaults(tmp_path: Path) -> None:
    policy = TargetPolicy()
    assert policy.requestable is True
    assert policy.request_max_ttl is None
    assert policy.auto_approve is False
    assert policy.auto_approve_agents == ()
    assert policy.auto_approve_hours == ""
    assert policy.auto_approve_timezone == "UTC"
    assert policy.auto_approve_max_ttl is None
    # A target without a table: requestable, no limit of its own, no auto-approval.
    assert load_config(tmp_path).request_policy("anything") == TargetRequestPolicy(
        requestable=True, max_ttl=None, auto=None
    )


def test_an_empty_requests_table_is_the_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "[requests]\n[targets.x]\n")
    config = load_config(tmp_path)
    assert config.requests == RequestsConfig()
    assert config.targets == {"x": TargetPolicy()}


# -- values ----------------------------------------------------------------------------


def test_requests_values_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
[requests]
timeout = "2m"
default_ttl = "15m"
max_ttl = "2h"
webhook = "https://chat.example.com/hooks/bastion"
command = ["/usr/local/bin/notify", "--channel", "ops"]
hook_timeout = "1s"
""",
    )
    assert load_config(tmp_path).requests == RequestsConfig(
        timeout=2 * M,
        default_ttl=15 * M,
        max_ttl=120 * M,
        webhook="https://chat.example.com/hooks/bastion",
        command=("/usr/local/bin/notify", "--channel", "ops"),
        hook_timeout=timedelta(seconds=1),
    )


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://h.example/x?y=1"])
def test_http_and_https_webhooks(tmp_path: Path, url: str) -> None:
    write_config(tmp_path, f'[requests]\nwebhook = "{url}"\n')
    assert load_config(tmp_path).requests.webhook == url


def test_default_ttl_may_equal_max_ttl(tmp_path: Path) -> None:
    write_config(tmp_path, '[requests]\ndefault_ttl = "1h"\nmax_ttl = "1h"\n')
    assert load_config(tmp_path).requests.default_ttl == timedelta(hours=1)


def test_target_request_values_are_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
[targets.replica-db]
requestable = true
request_max_ttl = "2h"
auto_approve = true
auto_approve_agents = ["bot", "helper"]
auto_approve_hours = "Mon-Fri 09:00-18:00"
auto_approve_timezone = "Europe/Paris"
auto_approve_max_ttl = "30m"

[targets.prod-db]
requestable = false
""",
    )
    config = load_config(tmp_path)
    replica = config.target_policy("replica-db")
    assert replica == TargetPolicy(
        requestable=True,
        request_max_ttl=timedelta(hours=2),
        auto_approve=True,
        auto_approve_agents=("bot", "helper"),
        auto_approve_hours="Mon-Fri 09:00-18:00",
        auto_approve_timezone="Europe/Paris",
        auto_approve_max_ttl=30 * M,
    )
    assert config.request_policy("replica-db") == TargetRequestPolicy(
        requestable=True,
        max_ttl=timedelta(hours=2),
        auto=AutoApproval(
            agents=("bot", "helper"),
            hours=parse_hours("Mon-Fri 09:00-18:00"),
            timezone=ZoneInfo("Europe/Paris"),
            max_ttl=30 * M,
        ),
    )
    assert config.request_policy("prod-db") == TargetRequestPolicy(requestable=False)


def test_auto_approval_off_means_no_rule(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[targets.x]\nauto_approve = false\nauto_approve_hours = "Mon 09:00-10:00"\n'
        'auto_approve_agents = ["bot"]\n',
    )
    assert load_config(tmp_path).request_policy("x").auto is None


def test_auto_approval_without_conditions(tmp_path: Path) -> None:
    write_config(tmp_path, "[targets.x]\nauto_approve = true\n")
    assert load_config(tmp_path).request_policy("x").auto == AutoApproval(
        agents=(), hours=None, timezone=UTC, max_ttl=None
    )


@pytest.mark.parametrize("zone", ["UTC", "utc"])
def test_utc_spelled_either_way(tmp_path: Path, zone: str) -> None:
    write_config(
        tmp_path,
        f'[targets.x]\nauto_approve = true\nauto_approve_timezone = "{zone}"\n'
        'auto_approve_hours = "Sat-Sun 00:00-24:00"\n',
    )
    rule = load_config(tmp_path).request_policy("x").auto
    assert rule is not None
    assert rule.timezone is UTC
    assert rule.hours == Hours(
        days=frozenset({5, 6}), start=time(0), end=None, text="Sat-Sun 00:00-24:00"
    )


def test_commented_examples_of_the_default_file_are_valid(tmp_path: Path) -> None:
    # Uncommenting the request examples `bastion init` writes gives a valid config.
    section = DEFAULT_CONFIG_TEXT[DEFAULT_CONFIG_TEXT.index("[requests]") :]
    example = re.compile(r"^# (\[targets\.[a-z-]+\]|[a-z_]+ = .*)$")
    lines = [example.sub(r"\1", line) for line in section.splitlines()]
    assert sum(a != b for a, b in zip(lines, section.splitlines(), strict=True)) >= 8
    write_config(tmp_path, "\n".join(lines) + "\n")
    config = load_config(tmp_path)
    assert config.requests.webhook.startswith("https://")
    assert config.requests.command == ("/usr/local/bin/notify-chat",)
    rule = config.request_policy("replica-db").auto
    assert rule is not None
    assert rule.timezone == ZoneInfo("Europe/Paris")
    assert rule.hours == parse_hours("Mon-Fri 09:00-18:00")


# -- errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[requests]\nwebhooks = 'https://x'\n", "requests.webhooks"),
        ("[requests]\nauto_approve = true\n", "requests.auto_approve"),
        ("[requests]\nmin_ttl = '1m'\n", "requests.min_ttl"),
        ("[targets.x]\nauto_approve_hour = 'Mon 09:00-10:00'\n", "targets.x.auto_approve_hour"),
        ("[targets.x]\nrequest_ttl = '1h'\n", "targets.x.request_ttl"),
        ("[targets.x]\nwebhook = 'https://x'\n", "targets.x.webhook"),
        ("[request]\ntimeout = '1m'\n", "request"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    message = config_error(tmp_path, text)
    assert f"unknown section or key '{key}'" in message or f"unknown key '{key}'" in message


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[requests]\ntimeout = 60\n", "requests.timeout", 'must be a duration string like "30m"'),
        ("[requests]\ntimeout = 'soon'\n", "requests.timeout", "invalid duration 'soon'"),
        ("[requests]\ndefault_ttl = '0s'\n", "requests.default_ttl", "must be longer than zero"),
        ("[requests]\nmax_ttl = true\n", "requests.max_ttl", "must be a duration string"),
        ("[requests]\nhook_timeout = '1.5s'\n", "requests.hook_timeout", "invalid duration"),
        ("[requests]\nwebhook = 8080\n", "requests.webhook", "must be of type str, got int"),
        ("[requests]\ncommand = 'notify'\n", "requests.command", "must be a list of names"),
        ("[requests]\ncommand = ['notify', 1]\n", "requests.command", "must be a list of names"),
        ("[requests]\ncommand = ['notify', '']\n", "requests.command", "must be a list of names"),
        ("requests = 'x'\n", "requests", "must be a table ([requests])"),
        ("[targets.x]\nrequestable = 'yes'\n", "targets.x.requestable", "type bool, got str"),
        ("[targets.x]\nrequestable = 1\n", "targets.x.requestable", "type bool, got int"),
        ("[targets.x]\nauto_approve = 1\n", "targets.x.auto_approve", "type bool, got int"),
        (
            "[targets.x]\nrequest_max_ttl = 3600\n",
            "targets.x.request_max_ttl",
            'must be a duration string like "30m"',
        ),
        (
            "[targets.x]\nrequest_max_ttl = 'forever'\n",
            "targets.x.request_max_ttl",
            "invalid duration 'forever'",
        ),
        (
            "[targets.x]\nauto_approve_max_ttl = '0m'\n",
            "targets.x.auto_approve_max_ttl",
            "must be longer than zero",
        ),
        (
            "[targets.x]\nauto_approve_agents = 'bot'\n",
            "targets.x.auto_approve_agents",
            "must be a list of names",
        ),
        (
            "[targets.x]\nauto_approve_agents = ['bot', 7]\n",
            "targets.x.auto_approve_agents",
            "must be a list of names",
        ),
        (
            "[targets.x]\nauto_approve_hours = ['Mon 09:00-10:00']\n",
            "targets.x.auto_approve_hours",
            "must be of type str, got list",
        ),
        (
            "[targets.x]\nauto_approve_timezone = 1\n",
            "targets.x.auto_approve_timezone",
            "must be of type str, got int",
        ),
    ],
)
def test_ill_typed_value_names_key_and_file(tmp_path: Path, text: str, key: str, why: str) -> None:
    message = config_error(tmp_path, text)
    assert f"'{key}' in {tmp_path / 'bastion.toml'}" in message
    assert why in message


@pytest.mark.parametrize(
    "url", ["ftp://h.example/x", "file:///etc/passwd", "h.example/hook", "HTTP//x", " https://x"]
)
def test_webhook_must_be_http(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, f'[requests]\nwebhook = "{url}"\n')
    assert message == (
        f"'requests.webhook' in {tmp_path / 'bastion.toml'} must be an http:// or https:// URL"
    )


@pytest.mark.parametrize(
    "requests",
    ['default_ttl = "2h"', 'max_ttl = "10m"', 'default_ttl = "31m"\nmax_ttl = "30m"'],
)
def test_default_ttl_over_max_ttl(tmp_path: Path, requests: str) -> None:
    message = config_error(tmp_path, f"[requests]\n{requests}\n")
    assert message == f"'requests' in {tmp_path / 'bastion.toml'}: need default_ttl <= max_ttl"


@pytest.mark.parametrize("zone", ["Mars/Base", "Europe/Pariss", "", "../etc/passwd", "UTC+2"])
def test_bad_timezone(tmp_path: Path, zone: str) -> None:
    message = config_error(
        tmp_path, f'[targets.replica-db]\nauto_approve = true\nauto_approve_timezone = "{zone}"\n'
    )
    assert message.startswith(
        f"'targets.replica-db.auto_approve_timezone' in {tmp_path / 'bastion.toml'}: "
    )
    assert f"unknown time zone {zone!r}" in message


@pytest.mark.parametrize(
    ("hours", "why"),
    [
        ("Mon-Fri 18:00-09:00", "the end must be after the start"),
        ("Mon-Fri 09:00-25:00", "25:00 is not a time of day"),
        ("Mon-Fry 09:00-18:00", "unknown day"),
        ("business hours", 'write like "Mon-Fri 09:00-18:00"'),
    ],
)
def test_bad_hours(tmp_path: Path, hours: str, why: str) -> None:
    message = config_error(
        tmp_path, f'[targets.replica-db]\nauto_approve = true\nauto_approve_hours = "{hours}"\n'
    )
    assert message.startswith(
        f"'targets.replica-db.auto_approve_hours' in {tmp_path / 'bastion.toml'}: "
    )
    assert f"invalid hours {hours!r}" in message
    assert why in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("auto_approve_timezone", "Mars/Base"), ("auto_approve_hours", "Mon-Fri 18:00-09:00")],
)
def test_bad_auto_approval_values_are_refused_even_while_auto_approval_is_off(
    tmp_path: Path, key: str, value: str
) -> None:
    # Validated at load, like every other value: a typo must not wait, silently, for the
    # day someone sets auto_approve = true (and the gateway then refuses to start).
    message = config_error(tmp_path, f'[targets.x]\nauto_approve = false\n{key} = "{value}"\n')
    assert value in message
