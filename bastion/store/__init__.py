"""The state store: grants, targets, certificates, revocations and the audit chain.

`Store` is the interface the service uses; `sqlite.SqliteStore` is the default
single-machine backend and `postgres.PostgresStore` the shared one for several nodes
(`[store] url`); `open_store` picks by the configuration. Every write happens inside
`Store.transaction()`, and every state change appends its audit event in that same
transaction, so a change and its audit record land together or not at all.
"""

from __future__ import annotations

from pathlib import Path

from bastion.config import Config
from bastion.store.base import MigrationReport, SchemaPolicy, Store, StoreTx

__all__ = ["MigrationReport", "SchemaPolicy", "Store", "StoreTx", "open_store"]


def open_store(config: Config, home: Path, *, schema: SchemaPolicy = "check") -> Store:
    """The store `config` names: PostgreSQL when `[store] url` is set, else SQLite in `home`."""
    if config.store.url:
        from bastion.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(config.store.url, schema=schema)
    from bastion.store.sqlite import SqliteStore

    # SQLite upgrades its schema on open unless asked not to (see sqlite.py).
    return SqliteStore(home / config.store.path, migrate=schema != "any")
