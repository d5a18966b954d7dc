"""Web console accounts: people, their passwords, login links and signed-in sessions.

An account's name is the actor the audit chain records for what the person does in the
console, the same namespace as the CLI's `--as`, so the service's no-self-approval rule
(actor != agent) holds in the console unchanged. Passwords are kept as bcrypt hashes;
login links and session cookies are random tokens the store knows only by their SHA-256,
so a copy of the state store signs nobody in. Every sign-in, failed or not, sign-out,
account change and login link is an audit event; no secret is ever part of one.

Throttling of sign-in attempts is the web process's (`webpolicy.SignInThrottle`); this
module answers only whether a password or link is good.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import bcrypt

from bastion import webpolicy
from bastion.config import WebConfig
from bastion.errors import AlreadyExists, InvalidInput, NotFound
from bastion.models import WebRole, WebToken, WebTokenKind, WebUser
from bastion.service import Bastion
from bastion.store import StoreTx
from bastion.timespec import format_time

BCRYPT_ROUNDS = 12
# Checked when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY_HASH = bcrypt.hashpw(b"not a password", bcrypt.gensalt(4))


class SignInRefused(InvalidInput):
    """A wrong name, password or link: one message for all, so none is told apart."""


@dataclass(frozen=True)
class SignedIn:
    user: WebUser
    token: str  # the session cookie's value: give it to the browser, never log it
    expires_at_iso: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class WebAccounts:
    def __init__(self, bastion: Bastion, rounds: int = BCRYPT_ROUNDS) -> None:
        self.bastion = bastion
        self._rounds = rounds

    @property
    def _config(self) -> WebConfig:
        return self.bastion.home.config.web

    # -- accounts (the CLI) ----------------------------------------------------

    def add_user(self, name: str, role: WebRole, password: str | None) -> WebUser:
        webpolicy.check_user_name(name)
        hashed = None
        if password is not None:
            webpolicy.check_password(password)
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(self._rounds)).decode()
        now = self.bastion.clock.now()
        user = WebUser(name, role, hashed, now, self.bastion.actor)
        with self.bastion.store.transaction() as tx:
            if tx.get_web_user(name) is not None:
                raise AlreadyExists(f"web user {name} already exists")
            tx.insert_web_user(user)
            tx.append_audit(now, self.bastion.actor, "web.user_added", user.to_dict())
        return user

    def list_users(self) -> list[WebUser]:
        return self.bastion.store.list_web_users()

    def remove_user(self, name: str) -> WebUser:
        now = self.bastion.clock.now()
        with self.bastion.store.transaction() as tx:
            user = self._user(tx, name)
            tx.delete_web_user(name)
            tx.append_audit(
                now, self.bastion.actor, "web.user_removed", {"name": name, "role": user.role}
            )
        return user

    def login_link(self, name: str, ttl: timedelta | None = None) -> tuple[str, WebToken]:
        """A one-time sign-in token for `name`; the caller shows it once. Only its hash
        is stored."""
        ttl = ttl or self._config.login_link_ttl
        if not timedelta(minutes=1) <= ttl <= timedelta(hours=24):
            raise InvalidInput("a login link must last between 1m and 24h")
        now = self.bastion.clock.now()
        token = secrets.token_urlsafe(32)
        link = WebToken(token_hash(token), WebTokenKind.LINK, name, now, now + ttl)
        with self.bastion.store.transaction() as tx:
            self._user(tx, name)
            tx.delete_expired_web_tokens(now)
            tx.insert_web_token(link)
            tx.append_audit(
                now,
                self.bastion.actor,
                "web.login_link_created",
                {"name": name, "expires_at": link.expires_at.isoformat()},
            )
        return token, link

    # -- signing in (the web console) -------------------------------------------

    def sign_in_password(self, name: str, password: str, client: str) -> SignedIn:
        user = self.bastion.store.get_web_user(name) if _plausible(name) else None
        stored = user.password_hash.encode() if user and user.password_hash else _DUMMY_HASH
        good = bcrypt.checkpw(password.encode()[:72], stored)
        if user is None or user.password_hash is None or not good:
            self._refused(name, "password", client)
        assert user is not None
        return self._start_session(user, "password", client)

    def sign_in_link(self, token: str, client: str) -> SignedIn:
        now = self.bastion.clock.now()
        link = self.bastion.store.get_web_token(token_hash(token))
        used = False
        if link is not None and link.kind is WebTokenKind.LINK:
            # Deleted whatever happens next: a link is tried once, by one browser.
            with self.bastion.store.transaction() as tx:
                used = tx.delete_web_token(link.token_hash)
        if link is None or not used:
            self._refused("-", "link", client)
        assert link is not None
        if now >= link.expires_at:
            self._refused(link.user, "link", client, "the link expired")
        user = self.bastion.store.get_web_user(link.user)
        if user is None:
            self._refused(link.user, "link", client)
        assert user is not None
        return self._start_session(user, "link", client)

    def session_user(self, token: str) -> WebUser | None:
        """The account signed in with this cookie, while the session lasts."""
        if not token:
            return None
        found = self.bastion.store.get_web_token(token_hash(token))
        if found is None or found.kind is not WebTokenKind.SESSION:
            return None
        if self.bastion.clock.now() >= found.expires_at:
            return None
        return self.bastion.store.get_web_user(found.user)

    def sign_out(self, token: str, client: str) -> None:
        user = self.session_user(token)
        now = self.bastion.clock.now()
        with self.bastion.store.transaction() as tx:
            tx.delete_web_token(token_hash(token))
            if user is not None:
                tx.append_audit(now, user.name, "web.signed_out", {"client": client})

    def _start_session(self, user: WebUser, method: str, client: str) -> SignedIn:
        now = self.bastion.clock.now()
        token = secrets.token_urlsafe(32)
        session = WebToken(
            token_hash(token),
            WebTokenKind.SESSION,
            user.name,
            now,
            now + self._config.session_ttl,
            client,
        )
        with self.bastion.store.transaction() as tx:
            tx.delete_expired_web_tokens(now)
            tx.insert_web_token(session)
            tx.append_audit(
                now,
                user.name,
                "web.signed_in",
                {"method": method, "client": client, "role": user.role.value},
            )
        return SignedIn(user, token, format_time(session.expires_at))

    def _refused(self, name: str, method: str, client: str, why: str = "") -> None:
        now = self.bastion.clock.now()
        actor = name if _plausible(name) else "-"
        with self.bastion.store.transaction() as tx:
            tx.append_audit(
                now,
                actor,
                "web.signin_failed",
                {"method": method, "client": client, "reason": why or "wrong name or secret"},
            )
        if method == "password":
            raise SignInRefused("wrong user name or password")
        raise SignInRefused("this login link is not valid (used, expired or unknown)")

    @staticmethod
    def _user(tx: StoreTx, name: str) -> WebUser:
        user = tx.get_web_user(name)
        if user is None:
            raise NotFound(f"unknown web user {name!r} (see `bastion web user list`)")
        return user


def _plausible(name: str) -> bool:
    try:
        webpolicy.check_user_name(name)
    except InvalidInput:
        return False
    return True
