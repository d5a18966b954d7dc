"""What reloading bastion.toml (SIGHUP to `bastion serve`) changes, and what it can't.

Pure: given the running configuration and a newly loaded (already validated) one,
`plan_reload` says which settings changed, which of those apply at once and which need
a restart, and gives the configuration to run with from now on: the new one, with the
restart-only settings kept at their running values, so nothing is ever half-applied.
`channel_rules` is what a configuration says of channels to one target, for
`access.recheck_channel`. Reading the file and acting on the plan is the daemon's and
the gateway's job, not this module's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bastion.access import ChannelRules
from bastion.config import Config, TargetPolicy

# Settings bound at start-up: the listener and its login timeout, the node's identity
# and heartbeat, the log format and event loop, the store, the recordings directory, the
# metrics endpoint and the web console. (The host key and the CA are files in keys/,
# read at start-up too.) A whole section is named by its name.
RESTART_ONLY: frozenset[str] = frozenset(
    {
        "server.listen",
        "server.advertise",
        "server.node",
        "server.login_timeout",
        "server.log_format",
        "server.event_loop",
        "server.heartbeat",
        "server.node_timeout",
        "store",
        "recordings",
        "metrics",
        "web",
    }
)
_SECTIONS = ("server", "store", "recordings", "metrics", "grants", "approvals", "requests", "web")


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what to run with: `loaded`, restart-only settings as they are running
    applied: tuple[str, ...]  # changed settings that take effect now ("targets.db.databases")
    restart_required: tuple[str, ...]  # changed settings kept at their running value

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.restart_required)

    def summary(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "restart_required": list(self.restart_required)}


def needs_restart(key: str) -> bool:
    """Is the dotted setting `key` (or its section) one that only a restart applies?"""
    return key in RESTART_ONLY or key.split(".", 1)[0] in RESTART_ONLY


def changed_settings(old: Config, new: Config) -> list[str]:
    """The dotted names of the settings that differ, in file order (targets last)."""
    changed = []
    for section in _SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                changed.append(f"{section}.{f.name}")
    for name in sorted(old.targets.keys() | new.targets.keys()):
        before_policy = old.targets.get(name, TargetPolicy())
        after_policy = new.targets.get(name, TargetPolicy())
        for f in dataclasses.fields(TargetPolicy):
            if getattr(before_policy, f.name) != getattr(after_policy, f.name):
                changed.append(f"targets.{name}.{f.name}")
    return changed


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    changed = changed_settings(running, loaded)
    restart = tuple(key for key in changed if needs_restart(key))
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        if section in RESTART_ONLY:
            sections[section] = getattr(running, section)
            continue
        kept = {
            f.name: getattr(getattr(running, section), f.name)
            for f in dataclasses.fields(getattr(loaded, section))
            if f"{section}.{f.name}" in RESTART_ONLY
        }
        sections[section] = dataclasses.replace(getattr(loaded, section), **kept)
    config = dataclasses.replace(loaded, **sections)
    applied = tuple(key for key in changed if not needs_restart(key))
    return ReloadPlan(config=config, applied=applied, restart_required=restart)


def channel_rules(config: Config, target: str) -> ChannelRules:
    policy = config.target_policy(target)
    return ChannelRules(
        commands=config.command_rules(target),
        shell_requires_approval=policy.shell_requires_approval,
        recording=policy.recording,
        databases=policy.databases,
        raw_forwarding=policy.raw_forwarding,
    )
