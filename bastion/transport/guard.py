"""The deadline guard: a grant's end enforced from a thread, should the event loop stall.

The gateway closes a connection at its deadline from a timer on the event loop, with a
notice to the client (`connection.GatewayConnection._expire`). A timer can't fire while
the loop is blocked, and a store that stops answering in the middle of a query (a
partitioned network, a hung database host) blocks whichever call is waiting on it. Expiry
must not depend on the store, so this is the backstop.

Each authenticated connection with a deadline is watched with a duplicate of its socket's
descriptor. A thread that touches neither the loop's objects nor the store shuts that
socket down `grace` after the deadline, unless the connection has ended by then. The
agent's TCP connection is cut, both ways: the SSH state belongs to the loop, so there is
no notice, but access ends, closed rather than open. The guard also queues the
connection's own expiry on the loop (`call_soon_threadsafe`), which runs first once the
loop moves again, so the records still say "expired".

A cut is a wall-clock decision (grants end at a wall-clock instant); the thread waits at
most a second at a time, so a clock set back is noticed, as the loop's timer notices it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger("bastion.gateway")

_MAX_WAIT = 1.0  # seconds: how long the thread sleeps at most between looks at the clock


class DeadlineGuard:
    def __init__(
        self, wall: Callable[[], datetime], grace: timedelta, max_wait: float = _MAX_WAIT
    ) -> None:
        self._wall = wall
        self._grace = grace
        self._max_wait = max_wait
        self._cond = threading.Condition()
        self._heap: list[tuple[datetime, int, object]] = []
        # key -> (the duplicate socket, label, on_due, the heap entry's number)
        self._watched: dict[object, tuple[socket.socket, str, Callable[[], object], int]] = {}
        self._seq = itertools.count()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.cuts = 0  # connections cut so far (for tests and logs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bastion-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for sock, *_ in self._watched.values():
                sock.close()
            self._watched.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)

    def watch(
        self, key: object, sock: Any, deadline: datetime, label: str, on_due: Callable[[], object]
    ) -> None:
        """Cut `sock` at `deadline` + grace unless `release(key)` comes first.

        `sock` is anything with `fileno()`; the guard keeps a duplicate of the descriptor,
        so the loop closing (and the kernel reusing) the original number is harmless.
        `on_due` is called on the guard's thread just before the cut.
        """
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        with self._cond:
            if self._stopped:
                dup.close()
                return
            old = self._watched.pop(key, None)
            if old is not None:
                old[0].close()
            number = next(self._seq)
            self._watched[key] = (dup, label, on_due, number)
            heapq.heappush(self._heap, (deadline + self._grace, number, key))
            self._cond.notify()

    def release(self, key: object) -> None:
        """The connection ended (or will end) on its own: stop watching it."""
        with self._cond:
            entry = self._watched.pop(key, None)
        if entry is not None:
            entry[0].close()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                now = self._wall()
                while self._heap and self._heap[0][0] <= now:
                    _, number, key = heapq.heappop(self._heap)
                    entry = self._watched.get(key)
                    if entry is not None and entry[3] == number:  # not released, not replaced
                        del self._watched[key]
                        self._cut(*entry[:3])
                wait = self._max_wait
                if self._heap:
                    wait = min(wait, max(0.0, (self._heap[0][0] - now).total_seconds()))
                self._cond.wait(wait)

    def _cut(self, sock: socket.socket, label: str, on_due: Callable[[], object]) -> None:
        self.cuts += 1
        log.error(
            "the event loop did not close %s within %ss of its deadline: cutting its connection",
            label,
            f"{self._grace.total_seconds():g}",
            extra={"event": "connection.guard_cut", "connection": label},
        )
        try:
            on_due()
        except Exception:  # the loop may be closed already; the cut matters more
            log.exception("could not queue the expiry of %s", label)
        with contextlib.suppress(OSError):  # already disconnected
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
