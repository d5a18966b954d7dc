"""The state store: grants, targets, certificates, revocations and the audit chain.

`Store` is the interface the service uses; `sqlite.SqliteStore` is the default
single-machine backend. Every write happens inside `Store.transaction()`, and every
state change appends its audit event in that same transaction, so a change and its
audit record land together or not at all.
"""

from __future__ import annotations

from bastion.store.base import Store, StoreTx

__all__ = ["Store", "StoreTx"]
