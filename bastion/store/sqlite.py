"""The default state store: one SQLite file in WAL mode.

WAL lets the CLI read and write while `bastion serve` does; writers take the
database's write lock up front (`BEGIN IMMEDIATE`) so that the audit chain's
read-last-hash-then-append is never interleaved, and wait up to `busy_timeout` for
each other instead of failing. The file is created 0600: it holds target secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.errors import StoreError
from bastion.store import sql
from bastion.store.base import MigrationReport
from bastion.store.rows import Row
from bastion.store.sql import SqlReads, SqlTx

_BUSY_TIMEOUT_MS = 10_000


@contextmanager
def _setup_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock`, waited for up to the busy timeout."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"can't open state store {path}: {lock_path} is held by another"
                        " process that is setting the store up"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        yield  # the lock goes with the descriptor
    finally:
        os.close(fd)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Executor:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, params).fetchall()

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, params)


class _LockedExecutor(_Executor):
    """Reads outside a transaction, one statement at a time under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        super().__init__(db)
        self._lock = lock

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return super().rows(sql, params)


class SqliteStore(SqlReads):
    """The store in one file. `migrate=False` opens it as it is (for `bastion migrate`).

    Opening migrates by default: a single machine's store has one bastion installation
    writing to it, and the upgrade is one transaction, so it stays automatic (as it was
    before `bastion migrate` existed).
    """

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self._path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Creating the file, switching it to WAL and migrating it are serialized between
            # processes: SQLite's busy timeout does not cover the switch to WAL, so two
            # processes opening a new file at once would otherwise fail "database is locked".
            with _setup_lock(path):
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                self._db = sqlite3.connect(
                    path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=_BUSY_TIMEOUT_MS / 1000,
                )
                try:
                    self._db.row_factory = sqlite3.Row
                    self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                    self._enable_wal()
                    self._db.execute("PRAGMA synchronous=NORMAL")
                    self._db.execute("PRAGMA foreign_keys=ON")
                    self._migrate(apply=migrate, behind_ok=True)
                except BaseException:
                    self._db.close()
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"can't open state store {path}: {_describe(exc)}") from None
        except OSError as exc:
            raise StoreError(f"can't open state store {path}: {exc.strerror}") from None
        self._reads = _LockedExecutor(self._db, self._lock)

    def _enable_wal(self) -> None:
        """`PRAGMA journal_mode=WAL`, retried while another connection holds the file.

        Switching a new file to WAL needs it to itself and does not wait on the busy
        timeout; another program reading the file at that moment makes it fail at once.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"can't open state store {self._path}: it can't use WAL mode ({mode})"
                )
            return

    # -- schema ---------------------------------------------------------------

    @property
    def location(self) -> str:
        return str(self._path)

    def _migrate(self, *, apply: bool, behind_ok: bool) -> MigrationReport:
        with self.transaction() as tx:
            return sql.migrate(tx.executor, self.location, apply=apply, behind_ok=behind_ok)

    def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        return self._migrate(apply=not dry_run, behind_ok=True)

    def listen_for_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        return None  # nothing pushes: the gateway polls

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reads and writes -------------------------------------------------------

    def _reader(self) -> sql.Executor:
        return self._reads

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"state store {self._path} is busy or unwritable: {_describe(exc)}"
                ) from None
            try:
                yield SqlTx(_Executor(self._db))
            except BaseException:
                self._rollback()
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(
                    f"can't commit to state store {self._path}: {_describe(exc)}"
                ) from None

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (a full disk, an interrupted
        # statement): a second ROLLBACK would raise and hide the error that matters.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _describe(exc: sqlite3.Error) -> str:
    """SQLite's message with its extended code (`disk I/O error (SQLITE_IOERR_FSYNC)`)."""
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)
