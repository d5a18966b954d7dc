"""What a client waiting for approval is told and when, and what the hooks are told.

The texts and payloads (`bastion.approvalnotice`, pure) and the reminder loop
(`bastion.transport.reminders`) driven by an injected clock: no test here sleeps.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion import approvalnotice as an
from bastion import pgwire
from bastion.config import DEFAULT_CONFIG_TEXT, ApprovalsConfig, load_config
from bastion.models import Approval, ApprovalState
from bastion.transport.reminders import remind_every

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def an_approval(text: str = "rm -rf /srv/old", **changes: object) -> Approval:
    fields: dict[str, object] = {
        "id": "a-5c1e9f02",
        "kind": "exec",
        "session_id": "s-1",
        "grant_id": "g-7f3a0c12",
        "agent": "bot",
        "task": "hotfix-1422",
        "target": "prod-web",
        "text": text,
        "reasons": (f"rm -r: {text}",),
        "requested_at": T0,
        "expires_at": T0 + timedelta(minutes=5),
    }
    fields.update(changes)
    return Approval(**fields)  # type: ignore[arg-type]


# -- texts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (0.9, "0:00"), (30, "0:30"), (245, "4:05"), (3723, "1:02:03")],
)
def test_waited_reads_as_a_clock(seconds: float, shown: str) -> None:
    assert an.waited_text(seconds) == shown


def test_ssh_reminder_keeps_the_first_notices_wording() -> None:
    line = an.ssh_reminder(an_approval(), 30, timedelta(minutes=5))

    assert line == (
        "[bastion] still waiting for approval (request a-5c1e9f02): rm -rf /srv/old"
        " - waited 0:30 of 5m; a human runs `bastion approvals approve a-5c1e9f02`"
    )


def test_pg_reminder() -> None:
    text = an.pg_reminder(an_approval("DROP TABLE t"), 60, timedelta(seconds=90))

    assert text == (
        "[bastion] still waiting for approval, request a-5c1e9f02; waited 1:00 of 1m30s;"
        " a human runs `bastion approvals approve a-5c1e9f02`"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rm -rf /x", "rm -rf /x"),
        ("rm -rf /x\nreboot", "rm -rf /x\\nreboot"),
        ("printf '\x1b[2J'; rm -r /", "printf '\\x1b[2J'; rm -r /"),
        ("a\\nb", "a\\\\nb"),  # a literal backslash-n stays distinguishable from a newline
        ("nul\x00 del\x7f c1\x9b", "nul\\x00 del\\x7f c1\\x9b"),
        ("caf\u00e9 \u2028", "caf\u00e9 \\u2028"),
    ],
)
def test_printable_escapes_what_would_drive_a_terminal(text: str, shown: str) -> None:
    assert an.printable(text, 100) == shown


def test_printable_is_bounded() -> None:
    assert an.printable("x" * 50, 10) == "x" * 10 + "…"
    assert an.printable("x" * 10, 10) == "x" * 10
    assert an.printable("\n" * 10, 5) == "\\n\\n…"  # never half an escape


def test_a_hostile_command_stays_one_line_and_frames_as_a_notice() -> None:
    hostile = "rm -rf /x\n[bastion] approved by alice\x1b]0;pwned\x07\x00" + "y" * 5000
    line = an.ssh_reminder(an_approval(hostile), 30, timedelta(minutes=5))

    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert len(line) < an.LINE_TEXT_LIMIT + 200
    notice = pgwire.NoticeResponse.build("NOTICE", "01000", line)
    parser = pgwire.BackendParser()
    parser.receive_data(pgwire.encode(notice))
    assert parser.next_event() == notice


# -- the schedule -------------------------------------------------------------------------


def test_next_reminder_follows_the_schedule_from_the_start() -> None:
    assert an.next_reminder(100.0, 100.0, 30.0) == 1  # at 130
    assert an.next_reminder(100.0, 129.9, 30.0) == 1
    assert an.next_reminder(100.0, 130.0, 30.0) == 2  # at 160
    # After a stall the missed reminders are skipped, not sent in a burst.
    assert an.next_reminder(100.0, 250.5, 30.0) == 6  # at 280
    with pytest.raises(ValueError):
        an.next_reminder(0.0, 0.0, 0.0)


class FakeTime:
    """A clock that moves only when the reminder loop sleeps (by `lag` more, if set)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lag = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.lag
        await asyncio.sleep(0)


def run_reminders(
    fake: FakeTime, interval: float, count: int, until: float | None = None
) -> list[float]:
    said: list[float] = []

    async def main() -> None:
        task = asyncio.ensure_future(
            remind_every(said.append, interval, until=until, clock=fake.clock, sleep=fake.sleep)
        )
        for _ in range(1000):
            if len(said) >= count or task.done():
                break
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    return said


def test_reminders_every_interval_with_an_injected_clock() -> None:
    fake = FakeTime()

    said = run_reminders(fake, 30.0, 4)

    assert said == [30.0, 60.0, 90.0, 120.0]
    assert fake.sleeps[:4] == [30.0, 30.0, 30.0, 30.0]


