"""The deadline guard's thread: cuts a watched socket at deadline + grace, by the wall
clock it is given, unless released first; never a socket it no longer watches."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bastion.transport.guard import DeadlineGuard

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=3)


class Wall:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def guard(wall: Wall) -> Iterator[DeadlineGuard]:
    g = DeadlineGuard(wall, GRACE, max_wait=0.01)
    g.start()
    yield g
    g.stop()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(2)
    yield a, b
    a.close()
    b.close()


def cut_seen(peer: socket.socket) -> bool:
    """The other end was shut down: recv gives end of stream at once."""
    return peer.recv(1) == b""


def settle() -> None:
    time.sleep(0.1)  # several turns of the guard's thread


def test_cuts_at_deadline_plus_grace_and_queues_the_expiry(
    guard: DeadlineGuard, wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    due = threading.Event()
    guard.watch("conn", ours, T0 + timedelta(seconds=10), "conn 1", on_due=due.set)
    wall.now = T0 + timedelta(seconds=12.9)  # past the deadline, within the grace
    settle()
    assert not due.is_set() and guard.cuts == 0
    ours.sendall(b"x")
    assert peer.recv(1) == b"x"  # still connected
    wall.now = T0 + timedelta(seconds=13)
    assert due.wait(2)
    assert cut_seen(peer)
    assert guard.cuts == 1
    with pytest.raises(OSError):
        ours.sendall(b"y")  # shut down for the original descriptor too: the same socket


def test_a_released_connection_is_never_cut(
    guard: DeadlineGuard, wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    guard.watch("conn", ours, T0, "conn 1", on_due=lambda: None)
    guard.release("conn")
    wall.now = T0 + timedelta(hours=1)
    settle()
    assert guard.cuts == 0
    ours.sendall(b"x")
    assert peer.recv(1) == b"x"


def test_the_descriptor_number_being_reused_is_harmless(
    guard: DeadlineGuard, wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    """The loop closes its socket and the kernel hands the number to a new connection:
    the guard holds its own duplicate, so the cut reaches the old socket only."""
    ours, peer = pair
    guard.watch("conn", ours, T0, "conn 1", on_due=lambda: None)
    ours.close()
    newcomer, other = socket.socketpair()  # likely on the number just freed
    other.settimeout(2)
    try:
        wall.now = T0 + GRACE
        settle()
        assert guard.cuts == 1
        assert cut_seen(peer)
        newcomer.sendall(b"x")
        assert other.recv(1) == b"x"
    finally:
        newcomer.close()
        other.close()


def test_a_wall_clock_set_back_delays_the_cut(
    guard: DeadlineGuard, wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    guard.watch("conn", ours, T0 + timedelta(seconds=5), "conn 1", on_due=lambda: None)
    wall.now = T0 - timedelta(hours=1)
    settle()
    assert guard.cuts == 0
    wall.now = T0 + timedelta(seconds=8)
    settle()
    assert guard.cuts == 1
    assert cut_seen(peer)


def test_watching_again_replaces_the_earlier_deadline(
    guard: DeadlineGuard, wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    guard.watch("conn", ours, T0, "conn 1", on_due=lambda: None)
    guard.watch("conn", ours, T0 + timedelta(minutes=5), "conn 1", on_due=lambda: None)
    wall.now = T0 + GRACE + timedelta(seconds=1)
    settle()
    assert guard.cuts == 0
    wall.now = T0 + timedelta(minutes=5) + GRACE
    settle()
    assert guard.cuts == 1


def test_stop_closes_what_it_holds_and_cuts_nothing(
    wall: Wall, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, peer = pair
    g = DeadlineGuard(wall, GRACE, max_wait=0.01)
    g.start()
    g.watch("conn", ours, T0, "conn 1", on_due=lambda: None)
    g.stop()
    wall.now = T0 + timedelta(hours=1)
    settle()
    assert g.cuts == 0
    ours.sendall(b"x")
    assert peer.recv(1) == b"x"
