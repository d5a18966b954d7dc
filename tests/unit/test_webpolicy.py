"""The console's pure rules: the role matrix, sign-in throttling (time passed in), names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import InvalidInput
from bastion.models import WebRole
from bastion.webpolicy import (
    Permission,
    SignInThrottle,
    allowed,
    check_password,
    check_user_name,
    parse_role,
)

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
P = Permission


def test_role_matrix() -> None:
    table = {role: {p for p in Permission if allowed(role, p)} for role in WebRole}
    assert table == {
        WebRole.AUDITOR: {P.READ},
        WebRole.APPROVER: {P.READ, P.DECIDE, P.REVOKE},
        WebRole.ADMIN: {P.READ, P.DECIDE, P.REVOKE, P.KILL, P.USERS},
    }


def test_each_failure_counts_per_user_and_per_address() -> None:
    throttle = SignInThrottle(limit=3, window=timedelta(minutes=15))
    keys = ("user:alice", "client:10.0.0.1")
    for minute in range(3):
        assert throttle.retry_after(keys, T0 + timedelta(minutes=minute)) is None
        throttle.failed(keys, T0 + timedelta(minutes=minute))
    now = T0 + timedelta(minutes=3)
    # The 4th try waits until the oldest failure leaves the window (T0 + 15m).
    assert throttle.retry_after(keys, now) == timedelta(minutes=12)
    # The same user from elsewhere is refused too; another user from that address too.
    assert throttle.retry_after(("user:alice", "client:10.9.9.9"), now) == timedelta(minutes=12)
    assert throttle.retry_after(("user:bob", "client:10.0.0.1"), now) == timedelta(minutes=12)
    assert throttle.retry_after(("user:bob", "client:10.9.9.9"), now) is None
    # Once the window has passed, trying is allowed again.
    assert throttle.retry_after(keys, T0 + timedelta(minutes=15)) is None


def test_a_success_clears_the_users_failures_not_the_addresses() -> None:
    throttle = SignInThrottle(limit=2, window=timedelta(minutes=1))
    keys = ("user:alice", "client:a")
    throttle.failed(keys, T0)
    throttle.succeeded("user:alice")
    throttle.failed(("user:alice", "client:b"), T0)
    assert throttle.retry_after(("user:alice", "client:c"), T0) is None
    assert throttle.retry_after(("user:x", "client:a"), T0) is None
    throttle.failed(("user:y", "client:a"), T0)
    assert throttle.retry_after(("user:z", "client:a"), T0) == timedelta(minutes=1)


@given(st.lists(st.integers(min_value=0, max_value=3600), max_size=40))
def test_never_more_than_limit_failures_within_a_window(offsets: list[int]) -> None:
    """Whatever the timing, a key that is let through had < limit failures in the window."""
    throttle = SignInThrottle(limit=4, window=timedelta(minutes=5))
    allowed_at: list[datetime] = []
    for offset in sorted(offsets):
        now = T0 + timedelta(seconds=offset)
        if throttle.retry_after(("k",), now) is None:
            recent = [t for t in allowed_at if t > now - timedelta(minutes=5)]
            assert len(recent) < 4
            allowed_at.append(now)
            throttle.failed(("k",), now)


def test_memory_is_bounded_by_one_window() -> None:
    throttle = SignInThrottle(limit=5, window=timedelta(seconds=10))
    for i in range(1000):
        throttle.failed((f"client:{i}",), T0 + timedelta(seconds=i))
    assert len(throttle._failures) <= 11


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith@example.com", "ci-bot_2"])
def test_good_user_names(name: str) -> None:
    assert check_user_name(name) == name


@pytest.mark.parametrize("name", ["", "-alice", "al ice", "a/b", "é", "x" * 65, "a\n"])
def test_bad_user_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid user name"):
        check_user_name(name)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("short", "at least 10 characters"),
        ("x" * 73, "fit in 72 bytes"),
        ("é" * 40, "fit in 72 bytes"),
        (" leading space ok?", "white space"),
    ],
)
def test_bad_passwords(password: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        check_password(password)


def test_roles() -> None:
    assert parse_role("approver") is WebRole.APPROVER
    with pytest.raises(InvalidInput, match="use one of auditor, approver, admin"):
        parse_role("root")
