"""Limits on `-L` forwards: the pure decision (`access.decide_forward_count`), the settings
(`server.max_forwards`, `grants.max_forwards`) validated at load, and that a reload applies
them."""

from __future__ import annotations

import dataclasses
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.access import Denial, ForwardLimits, decide_forward, decide_forward_count
from bastion.config import DEFAULT_CONFIG_TEXT, Config, ConfigError, load_config, parse_config
from bastion.configreload import needs_restart, plan_reload
from bastion.models import Grant, Target, TargetKind

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GRANT = Grant(
    id="g-0a1b2c3d",
    agent="bot",
    task="t",
    reason="",
    targets=("db",),
    valid_after=NOW - timedelta(minutes=1),
    valid_before=NOW + timedelta(minutes=30),
    created_at=NOW,
    created_by="alice",
    serial=1,
    key_id="bot grant=g-0a1b2c3d",
    key_fingerprint="SHA256:x",
    permit_pty=False,
    permit_port_forwarding=True,
)
LIMITS = ForwardLimits(per_connection=3, per_grant=5)


# -- the decision -------------------------------------------------------------------


@pytest.mark.parametrize(("on_connection", "on_grant"), [(0, 0), (2, 2), (2, 4), (0, 4), (1, 3)])
def test_below_both_limits_one_more_may_open(on_connection: int, on_grant: int) -> None:
    assert decide_forward_count(GRANT, on_connection, on_grant, LIMITS) is None


@pytest.mark.parametrize(("on_connection", "on_grant"), [(3, 3), (3, 5), (4, 4), (100, 100)])
def test_at_the_connection_limit_one_more_is_refused(on_connection: int, on_grant: int) -> None:
    assert decide_forward_count(GRANT, on_connection, on_grant, LIMITS) == Denial(
        "at most 3 forwarded connections at once per SSH connection"
    )


@pytest.mark.parametrize(("on_connection", "on_grant"), [(0, 5), (2, 5), (1, 9)])
def test_at_the_grant_limit_one_more_is_refused(on_connection: int, on_grant: int) -> None:
    assert decide_forward_count(GRANT, on_connection, on_grant, LIMITS) == Denial(
        "at most 5 forwarded connections at once per grant (g-0a1b2c3d)"
    )


def test_a_grant_limit_below_the_connection_limit_is_the_one_that_binds() -> None:
    limits = ForwardLimits(per_connection=10, per_grant=2)
    assert decide_forward_count(GRANT, 1, 1, limits) is None
    denial = decide_forward_count(GRANT, 2, 2, limits)
    assert isinstance(denial, Denial)
    assert "per grant" in denial.reason


def test_a_limit_of_one() -> None:
    limits = ForwardLimits(per_connection=1, per_grant=1)
    assert decide_forward_count(GRANT, 0, 0, limits) is None
    assert isinstance(decide_forward_count(GRANT, 1, 1, limits), Denial)


# -- the settings -------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> tuple[int, int]:
    (tmp_path / "bastion.toml").write_text(text)
    config = load_config(tmp_path)
    return config.server.max_forwards, config.grants.max_forwards


def test_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == (10, 20)
    assert load(tmp_path, DEFAULT_CONFIG_TEXT) == (10, 20)
    assert "max_forwards = 10" in DEFAULT_CONFIG_TEXT
    assert "max_forwards = 20" in DEFAULT_CONFIG_TEXT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nmax_forwards = 1\n", (1, 20)),
        ("[server]\nmax_forwards = 1000\n", (1000, 20)),
        ("[grants]\nmax_forwards = 1\n", (10, 1)),
        ("[grants]\nmax_forwards = 100000\n", (10, 100000)),
        ("[server]\nmax_forwards = 50\n[grants]\nmax_forwards = 5\n", (50, 5)),
    ],
)
def test_values_are_read(tmp_path: Path, text: str, expected: tuple[int, int]) -> None:
    assert load(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ("[server]\nmax_forwards = 0\n", "server.max_forwards", "between 1 and 1000"),
        ("[server]\nmax_forwards = -1\n", "server.max_forwards", "between 1 and 1000"),
        ("[server]\nmax_forwards = 1001\n", "server.max_forwards", "between 1 and 1000"),
        ('[server]\nmax_forwards = "10"\n', "server.max_forwards", "type int"),
        ("[server]\nmax_forwards = 10.0\n", "server.max_forwards", "type int"),
        ("[server]\nmax_forwards = true\n", "server.max_forwards", "type int"),
        ("[grants]\nmax_forwards = 0\n", "grants.max_forwards", "between 1 and 100000"),
        ("[grants]\nmax_forwards = 100001\n", "grants.max_forwards", "between 1 and 100000"),
        ('[grants]\nmax_forwards = "20"\n', "grants.max_forwards", "type int"),
        ("[grants]\nmax_db_forwards = 20\n", "grants.max_db_forwards", "unknown key"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, text: str, key: str, why: str) -> None:
    (tmp_path / "bastion.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    message = str(caught.value)
    assert f"'{key}'" in message
    assert why in message
    assert str(tmp_path / "bastion.toml") in message


def test_a_reload_applies_both_at_once() -> None:
    def config(text: str) -> Config:
        return parse_config(tomllib.loads(text), Path("bastion.toml"))

    running = config("[server]\nmax_forwards = 10\n")
    loaded = config("[server]\nmax_forwards = 4\n[grants]\nmax_forwards = 6\n")
    plan = plan_reload(running, loaded)
    assert plan.applied == ("server.max_forwards", "grants.max_forwards")
    assert plan.restart_required == ()
    assert (plan.config.server.max_forwards, plan.config.grants.max_forwards) == (4, 6)
    assert not needs_restart("server.max_forwards")
    assert not needs_restart("grants.max_forwards")


# -- where a forward may go ----------------------------------------------------------


def _target(name: str, kind: TargetKind) -> Target:
    return Target(name, kind, "10.0.0.1", 22, "u", NOW, "alice", database="d")


@pytest.mark.parametrize(
    ("kind", "raw", "allowed"),
    [
        (TargetKind.POSTGRES, False, True),  # the protocol-aware relay
        (TargetKind.SSH, False, False),  # raw bytes to an sshd: an unrecorded shell
        (TargetKind.SSH, True, True),  # a plain TCP service, on purpose
    ],
)
def test_a_forward_reaches_an_ssh_target_only_where_it_opts_in(
    kind: TargetKind, raw: bool, allowed: bool
) -> None:
    grant = dataclasses.replace(GRANT, targets=("db", "web"))
    decision = decide_forward(grant, True, "web", {"web": _target("web", kind)}, lambda _: raw)
    if allowed:
        assert isinstance(decision, Target)
    else:
        assert isinstance(decision, Denial)
        assert decision.reason.startswith("forwarding to SSH target web is refused")
