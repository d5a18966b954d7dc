"""Pure decisions about grants: names, TTLs, what a certificate permits.

No I/O and no clock of its own: callers pass `now` and the configuration. Input that
breaks a rule raises `InvalidInput` with a one-line reason the CLI prints as is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bastion.config import GrantsConfig
from bastion.errors import InvalidInput
from bastion.models import Target, TargetKind
from bastion.timespec import format_duration

# Login names on the gateway: the target name is the SSH user name.
RESERVED_TARGET_NAMES = frozenset({"request", "root", "bastion"})

_TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#+-]{0,127}")


def check_target_name(name: str) -> str:
    if not _TARGET_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid target name {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit (it is the SSH login name)"
        )
    if name in RESERVED_TARGET_NAMES:
        raise InvalidInput(f"invalid target name {name!r}: the name is reserved")
    return name


def check_agent_name(name: str) -> str:
    if not _AGENT_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid agent name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return name


def check_task_name(name: str) -> str:
    if not _TASK_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid task {name!r}: use 1-128 letters, digits or . _ : / # + -, no spaces"
        )
    return name


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise InvalidInput(f"invalid port {port}: must be 1-65535")
    return port


def check_source_addresses(value: str) -> tuple[str, ...]:
    """`10.0.0.0/8,192.0.2.7` -> normalized CIDRs, as sshd's `source-address` expects."""
    items = [item.strip() for item in value.split(",")]
    if not items or any(not item for item in items):
        raise InvalidInput(f"invalid --source-address {value!r}: give CIDR[,CIDR...]")
    result = []
    for item in items:
        try:
            result.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise InvalidInput(
                f"invalid --source-address {item!r}: not an IP address or CIDR block"
            ) from None
    return tuple(result)


@dataclass(frozen=True)
class Window:
    valid_after: datetime
    valid_before: datetime


def grant_window(now: datetime, ttl: timedelta | None, config: GrantsConfig) -> Window:
    """The validity window of a new grant: `now - skew` until `now + ttl`."""
    ttl = config.default_ttl if ttl is None else ttl
    if ttl < config.min_ttl:
        raise InvalidInput(
            f"TTL {format_duration(ttl)} is below the minimum of {format_duration(config.min_ttl)}"
        )
    if ttl > config.max_ttl:
        raise InvalidInput(
            f"TTL {format_duration(ttl)} is over the maximum of {format_duration(config.max_ttl)}:"
            " grants are just-in-time; issue a new grant when this one ends"
            " (the maximum is grants.max_ttl in bastion.toml)"
        )
    return Window(valid_after=now - config.clock_skew, valid_before=now + ttl)


@dataclass(frozen=True)
class Permissions:
    permit_pty: bool
    permit_port_forwarding: bool


def certificate_permissions(
    targets: Iterable[Target], *, no_pty: bool, no_port_forwarding: bool
) -> Permissions:
    """Only what the grant needs: a PTY unless refused; forwarding only for databases."""
    wants_forwarding = any(t.kind is TargetKind.POSTGRES for t in targets)
    return Permissions(
        permit_pty=not no_pty,
        permit_port_forwarding=wants_forwarding and not no_port_forwarding,
    )


def key_id(grant_id: str, agent: str, task: str) -> str:
    return f"grant={grant_id} agent={agent} task={task}"
