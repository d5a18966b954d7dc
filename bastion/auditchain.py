"""The audit hash chain, as pure functions.

Each event's hash covers its own content and the previous event's hash, so editing,
reordering or deleting a stored event breaks every hash after it. The encoding is
canonical JSON (sorted keys, no spaces, UTF-8), identical on every store backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bastion.models import AuditEvent

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(
    seq: int, at: datetime, actor: str, action: str, details: dict[str, Any], prev_hash: str
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "details": details,
            "prev": prev_hash,
        }
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def first_broken(events: Iterable[AuditEvent]) -> tuple[AuditEvent, str] | None:
    """The first event that doesn't link or doesn't hash to what it says, with why; or None."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for event in events:
        if event.seq != expected_seq:
            return event, f"sequence gap: expected event {expected_seq}, found {event.seq}"
        if event.prev_hash != expected_prev:
            return event, "its previous-hash does not match the event before it"
        recomputed = event_hash(
            event.seq, event.at, event.actor, event.action, event.details, event.prev_hash
        )
        if recomputed != event.hash:
            return event, "its content does not match its hash (edited)"
        expected_prev = event.hash
        expected_seq += 1
    return None
