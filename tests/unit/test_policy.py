"""Pure grant policy: names, TTL bounds, source addresses, what a certificate permits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bastion.config import GrantsConfig
from bastion.errors import InvalidInput
from bastion.models import Target, TargetKind
from bastion.policy import (
    RESERVED_TARGET_NAMES,
    certificate_permissions,
    check_agent_name,
    check_port,
    check_source_addresses,
    check_target_name,
    check_task_name,
    grant_window,
    key_id,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def target(name: str, kind: TargetKind) -> Target:
    return Target(
        name=name,
        kind=kind,
        host="127.0.0.1",
        port=22 if kind is TargetKind.SSH else 5432,
        user="deploy",
        created_at=NOW,
        created_by="test",
    )


WEB = target("prod-web", TargetKind.SSH)
DB = target("prod-db", TargetKind.POSTGRES)


# -- names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prod-web", "a", "db1", "web.eu_2", "9lives", "x" * 63])
def test_target_names_accepted(name: str) -> None:
    assert check_target_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Prod", "-web", ".web", "_web", "web 1", "web/1", "wéb", "x" * 64, "a@b"]
)
def test_target_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_target_name(name)
    assert str(caught.value).startswith(f"invalid target name {name!r}: use 1-63 lowercase")
    assert "it is the SSH login name" in str(caught.value)


@pytest.mark.parametrize("name", sorted(RESERVED_TARGET_NAMES))
def test_reserved_target_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_target_name(name)
    assert str(caught.value) == f"invalid target name {name!r}: the name is reserved"


def test_reserved_names_cover_the_gateway_logins() -> None:
    assert {"root", "request", "bastion"} <= RESERVED_TARGET_NAMES


@pytest.mark.parametrize("name", ["chatgpt-agent", "A", "ci@build.example", "x" * 64, "a.b_c"])
def test_agent_names_accepted(name: str) -> None:
    assert check_agent_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "-agent", "@a", "a b", "a\nb", "x" * 65, "a=b"])
def test_agent_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_agent_name(name)
    assert str(caught.value) == (
        f"invalid agent name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
    )


@pytest.mark.parametrize("name", ["hotfix-1422", "JIRA:OPS-1", "gh/org#12", "t+1", "x" * 128])
def test_task_names_accepted(name: str) -> None:
    assert check_task_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "two words", "-x", "x" * 129, "a=b", "t\tab"])
def test_task_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_task_name(name)
    assert str(caught.value) == (
        f"invalid task {name!r}: use 1-128 letters, digits or . _ : / # + -, no spaces"
    )


def test_key_id_carries_grant_agent_and_task() -> None:
    assert key_id("g-7f3a", "chatgpt-agent", "hotfix-1422") == (
        "grant=g-7f3a agent=chatgpt-agent task=hotfix-1422"
    )


@pytest.mark.parametrize("port", [1, 22, 65535])
def test_ports_accepted(port: int) -> None:
    assert check_port(port) == port


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_ports_refused(port: int) -> None:
    with pytest.raises(InvalidInput, match=rf"^invalid port {port}: must be 1-65535$"):
        check_port(port)


# -- TTL -----------------------------------------------------------------------


def test_window_is_now_minus_skew_to_now_plus_ttl() -> None:
    window = grant_window(NOW, timedelta(minutes=45), GrantsConfig())
    assert window.valid_after == NOW - timedelta(seconds=60)
    assert window.valid_before == NOW + timedelta(minutes=45)


def test_window_defaults_to_default_ttl() -> None:
    config = GrantsConfig(default_ttl=timedelta(minutes=20), clock_skew=timedelta(seconds=5))
    window = grant_window(NOW, None, config)
    assert window.valid_after == NOW - timedelta(seconds=5)
    assert window.valid_before == NOW + timedelta(minutes=20)


@pytest.mark.parametrize("ttl", [timedelta(minutes=1), timedelta(hours=8)])
def test_ttl_bounds_are_inclusive(ttl: timedelta) -> None:
    assert grant_window(NOW, ttl, GrantsConfig()).valid_before == NOW + ttl


def test_ttl_over_maximum_says_why() -> None:
    with pytest.raises(InvalidInput) as caught:
        grant_window(NOW, timedelta(days=30), GrantsConfig())
    assert str(caught.value) == (
        "TTL 30d is over the maximum of 8h: grants are just-in-time; issue a new grant"
        " when this one ends (the maximum is grants.max_ttl in bastion.toml)"
    )


def test_ttl_one_second_over_maximum_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^TTL 8h1s is over the maximum of 8h:"):
        grant_window(NOW, timedelta(hours=8, seconds=1), GrantsConfig())


def test_ttl_below_minimum() -> None:
    with pytest.raises(InvalidInput) as caught:
        grant_window(NOW, timedelta(seconds=59), GrantsConfig())
    assert str(caught.value) == "TTL 59s is below the minimum of 1m"


def test_configured_maximum_is_used() -> None:
    config = GrantsConfig(max_ttl=timedelta(hours=12))
    assert grant_window(NOW, timedelta(hours=12), config).valid_before == NOW + timedelta(hours=12)
    with pytest.raises(InvalidInput, match=r"^TTL 13h is over the maximum of 12h:"):
        grant_window(NOW, timedelta(hours=13), config)


# -- source addresses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/8", ("10.0.0.0/8",)),
        ("10.1.2.3/8", ("10.0.0.0/8",)),  # host bits dropped, as sshd compares networks
        ("192.0.2.7", ("192.0.2.7/32",)),
        (" 10.0.0.0/8 , 192.0.2.7 ", ("10.0.0.0/8", "192.0.2.7/32")),
        ("2001:db8::1/64", ("2001:db8::/64",)),
        ("::1", ("::1/128",)),
    ],
)
def test_source_addresses_normalized(value: str, expected: tuple[str, ...]) -> None:
    assert check_source_addresses(value) == expected


@pytest.mark.parametrize("value", ["", " ", ",", "10.0.0.0/8,", "10.0.0.0/8,,192.0.2.1"])
def test_empty_source_address_items_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_source_addresses(value)
    assert str(caught.value) == f"invalid --source-address {value!r}: give CIDR[,CIDR...]"


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("256.0.0.1", "256.0.0.1"),
        ("example.com", "example.com"),
        ("10.0.0.0/8,localhost", "localhost"),
        ("10.0.0.0/8;rm -rf /", "10.0.0.0/8;rm -rf /"),
        ("*", "*"),
    ],
)
def test_source_addresses_refused(value: str, bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_source_addresses(value)
    assert str(caught.value) == (
        f"invalid --source-address {bad!r}: not an IP address or CIDR block"
    )


# -- certificate permissions ---------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "no_pty", "no_port_forwarding", "pty", "forwarding"),
    [
        ([WEB], False, False, True, False),
        ([WEB], True, False, False, False),
        ([WEB], False, True, True, False),
        ([DB], False, False, True, True),
        ([DB], False, True, True, False),
        ([DB], True, False, False, True),
        ([WEB, DB], False, False, True, True),
        ([WEB, DB], True, True, False, False),
    ],
)
def test_certificate_permissions(
    targets: list[Target], no_pty: bool, no_port_forwarding: bool, pty: bool, forwarding: bool
) -> None:
    perms = certificate_permissions(targets, no_pty=no_pty, no_port_forwarding=no_port_forwarding)
    assert (perms.permit_pty, perms.permit_port_forwarding) == (pty, forwarding)


def test_certificate_permissions_accept_a_generator() -> None:
    perms = certificate_permissions((t for t in [WEB, DB]), no_pty=False, no_port_forwarding=False)
    assert perms.permit_port_forwarding
