"""Several nodes on one store: schema upgrades (`bastion migrate`) and node liveness.

The service API for what is about the store and the nodes sharing it rather than
about grants and sessions. Prints nothing; the CLI renders what these return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bastion.config import Home
from bastion.errors import NotFound
from bastion.models import Node
from bastion.service import Bastion
from bastion.store import MigrationReport, open_store


def migrate_store(home: Home, dry_run: bool = False) -> MigrationReport:
    """Apply the pending schema migrations (report them only, with `dry_run`)."""
    if not home.config.store.url and not home.store_path.exists():
        raise NotFound(f"no bastion state in {home.root}: run `bastion init` first")
    store = open_store(home.config, home.root, schema="any")
    try:
        return store.migrate(dry_run=dry_run)
    finally:
        store.close()


@dataclass(frozen=True)
class NodeStatus:
    node: Node
    state: str  # alive, silent (not heard from within the timeout), lost, stopped
    silent_for: timedelta


def node_statuses(bastion: Bastion) -> list[NodeStatus]:
    now: datetime = bastion.clock.now()
    timeout = bastion.home.config.server.node_timeout
    return [
        NodeStatus(node, node.state(now, timeout), max(now - node.heartbeat_at, timedelta(0)))
        for node in bastion.store.list_nodes()
    ]
