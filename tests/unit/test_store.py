"""The store contract, run against both backends: SQLite and a real PostgreSQL 15.

Migrations, persistence, atomic transactions, concurrent writers (the audit chain stays
valid and serials are handed out once), unreadable audit rows, agents and requests,
nodes, and what each backend does with a schema that is behind or ahead.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bastion.auditchain import GENESIS_HASH, first_broken
from bastion.errors import StoreError
from bastion.models import Grant, RequestState, Revocation, TargetSecret
from bastion.store import Store
from bastion.store.migrations import LATEST_VERSION, MIGRATIONS
from bastion.store.rows import UNREADABLE_DETAILS, UnreadableTime
from tests.store_backends import (
    NOW,
    Backend,
    access_request,
    enrolled,
    grant,
    pg_target,
    set_back_to_version_4,
    ssh_target,
)


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


# -- schema --------------------------------------------------------------------


def test_new_store_is_at_latest_schema(store: Store, backend: Backend) -> None:
    assert store.schema_version() == LATEST_VERSION
    assert backend.count("schema_version") == len(MIGRATIONS)


def test_migrations_are_idempotent(backend: Backend) -> None:
    for _ in range(3):
        backend.open().close()
    assert backend.count("schema_version") == len(MIGRATIONS)
    store = backend.open()
    try:
        assert store.schema_version() == LATEST_VERSION
        assert store.migrate().pending == ()
        # The serial counter is seeded once, not once per open.
        with store.transaction() as tx:
            assert tx.next_serial() == 1
    finally:
        store.close()


def test_newer_schema_is_refused(backend: Backend) -> None:
    store = backend.open()
    location = store.location
    store.close()
    backend.sql("INSERT INTO schema_version (version) VALUES (?)", LATEST_VERSION + 1)
    for schema in ("check", "any", "upgrade"):
        with pytest.raises(StoreError) as caught:
            backend.open(schema)  # type: ignore[arg-type]
        assert str(caught.value).endswith(
            f"state store {location} has schema version {LATEST_VERSION + 1}, newer than this"
            f" bastion ({LATEST_VERSION}); upgrade bastion"
        )


def test_a_schema_behind_is_reported_and_migrated(backend: Backend) -> None:
    backend.open().close()
    set_back_to_version_4(backend)
    store = backend.open("any")
    try:
        report = store.migrate(dry_run=True)
        assert (report.from_version, report.to_version, report.pending) == (4, 4, (5, 6))
        assert store.schema_version() == 4
        report = store.migrate()
        assert (report.from_version, report.to_version, report.pending) == (
            4,
            LATEST_VERSION,
            (5, 6),
        )
        assert store.schema_version() == LATEST_VERSION
        assert store.list_nodes() == []
    finally:
        store.close()


def test_opening_a_schema_behind(backend: Backend) -> None:
    """SQLite upgrades on open (one machine, as before); PostgreSQL wants `bastion migrate`."""
    backend.open().close()
    set_back_to_version_4(backend)
    if backend.name == "sqlite":
        store = backend.open()
        assert store.schema_version() == LATEST_VERSION
        store.close()
        return
    with pytest.raises(StoreError) as caught:
        backend.open()
    assert str(caught.value).endswith(
        f"has schema version 4, this bastion needs {LATEST_VERSION}: run `bastion migrate`"
    )
    assert "store-secret" not in str(caught.value)


# -- persistence -----------------------------------------------------------------


def test_everything_survives_reopening(backend: Backend) -> None:
    store = backend.open()
    with store.transaction() as tx:
        tx.insert_target(ssh_target(), TargetSecret("-----BEGIN OPENSSH PRIVATE KEY-----\n..."))
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
        tx.insert_grant(grant("g-00000001", tx.next_serial()))
        tx.insert_revocation("g-00000001", Revocation(NOW, "bob", "done"))
        tx.append_audit(NOW, "alice", "grant.issued", {"grant": "g-00000001", "n": [1, "é"]})
    store.close()

    store = backend.open()
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


def test_deleting_a_target_deletes_its_secret(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
    with store.transaction() as tx:
        tx.delete_target("prod-db")
    assert store.get_target("prod-db") is None
    assert store.get_target_secret("prod-db") is None


def test_list_grants_filters(store: Store) -> None:
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


def test_audit_events_since_and_after(store: Store) -> None:
    with store.transaction() as tx:
        for minutes in (0, 10, 20):
            tx.append_audit(NOW + timedelta(minutes=minutes), "a", "x", {"m": minutes})
        tx.append_audit(NOW, "a", "y", {})
    since = [e.details["m"] for e in store.audit_events(NOW + timedelta(minutes=10))]
    assert since == [10, 20]
    assert [e.seq for e in store.audit_events_after(1, ("x",))] == [2, 3]
    assert [e.seq for e in store.audit_events_after(0, ("y", "z"))] == [4]
    assert store.last_audit_seq() == 4


# -- transactions --------------------------------------------------------------


def test_failed_transaction_leaves_nothing(store: Store, backend: Backend) -> None:
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
        assert backend.count(table) == 0, table
    with store.transaction() as tx:
        assert tx.next_serial() == 1  # the counter rolled back too
    # ... and the store is still usable.
    with store.transaction() as tx:
        tx.append_audit(NOW, "alice", "x", {})
    assert [e.seq for e in store.audit_events()] == [1]


def test_constraint_violation_rolls_back_the_whole_transaction(
    store: Store, backend: Backend
) -> None:
    with store.transaction() as tx:
        tx.insert_target(ssh_target(), TargetSecret("k"))
    with pytest.raises(backend.integrity_error), store.transaction() as tx:
        tx.insert_target(pg_target(), TargetSecret("s3cret"))
        tx.append_audit(NOW, "alice", "target.added", {"name": "prod-db"})
        tx.insert_target(ssh_target(), TargetSecret("k"))  # duplicate name
    assert [t.name for t in store.list_targets()] == ["prod-web"]
    assert list(store.audit_events()) == []


def test_serials_increase(backend: Backend) -> None:
    store = backend.open()
    serials = []
    for _ in range(3):
        with store.transaction() as tx:
            serials.append(tx.next_serial())
    with store.transaction() as tx:
        serials += [tx.next_serial(), tx.next_serial()]
    store.close()
    reopened = backend.open()
    try:
        with reopened.transaction() as tx:
            serials.append(tx.next_serial())
    finally:
        reopened.close()
    assert serials == [1, 2, 3, 4, 5, 6]


def test_grant_id_taken(store: Store) -> None:
    with store.transaction() as tx:
        assert not tx.grant_id_taken("g-00000001")
        tx.insert_grant(grant("g-00000001", tx.next_serial()))
        assert tx.grant_id_taken("g-00000001")


# -- concurrency ---------------------------------------------------------------


def test_concurrent_writers_keep_the_chain_valid(backend: Backend) -> None:
    """Two stores on one database (two processes, or two nodes) appending at once."""
    backend.open().close()
    stores = [backend.open(), backend.open()]
    per_thread = 40
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(store: Store, name: str) -> None:
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

    reader = backend.open()
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


def test_listening_for_changes(store: Store, backend: Backend) -> None:
    """PostgreSQL pushes each committed append to listeners; SQLite can't (None: poll)."""
    woken = threading.Event()
    stop = store.listen_for_changes(woken.set)
    if backend.name == "sqlite":
        assert stop is None
        return
    assert stop is not None
    try:
        assert woken.wait(5)  # once on connecting
        woken.clear()
        writer = backend.open()
        try:
            with pytest.raises(RuntimeError), writer.transaction() as tx:
                tx.append_audit(NOW, "alice", "x", {})
                raise RuntimeError  # rolled back: nothing to tell
            assert not woken.wait(0.7)
            with writer.transaction() as tx:
                tx.append_audit(NOW, "alice", "x", {})
            assert woken.wait(2)
        finally:
            writer.close()
    finally:
        stop()


