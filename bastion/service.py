"""The application API: what humans (through the CLI) and the gateway ask of bastion.

It orchestrates the layers below (config, CA, store, pure policy) and owns the rule
that every state change is audited in the same transaction as the change. It has no
sockets and prints nothing: it returns values and raises `BastionError`s.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import asyncssh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import SSHCertPublicKeyTypes

from bastion import knownhosts, policy
from bastion.auditchain import first_broken
from bastion.ca import CertificateAuthority, CertificateRequest
from bastion.clock import Clock
from bastion.config import DEFAULT_CONFIG_TEXT, Home
from bastion.errors import (
    AlreadyExists,
    InvalidInput,
    KeyMaterialError,
    NotFound,
    VerificationFailed,
)
from bastion.keyfiles import (
    fingerprint,
    generate_keypair,
    is_certificate_file,
    load_private_key,
    parse_public_key,
    public_line,
    read_public_key,
    write_new_file,
    write_temp_beside,
)
from bastion.models import (
    Approval,
    ApprovalState,
    AuditEvent,
    Grant,
    Recording,
    RecordingState,
    Revocation,
    Session,
    SessionKill,
    SslMode,
    Target,
    TargetKind,
    TargetSecret,
)
from bastion.recording import seal
from bastion.store import Store, StoreTx, open_store
from bastion.timespec import format_duration, format_time


@dataclass(frozen=True)
class InitReport:
    home: Path
    created: tuple[str, ...]
    kept: tuple[str, ...]
    ca_public_line: str
    host_public_line: str


@dataclass(frozen=True)
class GrantRequest:
    agent: str
    targets: tuple[str, ...]
    task: str
    ttl: timedelta | None = None
    pubkey: Path | None = None
    generate_key_dir: Path | None = None
    out: Path | None = None
    reason: str = ""
    source_addresses: str | None = None
    no_pty: bool = False
    no_port_forwarding: bool = False
    force_command: str | None = None


@dataclass(frozen=True)
class GrantTerms:
    """What a certificate says, validated, before it has a serial and an id."""

    agent: str
    task: str
    reason: str
    targets: tuple[str, ...]
    window: policy.Window
    permit_pty: bool
    permit_port_forwarding: bool
    source_addresses: tuple[str, ...] = ()
    force_command: str | None = None


@dataclass(frozen=True)
class IssuedGrant:
    grant: Grant
    certificate_path: Path
    private_key_path: Path | None
    ssh_lines: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class RecordingCheck:
    recording: Recording
    ok: bool
    detail: str


@dataclass(frozen=True)
class AuditVerification:
    events: int
    last_hash: str | None


class TargetCheck(Protocol):
    """One connection to a target as the gateway makes it, before the target is stored.

    Each call raises `TargetCheckFailed` with the reason; the implementation is the
    gateway's own upstream code (`transport/probe.py`), handed in by the caller.
    """

    def check_ssh(self, target: Target, secret: TargetSecret) -> None: ...

    def check_postgres(self, target: Target, secret: TargetSecret) -> None: ...

    def scan_host_key(self, host: str, port: int, key_type: str | None) -> str: ...


def initialize(home: Home, clock: Clock, actor: str, passphrase: bytes | None) -> InitReport:
    """Create what is missing of a bastion home; never overwrite a key. Idempotent.

    Everything already there is checked before anything is created (a key must load,
    its `.pub` must match it, a `.pub` needs its key, the store must open), and what
    was created is removed again if a later step fails: a failed init leaves the home
    as it found it.
    """
    host_pub = home.host_key.with_name(home.host_key.name + ".pub")
    ca: CertificateAuthority | None = None
    if home.ca_key.exists():
        ca = CertificateAuthority.load(home.ca_key, passphrase)
        _check_public_key_file(home.ca_pub, home.ca_key, ca.public_line)
    else:
        _check_no_public_key_without_key(home.ca_pub, home.ca_key)
    host_key: Ed25519PrivateKey | None = None
    if home.host_key.exists():
        host_key = load_private_key(home.host_key, None)
        _check_public_key_file(host_pub, home.host_key, public_line(host_key.public_key()))
    else:
        _check_no_public_key_without_key(host_pub, home.host_key)
    shared = bool(home.config.store.url)
    store_existed = home.store_path.exists()
    store: Store | None = None
    if shared or store_existed:
        store, was_empty = _open_store_for_init(home)
        if shared:
            store_existed = not was_empty
            _check_shared_ca(store, ca)

    created: list[str] = []
    kept: list[str] = []
    made: list[Path] = []  # what to remove again, newest last
    try:
        _make_dir(home.root, 0o777, made)  # as umask allows
        if _make_dir(home.keys_dir, 0o700, made):
            created.append("keys/")
        if ca is None:
            generate_keypair(home.ca_key, "bastion-ca", passphrase)
            made += [home.ca_key, home.ca_pub]
            ca = CertificateAuthority.load(home.ca_key, passphrase)
            created += ["keys/ca", "keys/ca.pub"]
        else:
            kept.append("keys/ca")
            if not home.ca_pub.exists():
                write_new_file(home.ca_pub, (ca.public_line + " bastion-ca\n").encode(), 0o644)
                made.append(home.ca_pub)
                created.append("keys/ca.pub")
        if host_key is None:
            host_line = generate_keypair(home.host_key, "bastion-host")
            made += [home.host_key, host_pub]
            created += ["keys/host_ed25519", "keys/host_ed25519.pub"]
        else:
            kept.append("keys/host_ed25519")
            host_line = public_line(host_key.public_key())
            if not host_pub.exists():
                write_new_file(host_pub, (host_line + " bastion-host\n").encode(), 0o644)
                made.append(host_pub)
                created.append("keys/host_ed25519.pub")
        if _make_dir(home.recordings_dir, 0o700, made):
            created.append(f"{home.config.recordings.dir}/")
        if not home.config_path.exists():
            write_new_file(home.config_path, DEFAULT_CONFIG_TEXT.encode(), 0o644)
            made.append(home.config_path)
            created.append("bastion.toml")
        if store is None:
            store = open_store(home.config, home.root, schema="upgrade")
        (kept if store_existed else created).append(
            store.location if shared else home.config.store.path
        )
        # Whenever this CA's creation is not on record (a new CA, a CA made by an init
        # that failed later, or a key brought along), record it now.
        with store.transaction() as tx:
            if not _ca_initialization_recorded(store, ca.fingerprint):
                tx.append_audit(
                    clock.now(),
                    actor,
                    "ca.initialized",
                    {"ca_fingerprint": ca.fingerprint, "encrypted": passphrase is not None},
                )
    except BaseException:
        _remove_made(made)
        raise
    finally:
        if store is not None:
            store.close()
    return InitReport(
        home=home.root,
        created=tuple(created),
        kept=tuple(kept),
        ca_public_line=ca.public_line,
        host_public_line=host_line,
    )


def _open_store_for_init(home: Home) -> tuple[Store, bool]:
    """The store, its schema created if it was empty (then True); one behind needs `migrate`."""
    store = open_store(home.config, home.root, schema="any")
    try:
        empty = store.schema_version() == 0
        if empty:
            store.migrate()
        else:
            store.close()
            store = open_store(home.config, home.root)
    except BaseException:
        store.close()
        raise
    return store, empty


def _check_shared_ca(store: Store, ca: CertificateAuthority | None) -> None:
    """On a shared store, every node must use the CA the store already knows."""
    known = [
        e.details.get("ca_fingerprint") for e in store.audit_events_after(0, ("ca.initialized",))
    ]
    if not known or (ca is not None and ca.fingerprint in known):
        return
    store.close()
    what = "has no CA key" if ca is None else f"has another CA ({ca.fingerprint})"
    raise KeyMaterialError(
        f"the shared state store {store.location} belongs to CA {known[-1]} but this home"
        f" {what}: copy keys/ca, keys/ca.pub and keys/host_ed25519* from the first node"
    )


def _check_public_key_file(pub_path: Path, key_path: Path, expected_line: str) -> None:
    """An existing `.pub` beside a key must hold that key's public half."""
    if not pub_path.exists():
        return
    try:
        found = public_line(read_public_key(pub_path))
    except InvalidInput as exc:
        raise KeyMaterialError(str(exc)) from None
    if found != expected_line:
        raise KeyMaterialError(
            f"{pub_path} does not match {key_path}: it holds another key's public half;"
            " move it away and run `bastion init` to write it again"
        )


