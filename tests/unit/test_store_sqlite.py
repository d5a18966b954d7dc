"""What only the SQLite store does: WAL, a private file, a lock around first opens.

The store contract both backends share is tested in test_store.py.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from bastion.auditchain import GENESIS_HASH, event_hash, first_broken
from bastion.errors import StoreError
from bastion.models import TargetSecret
from bastion.store.migrations import LATEST_VERSION
from bastion.store.rows import UnreadableTime
from bastion.store.sqlite import SqliteStore
from tests.store_backends import NOW, pg_target


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path)
    yield opened
    opened.close()


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


def test_unreadable_time_hashes_as_its_text() -> None:
    at = UnreadableTime("last tuesday")
    assert at.isoformat() == "last tuesday"
    assert str(at) == "last tuesday"
    assert at.astimezone(UTC) is at
    assert "last tuesday" in at.strftime("%Y")
    assert event_hash(1, at, "a", "b", {}, GENESIS_HASH) != event_hash(
        1, NOW, "a", "b", {}, GENESIS_HASH
    )
