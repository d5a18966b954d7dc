"""May a new TCP connection start an SSH login? sshd's MaxStartups, per source too.

Pure: given the limits, how many connections are authenticating now (in all and from
the new connection's source netblock) and one random draw, `decide_startup` says
`Admit` or `StartupRefusal`. The gateway counts, draws, and closes a refused connection
before its SSH banner; this module only decides (and parses the settings' text, so that
the config loader and the decision read them alike).

The rules are sshd's (sshd_config(5)):

- `PerSourceMaxStartups` (`server.per_source_max_startups`): a source whose netblock
  already has that many connections authenticating is refused. Checked first, so one
  source's flood is refused as such and doesn't use up the random drop below.
- `PerSourceNetBlockSize` (`server.per_source_netblock`, "32:128"): the prefix lengths
  that group IPv4 and IPv6 sources into one netblock. An IPv4-mapped IPv6 address
  (`::ffff:192.0.2.1`, what a dual-stack listener reports for an IPv4 client) is an IPv4
  source.
- `MaxStartups start:rate:full` (`server.max_startups`): from `start` connections
  authenticating, a new one is refused with probability `rate`% rising linearly to 100%
  at `full`; a plain number N is a hard cap (`N:100:N`).

Not here: counting, randomness, logging (the transport's), and what a refusal looks like
to the client (the connection is closed; nothing is written to it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_LIMIT = 100_000


@dataclass(frozen=True)
class StartupLimits:
    begin: int  # random early drop starts with this many authenticating
    rate: int  # percent refused at `begin`
    full: int  # every new connection refused with this many authenticating
    per_source: int  # authenticating at once from one netblock
    ipv4_prefix: int = 32
    ipv6_prefix: int = 128


@dataclass(frozen=True)
class Admit:
    block: str  # the source's netblock ("192.0.2.7/32"), to count the connection under


@dataclass(frozen=True)
class StartupRefusal:
    setting: str  # "server.per_source_max_startups" or "server.max_startups"
    reason: str


def parse_max_startups(value: int | str) -> tuple[int, int, int]:
    """`server.max_startups`: N (a hard cap) or "start:rate:full" -> (start, rate, full).

    Raises ValueError with a message that fits after the setting's name.
    """
    if isinstance(value, bool):
        raise ValueError('must be a number or "start:rate:full"')
    parts = str(value).split(":")
    if len(parts) not in (1, 3) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f'must be a number or "start:rate:full", got {value!r}')
    numbers = [int(p) for p in parts]
    begin, rate, full = numbers if len(numbers) == 3 else (numbers[0], 100, numbers[0])
    if not 1 <= full <= MAX_LIMIT:
        raise ValueError(f"must be between 1 and {MAX_LIMIT}")
    if not 1 <= begin <= full:
        raise ValueError(f"start must be between 1 and full ({full}), got {begin}")
    if not 1 <= rate <= 100:
        raise ValueError(f"rate must be a percentage between 1 and 100, got {rate}")
    return begin, rate, full


def parse_netblock(value: str) -> tuple[int, int]:
    """`server.per_source_netblock`: "V4" or "V4:V6" prefix lengths -> (v4, v6).

    As sshd's PerSourceNetBlockSize: the IPv6 length is 128 when left out.
    """
    v4_text, sep, v6_text = value.partition(":")
    if not v4_text.strip().isdigit() or (sep and not v6_text.strip().isdigit()):
        raise ValueError(f'must be "IPV4_BITS:IPV6_BITS" like "32:128", got {value!r}')
    v4, v6 = int(v4_text), int(v6_text) if sep else 128
    if not 0 <= v4 <= 32:
        raise ValueError(f"the IPv4 prefix length must be between 0 and 32, got {v4}")
    if not 0 <= v6 <= 128:
        raise ValueError(f"the IPv6 prefix length must be between 0 and 128, got {v6}")
    return v4, v6


def source_block(address: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The netblock a client address counts under, as "network/prefix".

    An IPv4-mapped IPv6 address counts as the IPv4 address; an IPv6 zone (`%eth0`) is
    dropped. Something that is no IP address (never the case for a TCP peer) is its own
    block, named as given.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            host = int(ip) >> (128 - ipv6_prefix) << (128 - ipv6_prefix)
            return str(ipaddress.IPv6Network((host, ipv6_prefix)))
    host = int(ip) >> (32 - ipv4_prefix) << (32 - ipv4_prefix)
    return str(ipaddress.IPv4Network((host, ipv4_prefix)))


def decide_startup(
    limits: StartupLimits, authenticating: int, in_block: int, block: str, draw: float
) -> Admit | StartupRefusal:
    """One new connection from netblock `block`, with `authenticating` connections not yet
    logged in of which `in_block` are from that block. `draw` is uniform in [0, 1)."""
    if in_block >= limits.per_source:
        return StartupRefusal(
            "server.per_source_max_startups",
            f"{in_block} connections from {block} are authenticating",
        )
    if authenticating >= limits.full:
        return StartupRefusal(
            "server.max_startups", f"{authenticating} connections are authenticating"
        )
    # Below `full` (so `begin < full` here): sshd's random early drop from `begin` on.
    if authenticating >= limits.begin and _drops(limits, authenticating, draw):
        return StartupRefusal(
            "server.max_startups",
            f"{authenticating} connections are authenticating (random early drop)",
        )
    return Admit(block)


def _drops(limits: StartupLimits, authenticating: int, draw: float) -> bool:
    # sshd's should_drop_connection(): p% rises from `rate` at `begin` to 100 at `full`,
    # in integer arithmetic; refused when a uniform r in 0..99 is below p.
    p = 100 - limits.rate
    p *= authenticating - limits.begin
    p //= limits.full - limits.begin
    p += limits.rate
    return int(draw * 100) < p
