"""Pure decisions at the gateway: may this certificate log in, open this channel, forward here?

Policy decides, transport enforces. Every function takes the facts (the presented
certificate, the grant and target from the store, `now`) and returns a value:
`Permit` or `Denial` with a reason. Nothing here raises for a refusal, reads a clock
or touches the network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

from bastion.models import Grant, GrantState, PresentedCertificate, Target, TargetKind

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
) -> Target | Denial:
    """A `-L` destination must be a granted target's name; the port is not used for routing."""
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
    return target
