"""Pure decisions at the gateway: may this certificate log in, open this channel, forward here?

Policy decides, transport enforces. Every function takes the facts (the presented
certificate, the grant and target from the store, `now`) and returns a value:
`Permit` or `Denial` with a reason. Nothing here raises for a refusal, reads a clock
or touches the network. `decide_forward_count` decides on one more forward given how many
are open, which the transport counts. `recheck_channel` decides again, after bastion.toml
was reloaded, whether a channel already open would still be allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bastion.cmdpolicy import CommandRule, NeedsApproval, classify_command
from bastion.models import (
    Grant,
    GrantState,
    PresentedCertificate,
    SessionKind,
    Target,
    TargetKind,
)

_KEY_ID_GRANT = re.compile(r"(?:^|\s)grant=(g-[0-9a-f]+)(?:\s|$)")


@dataclass(frozen=True)
class Denial:
    reason: str


@dataclass(frozen=True)
class LoginPermit:
    grant: Grant
    target: Target
    deadline: datetime  # the earlier of the certificate's and the grant's end


def grant_id_from_key_id(key_id: str) -> str | None:
    match = _KEY_ID_GRANT.search(key_id)
    return match.group(1) if match else None


def decide_login(
    cert: PresentedCertificate,
    username: str,
    grant: Grant | None,
    target: Target | None,
    now: datetime,
) -> LoginPermit | Denial:
    """What sshd checks, and what it can't: that this is the certificate of a live grant."""
    if not cert.principals:
        return Denial("certificate has no principals")
    if username not in cert.principals:
        return Denial(f"login {username!r} is not a principal of the certificate")
    if now < cert.valid_after:
        return Denial("certificate is not yet valid")
    if now >= cert.valid_before:
        return Denial("certificate has expired")
    if grant is None:
        return Denial(f"no grant matches the certificate's key id {cert.key_id!r}")
    if grant.serial != cert.serial or grant.key_id != cert.key_id:
        return Denial(f"certificate serial/key id do not match grant {grant.id}")
    if grant.key_fingerprint != cert.key_fingerprint:
        return Denial(f"certificate key is not the key grant {grant.id} was issued for")
    state = grant.state(now)
    if state is not GrantState.ACTIVE:
        return Denial(f"grant {grant.id} is {state.value}")
    if username not in grant.targets:
        return Denial(f"grant {grant.id} does not cover target {username!r}")
    if target is None:
        return Denial(f"target {username!r} no longer exists")
    return LoginPermit(
        grant=grant, target=target, deadline=min(cert.valid_before, grant.valid_before)
    )


def decide_session(target: Target, kind: str) -> Denial | None:
    """Shells, commands and subsystems run on SSH targets only."""
    if target.kind is not TargetKind.SSH:
        return Denial(
            f"{target.name} is a {target.kind.value} target: open a tunnel with"
            f" -N -L PORT:{target.name}:{target.port} instead of a {kind}"
        )
    return None


def decide_forward(
    grant: Grant,
    permits_forwarding: bool,
    dest_host: str,
    lookup: dict[str, Target],
    raw_forwarding: Callable[[str], bool] = lambda target: False,
) -> Target | Denial:
    """A `-L` (or `-W`, `-J`) destination must be a granted target's name; the port is
    not used for routing. A PostgreSQL target gets the protocol-aware relay. An SSH
    target gets raw bytes to its port, its sshd, only where `raw_forwarding(name)`: else
    the agent could open a shell there that the bastion neither records nor gates."""
    if not permits_forwarding:
        return Denial("port forwarding is not permitted by this grant")
    try:
        ipaddress.ip_address(dest_host.strip("[]"))
    except ValueError:
        pass
    else:
        return Denial(f"forward to an address ({dest_host}); name a granted target instead")
    if dest_host not in grant.targets:
        return Denial(f"target {dest_host!r} is not covered by grant {grant.id}")
    target = lookup.get(dest_host)
    if target is None:
        return Denial(f"unknown target {dest_host!r}")
    if target.kind is TargetKind.SSH and not raw_forwarding(target.name):
        return Denial(
            f"forwarding to SSH target {target.name} is refused: its shells and commands go"
            f" through the bastion (ssh {target.name}@BASTION), recorded"
        )
    return target


@dataclass(frozen=True)
class ForwardLimits:
    """How many `-L` channels may be open at once (`server.max_forwards`, `grants.max_forwards`).

    Every forward counts, to a PostgreSQL target or a plain TCP one: each holds a
    connection to the target (a database login, or a socket) for as long as it is open.
    """

    per_connection: int
    per_grant: int


def decide_forward_count(
    grant: Grant, on_connection: int, on_grant: int, limits: ForwardLimits
) -> Denial | None:
    """May one more forward open? `on_connection` are open (or opening) on this SSH
    connection, `on_grant` on all of the grant's connections to this node, this one's included.
    """
    if on_connection >= limits.per_connection:
        return Denial(
            f"at most {limits.per_connection} forwarded connections at once per SSH connection"
        )
    if on_grant >= limits.per_grant:
        return Denial(
            f"at most {limits.per_grant} forwarded connections at once per grant ({grant.id})"
        )
    return None


@dataclass(frozen=True)
class LiveChannel:
    """What a channel open at the gateway is doing, for `recheck_channel`."""

    grant: Grant
    target: Target
    kind: SessionKind
    command: str | None = None
    approved: bool = False  # a human approved this command (or shell) before it ran
    recorded: bool = True  # its recording is being written
    database: str | None = None  # a PostgreSQL forward: the database it is logged in to


@dataclass(frozen=True)
class ChannelRules:
    """What the configuration says of channels to one target (`[targets.NAME]`)."""

    commands: tuple[CommandRule, ...]
    shell_requires_approval: bool = False
    recording: str = "mandatory"
    databases: tuple[str, ...] = ()
    raw_forwarding: bool = False


def recheck_channel(channel: LiveChannel, rules: ChannelRules) -> Denial | None:
    """Would `rules` refuse this open channel? The checks made when it opened, again.

    A channel a human approved stays approved; one that runs unrecorded is refused
    when recording became mandatory; a PostgreSQL forward is refused when its database
    left the allow-list (the target's registered database is always allowed).
    """
    target = channel.target
    if channel.kind is SessionKind.FORWARD:
        decision = decide_forward(
            channel.grant,
            channel.grant.permit_port_forwarding,
            target.name,
            {target.name: target},
            lambda _: rules.raw_forwarding,
        )
        if isinstance(decision, Denial):
            return decision
        if target.kind is not TargetKind.POSTGRES:
            return None  # a plain forward carries bytes: no command, nothing recorded
        database = channel.database
        allowed = database is None or database == target.database or database in rules.databases
        if not allowed:
            return Denial(f"database {database!r} is no longer allowed on {target.name}")
    else:
        denial = decide_session(target, channel.kind.value)
        if denial is not None:
            return denial
    if rules.recording == "mandatory" and not channel.recorded:
        return Denial(
            f"recording is now mandatory on {target.name} and this session is not recorded"
        )
    if channel.approved:
        return None
    if channel.kind is SessionKind.EXEC and channel.command is not None:
        verdict = classify_command(channel.command, rules.commands)
        if isinstance(verdict, NeedsApproval):
            return Denial(f"the command now needs approval ({'; '.join(verdict.reasons)})")
    if channel.kind is SessionKind.SHELL and rules.shell_requires_approval:
        return Denial(f"a shell on {target.name} now needs approval")
    return None
