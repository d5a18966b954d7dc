"""Pure rules of the web console: who may do what, and when sign-in attempts are refused.

The role matrix (`allowed`) is the one place the console's authorization is written;
every route names the `Permission` it needs. Sign-in throttling (`SignInThrottle`) is a
value kept by one web process, driven by the times it is given: no clock of its own.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bastion.errors import InvalidInput
from bastion.models import WebRole


class Permission(enum.StrEnum):
    READ = "read"  # sessions, recordings, replay, live, search, approvals, grants
    DECIDE = "decide"  # approve or deny commands, statements and access requests
    REVOKE = "revoke"  # revoke a grant
    KILL = "kill"  # end a live session
    USERS = "users"  # list and remove console accounts


_MATRIX: dict[WebRole, frozenset[Permission]] = {
    WebRole.AUDITOR: frozenset({Permission.READ}),
    WebRole.APPROVER: frozenset({Permission.READ, Permission.DECIDE, Permission.REVOKE}),
    WebRole.ADMIN: frozenset(Permission),
}


def allowed(role: WebRole, permission: Permission) -> bool:
    return permission in _MATRIX[role]


def permissions(role: WebRole) -> frozenset[Permission]:
    return _MATRIX[role]


@dataclass
class SignInThrottle:
    """At most `limit` failed sign-ins per key (a user name, a client address) within
    `window`; past that, that key is refused until its oldest failure leaves the window.

    Refusing by the user name stops guessing one person's password from many addresses;
    by the address, guessing many names from one. A success clears the user's failures
    (not the address's). Keys with no recent failure are forgotten, so memory stays
    bounded by the attempts of one window.
    """

    limit: int = 5
    window: timedelta = timedelta(minutes=15)
    _failures: dict[str, deque[datetime]] = field(default_factory=dict)

    def retry_after(self, keys: tuple[str, ...], now: datetime) -> timedelta | None:
        """How long until a sign-in under these keys may be tried, or None: try now."""
        waits = []
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.limit:
                waits.append(times[-self.limit] + self.window - now)
        return max(waits) if waits else None

    def failed(self, keys: tuple[str, ...], now: datetime) -> None:
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        horizon = now - self.window
        for stale in [
            k for k, v in self._failures.items() if k != key and (not v or v[-1] <= horizon)
        ]:
            del self._failures[stale]
        return times


_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 10
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further: a longer one would be silently cut


def check_user_name(name: str) -> str:
    """A console account's name: the same alphabet as `--as`, since it is the actor the
    audit chain records and the name the no-self-approval rule compares."""
    if not _USER_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise InvalidInput(f"the password must fit in {MAX_PASSWORD_BYTES} bytes (bcrypt)")
    if password != password.strip() or "\n" in password:
        raise InvalidInput("the password must not start or end with white space")
    return password


def parse_role(value: str) -> WebRole:
    try:
        return WebRole(value)
    except ValueError:
        roles = ", ".join(r.value for r in WebRole)
        raise InvalidInput(f"unknown role {value!r}: use one of {roles}") from None
