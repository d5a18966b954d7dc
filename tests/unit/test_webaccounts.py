"""Console accounts on a real SQLite store: passwords, login links, sessions, the audit.

Time is a `FixedClock` moved by the tests (link and session expiry); bcrypt runs with a
low cost factor so the suite stays fast (the hash records its cost, checks read it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.errors import AlreadyExists, InvalidInput, NotFound
from bastion.models import WebRole, WebTokenKind
from bastion.service import Bastion, initialize
from bastion.store.migrations import LATEST_VERSION, MIGRATIONS
from bastion.webaccounts import SignInRefused, WebAccounts, token_hash

PASSWORD = "correct horse battery"
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def accounts(tmp_path: Path, clock: FixedClock) -> WebAccounts:
    home = open_home(str(tmp_path / "home"))
    initialize(home, clock, "root", None)
    service = Bastion.open(home, clock, "root")
    return WebAccounts(service, rounds=4)


def audit(accounts: WebAccounts, prefix: str = "web.") -> list[tuple[str, str, dict[str, object]]]:
    return [
        (e.actor, e.action, e.details)
        for e in accounts.bastion.audit_events()
        if e.action.startswith(prefix)
    ]


def test_migration_6_follows_the_others() -> None:
    versions = [v for v, _ in MIGRATIONS]
    assert versions == sorted(versions)
    assert LATEST_VERSION == 6
    assert 6 in versions


def test_add_list_remove(accounts: WebAccounts) -> None:
    alice = accounts.add_user("alice", WebRole.APPROVER, PASSWORD)
    accounts.add_user("carol", WebRole.AUDITOR, None)
    assert alice.password_hash is not None and alice.password_hash.startswith("$2b$04$")
    assert PASSWORD not in repr(alice)
    assert [(u.name, u.role) for u in accounts.list_users()] == [
        ("alice", WebRole.APPROVER),
        ("carol", WebRole.AUDITOR),
    ]
    with pytest.raises(AlreadyExists, match="web user alice already exists"):
        accounts.add_user("alice", WebRole.ADMIN, PASSWORD)
    accounts.remove_user("carol")
    with pytest.raises(NotFound, match="unknown web user 'carol'"):
        accounts.remove_user("carol")
    assert [a for _, a, _ in audit(accounts)] == [
        "web.user_added",
        "web.user_added",
        "web.user_removed",
    ]


def test_bad_input_writes_nothing(accounts: WebAccounts) -> None:
    for name, password in (("bad name", PASSWORD), ("alice", "short")):
        with pytest.raises(InvalidInput):
            accounts.add_user(name, WebRole.ADMIN, password)
    assert accounts.list_users() == []
    assert audit(accounts) == []


def test_password_sign_in_and_session(accounts: WebAccounts, clock: FixedClock) -> None:
    accounts.add_user("alice", WebRole.APPROVER, PASSWORD)
    signed = accounts.sign_in_password("alice", PASSWORD, "10.0.0.1")
    assert signed.user.name == "alice"
    assert accounts.session_user(signed.token) == signed.user
    # The store knows the token only by its hash.
    token = accounts.bastion.store.get_web_token(token_hash(signed.token))
    assert token is not None and token.kind is WebTokenKind.SESSION
    assert token.expires_at == T0 + timedelta(hours=12)
    assert accounts.session_user("not-" + signed.token) is None
    clock.advance(timedelta(hours=12))
    assert accounts.session_user(signed.token) is None


@pytest.mark.parametrize(
    ("name", "password"),
    [("alice", "wrong password!"), ("nobody", PASSWORD), ("bad name", PASSWORD), ("carol", "")],
)
def test_refused_sign_ins_look_alike_and_are_audited(
    accounts: WebAccounts, name: str, password: str
) -> None:
    accounts.add_user("alice", WebRole.APPROVER, PASSWORD)
    accounts.add_user("carol", WebRole.AUDITOR, None)  # link-only: no password works
    with pytest.raises(SignInRefused, match=r"^wrong user name or password$"):
        accounts.sign_in_password(name, password, "10.0.0.2")
    [(actor, action, details)] = audit(accounts, "web.signin")
    assert action == "web.signin_failed"
    assert actor == (name if name != "bad name" else "-")
    assert details == {"method": "password", "client": "10.0.0.2", "reason": "wrong name or secret"}


def test_login_link_is_one_time(accounts: WebAccounts) -> None:
    accounts.add_user("carol", WebRole.AUDITOR, None)
    token, link = accounts.login_link("carol")
    assert link.expires_at == T0 + timedelta(minutes=15)
    signed = accounts.sign_in_link(token, "10.0.0.3")
    assert signed.user.name == "carol"
    with pytest.raises(SignInRefused, match="not valid"):
        accounts.sign_in_link(token, "10.0.0.3")
    # A session token is not a login link.
    with pytest.raises(SignInRefused):
        accounts.sign_in_link(signed.token, "10.0.0.3")


def test_login_link_expires(accounts: WebAccounts, clock: FixedClock) -> None:
    accounts.add_user("carol", WebRole.AUDITOR, None)
    token, _ = accounts.login_link("carol", timedelta(minutes=2))
    clock.advance(timedelta(minutes=2))
    with pytest.raises(SignInRefused, match="not valid"):
        accounts.sign_in_link(token, "10.0.0.3")
    assert audit(accounts, "web.signin")[-1][2]["reason"] == "the link expired"


def test_login_link_limits(accounts: WebAccounts) -> None:
    with pytest.raises(NotFound):
        accounts.login_link("nobody")
    accounts.add_user("carol", WebRole.AUDITOR, None)
    for ttl in (timedelta(seconds=30), timedelta(days=2)):
        with pytest.raises(InvalidInput, match="between 1m and 24h"):
            accounts.login_link("carol", ttl)


def test_removing_an_account_ends_its_sessions_and_links(accounts: WebAccounts) -> None:
    accounts.add_user("alice", WebRole.ADMIN, PASSWORD)
    signed = accounts.sign_in_password("alice", PASSWORD, "c")
    token, _ = accounts.login_link("alice")
    accounts.remove_user("alice")
    assert accounts.session_user(signed.token) is None
    assert accounts.bastion.store.get_web_token(token_hash(token)) is None


def test_sign_out(accounts: WebAccounts) -> None:
    accounts.add_user("alice", WebRole.ADMIN, PASSWORD)
    signed = accounts.sign_in_password("alice", PASSWORD, "c")
    accounts.sign_out(signed.token, "c")
    assert accounts.session_user(signed.token) is None
    assert audit(accounts)[-1][:2] == ("alice", "web.signed_out")


def test_no_secret_reaches_the_audit_chain(accounts: WebAccounts) -> None:
    accounts.add_user("alice", WebRole.ADMIN, PASSWORD)
    signed = accounts.sign_in_password("alice", PASSWORD, "c")
    token, _ = accounts.login_link("alice")
    with pytest.raises(SignInRefused):
        accounts.sign_in_password("alice", "a wrong guess", "c")
    text = json.dumps([e.to_dict() for e in accounts.bastion.audit_events()])
    for secret in (PASSWORD, "a wrong guess", signed.token, token, token_hash(token)):
        assert secret not in text
    hashed = accounts.list_users()[0].password_hash
    assert hashed is not None and hashed not in text