def _check_no_public_key_without_key(pub_path: Path, key_path: Path) -> None:
    if pub_path.exists() or pub_path.is_symlink():
        raise AlreadyExists(
            f"{pub_path} already exists but {key_path} does not; move it away (or restore"
            " the key) and run `bastion init` again"
        )


def _make_dir(path: Path, mode: int, made: list[Path]) -> bool:
    """Create `path` (and its missing parents) unless it exists; True if it was created."""
    if path.is_dir():
        return False
    missing = [path, *(p for p in path.parents if not p.exists())]
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"can't create {path}: {exc.strerror}") from None
    made.extend(reversed(missing))
    return True


def _remove_made(made: list[Path]) -> None:
    """Undo a failed init: remove what it created, newest first."""
    for path in reversed(made):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


def _ca_initialization_recorded(store: Store, ca_fingerprint: str) -> bool:
    return any(
        event.action == "ca.initialized" and event.details.get("ca_fingerprint") == ca_fingerprint
        for event in store.audit_events()
    )


class Bastion:
    """One bastion home's state, as seen by one actor at one clock."""

    def __init__(
        self,
        home: Home,
        store: Store,
        clock: Clock,
        actor: str,
        passphrase: bytes | None = None,
    ) -> None:
        self.home = home
        self.store = store
        self.clock = clock
        self.actor = actor
        self._passphrase = passphrase

    @classmethod
    def open(cls, home: Home, clock: Clock, actor: str, passphrase: bytes | None = None) -> Bastion:
        if not home.config.store.url and not home.store_path.exists():
            raise NotFound(f"no bastion state in {home.root}: run `bastion init` first")
        return cls(home, open_store(home.config, home.root), clock, actor, passphrase)

    def close(self) -> None:
        self.store.close()

    def acting_as(self, actor: str) -> Bastion:
        """The same home, store and clock, acting for someone else (a web console user)."""
        return Bastion(self.home, self.store, self.clock, actor, self._passphrase)

    def _audit_details_target(self, target: Target) -> dict[str, object]:
        return {k: v for k, v in target.public_dict().items() if k not in ("created_at",)}

    # -- targets --------------------------------------------------------------

    def add_ssh_target(
        self,
        name: str,
        host: str,
        port: int,
        user: str,
        identity: Path,
        host_key: str,
        *,
        check: TargetCheck | None,
        host_key_type: str | None = None,
    ) -> Target:
        """Register an SSH target. With `check`, it is first connected to once (host key,
        login) and refused if that fails; `check=None` is `--no-check`, on purpose."""
        policy.check_target_name(name)
        _check_host(host)
        policy.check_port(port)
        if not user:
            raise InvalidInput("--user must not be empty")
        secret = _read_identity(identity)
        pinned = _read_host_key(host_key, host, port, host_key_type)
        target = Target(
            name=name,
            kind=TargetKind.SSH,
            host=host,
            port=port,
            user=user,
            host_key=pinned,
            created_at=self.clock.now(),
            created_by=self.actor,
        )
        self._check_name_free(name)
        if check is not None:
            check.check_ssh(target, secret)
        self._insert_target(target, secret, checked=check is not None)
        return target

    def add_postgres_target(
        self,
        name: str,
        host: str,
        port: int,
        database: str,
        user: str,
        password: str,
        sslmode: SslMode = SslMode.DISABLE,
        sslrootcert: Path | None = None,
        *,
        check: TargetCheck | None,
    ) -> Target:
        """Register a PostgreSQL target; `check` as for `add_ssh_target` (TLS as `sslmode`
        says, the login, the database)."""
        policy.check_target_name(name)
        _check_host(host)
        policy.check_port(port)
        if not database or not user:
            raise InvalidInput("--database and --user must not be empty")
        if not password:
            raise InvalidInput("the target's password is empty")
        if sslmode is SslMode.VERIFY_FULL and sslrootcert is None:
            raise InvalidInput("--sslmode verify-full needs --sslrootcert (the CA to verify with)")
        if sslrootcert is not None:
            if sslmode is not SslMode.VERIFY_FULL:
                raise InvalidInput("--sslrootcert is only used with --sslmode verify-full")
            if not sslrootcert.is_file():
                raise InvalidInput(f"--sslrootcert {sslrootcert}: no such file")
        target = Target(
            name=name,
            kind=TargetKind.POSTGRES,
            host=host,
            port=port,
            user=user,
            database=database,
            sslmode=sslmode,
            sslrootcert=str(sslrootcert.resolve()) if sslrootcert else None,
            created_at=self.clock.now(),
            created_by=self.actor,
        )
        secret = TargetSecret(password)
        self._check_name_free(name)
        if check is not None:
            check.check_postgres(target, secret)
        self._insert_target(target, secret, checked=check is not None)
        return target

    def _check_name_free(self, name: str) -> None:
        # Before the check connects anywhere; `_insert_target` asks again, authoritatively.
        if self.store.get_target(name) is not None:
            raise AlreadyExists(f"target {name!r} already exists")

    def _insert_target(self, target: Target, secret: TargetSecret, *, checked: bool) -> None:
        details = {**self._audit_details_target(target), "checked": checked}
        with self.store.transaction() as tx:
            if tx.get_target(target.name) is not None:
                raise AlreadyExists(f"target {target.name!r} already exists")
            tx.insert_target(target, secret)
            tx.append_audit(target.created_at, self.actor, "target.added", details)

    def list_targets(self) -> list[Target]:
        return self.store.list_targets()

    def get_target(self, name: str) -> Target:
        target = self.store.get_target(name)
        if target is None:
            raise NotFound(f"unknown target {name!r} (see `bastion target list`)")
        return target

    def remove_target(self, name: str, force: bool = False) -> Target:
        now = self.clock.now()
        with self.store.transaction() as tx:
            target = tx.get_target(name)
            if target is None:
                raise NotFound(f"unknown target {name!r} (see `bastion target list`)")
            active = [g.id for g in self.store.list_grants(active_at=now) if name in g.targets]
            if active and not force:
                raise AlreadyExists(
                    f"target {name!r} has active grants ({', '.join(active)}); revoke them"
                    " or use --force"
                )
            tx.delete_target(name)
            tx.append_audit(
                now, self.actor, "target.removed", {"name": name, "active_grants": active}
            )
        return target

    # -- grants ---------------------------------------------------------------

    def load_ca(self) -> CertificateAuthority:
        return CertificateAuthority.load(self.home.ca_key, self._passphrase)

    def issue_grant(self, request: GrantRequest) -> IssuedGrant:
        """Validate everything, then sign and record in one transaction."""
        agent = policy.check_agent_name(request.agent)
        task = policy.check_task_name(request.task)
        if not request.targets:
            raise InvalidInput("give at least one --target")
        names = tuple(dict.fromkeys(request.targets))
        targets = [self.get_target(name) for name in names]
        now = self.clock.now()
        window = policy.grant_window(now, request.ttl, self.home.config.grants)
        sources = (
            policy.check_source_addresses(request.source_addresses)
            if request.source_addresses is not None
            else ()
        )
        if request.force_command is not None and not request.force_command.strip():
            raise InvalidInput("--force-command must not be empty")
        perms = policy.certificate_permissions(
            targets, no_pty=request.no_pty, no_port_forwarding=request.no_port_forwarding
        )
        if (request.pubkey is None) == (request.generate_key_dir is None):
            raise InvalidInput("give exactly one of --pubkey FILE.pub or --generate-key DIR")
        cert_path = _certificate_path(request)
        ca = self.load_ca()

        with self._agent_key(request, agent) as (public_key, key_path, _pub):
            written: Path | None = None
            try:
                with self.store.transaction() as tx:
                    grant, cert_line = self.sign_grant(
                        tx,
                        ca,
                        GrantTerms(
                            agent=agent,
                            task=task,
                            reason=request.reason,
                            targets=names,
                            window=window,
                            permit_pty=perms.permit_pty,
                            permit_port_forwarding=perms.permit_port_forwarding,
                            source_addresses=sources,
                            force_command=request.force_command,
                        ),
                        public_key,
                        now,
                    )
                    # Written aside, last inside the transaction (if that fails, nothing is
                    # recorded), and put in place only once the grant is committed: a
                    # certificate never exists without its grant.
                    written = _write_certificate_aside(cert_path, cert_line.encode())
                _put_certificate_in_place(written, cert_path, grant.id)
                written = None
            finally:
                if written is not None:  # the transaction failed: no certificate
                    with contextlib.suppress(FileNotFoundError):
                        written.unlink()
        return IssuedGrant(
            grant=grant,
            certificate_path=cert_path,
            private_key_path=key_path,
            ssh_lines=self.ssh_lines(targets, key_path),
        )

    def sign_grant(
        self,
        tx: StoreTx,
        ca: CertificateAuthority,
        terms: GrantTerms,
        public_key: SSHCertPublicKeyTypes,
        now: datetime,
        audit_extra: dict[str, object] | None = None,
        actor: str | None = None,
    ) -> tuple[Grant, str]:
        """Record a grant and sign its certificate inside `tx`: the `-cert.pub` line."""
        actor = actor or self.actor
        grant_id = _new_grant_id(tx.grant_id_taken)
        serial = tx.next_serial()
        kid = policy.key_id(grant_id, terms.agent, terms.task)
        grant = Grant(
            id=grant_id,
            agent=terms.agent,
            task=terms.task,
            reason=terms.reason,
            targets=terms.targets,
            valid_after=terms.window.valid_after,
            valid_before=terms.window.valid_before,
            created_at=now,
            created_by=actor,
            serial=serial,
            key_id=kid,
            key_fingerprint=fingerprint(public_key),
            permit_pty=terms.permit_pty,
            permit_port_forwarding=terms.permit_port_forwarding,
            source_addresses=terms.source_addresses,
            force_command=terms.force_command,
        )
        cert_line = ca.sign(
            CertificateRequest(
                public_key=public_key,
                serial=serial,
                key_id=kid,
                principals=terms.targets,
                valid_after=grant.valid_after,
                valid_before=grant.valid_before,
                permit_pty=grant.permit_pty,
                permit_port_forwarding=grant.permit_port_forwarding,
                source_addresses=terms.source_addresses,
                force_command=terms.force_command,
            )
        )
        tx.insert_grant(grant)
        tx.append_audit(now, actor, "grant.issued", {**_grant_audit(grant), **(audit_extra or {})})
        return grant, f"{cert_line} {terms.agent}@{grant_id}\n"

    @contextlib.contextmanager
    def _agent_key(
        self, request: GrantRequest, agent: str
    ) -> Iterator[tuple[SSHCertPublicKeyTypes, Path | None, Path]]:
        """The agent's public key; a generated pair is removed again if issuing fails."""
        if request.pubkey is not None:
            pub_path = request.pubkey
            yield read_public_key(pub_path), _private_key_beside(pub_path), pub_path
            return
        assert request.generate_key_dir is not None
        key_dir = request.generate_key_dir
        try:
            key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"can't create {key_dir}: {exc.strerror}") from None
        key_path = key_dir / "id_ed25519"
        if key_path.exists():
            raise AlreadyExists(f"{key_path} already exists; reuse it with --pubkey {key_path}.pub")
        line = generate_keypair(key_path, f"{agent}@bastion")
        pub_path = key_path.with_name(key_path.name + ".pub")
        try:
            yield parse_public_key(line, str(pub_path)), key_path, pub_path
        except BaseException:
            key_path.unlink(missing_ok=True)
            pub_path.unlink(missing_ok=True)
            raise

    def client_address(self) -> tuple[str, int]:
        """The bastion's address for agents: `server.advertise`, else a live node's."""
        return self.home.config.server.client_address(self.store.list_nodes(), self.clock.now())

    def ssh_lines(self, targets: list[Target], key_path: Path | None) -> tuple[str, ...]:
        host, port = self.client_address()
        key = f" -i {key_path}" if key_path else ""
        lines = []
        for target in targets:
            if target.kind is TargetKind.POSTGRES:
                lines.append(
                    f"ssh -p {port}{key} -N -L 15432:{target.name}:5432 {target.name}@{host}"
                    f"   # then: psql -h 127.0.0.1 -p 15432 -d {target.database}"
                )
            else:
                lines.append(f"ssh -p {port}{key} {target.name}@{host}")
        return tuple(lines)

    def list_grants(self, include_all: bool = False, task: str | None = None) -> list[Grant]:
        active_at = None if include_all else self.clock.now()
        return self.store.list_grants(active_at=active_at, task=task)

    def get_grant(self, grant_id: str) -> Grant:
        grant = self.store.get_grant(grant_id)
        if grant is None:
            raise NotFound(f"unknown grant {grant_id!r} (see `bastion grant list --all`)")
        return grant

    def revoke_grant(self, grant_id: str, reason: str = "") -> Grant:
        now = self.clock.now()
        with self.store.transaction() as tx:
            grant = tx.get_grant(grant_id)
            if grant is None:
                raise NotFound(f"unknown grant {grant_id!r} (see `bastion grant list --all`)")
            if grant.revocation is not None:
                raise AlreadyExists(
                    f"grant {grant_id} was already revoked at {format_time(grant.revocation.at)}"
                    f" by {grant.revocation.by}"
                )
            self._revoke(tx, grant, reason, now)
        return self.get_grant(grant_id)

    def _revoke(
        self, tx: StoreTx, grant: Grant, reason: str, now: datetime, **details: object
    ) -> None:
        revocation = Revocation(at=now, by=self.actor, reason=reason or "no reason given")
        tx.insert_revocation(grant.id, revocation)
        tx.append_audit(
            now,
            self.actor,
            "grant.revoked",
            {
                "grant": grant.id,
                "agent": grant.agent,
                "task": grant.task,
                "serial": grant.serial,
                "reason": revocation.reason,
                "state_before": grant.state(now).value,
                **details,
            },
        )

    # -- sessions and approvals -------------------------------------------------

    def list_sessions(self, active_only: bool = False, limit: int = 1000) -> list[Session]:
        return self.store.list_sessions(active_only=active_only, limit=limit)

    def get_session(self, session_id: str) -> Session:
        session = self.store.get_session(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (see `bastion sessions list`)")
        return session

    def kill_session(self, session_id: str, reason: str = "", revoke: bool = False) -> SessionKill:
        """Have the gateway running the session close the whole SSH connection that carries
        it (it watches the audit feed), with every session on it; with `revoke`, revoke
        the session's grant in the same transaction, so its certificate logs in no more.

        Without `revoke` the grant stays valid: the agent may log in again. The gateways
        keep no cool-down for a killed grant (see README, "Killing a session").
        """
        now = self.clock.now()
        reason = reason or "no reason given"
        # What else is open, read before the transaction: for the report only, the gateway
        # closes what is open when it acts.
        open_now = self.store.list_sessions(active_only=True, limit=100_000)
        with self.store.transaction() as tx:
            session = tx.get_session(session_id)
            if session is None:
                raise NotFound(f"unknown session {session_id!r} (see `bastion sessions list`)")
            if session.ended_at is not None:
                raise AlreadyExists(
                    f"session {session_id} already ended at {format_time(session.ended_at)}"
                    f" ({session.end_reason})"
                )
            grant = tx.get_grant(session.grant_id)
            if grant is None:  # a session row always names a stored grant
                raise NotFound(f"session {session_id} names unknown grant {session.grant_id!r}")
            live = [s for s in open_now if s.grant_id == session.grant_id]
            # One connection: the same node and the same client address and port.
            connection = [session] + [
                s
                for s in live
                if s.id != session.id and (s.node, s.client) == (session.node, session.client)
            ]
            revoking = revoke and grant.revocation is None
            # The kill first: the feed delivers events in order, so the connection closes
            # as `killed` and the grant's other connections as `revoked`.
            tx.append_audit(
                now,
                self.actor,
                "session.kill_requested",
                {
                    "session": session_id,
                    "grant": session.grant_id,
                    "agent": session.agent,
                    "node": session.node,
                    "client": session.client,
                    "sessions": [s.id for s in connection],
                    "revoke": revoking,
                    "reason": reason,
                },
            )
            if revoking:
                self._revoke(tx, grant, reason, now, session=session_id)
        closing = {s.id for s in connection}
        others = tuple(s for s in live if s.id not in closing)
        return SessionKill(
            session=session,
            connection=tuple(connection),
            grant=self.get_grant(grant.id) if revoking else grant,
            revoked=revoking,
            grant_sessions=others if revoking else (),
        )

    def list_approvals(self, include_all: bool = False) -> list[Approval]:
        """Pending requests still within their wait (all of them with `include_all`)."""
        now = self.clock.now()
        found = self.store.list_approvals(pending_only=not include_all)
        return [a for a in found if include_all or a.expires_at > now]

    def get_approval(self, approval_id: str) -> Approval:
        approval = self.store.get_approval(approval_id)
        if approval is None:
            raise NotFound(f"unknown approval {approval_id!r} (see `bastion approvals list`)")
        return approval

    def decide_approval(self, approval_id: str, approve: bool, reason: str = "") -> Approval:
        now = self.clock.now()
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        with self.store.transaction() as tx:
            approval = tx.get_approval(approval_id)
            if approval is None:
                raise NotFound(f"unknown approval {approval_id!r} (see `bastion approvals list`)")
            if approval.state is not ApprovalState.PENDING:
                raise AlreadyExists(
                    f"approval {approval_id} is already {approval.state.value}"
                    + (f" (by {approval.decided_by})" if approval.decided_by else "")
                )
            if now >= approval.expires_at:
                raise AlreadyExists(f"approval {approval_id} has timed out")
            if self.actor == approval.agent:
                raise InvalidInput(f"{self.actor} asked for {approval_id} and can't approve it")
            reason = reason or ("approved" if approve else "denied")
            tx.decide_approval(approval_id, state, now, self.actor, reason)
            tx.append_audit(
                now,
                self.actor,
                "approval.decided",
                {
                    "approval": approval_id,
                    "state": state.value,
                    "session": approval.session_id,
                    "grant": approval.grant_id,
                    "text": approval.text,
                    "reason": reason,
                },
            )
        return self.get_approval(approval_id)

    # -- recordings -------------------------------------------------------------

    def list_recordings(
        self,
        agent: str | None = None,
        target: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
    ) -> list[Recording]:
        return self.store.list_recordings(agent=agent, target=target, task=task, since=since)

    def get_recording(self, session_id: str) -> Recording:
        recording = self.store.get_recording(session_id)
        if recording is None:
            raise NotFound(
                f"no recording for session {session_id!r} (see `bastion recordings list`)"
            )
        return recording

    def recording_file(self, session_id: str) -> Path:
        """The file of a recording that can be read; a clear error if it can't."""
        recording = self.get_recording(session_id)
        if recording.state is RecordingState.PRUNED:
            raise NotFound(f"recording of {session_id} was pruned")
        path = self.home.recordings_dir / recording.path
        if not path.is_file():
            raise NotFound(self._missing_recording(recording, path))
        return path

    def _missing_recording(self, recording: Recording, path: Path) -> str:
        here = self.home.config.server.node_name
        if recording.node != here:
            return (
                f"recording of {recording.session_id} was written on node {recording.node} and"
                f" is not reachable from this node ({here}): no {path}; share the recordings"
                " directory between nodes (see README) or run this on that node"
            )
        return f"recording file of {recording.session_id} is missing: {path}"

    def readable_recordings(
        self,
        agent: str | None = None,
        target: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
    ) -> list[tuple[Recording, Path]]:
        """Recordings whose files are there to read (not pruned, not lost), oldest first."""
        found = []
        for recording in self.list_recordings(agent=agent, target=target, task=task, since=since):
            path = self.home.recordings_dir / recording.path
            if recording.state is not RecordingState.PRUNED and path.is_file():
                found.append((recording, path))
        return found

    def note_recording_viewed(self, session_id: str, how: str) -> None:
        """Audit that someone watched a recording: it may show what was typed at prompts."""
        with self.store.transaction() as tx:
            tx.append_audit(
                self.clock.now(),
                self.actor,
                "recording.viewed",
                {"session": session_id, "how": how},
            )

    def verify_recording(self, session_id: str) -> RecordingCheck:
        """Recompute the file's SHA-256 and check it against the signed seal in the audit chain."""
        recording = self.get_recording(session_id)
        if recording.state is RecordingState.PRUNED:
            return RecordingCheck(recording, ok=True, detail="pruned by retention")
        active = self.store.get_session(session_id)
        if recording.state is RecordingState.RECORDING and active and active.active:
            return RecordingCheck(recording, ok=True, detail="still recording")
        seals = [
            e
            for e in self.store.audit_events_after(0, ("recording.closed", "recording.recovered"))
            if e.details.get("session") == session_id
        ]
        if not seals:
            return RecordingCheck(recording, ok=False, detail="no seal in the audit chain")
        sealed = seals[-1].details
        path = self.home.recordings_dir / recording.path
        if not path.exists():
            if recording.node != self.home.config.server.node_name:
                detail = self._missing_recording(recording, path)
                return RecordingCheck(recording, ok=False, detail=detail)
            return RecordingCheck(recording, ok=False, detail=f"file deleted: {path}")
        digest, size = seal.file_sha256(path)
        if digest != sealed.get("sha256"):
            sealed_size = sealed.get("size")
            what = "truncated" if isinstance(sealed_size, int) and size < sealed_size else "edited"
            return RecordingCheck(
                recording,
                ok=False,
                detail=f"{what}: SHA-256 {digest[:16]}… ({size} bytes) does not match the seal"
                f" {str(sealed.get('sha256'))[:16]}… ({sealed_size} bytes)",
            )
        signature = sealed.get("signature")
        host_key = load_private_key(self.home.host_key, None).public_key()
        if not isinstance(signature, str) or not seal.signature_valid(
            host_key, session_id, digest, size, signature
        ):
            return RecordingCheck(recording, ok=False, detail="the seal's signature is invalid")
        return RecordingCheck(recording, ok=True, detail=f"sha256 {digest} ({size} bytes)")

    def prune_recordings(self, older_than: timedelta, dry_run: bool = False) -> list[Recording]:
        now = self.clock.now()
        old = self.store.list_recordings(
            ended_before=now - older_than,
            states=(RecordingState.CLOSED, RecordingState.CRASHED, RecordingState.FAILED),
        )
        # Files another node wrote that this node can't see are left for that node to prune.
        here = self.home.config.server.node_name
        old = [r for r in old if r.node == here or (self.home.recordings_dir / r.path).exists()]
        if dry_run or not old:
            return old
        for recording in old:
            path = self.home.recordings_dir / recording.path
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".idx").unlink(missing_ok=True)  # the replay cache
        with self.store.transaction() as tx:
            for recording in old:
                tx.update_recording(recording.session_id, RecordingState.PRUNED)
            tx.append_audit(
                now,
                self.actor,
                "recordings.pruned",
                {
                    "older_than": format_duration(older_than),
                    "sessions": [r.session_id for r in old],
                },
            )
        return old

    # -- audit ----------------------------------------------------------------

    def audit_events(self, since: datetime | None = None) -> list[AuditEvent]:
        return list(self.store.audit_events(since))

    def verify_audit(self) -> AuditVerification:
        events = list(self.store.audit_events())
        broken = first_broken(events)
        if broken is not None:
            event, why = broken
            raise VerificationFailed(
                f"audit chain broken at event {event.seq} ({event.action} at"
                f" {format_time(event.at)}): {why}"
            )
        return AuditVerification(events=len(events), last_hash=events[-1].hash if events else None)


