"""The SQLite state store: migrations, persistence, atomic transactions, concurrent writers."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bastion.auditchain import GENESIS_HASH, event_hash, first_broken
from bastion.errors import StoreError
from bastion.models import (
    AccessRequest,
    Agent,
    Grant,
    RequestState,
    Revocation,
    SslMode,
    Target,
    TargetKind,
    TargetSecret,
)
from bastion.store.migrations import LATEST_VERSION, MIGRATIONS
from bastion.store.sqlite import UNREADABLE_DETAILS, SqliteStore, UnreadableTime

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def ssh_target(name: str = "prod-web") -> Target:
    return Target(
        name=name,
        kind=TargetKind.SSH,
        host="127.0.0.1",
        port=2201,
        user="deploy",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKwlZjjP9d7SpKOwoMyhjdNOekr0ZssYnyHzMCwEcOqi",
        created_at=NOW,
        created_by="alice",
    )


def pg_target(name: str = "prod-db") -> Target:
    return Target(
        name=name,
        kind=TargetKind.POSTGRES,
        host="127.0.0.1",
        port=5432,
        user="app",
        database="appdb",
        sslmode=SslMode.VERIFY_FULL,
        sslrootcert="/etc/ssl/root.crt",
        created_at=NOW,
        created_by="alice",
    )


def grant(grant_id: str, serial: int, *, task: str = "hotfix-1422", start: datetime = NOW) -> Grant:
    return Grant(
        id=grant_id,
        agent="chatgpt-agent",
        task=task,
        reason="fix the outage",
        targets=("prod-web", "prod-db"),
        valid_after=start - timedelta(seconds=60),
        valid_before=start + timedelta(minutes=30),
        created_at=start,
        created_by="alice",
        serial=serial,
        key_id=f"grant={grant_id} agent=chatgpt-agent task={task}",
        key_fingerprint="SHA256:ZE7iIQYZpddXpUZefIVntveAHYU7spqUOowvGq+42cU",
        permit_pty=True,
        permit_port_forwarding=True,
        source_addresses=("10.0.0.0/8",),
        force_command="uptime",
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path)
    yield opened
    opened.close()


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# -- schema --------------------------------------------------------------------


def test_new_store_is_at_latest_schema(store: SqliteStore, db_path: Path) -> None:
    assert store.schema_version() == LATEST_VERSION
    assert count(db_path, "schema_version") == len(MIGRATIONS)


def test_migrations_are_idempotent(db_path: Path) -> None:
    for _ in range(3):
        SqliteStore(db_path).close()
    assert count(db_path, "schema_version") == len(MIGRATIONS)
    store = SqliteStore(db_path)
    try:
        assert store.schema_version() == LATEST_VERSION
        # The serial counter is seeded once, not once per open.
        with store.transaction() as tx:
            assert tx.next_serial() == 1
    finally:
        store.close()


def test_newer_schema_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST_VERSION + 1,))
    with pytest.raises(StoreError) as caught:
        SqliteStore(db_path)
    assert str(caught.value) == (
        f"state store {db_path} has schema version {LATEST_VERSION + 1}, newer than this"
        f" bastion ({LATEST_VERSION}); upgrade bastion"
    )


def test_uses_wal(store: SqliteStore, db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_not_a_database_is_a_store_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=rf"^can't open state store {db_path}: "):
        SqliteStore(db_path)


def test_file_is_private(store: SqliteStore, db_path: Path) -> None:
    with store.transaction() as tx:
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
    # The database, and the WAL and shared-memory files that hold the same secrets.
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert db_path in files
    assert {p.name for p in files} >= {"state.db", "state.db-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_creates_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "state.db"
    SqliteStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- persistence -----------------------------------------------------------------


def test_everything_survives_reopening(db_path: Path) -> None:
    store = SqliteStore(db_path)
    with store.transaction() as tx:
        tx.insert_target(ssh_target(), TargetSecret("-----BEGIN OPENSSH PRIVATE KEY-----\n..."))
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
        tx.insert_grant(grant("g-00000001", tx.next_serial()))
        tx.insert_revocation("g-00000001", Revocation(NOW, "bob", "done"))
        tx.append_audit(NOW, "alice", "grant.issued", {"grant": "g-00000001", "n": [1, "é"]})
    store.close()

    store = SqliteStore(db_path)
    try:
        assert store.list_targets() == [pg_target(), ssh_target()]  # by name
        assert store.get_target("prod-web") == ssh_target()
        assert store.get_target("nope") is None
        assert store.get_target_secret("prod-db") == TargetSecret("s3cret")
        expected = grant("g-00000001", 1)
        got = store.get_grant("g-00000001")
        assert got is not None
        assert got.revocation == Revocation(NOW, "bob", "done")
        assert got == Grant(**{**expected.__dict__, "revocation": got.revocation})
        assert store.get_grant("g-missing") is None
        [event] = store.audit_events()
        assert (event.seq, event.actor, event.action) == (1, "alice", "grant.issued")
        assert event.details == {"grant": "g-00000001", "n": [1, "é"]}
        assert event.prev_hash == GENESIS_HASH
        assert first_broken([event]) is None
    finally:
        store.close()


def test_deleting_a_target_deletes_its_secret(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
    with store.transaction() as tx:
        tx.delete_target("prod-db")
    assert store.get_target("prod-db") is None
    assert store.get_target_secret("prod-db") is None


def test_list_grants_filters(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.insert_grant(grant("g-old", tx.next_serial(), start=NOW - timedelta(hours=2)))
        tx.insert_grant(grant("g-now", tx.next_serial()))
        tx.insert_grant(grant("g-other", tx.next_serial(), task="other-task"))
        tx.insert_grant(grant("g-revoked", tx.next_serial()))
        tx.insert_revocation("g-revoked", Revocation(NOW, "bob", "done"))
        tx.insert_grant(grant("g-future", tx.next_serial(), start=NOW + timedelta(hours=1)))

    def ids(**kwargs: object) -> list[str]:
        return [g.id for g in store.list_grants(**kwargs)]  # type: ignore[arg-type]

    assert ids() == ["g-old", "g-now", "g-other", "g-revoked", "g-future"]
    assert ids(active_at=NOW) == ["g-now", "g-other"]
    assert ids(task="hotfix-1422") == ["g-old", "g-now", "g-revoked", "g-future"]
    assert ids(active_at=NOW, task="other-task") == ["g-other"]


def test_audit_events_since(store: SqliteStore) -> None:
    with store.transaction() as tx:
        for minutes in (0, 10, 20):
            tx.append_audit(NOW + timedelta(minutes=minutes), "a", "x", {"m": minutes})
    since = [e.details["m"] for e in store.audit_events(NOW + timedelta(minutes=10))]
    assert since == [10, 20]


# -- transactions --------------------------------------------------------------


def test_failed_transaction_leaves_nothing(store: SqliteStore, db_path: Path) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        assert tx.next_serial() == 1
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
        tx.insert_grant(grant("g-00000001", 1))
        tx.append_audit(NOW, "alice", "target.added", {"name": "prod-db"})
        raise Boom

    assert store.get_target("prod-db") is None
    assert store.get_target_secret("prod-db") is None
    assert store.get_grant("g-00000001") is None
    assert list(store.audit_events()) == []
    for table in ("targets", "target_secrets", "grants", "grant_targets", "certificates"):
        assert count(db_path, table) == 0, table
    with store.transaction() as tx:
        assert tx.next_serial() == 1  # the counter rolled back too
    # ... and the store is still usable.
    with store.transaction() as tx:
        tx.append_audit(NOW, "alice", "x", {})
    assert [e.seq for e in store.audit_events()] == [1]


def test_constraint_violation_rolls_back_the_whole_transaction(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.insert_target(ssh_target(), TargetSecret("k"))
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
        tx.append_audit(NOW, "alice", "target.added", {"name": "prod-db"})
        tx.insert_target(ssh_target(), TargetSecret("k"))  # duplicate name
    assert [t.name for t in store.list_targets()] == ["prod-web"]
    assert list(store.audit_events()) == []


def test_serials_increase(store: SqliteStore, db_path: Path) -> None:
    serials = []
    for _ in range(3):
        with store.transaction() as tx:
            serials.append(tx.next_serial())
    with store.transaction() as tx:
        serials += [tx.next_serial(), tx.next_serial()]
    store.close()
    reopened = SqliteStore(db_path)
    try:
        with reopened.transaction() as tx:
            serials.append(tx.next_serial())
    finally:
        reopened.close()
    assert serials == [1, 2, 3, 4, 5, 6]


def test_grant_id_taken(store: SqliteStore) -> None:
    with store.transaction() as tx:
        assert not tx.grant_id_taken("g-00000001")
        tx.insert_grant(grant("g-00000001", tx.next_serial()))
        assert tx.grant_id_taken("g-00000001")


# -- concurrency ---------------------------------------------------------------


def test_concurrent_writers_keep_the_chain_valid(db_path: Path) -> None:
    """Two stores on one file (the CLI and the server) appending at once, from threads."""
    SqliteStore(db_path).close()
    stores = [SqliteStore(db_path), SqliteStore(db_path)]
    per_thread = 40
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(store: SqliteStore, name: str) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with store.transaction() as tx:
                    serial = tx.next_serial()
                    tx.append_audit(NOW, name, "test.write", {"i": i, "serial": serial})
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(store, f"w{n}-{i}"))
        for n, store in enumerate(stores)
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []

    reader = SqliteStore(db_path)
    try:
        events = list(reader.audit_events())
    finally:
        reader.close()
    assert len(events) == 4 * per_thread
    assert [e.seq for e in events] == list(range(1, 4 * per_thread + 1))
    assert first_broken(events) is None
    serials = sorted(e.details["serial"] for e in events)
    assert serials == list(range(1, 4 * per_thread + 1))  # each serial handed out once
    for name in {e.actor for e in events}:
        mine = [e.details["i"] for e in events if e.actor == name]
        assert mine == list(range(per_thread))


def test_concurrent_first_open_of_a_new_file(tmp_path: Path) -> None:
    errors: list[str] = []
    for round_ in range(100):
        path = tmp_path / f"state-{round_}.db"
        start = threading.Barrier(8)

        def open_store(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                SqliteStore(path).close()
            except StoreError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            break
    assert errors == []


def _open_and_record(path: str, start: Any, results: Any) -> None:
    """In a child process: open a (maybe new) store at the barrier, append one event."""
    start.wait()
    try:
        store = SqliteStore(Path(path))
        try:
            with store.transaction() as tx:
                tx.append_audit(NOW, f"pid-{os.getpid()}", "opened", {})
        finally:
            store.close()
    except StoreError as exc:
        results.put(str(exc))
    else:
        results.put("ok")


def test_concurrent_first_open_from_processes(tmp_path: Path) -> None:
    # The bug as users met it: `bastion serve` and a CLI command creating the state at once.
    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f"state-{round_}.db"
        start = context.Barrier(4)
        results = context.Queue()
        procs = [
            context.Process(target=_open_and_record, args=(str(path), start, results))
            for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert outcomes == ["ok"] * 4
        reader = SqliteStore(path)
        try:
            events = list(reader.audit_events())
            assert reader.schema_version() == LATEST_VERSION
        finally:
            reader.close()
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert first_broken(events) is None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_empty_file_becomes_a_store(db_path: Path) -> None:
    # What a process that lost the race to create the file finds: an empty file.
    db_path.touch(mode=0o600)
    store = SqliteStore(db_path)
    try:
        assert store.schema_version() == LATEST_VERSION
    finally:
        store.close()


def test_setup_waits_for_a_reader_of_a_new_file(db_path: Path) -> None:
    # Another program reading the new file holds it while the store switches it to WAL.
    db_path.touch(mode=0o600)
    reader = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchone()
    timer = threading.Timer(0.3, lambda: reader.execute("COMMIT"))
    timer.start()
    try:
        store = SqliteStore(db_path)
        store.close()
    finally:
        timer.join()
        reader.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- unreadable audit rows -------------------------------------------------------


def _tamper(path: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, params)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("details", '{"name": "prod-db"'),  # cut short
        ("details", "[1, 2]"),  # JSON, but not an object
        ("at", "last tuesday"),
        ("at", "2026-11-28T12:00:00"),  # no time zone
    ],
)
def test_an_unreadable_event_is_returned_and_breaks_the_chain(
    store: SqliteStore, db_path: Path, column: str, value: str
) -> None:
    for i in range(3):
        with store.transaction() as tx:
            tx.append_audit(NOW, "alice", "target.added", {"name": f"t{i}"})
    _tamper(db_path, f"UPDATE audit_events SET {column} = ? WHERE seq = 2", value)

    events = list(store.audit_events())
    assert [e.seq for e in events] == [1, 2, 3]
    broken = first_broken(events)
    assert broken is not None
    assert broken[0].seq == 2
    assert "does not match its hash" in broken[1]
    # The stored text is what is shown, and the event still renders as a dict.
    shown = events[1].to_dict()
    if column == "details":
        assert shown["details"] == {UNREADABLE_DETAILS: value}
    else:
        assert shown["at"] == value
        assert isinstance(events[1].at, UnreadableTime)
    assert json.loads(json.dumps(shown)) == shown
    assert store.audit_events_after(0, ("target.added",))[1].seq == 2


def test_unreadable_time_hashes_as_its_text() -> None:
    at = UnreadableTime("last tuesday")
    assert at.isoformat() == "last tuesday"
    assert str(at) == "last tuesday"
    assert at.astimezone(UTC) is at
    assert "last tuesday" in at.strftime("%Y")
    assert event_hash(1, at, "a", "b", {}, GENESIS_HASH) != event_hash(
        1, NOW, "a", "b", {}, GENESIS_HASH
    )


# -- enrolled agents and access requests ----------------------------------------


def enrolled(name: str = "chatgpt-agent", fingerprint: str = "SHA256:abc") -> Agent:
    return Agent(
        name=name,
        public_key=ssh_target().host_key or "",
        key_fingerprint=fingerprint,
        may_request=("prod-db", "replica-db"),
        max_ttl=timedelta(hours=1),
        created_at=NOW,
        created_by="alice",
    )


def access_request(request_id: str = "r-1", task: str = "hotfix-1422") -> AccessRequest:
    return AccessRequest(
        id=request_id,
        agent="chatgpt-agent",
        key_fingerprint="SHA256:abc",
        targets=("prod-db",),
        task=task,
        reason="fix failing migration",
        ttl=timedelta(minutes=30),
        client="127.0.0.1:50000",
        node="node-a",
        requested_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
    )


def test_agents_round_trip_and_fingerprints_are_unique(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.insert_agent(enrolled())
    assert store.get_agent("chatgpt-agent") == enrolled()
    assert store.get_agent_by_fingerprint("SHA256:abc") == enrolled()
    assert store.list_agents() == [enrolled()]
    # One key belongs to one agent: the same key under another name is refused.
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.insert_agent(enrolled(name="other-agent"))
    assert [a.name for a in store.list_agents()] == ["chatgpt-agent"]
    with store.transaction() as tx:
        tx.delete_agent("chatgpt-agent")
    assert store.get_agent("chatgpt-agent") is None


def test_an_agent_without_max_ttl_round_trips(store: SqliteStore) -> None:
    agent = dataclasses.replace(enrolled(), max_ttl=None, may_request=("*",))
    with store.transaction() as tx:
        tx.insert_agent(agent)
    assert store.get_agent(agent.name) == agent
    assert agent.may_request_target("anything")
    assert not enrolled().may_request_target("prod-web")


def test_a_request_is_decided_once(store: SqliteStore) -> None:
    with store.transaction() as tx:
        tx.insert_request(access_request())
    assert store.get_request("r-1") == access_request()
    assert [r.id for r in store.list_requests()] == ["r-1"]
    later = NOW + timedelta(minutes=1)
    with store.transaction() as tx:
        tx.decide_request(
            "r-1", RequestState.APPROVED, later, "bob", "ok", grant_id="g-1", certificate="c"
        )
        # A second decision (say the timeout racing the approval) changes nothing.
        tx.decide_request("r-1", RequestState.EXPIRED, later, "bastion", "timed out")
    decided = store.get_request("r-1")
    assert decided is not None
    assert (decided.state, decided.decided_by, decided.grant_id, decided.certificate) == (
        RequestState.APPROVED,
        "bob",
        "g-1",
        "c",
    )
    assert store.list_requests() == []
    assert [r.id for r in store.list_requests(pending_only=False, task="hotfix-1422")] == ["r-1"]
    assert store.list_requests(pending_only=False, task="other") == []
