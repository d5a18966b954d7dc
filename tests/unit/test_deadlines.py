"""Converting a grant's wall-clock end to the event loop's clock (`transport.deadlines`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.transport.deadlines import DeadlineClock

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


class Clocks:
    """A wall clock and a loop clock that move together, read with some jitter."""

    def __init__(self) -> None:
        self.wall = T0
        self.loop = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.loop += seconds


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=0.15),  # time between two connections' arming
            st.floats(min_value=0, max_value=0.0001),  # the wall clock read this much later
        ),
        min_size=2,
        max_size=50,
    )
)
def test_one_deadline_gives_every_connection_the_same_loop_time(
    steps: list[tuple[float, float]],
) -> None:
    clocks = Clocks()
    late = [0.0]
    deadline_clock = DeadlineClock(
        lambda: clocks.wall + timedelta(seconds=late[0]), lambda: clocks.loop
    )
    deadline = T0 + timedelta(seconds=20)
    whens = set()
    for passed, read_late in steps:  # within one refresh period (10 s)
        clocks.advance(passed)
        late[0] = read_late
        whens.add(deadline_clock.loop_time_of(deadline))
    assert len(whens) == 1
    # ... and that time is the deadline's, rounded up to the millisecond.
    (when,) = whens
    assert 1019.999 <= when <= 1020.001


def test_the_offset_is_read_again_after_the_refresh_period() -> None:
    clocks = Clocks()
    deadline_clock = DeadlineClock(lambda: clocks.wall, lambda: clocks.loop, refresh=10.0)
    deadline = T0 + timedelta(hours=1)
    first = deadline_clock.loop_time_of(deadline)
    clocks.advance(5)
    clocks.wall += timedelta(seconds=2)  # the wall clock steps forward
    assert deadline_clock.loop_time_of(deadline) == first  # still the offset read before
    clocks.advance(6)
    assert deadline_clock.loop_time_of(deadline) == first - 2  # re-read: 2 s sooner


def test_resample_after_the_wall_clock_moved_back() -> None:
    clocks = Clocks()
    deadline_clock = DeadlineClock(lambda: clocks.wall, lambda: clocks.loop)
    deadline = T0 + timedelta(seconds=20)
    assert deadline_clock.loop_time_of(deadline) == 1020.0
    clocks.advance(20)
    clocks.wall -= timedelta(seconds=3)  # at the timer, the wall clock says 3 s to go
    assert deadline_clock.loop_time_of(deadline, resample=True) == 1023.0


def test_a_deadline_in_the_past_is_now() -> None:
    clocks = Clocks()
    deadline_clock = DeadlineClock(lambda: clocks.wall, lambda: clocks.loop)
    assert deadline_clock.loop_time_of(T0 - timedelta(minutes=5)) == clocks.loop


# -- a garbage collection just before a deadline, not in the middle of its closes ----------


def test_the_collector_runs_half_a_second_before_each_upcoming_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bastion.transport import gateway as gateway_module
    from bastion.transport.gateway import Gateway

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        collected: list[float] = []
        monkeypatch.setattr(gateway_module.gc, "collect", lambda: collected.append(loop.time()))
        start = loop.time()
        timers = [loop.call_at(start + d, lambda: None) for d in (0.8, 0.9, 1.3)]
        fake = SimpleNamespace(
            _collection=None,
            connections=[SimpleNamespace(deadline_timer=t) for t in timers],
        )
        fake._collect = lambda: Gateway._collect(fake)  # type: ignore[arg-type]
        fake.collect_before = lambda when: Gateway.collect_before(fake, when)  # type: ignore[arg-type]
        for timer in reversed(timers):  # armed in any order
            Gateway.collect_before(fake, timer.when())  # type: ignore[arg-type]
        Gateway.collect_before(fake, start + 0.2)  # too close to collect before: nothing
        await asyncio.sleep(1.2)
        return [round(t - start, 1) for t in collected]

    # 0.5 s before the deadline at 0.8, which covers 0.9's (closed in the same burst); for
    # 1.3's, 0.5 s before would fall in that burst, so just after it.
    assert asyncio.run(scenario()) == [0.3, 1.0]
