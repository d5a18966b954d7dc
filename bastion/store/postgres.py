"""The state store on a shared PostgreSQL database, for several bastion nodes.

The SQL is the one SQLite runs (`sql.py`); what this module adds is what several
writers on several machines need:

- Every write transaction first takes one transaction-level advisory lock
  (`pg_advisory_xact_lock`), so writes are serialized across nodes exactly as SQLite's
  `BEGIN IMMEDIATE` serializes them across processes: the audit chain's
  read-last-hash-then-append is never interleaved, and `next_serial` hands out each
  serial once. Under READ COMMITTED each statement after the lock sees every commit
  made before it was granted. Writes are small; the lock is held for milliseconds.
- Every audit append also does `pg_notify('bastion_changes', seq)` in its transaction;
  `listen_for_changes` keeps a dedicated connection LISTENing on a thread, so gateways
  react to a revoke on another node at once instead of at the next poll.
- The schema is never upgraded implicitly: nodes of two versions may share the
  database, so `bastion migrate` is an operator's step (`schema="upgrade"` is used by
  `init` and `migrate`); a schema that is behind is refused with that advice.

The URL's password is never shown: messages use `location`, the URL without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from bastion.errors import StoreError
from bastion.models import AuditEvent
from bastion.store import sql
from bastion.store.base import MigrationReport, SchemaPolicy
from bastion.store.rows import Row
from bastion.store.sql import SqlReads, SqlTx

log = logging.getLogger("bastion.store")

CHANNEL = "bastion_changes"
# The advisory lock every write transaction takes ("bast" as a 32-bit number).
WRITE_LOCK = 0x62617374
CONNECT_TIMEOUT_S = 5
POOL_SIZE = 8


def location_of(url: str) -> str:
    """The URL as it may be shown: user, host, port and database, never the password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unreadable URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


def _reason(exc: BaseException) -> str:
    """psycopg's message on one line (libpq's can span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


@lru_cache(maxsize=512)
def _dialect(statement: str) -> str:
    # The shared SQL uses `?`; psycopg wants `%s`. The shared SQL has no `%` and no `?`
    # inside a literal, so a plain replacement is exact.
    return statement.replace("?", "%s")


class _Executor:
    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._conn = conn

    def rows(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._conn.execute(_dialect(statement), tuple(params))
        return list(cursor.fetchall()) if cursor.description is not None else []

    def many(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_dialect(statement), [tuple(p) for p in params])


class _PoolReader:
    """Reads outside a transaction: each statement on a pooled autocommit connection."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def rows(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._store._connection() as conn:
            return _Executor(conn).rows(statement, params)

    def many(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        with self._store._connection() as conn:
            _Executor(conn).many(statement, params)


class _PostgresTx(SqlTx):
    def _appended(self, event: AuditEvent) -> None:
        # Delivered to listeners when (and only if) this transaction commits.
        self._x.rows("SELECT pg_notify(?, ?)", (CHANNEL, str(event.seq)))


class PostgresStore(SqlReads):
    def __init__(self, url: str, *, schema: SchemaPolicy = "check") -> None:
        self._location = location_of(url)
        params = conninfo_to_dict(url)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        params.setdefault("application_name", "bastion")
        self._conninfo = make_conninfo("", **params)
        # One connection first: an unreachable server or a schema we can't use is a
        # clear error now, not a pool timeout later.
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)
            with conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                sql.migrate(
                    _Executor(conn),
                    self._location,
                    apply=schema == "upgrade",
                    behind_ok=schema == "any",
                )
        except psycopg.Error as exc:
            raise StoreError(f"can't use state store {self._location}: {_reason(exc)}") from None
        self._pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=True,
            name="bastion-store",
            timeout=30,
        )
        self._reads = _PoolReader(self)

    @property
    def location(self) -> str:
        return self._location

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreError(f"state store {self._location}: {_reason(exc)}") from None

    def _reader(self) -> sql.Executor:
        return self._reads

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield _PostgresTx(_Executor(conn))

    def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        with self.transaction() as tx:
            return sql.migrate(tx.executor, self._location, apply=not dry_run, behind_ok=True)

    def clock_skew(self) -> timedelta:
        """The database's clock minus this machine's (for `bastion doctor`)."""
        with self._connection() as conn:
            row = conn.execute("SELECT now() AS now").fetchone()
        assert row is not None
        db_now: datetime = row["now"]
        return db_now - datetime.now(UTC)

    def listen_for_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(wake, stop), name="bastion-listen", daemon=True
        )
        thread.start()

        def stop_listening() -> None:
            stop.set()
            thread.join(5)

        return stop_listening

    def _listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """LISTEN on a connection of its own; reconnect (and wake once) after a loss."""
        while not stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    wake()  # whatever was appended while (re)connecting
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            wake()
            except psycopg.Error as exc:
                if stop.is_set():
                    return
                log.warning("listening for changes on %s failed: %s", self._location, _reason(exc))
                stop.wait(1.0)

    def close(self) -> None:
        self._pool.close()
