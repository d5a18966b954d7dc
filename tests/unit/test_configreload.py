"""Reloading bastion.toml: what changed, what applies now, what needs a restart
(`configreload.plan_reload`), and the re-check of live channels (`access.recheck_channel`)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.access import LiveChannel, recheck_channel
from bastion.config import Config, parse_config
from bastion.configreload import channel_rules, needs_restart, plan_reload
from bastion.models import Grant, SessionKind, Target, TargetKind

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def config(text: str) -> Config:
    return parse_config(tomllib.loads(text), Path("bastion.toml"))


BASE = config(
    """
[server]
listen = "127.0.0.1:2222"
max_sessions = 10

[targets.db]
databases = ["app", "reporting"]
"""
)


def test_an_unchanged_file_changes_nothing() -> None:
    plan = plan_reload(BASE, BASE)

    assert (plan.applied, plan.restart_required, plan.changed) == ((), (), False)
    assert plan.config == BASE


def test_target_policy_changes_apply_at_once() -> None:
    loaded = config(
        """
[server]
listen = "127.0.0.1:2222"
max_sessions = 10

[targets.db]
databases = ["app"]
recording = "best-effort"

[targets.web]
shell_requires_approval = true
"""
    )

    plan = plan_reload(BASE, loaded)

    assert plan.applied == (
        "targets.db.recording",
        "targets.db.databases",
        "targets.web.shell_requires_approval",
    )
    assert plan.restart_required == ()
    assert plan.config == loaded


def test_startup_limits_apply_at_once() -> None:
    loaded = config(
        """
[server]
listen = "127.0.0.1:2222"
max_sessions = 10
max_startups = "10:30:60"
per_source_max_startups = 4
per_source_netblock = "24:64"
"""
    )

    plan = plan_reload(BASE, loaded)

    assert plan.applied == (
        "server.max_startups",
        "server.per_source_max_startups",
        "server.per_source_netblock",
        "targets.db.databases",
    )
    assert plan.restart_required == ()
    limits = plan.config.server.startup_limits
    assert (limits.begin, limits.rate, limits.full, limits.per_source) == (10, 30, 60, 4)
    assert (limits.ipv4_prefix, limits.ipv6_prefix) == (24, 64)


def test_a_removed_target_table_reverts_to_the_defaults() -> None:
    plan = plan_reload(BASE, config('[server]\nlisten = "127.0.0.1:2222"'))

    assert plan.applied == ("targets.db.databases",)
    assert plan.config.target_policy("db").databases == ()


def test_restart_only_settings_keep_their_running_values_and_the_rest_applies() -> None:
    loaded = config(
        """
[server]
listen = "127.0.0.1:2299"
node = "elsewhere"
max_sessions = 3
shutdown_grace = "20s"

[store]
url = "postgresql://bastion@db.internal/bastion"

[metrics]
listen = "127.0.0.1:9464"

[web]
listen = "127.0.0.1:8443"

[recordings]
dir = "/srv/recordings"

[approvals]
timeout = "1m"