# -- unreadable audit rows -------------------------------------------------------


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
    store: Store, backend: Backend, column: str, value: str
) -> None:
    for i in range(3):
        with store.transaction() as tx:
            tx.append_audit(NOW, "alice", "target.added", {"name": f"t{i}"})
    backend.sql(f"UPDATE audit_events SET {column} = ? WHERE seq = 2", value)

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


# -- enrolled agents and access requests ----------------------------------------


def test_agents_round_trip_and_fingerprints_are_unique(store: Store, backend: Backend) -> None:
    with store.transaction() as tx:
        tx.insert_agent(enrolled())
    assert store.get_agent("chatgpt-agent") == enrolled()
    assert store.get_agent_by_fingerprint("SHA256:abc") == enrolled()
    assert store.list_agents() == [enrolled()]
    # One key belongs to one agent: the same key under another name is refused.
    with pytest.raises(backend.integrity_error), store.transaction() as tx:
        tx.insert_agent(enrolled(name="other-agent"))
    assert [a.name for a in store.list_agents()] == ["chatgpt-agent"]
    with store.transaction() as tx:
        tx.delete_agent("chatgpt-agent")
    assert store.get_agent("chatgpt-agent") is None


def test_an_agent_without_max_ttl_round_trips(store: Store) -> None:
    agent = dataclasses.replace(enrolled(), max_ttl=None, may_request=("*",))
    with store.transaction() as tx:
        tx.insert_agent(agent)
    assert store.get_agent(agent.name) == agent
    assert agent.may_request_target("anything")
    assert not enrolled().may_request_target("prod-web")