def _grant_audit(grant: Grant) -> dict[str, object]:
    return {
        "grant": grant.id,
        "agent": grant.agent,
        "task": grant.task,
        "reason": grant.reason,
        "targets": list(grant.targets),
        "serial": grant.serial,
        "key_id": grant.key_id,
        "key_fingerprint": grant.key_fingerprint,
        "valid_after": grant.valid_after.isoformat(),
        "valid_before": grant.valid_before.isoformat(),
        "permit_pty": grant.permit_pty,
        "permit_port_forwarding": grant.permit_port_forwarding,
        "source_addresses": list(grant.source_addresses),
        "force_command": grant.force_command,
    }


def _new_grant_id(taken: Callable[[str], bool]) -> str:
    for _ in range(20):
        candidate = "g-" + secrets.token_hex(4)
        if not taken(candidate):
            return candidate
    raise RuntimeError("could not allocate a unique grant id")


def _certificate_path(request: GrantRequest) -> Path:
    """Where the certificate goes; never over the agent's own keys nor over a non-certificate."""
    if request.pubkey is not None:
        pub_path = request.pubkey
        name = pub_path.name
        key_path = pub_path.with_name(name[: -len(".pub")]) if name.endswith(".pub") else None
    else:
        assert request.generate_key_dir is not None
        key_path = request.generate_key_dir / "id_ed25519"
        pub_path = key_path.with_name(key_path.name + ".pub")
    if request.out is None:
        cert_path = _cert_path_for(pub_path)
        what = str(cert_path)
    else:
        cert_path = request.out
        what = f"--out {cert_path}"
        out = _resolved(cert_path)
        if out == _resolved(pub_path):
            raise InvalidInput(
                f"{what} is the agent's public key; the certificate goes in a file of its own"
                f" (default: {_cert_path_for(pub_path)})"
            )
        if key_path is not None and out == _resolved(key_path):
            raise InvalidInput(
                f"{what} is the agent's private key; the certificate goes in a file of its own"
                f" (default: {_cert_path_for(pub_path)})"
            )
    try:
        is_certificate = is_certificate_file(cert_path)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    if is_certificate is False:
        raise AlreadyExists(
            f"{what} exists and is not an OpenSSH certificate; refusing to overwrite it"
        )
    return cert_path


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare as given
        return path.absolute()