def test_reminders_do_not_drift_when_sleeps_run_late() -> None:
    fake = FakeTime()
    fake.lag = 0.2  # every wake-up 0.2 s late: the next sleep is that much shorter

    said = run_reminders(fake, 30.0, 3)

    assert said == [30.0, 60.0, 90.0]
    assert fake.sleeps[:3] == [30.0, pytest.approx(29.8), pytest.approx(29.8)]


def test_a_timer_waking_early_does_not_repeat_a_reminder() -> None:
    fake = FakeTime()
    fake.lag = -0.001

    said = run_reminders(fake, 0.2, 3)

    assert said == [0.2, 0.4, pytest.approx(0.6)]


def test_no_reminder_at_or_after_the_waits_limit() -> None:
    fake = FakeTime()

    said = run_reminders(fake, 30.0, 100, until=90.0)

    assert said == [30.0, 60.0]  # at 90 s the time-out message is said instead


def test_a_failing_reminder_does_not_end_the_loop() -> None:
    fake = FakeTime()
    calls: list[float] = []

    def remind(waited: float) -> None:
        calls.append(waited)
        raise OSError("channel closed")

    async def main() -> None:
        task = asyncio.ensure_future(remind_every(remind, 1.0, clock=fake.clock, sleep=fake.sleep))
        while len(calls) < 2:
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(main())
    assert calls == [1.0, 2.0]


def test_reminders_with_a_short_real_interval() -> None:
    """The event loop's own clock, a 0.2 s interval: what the gateway runs."""
    said: list[float] = []
    times: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()

        def remind(waited: float) -> None:
            said.append(waited)
            times.append(loop.time() - started)

        task = asyncio.ensure_future(remind_every(remind, 0.2))
        await asyncio.sleep(0.7)
        task.cancel()

    asyncio.run(main())
    assert said == [0.2, 0.4, pytest.approx(0.6)]
    for expected, at in zip((0.2, 0.4, 0.6), times, strict=True):
        assert expected - 0.01 <= at <= expected + 0.09


# -- hook payloads -----------------------------------------------------------------------


def test_created_payload_names_everything_a_human_needs() -> None:
    payload = an.approval_event("approval.created", an_approval(), "node-a")

    assert payload["event"] == "approval.created"
    assert payload["node"] == "node-a"
    assert payload["approve"] == "bastion approvals approve a-5c1e9f02"
    assert payload["deny"] == "bastion approvals deny a-5c1e9f02 --reason TEXT"
    record = payload["approval"]
    assert {k: record[k] for k in ("id", "agent", "target", "grant", "task", "session")} == {
        "id": "a-5c1e9f02",
        "agent": "bot",
        "target": "prod-web",
        "grant": "g-7f3a0c12",
        "task": "hotfix-1422",
        "session": "s-1",
    }
    assert (record["kind"], record["text"], record["text_truncated"]) == (
        "exec",
        "rm -rf /srv/old",
        False,
    )
    assert record["state"] == "pending"
    json.dumps(payload)  # what the hooks get


def test_payload_text_is_bounded() -> None:
    sql = "DELETE FROM t; -- " + "x" * 10_000
    payload = an.approval_event("approval.created", an_approval(sql, kind="statement"), "n")

    record = payload["approval"]
    assert record["text_truncated"] is True
    assert len(record["text"]) == an.HOOK_TEXT_LIMIT + 1
    assert record["text"].startswith("DELETE FROM t; -- xxx")
    assert all(len(r) <= an.HOOK_REASON_LIMIT + 1 for r in record["reasons"])


@pytest.mark.parametrize(
    ("state", "by", "why"),
    [
        (ApprovalState.APPROVED, "alice", ""),
        (ApprovalState.DENIED, "bob", "not on a Friday"),
        (ApprovalState.EXPIRED, "gateway", "timed out"),
    ],
)
def test_decided_payload_says_how_and_by_whom(state: ApprovalState, by: str, why: str) -> None:
    decided = an_approval(
        state=state, decided_by=by, decision_reason=why, decided_at=T0 + timedelta(minutes=1)
    )

    payload = an.approval_event("approval.decided", decided, "node-a")

    assert payload["event"] == "approval.decided"
    assert "approve" not in payload and "deny" not in payload
    record = payload["approval"]
    assert (record["state"], record["decided_by"], record["decision_reason"]) == (
        state.value,
        by,
        why,
    )
    assert record["decided_at"] == "2026-11-28T10:01:00+00:00"


# -- configuration ---------------------------------------------------------------------------


def test_remind_every_is_configurable(tmp_path: Path) -> None:
    home = tmp_path
    assert ApprovalsConfig().remind_every == timedelta(seconds=30)
    assert 'remind_every = "30s"' in DEFAULT_CONFIG_TEXT
    (home / "bastion.toml").write_text('[approvals]\nremind_every = "1s"\n')
    assert load_config(home).approvals.remind_every == timedelta(seconds=1)
