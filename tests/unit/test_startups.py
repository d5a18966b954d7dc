"""`startups`: sshd's MaxStartups, PerSourceMaxStartups and PerSourceNetBlockSize, decided."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.startups import (
    Admit,
    StartupLimits,
    StartupRefusal,
    decide_startup,
    parse_max_startups,
    parse_netblock,
    source_block,
)


def limits(
    full: int = 100, per_source: int = 10, begin: int | None = None, rate: int = 100
) -> StartupLimits:
    return StartupLimits(full if begin is None else begin, rate, full, per_source)


# -- the netblock a client counts under --------------------------------------------------


@pytest.mark.parametrize(
    ("address", "v4", "v6", "block"),
    [
        ("192.0.2.77", 32, 128, "192.0.2.77/32"),
        ("192.0.2.77", 24, 128, "192.0.2.0/24"),
        ("192.0.2.77", 16, 128, "192.0.0.0/16"),
        ("192.0.2.77", 0, 128, "0.0.0.0/0"),
        ("127.0.0.2", 32, 128, "127.0.0.2/32"),
        ("2001:db8:1:2:3:4:5:6", 32, 128, "2001:db8:1:2:3:4:5:6/128"),
        ("2001:db8:1:2:3:4:5:6", 32, 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 32, 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:3:4:5:6", 32, 0, "::/0"),
        ("::1", 32, 128, "::1/128"),
        # A dual-stack listener reports an IPv4 client as IPv4-mapped IPv6: it is IPv4.
        ("::ffff:192.0.2.77", 32, 128, "192.0.2.77/32"),
        ("::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"),
        ("::ffff:127.0.0.1", 32, 128, "127.0.0.1/32"),
        # A link-local address with its zone: the zone doesn't make a new source.
        ("fe80::1%eth0", 32, 64, "fe80::/64"),
        ("fe80::1%eth0", 32, 128, "fe80::1/128"),
        # Never a TCP peer, but never a crash either: its own block.
        ("unknown", 32, 128, "unknown"),
    ],
)
def test_source_block(address: str, v4: int, v6: int, block: str) -> None:
    assert source_block(address, v4, v6) == block


def test_addresses_of_one_netblock_share_it_and_others_do_not() -> None:
    same = {source_block(f"198.51.100.{n}", 24, 128) for n in range(256)}
    assert same == {"198.51.100.0/24"}
    assert source_block("198.51.101.1", 24, 128) != "198.51.100.0/24"
    v6 = {source_block(f"2001:db8:0:7::{n:x}", 32, 64) for n in range(1, 200)}
    assert v6 == {"2001:db8:0:7::/64"}
    assert source_block("2001:db8:0:8::1", 32, 64) == "2001:db8:0:8::/64"
    # The mapped and the plain form of one IPv4 client are one source.
    assert source_block("::ffff:198.51.100.9", 24, 64) == source_block("198.51.100.9", 24, 64)


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_an_ipv4_block_contains_its_address(address: object, prefix: int) -> None:
    block = ipaddress.ip_network(source_block(str(address), prefix, 128))
    assert block.prefixlen == prefix
    assert address in block
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert source_block(str(mapped), prefix, 128) == str(block)


@given(st.ip_addresses(v=6), st.integers(0, 128))
def test_an_ipv6_block_contains_its_address(address: object, prefix: int) -> None:
    assert isinstance(address, ipaddress.IPv6Address)
    block = source_block(str(address), 32, prefix)
    if address.ipv4_mapped is not None:
        assert block == f"{address.ipv4_mapped}/32"
        return
    network = ipaddress.ip_network(block)
    assert network.prefixlen == prefix
    assert address in network


# -- the decision ------------------------------------------------------------------------


def test_admitted_under_every_limit() -> None:
    assert decide_startup(limits(), 0, 0, "192.0.2.1/32", 0.0) == Admit("192.0.2.1/32")
    assert decide_startup(limits(), 99, 9, "192.0.2.1/32", 0.0) == Admit("192.0.2.1/32")


def test_a_source_at_its_limit_is_refused_while_others_are_admitted() -> None:
    refused = decide_startup(limits(per_source=10), 10, 10, "127.0.0.1/32", 0.99)
    assert refused == StartupRefusal(
        "server.per_source_max_startups", "10 connections from 127.0.0.1/32 are authenticating"
    )
    # The same gateway, another source with nothing under way: in.
    assert decide_startup(limits(per_source=10), 10, 0, "127.0.0.2/32", 0.99) == Admit(
        "127.0.0.2/32"
    )


def test_the_per_source_limit_is_checked_first() -> None:
    # Both limits reached: the source's flood is named as such.
    decision = decide_startup(limits(full=10, per_source=10), 10, 10, "192.0.2.1/32", 0.5)
    assert isinstance(decision, StartupRefusal)
    assert decision.setting == "server.per_source_max_startups"


def test_the_hard_cap_refuses_every_source() -> None:
    decision = decide_startup(limits(full=3, per_source=10), 3, 0, "192.0.2.1/32", 0.99)
    assert decision == StartupRefusal("server.max_startups", "3 connections are authenticating")
    # After a reload to a lower limit, more than `full` may be under way: still refused.
    assert isinstance(decide_startup(limits(full=3), 7, 0, "b", 0.99), StartupRefusal)


def test_a_limit_lowered_below_what_a_source_has_refuses_it() -> None:
    assert isinstance(decide_startup(limits(per_source=2), 5, 5, "b", 0.99), StartupRefusal)


def test_random_early_drop_follows_sshd() -> None:
    # 10:30:60: below 10 never; at 10, 30%; at 35, 30 + 70*25/50 = 65%; at 60, all.
    early = limits(begin=10, rate=30, full=60, per_source=1000)

    def refused_share(authenticating: int) -> int:
        return sum(
            isinstance(decide_startup(early, authenticating, 0, "b", r / 100), StartupRefusal)
            for r in range(100)
        )

    assert refused_share(0) == 0
    assert refused_share(9) == 0
    assert refused_share(10) == 30
    assert refused_share(35) == 65
    assert refused_share(59) == 98  # 30 + 70*49//50
    assert refused_share(60) == 100
    drop = decide_startup(early, 10, 0, "b", 0.0)
    assert drop == StartupRefusal(
        "server.max_startups", "10 connections are authenticating (random early drop)"
    )
    assert decide_startup(early, 10, 0, "b", 0.30) == Admit("b")


def test_rate_100_drops_everything_from_start() -> None:
    hard_from_begin = limits(begin=5, rate=100, full=50, per_source=1000)
    assert isinstance(decide_startup(hard_from_begin, 5, 0, "b", 0.999), StartupRefusal)
    assert decide_startup(hard_from_begin, 4, 0, "b", 0.0) == Admit("b")


@given(
    st.integers(1, 200),
    st.integers(1, 100),
    st.integers(1, 50),
    st.integers(0, 300),
    st.integers(0, 300),
    st.floats(0, 1, exclude_max=True),
)
def test_decision_properties(
    full: int, rate: int, per_source: int, authenticating: int, in_block: int, draw: float
) -> None:
    chosen = StartupLimits(max(1, full // 2), rate, full, per_source)
    decision = decide_startup(chosen, authenticating, in_block, "b", draw)
    if in_block >= per_source or authenticating >= full:
        assert isinstance(decision, StartupRefusal)
    if authenticating < chosen.begin and in_block < per_source:
        assert decision == Admit("b")


# -- the settings' text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (100, (100, 100, 100)),
        (1, (1, 100, 1)),
        ("100", (100, 100, 100)),
        ("10:30:100", (10, 30, 100)),
        ("10:100:10", (10, 100, 10)),
        ("1:1:100000", (1, 1, 100_000)),
    ],
)
def test_parse_max_startups(value: int | str, parsed: tuple[int, int, int]) -> None:
    assert parse_max_startups(value) == parsed


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0, "between 1 and 100000"),
        (100_001, "between 1 and 100000"),
        ("0", "between 1 and 100000"),
        (-1, "start:rate:full"),
        ("ten", "start:rate:full"),
        ("10:30", "start:rate:full"),
        ("10:30:100:5", "start:rate:full"),
        ("10:-30:100", "start:rate:full"),
        ("", "start:rate:full"),
        ("0:30:100", "start must be between 1 and full (100)"),
        ("101:30:100", "start must be between 1 and full (100)"),
        ("10:0:100", "rate must be a percentage"),
        ("10:101:100", "rate must be a percentage"),
        (True, "start:rate:full"),
    ],
)
def test_bad_max_startups(value: int | str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_max_startups(value)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("32:128", (32, 128)), ("24:64", (24, 64)), ("24", (24, 128)), ("0:0", (0, 0))],
)
def test_parse_netblock(value: str, parsed: tuple[int, int]) -> None:
    assert parse_netblock(value) == parsed


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("33", "IPv4 prefix length must be between 0 and 32"),
        ("32:129", "IPv6 prefix length must be between 0 and 128"),
        ("", "IPV4_BITS:IPV6_BITS"),
        ("24:", "IPV4_BITS:IPV6_BITS"),
        (":64", "IPV4_BITS:IPV6_BITS"),
        ("/24", "IPV4_BITS:IPV6_BITS"),
        ("24:64:1", "IPV4_BITS:IPV6_BITS"),
        ("-1:64", "IPV4_BITS:IPV6_BITS"),
    ],
)
def test_bad_netblock(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_netblock(value)
