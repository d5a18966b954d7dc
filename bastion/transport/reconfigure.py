"""A reloaded bastion.toml, applied to the running gateway and to its live channels.

`reconfigure` swaps the configuration in and re-decides every open channel under it,
in one step of the event loop (nothing here awaits): a login, a channel request or the
change feed sees either the old configuration or the new one, never a mix. New
channels read `gateway.config` as they open, so they follow the new policy at once.

A channel already open keeps the policy it started with unless the new one is
stricter. It is decided again with the same checks as at open (`access.recheck_channel`:
`decide_session`/`decide_forward`, the command rules, shell approval, the recording
mode, a PostgreSQL forward's database allow-list); one the new policy refuses is closed
with the reason on the agent's stderr (or as a PostgreSQL FATAL), ending
`policy-changed`. One it still allows takes on whatever got stricter: a PostgreSQL
session holds the statements either rule set holds, redacts parameters if either
says so, and its recording becomes mandatory if the new mode is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion import access
from bastion.access import LiveChannel, LoginPermit
from bastion.config import Config
from bastion.configreload import channel_rules
from bastion.models import EndReason, SessionKind
from bastion.transport.pgrelay import PgRelay
from bastion.transport.relay import ForwardRelay, SessionRelay

if TYPE_CHECKING:
    from bastion.transport.gateway import Gateway

log = logging.getLogger("bastion.gateway")

_STRICTNESS = {"off": 0, "best-effort": 1, "mandatory": 2}


@dataclass(frozen=True)
class ClosedChannel:
    session: str
    target: str
    reason: str


def reconfigure(gateway: Gateway, config: Config) -> list[ClosedChannel]:
    """Run with `config` from now on; close the live channels it refuses (returned)."""
    gateway.config = config
    gateway.notifier.config = config.requests
    gateway.gate.use_config(config)
    closed = []
    for conn in list(gateway.connections):
        permit = conn.permit
        if permit is None or conn.closing:
            continue
        for relay in list(conn.sessions) + list(conn.forwards):
            channel = _live_channel(permit, relay)
            if channel is None:
                continue
            target = channel.target.name
            rules = channel_rules(config, target)
            denial = access.recheck_channel(channel, rules)
            if denial is None:
                _tighten(relay, config, target, rules.recording)
                continue
            session_id = relay.record.id
            message = f"session {session_id} closed: target policy changed: {denial.reason}"
            gateway.metrics.forced_close(EndReason.POLICY_CHANGED.value)
            log.info(
                "%s",
                message,
                extra={"event": "session.policy_closed", "session": session_id, "target": target},
            )
            relay.fail(EndReason.POLICY_CHANGED, message)
            closed.append(ClosedChannel(session_id, target, denial.reason))
    return closed


def _live_channel(
    permit: LoginPermit, relay: SessionRelay | ForwardRelay | PgRelay
) -> LiveChannel | None:
    """What the channel is doing; None while it is still opening (it will read the new
    configuration itself) or waiting for a human at the approval gate."""
    grant = permit.grant
    if isinstance(relay, SessionRelay):
        record = relay.record
        if record is None or not relay.gated:
            return None
        return LiveChannel(
            grant=grant,
            target=permit.target,
            kind=record.kind,
            command=record.command if record.kind is SessionKind.EXEC else None,
            approved=relay.approved,
            recorded=relay.recording.active,
        )
    if isinstance(relay, PgRelay):
        return LiveChannel(
            grant=grant,
            target=relay.target,
            kind=SessionKind.FORWARD,
            recorded=relay.recording.active,
            database=relay.database,
        )
    if relay.target is None or relay.record is None:
        return None
    return LiveChannel(grant=grant, target=relay.target, kind=SessionKind.FORWARD)


def _tighten(
    relay: SessionRelay | ForwardRelay | PgRelay, config: Config, target: str, recording: str
) -> None:
    if isinstance(relay, PgRelay):
        policy = config.target_policy(target)
        relay.tighten(
            config.statement_rules(target),
            policy.redact_parameters,
            policy.databases,
            recording,
        )
    elif isinstance(relay, SessionRelay) and relay.recording_mode is not None:
        stricter = _STRICTNESS[recording] > _STRICTNESS[relay.recording_mode]
        relay.recording_mode = recording if stricter else relay.recording_mode