def test_a_request_is_decided_once(store: Store) -> None:
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


# -- nodes -------------------------------------------------------------------------


def test_nodes_register_heartbeat_and_are_found_silent(store: Store) -> None:
    with store.transaction() as tx:
        tx.register_node("a", "10.0.0.1:2222", NOW)
        tx.register_node("b", "10.0.0.2:2222", NOW)
    later = NOW + timedelta(seconds=20)
    with store.transaction() as tx:
        beat = tx.heartbeat_node("a", later)
        assert beat is not None and beat.heartbeat_at == later and beat.lost_at is None
        assert tx.heartbeat_node("nobody", later) is None
        assert [n.name for n in tx.silent_nodes(later - timedelta(seconds=15))] == ["b"]
        tx.mark_node_lost("b", later)
        assert tx.silent_nodes(later - timedelta(seconds=15)) == []  # lost: not silent again
    a, b = store.list_nodes()
    assert (a.name, a.address, a.started_at, a.state(later, timedelta(seconds=15))) == (
        "a",
        "10.0.0.1:2222",
        NOW,
        "alive",
    )
    assert (b.lost_at, b.state(later, timedelta(seconds=15))) == (later, "lost")
    # A node that starts again is alive again; a stopped one is never silent.
    with store.transaction() as tx:
        tx.register_node("b", "10.0.0.3:2222", later)
        tx.stop_node("a", later)
        assert [n.name for n in tx.silent_nodes(later + timedelta(hours=1))] == ["b"]
    a, b = store.list_nodes()
    assert (a.state(later, timedelta(seconds=15)), b.address, b.lost_at) == (
        "stopped",
        "10.0.0.3:2222",
        None,
    )


# -- web console accounts and tokens ---------------------------------------------------


def test_web_users_and_tokens(store: Store, backend: Backend) -> None:
    from bastion.models import WebRole, WebToken, WebTokenKind, WebUser

    alice = WebUser("alice", WebRole.APPROVER, "$2b$04$hash", NOW, "root")
    carol = WebUser("carol", WebRole.AUDITOR, None, NOW, "root")
    hour = timedelta(hours=1)
    session = WebToken("h-session", WebTokenKind.SESSION, "alice", NOW, NOW + hour, "10.0.0.1")
    link = WebToken("h-link", WebTokenKind.LINK, "carol", NOW, NOW + timedelta(minutes=5))
    old = WebToken("h-old", WebTokenKind.SESSION, "carol", NOW - hour, NOW - timedelta(seconds=1))
    with store.transaction() as tx:
        tx.insert_web_user(alice)
        tx.insert_web_user(carol)
        for token in (session, link, old):
            tx.insert_web_token(token)
    assert store.list_web_users() == [alice, carol]
    assert store.get_web_user("carol") == carol
    assert store.get_web_token("h-session") == session
    with pytest.raises(backend.integrity_error), store.transaction() as tx:
        tx.insert_web_user(alice)
    with store.transaction() as tx:
        assert tx.delete_expired_web_tokens(NOW) == 1
        # A login link is used once: the second delete finds nothing.
        assert tx.delete_web_token("h-link") is True
        assert tx.delete_web_token("h-link") is False
    assert store.get_web_token("h-old") is None
    with store.transaction() as tx:
        tx.delete_web_user("alice")
    assert store.get_web_user("alice") is None
    assert store.get_web_token("h-session") is None  # the account's sessions went with it
