"""The reminder loop of an approval wait: call `remind(waited)` every interval until cancelled.

Time is an input: the clock and the sleep are parameters (the event loop's by default),
so a test drives the loop with a fake clock or a short interval instead of waiting 30 s.
What a reminder says is `approvalnotice`'s; who hears it is the caller's `remind`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bastion.approvalnotice import next_reminder

log = logging.getLogger("bastion.gateway")


async def remind_every(
    remind: Callable[[float], None],
    interval: float,
    *,
    until: float | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Call `remind(waited)` at `interval`, 2 x `interval`, ... seconds after the start.

    `waited` is the scheduled time since the start (0:30, 1:00, ...: what a person
    expects to read). Reminders due at or after `until` (the wait's own limit, where the
    time-out message takes over) are not sent. Runs until cancelled; a `remind` that
    raises is logged and the loop goes on (a reminder must never end a session).
    """
    now = clock or asyncio.get_running_loop().time
    started = now()
    number = 0
    while True:
        # Never the same reminder twice (a timer may wake a hair before its time).
        number = max(next_reminder(started, now(), interval), number + 1)
        waited = number * interval
        if until is not None and waited >= until:
            return
        await sleep(max(0.0, started + waited - now()))
        try:
            remind(waited)
        except Exception:
            log.exception("could not remind a client that it waits for approval")