def _write_certificate_aside(cert_path: Path, data: bytes) -> Path:
    try:
        return write_temp_beside(cert_path, data, 0o644)
    except OSError as exc:
        raise InvalidInput(f"can't write certificate {cert_path}: {exc.strerror}") from None


def _put_certificate_in_place(written: Path, cert_path: Path, grant_id: str) -> None:
    try:
        os.replace(written, cert_path)
    except OSError as exc:
        # Most unlikely (same folder, just written), and the grant is committed by now.
        raise InvalidInput(
            f"grant {grant_id} is recorded but its certificate could not be put at"
            f" {cert_path} ({exc.strerror}): revoke it with `bastion grant revoke {grant_id}`"
        ) from None


def _cert_path_for(pub_path: Path) -> Path:
    """OpenSSH's convention: `id_ed25519.pub` -> `id_ed25519-cert.pub`."""
    name = pub_path.name
    stem = name[: -len(".pub")] if name.endswith(".pub") else name
    return pub_path.with_name(stem + "-cert.pub")


def _private_key_beside(pub_path: Path) -> Path | None:
    if pub_path.name.endswith(".pub"):
        candidate = pub_path.with_name(pub_path.name[: -len(".pub")])
        if candidate.exists():
            return candidate
    return None


def _check_host(host: str) -> None:
    if not host.strip():
        raise InvalidInput("--host must not be empty")


def _read_identity(path: Path) -> TargetSecret:
    """The upstream login key: an unencrypted OpenSSH/PEM private key the gateway can use."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"can't read --identity {path}: {exc.strerror}") from None
    try:
        asyncssh.import_private_key(data)
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            raise KeyMaterialError(
                f"--identity {path} is encrypted; the bastion needs an unencrypted key"
            ) from None
        raise InvalidInput(f"--identity {path} is not a private key ({exc})") from None
    return TargetSecret(data.decode("ascii", errors="strict"))


def _read_host_key(value: str, host: str, port: int, key_type: str | None) -> str:
    """The host key to pin: from a known_hosts file (`ssh-keyscan`'s output), a `.pub`
    file or a literal key line; the one for `host:port`, of `key_type` or the strongest."""
    path = Path(value)
    if not value.lstrip().startswith(("ssh-", "ecdsa-", "sk-")) and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InvalidInput(f"can't read --host-key {path}: {reason}") from None
        source = str(path)
    else:
        text, source = value, "--host-key"
    return knownhosts.select_host_key(text, source, host, port, key_type).public_line