[targets.db]
databases = ["app", "reporting"]
"""
    )

    plan = plan_reload(BASE, loaded)

    assert plan.restart_required == (
        "server.listen",
        "server.node",
        "store.url",
        "recordings.dir",
        "metrics.listen",
        "web.listen",
    )
    assert plan.applied == ("server.max_sessions", "server.shutdown_grace", "approvals.timeout")
    running = plan.config
    assert running.server.listen == "127.0.0.1:2222"
    assert running.server.node == ""
    assert running.store == BASE.store
    assert running.metrics == BASE.metrics
    assert running.web == BASE.web
    assert running.recordings == BASE.recordings
    assert running.server.max_sessions == 3
    assert running.server.shutdown_grace == timedelta(seconds=20)
    assert running.approvals.timeout == timedelta(minutes=1)
    assert plan.summary() == {
        "applied": list(plan.applied),
        "restart_required": list(plan.restart_required),
    }


@pytest.mark.parametrize(
    ("key", "restart"),
    [
        ("server.listen", True),
        ("server.event_loop", True),
        ("server.log_format", True),
        ("server.login_timeout", True),
        ("server.heartbeat", True),
        ("store.path", True),
        ("metrics.allow_remote", True),
        ("web.tls_cert", True),
        ("recordings.dir", True),
        ("server.max_sessions", False),
        ("server.max_startups", False),
        ("server.per_source_max_startups", False),
        ("server.per_source_netblock", False),
        ("server.shutdown_grace", False),
        ("grants.max_ttl", False),
        ("approvals.commands", False),
        ("requests.webhook", False),
        ("targets.web.commands", False),
        ("targets.store.recording", False),  # a target named like a section
    ],
)
def test_restart_classification(key: str, restart: bool) -> None:
    assert needs_restart(key) is restart


# -- re-checking a live channel ------------------------------------------------------------


def grant(*targets: str, forwarding: bool = True) -> Grant:
    return Grant(
        id="g-1",
        agent="bot",
        task="t",
        reason="r",
        targets=targets,
        valid_after=NOW - timedelta(minutes=1),
        valid_before=NOW + timedelta(minutes=30),
        created_at=NOW,
        created_by="alice",
        serial=1,
        key_id="grant=g-1 agent=bot task=t",
        key_fingerprint="SHA256:x",
        permit_pty=True,
        permit_port_forwarding=forwarding,
    )


def target(name: str, kind: TargetKind = TargetKind.SSH, database: str | None = None) -> Target:
    return Target(
        name=name,
        kind=kind,
        host="127.0.0.1",
        port=22 if kind is TargetKind.SSH else 5432,
        user="u",
        created_at=NOW,
        created_by="alice",
        database=database,
    )


WEB = target("web")
DB = target("db", TargetKind.POSTGRES, database="app")


def exec_channel(command: str, approved: bool = False, recorded: bool = True) -> LiveChannel:
    return LiveChannel(
        grant("web"), WEB, SessionKind.EXEC, command=command, approved=approved, recorded=recorded
    )


def test_a_command_the_new_rules_hold_is_refused_unless_a_human_approved_it() -> None:
    rules = channel_rules(config('[targets.web]\ncommands = ["sleep"]'), "web")

    denial = recheck_channel(exec_channel("sleep 600"), rules)

    assert denial is not None and "now needs approval" in denial.reason
    assert "sleep" in denial.reason
    assert recheck_channel(exec_channel("sleep 600", approved=True), rules) is None
    assert recheck_channel(exec_channel("cat"), rules) is None


def test_a_shell_is_refused_when_shells_now_need_approval() -> None:
    shell = LiveChannel(grant("web"), WEB, SessionKind.SHELL)
    strict = channel_rules(config("[targets.web]\nshell_requires_approval = true"), "web")

    denial = recheck_channel(shell, strict)

    assert denial is not None and "shell on web now needs approval" in denial.reason
    assert recheck_channel(shell, channel_rules(Config(), "web")) is None
    approved = LiveChannel(grant("web"), WEB, SessionKind.SHELL, approved=True)
    assert recheck_channel(approved, strict) is None


@pytest.mark.parametrize("mode", ["mandatory", "best-effort", "off"])
def test_an_unrecorded_session_is_refused_only_when_recording_becomes_mandatory(
    mode: str,
) -> None:
    rules = channel_rules(config(f'[targets.web]\nrecording = "{mode}"'), "web")

    denial = recheck_channel(exec_channel("cat", recorded=False), rules)

    assert (denial is not None) is (mode == "mandatory")
    assert recheck_channel(exec_channel("cat", recorded=True), rules) is None


def pg(database: str | None, recorded: bool = True) -> LiveChannel:
    return LiveChannel(grant("db"), DB, SessionKind.FORWARD, recorded=recorded, database=database)


def test_a_postgres_session_is_refused_when_its_database_leaves_the_allow_list() -> None:
    rules = channel_rules(config('[targets.db]\ndatabases = ["app"]'), "db")

    denial = recheck_channel(pg("reporting"), rules)

    assert denial is not None
    assert denial.reason == "database 'reporting' is no longer allowed on db"
    assert recheck_channel(pg("app"), rules) is None  # the registered one: always allowed
    assert recheck_channel(pg(None), rules) is None  # not logged in yet
    wider = channel_rules(config('[targets.db]\ndatabases = ["reporting"]'), "db")
    assert recheck_channel(pg("reporting"), wider) is None


def test_forwards_are_decided_again_with_decide_forward() -> None:
    rules = channel_rules(config("[targets.raw]\nraw_forwarding = true"), "raw")
    raw = target("raw")
    # An SSH target's raw forward, once its opt-in is taken back, is closed.
    refused = recheck_channel(
        LiveChannel(grant("raw"), raw, SessionKind.FORWARD), channel_rules(Config(), "raw")
    )
    assert refused is not None and "forwarding to SSH target raw is refused" in refused.reason
    allowed = LiveChannel(grant("raw"), raw, SessionKind.FORWARD)
    no_forwarding = LiveChannel(grant("raw", forwarding=False), raw, SessionKind.FORWARD)
    other = LiveChannel(grant("web"), raw, SessionKind.FORWARD)

    assert recheck_channel(allowed, rules) is None
    denial = recheck_channel(no_forwarding, rules)
    assert denial is not None and "not permitted" in denial.reason
    denial = recheck_channel(other, rules)
    assert denial is not None and "not covered by grant" in denial.reason
    # A plain forward is never recorded: a mandatory recording mode doesn't refuse it.
    assert (
        recheck_channel(LiveChannel(grant("raw"), raw, SessionKind.FORWARD, recorded=False), rules)
        is None
    )


def test_sessions_are_decided_again_with_decide_session() -> None:
    denial = recheck_channel(
        LiveChannel(grant("db"), DB, SessionKind.EXEC, command="ls"), channel_rules(Config(), "db")
    )

    assert denial is not None and "is a postgres target" in denial.reason
