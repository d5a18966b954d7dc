"""The audit hash chain: a valid chain verifies; each kind of tampering is found, and where."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bastion.auditchain import GENESIS_HASH, canonical_json, event_hash, first_broken
from bastion.models import AuditEvent

T0 = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)


def build_chain(entries: list[tuple[str, str, dict[str, Any]]]) -> list[AuditEvent]:
    """Events linked the way a store appends them."""
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for seq, (actor, action, details) in enumerate(entries, start=1):
        at = T0 + timedelta(minutes=seq)
        digest = event_hash(seq, at, actor, action, details, prev)
        events.append(AuditEvent(seq, at, actor, action, details, prev, digest))
        prev = digest
    return events


def relinked(events: list[AuditEvent]) -> list[AuditEvent]:
    """What a careful forger does after reordering or deleting: renumber and rehash all."""
    return build_chain([(e.actor, e.action, e.details) for e in events])


@pytest.fixture
def chain() -> list[AuditEvent]:
    return build_chain(
        [
            ("root", "ca.initialized", {"ca_fingerprint": "SHA256:abc", "encrypted": False}),
            ("alice", "target.added", {"name": "prod-web", "kind": "ssh"}),
            ("alice", "grant.issued", {"grant": "g-1", "agent": "bot", "targets": ["prod-web"]}),
            ("bob", "grant.revoked", {"grant": "g-1", "reason": "done"}),
            ("alice", "target.removed", {"name": "prod-web", "active_grants": []}),
        ]
    )


def test_valid_chain_verifies(chain: list[AuditEvent]) -> None:
    assert first_broken(chain) is None
    assert chain[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))


def test_empty_chain_verifies() -> None:
    assert first_broken([]) is None


def test_hash_is_sha256_hex_and_depends_on_every_field() -> None:
    base = dict(seq=1, at=T0, actor="a", action="x.y", details={"k": 1}, prev_hash=GENESIS_HASH)
    digest = event_hash(**base)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    for field, other in [
        ("seq", 2),
        ("at", T0 + timedelta(microseconds=1)),
        ("actor", "b"),
        ("action", "x.z"),
        ("details", {"k": 2}),
        ("prev_hash", "1" * 64),
    ]:
        assert event_hash(**{**base, field: other}) != digest, field


def test_canonical_json_ignores_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == ('{"a":[1,{"c":3,"d":2}],"b":1}')
    assert event_hash(1, T0, "a", "x", {"a": 1, "b": 2}, GENESIS_HASH) == event_hash(
        1, T0, "a", "x", {"b": 2, "a": 1}, GENESIS_HASH
    )


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "mallory"},
        {"action": "grant.extended"},
        {"details": {"grant": "g-1", "agent": "bot", "targets": ["prod-web", "prod-db"]}},
        {"at": T0 + timedelta(hours=5)},
    ],
    ids=["actor", "action", "details", "time"],
)
def test_edited_event_is_named(chain: list[AuditEvent], change: dict[str, Any]) -> None:
    chain[2] = dataclasses.replace(chain[2], **change)
    broken = first_broken(chain)
    assert broken is not None
    event, why = broken
    assert event.seq == 3
    assert why == "its content does not match its hash (edited)"


def test_edited_event_with_recomputed_hash_breaks_the_next_link(chain: list[AuditEvent]) -> None:
    edited = dataclasses.replace(chain[1], actor="mallory")
    chain[1] = dataclasses.replace(
        edited,
        hash=event_hash(
            edited.seq, edited.at, edited.actor, edited.action, edited.details, edited.prev_hash
        ),
    )
    broken = first_broken(chain)
    assert broken is not None
    assert broken[0].seq == 3
    assert broken[1] == "its previous-hash does not match the event before it"


def test_reordered_events_are_found(chain: list[AuditEvent]) -> None:
    chain[1], chain[2] = chain[2], chain[1]
    broken = first_broken(chain)
    assert broken is not None
    assert broken[0].action == "grant.issued"  # the first event out of place
    assert broken[1] == "sequence gap: expected event 2, found 3"


def test_reordered_and_renumbered_events_are_found(chain: list[AuditEvent]) -> None:
    swapped = [chain[0], chain[2], chain[1], *chain[3:]]
    renumbered = [dataclasses.replace(event, seq=seq) for seq, event in enumerate(swapped, start=1)]
    broken = first_broken(renumbered)
    assert broken is not None
    assert (broken[0].seq, broken[0].action) == (2, "grant.issued")
    assert broken[1] == "its previous-hash does not match the event before it"


def test_deleted_middle_event_is_found(chain: list[AuditEvent]) -> None:
    del chain[2]
    broken = first_broken(chain)
    assert broken is not None
    assert broken[0].seq == 4
    assert broken[1] == "sequence gap: expected event 3, found 4"


def test_deleted_and_renumbered_event_is_found(chain: list[AuditEvent]) -> None:
    del chain[2]
    renumbered = [dataclasses.replace(e, seq=seq) for seq, e in enumerate(chain, start=1)]
    broken = first_broken(renumbered)
    assert broken is not None
    assert (broken[0].seq, broken[0].action) == (3, "grant.revoked")
    assert broken[1] == "its previous-hash does not match the event before it"


def test_deleted_first_event_is_found(chain: list[AuditEvent]) -> None:
    broken = first_broken(chain[1:])
    assert broken is not None
    assert broken[0].seq == 2
    assert broken[1] == "sequence gap: expected event 1, found 2"


def test_a_rewritten_chain_only_verifies_with_new_hashes(chain: list[AuditEvent]) -> None:
    # A forger who rewrites everything gets a valid chain, but a different head hash:
    # keeping the head printed by `bastion audit verify` elsewhere is what catches that.
    forged = relinked([*chain[:2], *chain[3:]])
    assert first_broken(forged) is None
    assert forged[-1].hash != chain[-1].hash
