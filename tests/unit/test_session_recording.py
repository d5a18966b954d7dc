"""`transport.recording.SessionRecording`: one owner for a recording's life, whatever the
session is. Fakes stand in for the connection, gateway and gatekeeper; the recorder is
the real one, writing to a temp dir (no executor: writes happen at `flush`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bastion.clock import SystemClock
from bastion.models import EndReason
from bastion.recording import format as fmt
from bastion.recording.writer import Recorder, RecordingFailed
from bastion.transport.recording import SessionRecording


class FakeGateway:
    def __init__(self) -> None:
        self.recordings: set[SessionRecording] = set()
        self.writes: list[Any] = []

    def write_later(self, fn: Any, *args: Any) -> None:
        self.writes.append((fn, args))

    def run_writes(self) -> None:
        for fn, args in self.writes:
            fn(*args)
        self.writes.clear()


class FakeGate:
    def __init__(self, path: Path, fail_start: bool = False) -> None:
        self.path = path
        self.fail_start = fail_start
        self.events: list[tuple[Any, ...]] = []

    def now(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC)

    def start_recording(self, session: Any, header: dict[str, object]) -> Recorder:
        if self.fail_start:
            raise RecordingFailed("can't create recording: No space left on device")
        return Recorder(self.path, SystemClock(), header)

    def recording_off(self, session: Any) -> None:
        self.events.append(("off", session.id))

    def recording_lost(self, session: Any, reason: str, ended: bool) -> None:
        self.events.append(("lost", session.id, reason, ended))

    def seal_failed(self, session: Any, recorder: Recorder) -> None:
        recorder.abandon()
        self.events.append(("sealed-failed", session.id))

    def finish_recording(self, session: Any, recorder: Recorder, end: Any) -> None:
        recorder.close(end)
        self.events.append(("sealed", session.id, end["end_reason"]))


class Owner:
    def __init__(self, mode: str) -> None:
        self.record = SimpleNamespace(id="s-1")
        self.recording_mode = mode
        self.failed: list[tuple[EndReason, str]] = []

    def fail(self, reason: EndReason, message: str) -> None:
        self.failed.append((reason, message))


def make(tmp_path: Path, mode: str, fail_start: bool = False) -> Any:
    gateway = FakeGateway()
    gate = FakeGate(tmp_path / "s-1.rec", fail_start)
    conn = SimpleNamespace(gateway=gateway, gate=gate, closing=False)
    owner = Owner(mode)
    return SessionRecording(conn, owner), owner, gateway, gate  # type: ignore[arg-type]


def break_writes(recording: SessionRecording) -> None:
    """The disk fills: the next write fails (the writer keeps its first error)."""
    recorder = recording._recorder
    assert recorder is not None
    recorder._error = "writing recording failed: No space left on device"


async def test_query_log_is_registered_for_the_flusher_and_flushed(tmp_path: Path) -> None:
    recording, _, gateway, gate = make(tmp_path, "mandatory")
    await recording.start({"session": "s-1", "pty": False})
    assert gateway.recordings == {recording}

    recording.query(b'{"sql":"select 1"}')
    for flushing in list(gateway.recordings):
        flushing.flush()

    frames = fmt.parse(gate.path.read_bytes()).frames
    assert [(f.kind, f.payload) for f in frames[1:]] == [(fmt.QUERY, b'{"sql":"select 1"}')]
    recording.close(EndReason.CLIENT_CLOSED)
    assert gateway.recordings == set()
    assert not recording.active
    assert gate.events == [("sealed", "s-1", "client-closed")]


@pytest.mark.parametrize("mode", ["mandatory", "best-effort"])
async def test_a_failed_write_is_handled_once_per_the_mode(tmp_path: Path, mode: str) -> None:
    recording, owner, gateway, gate = make(tmp_path, mode)
    await recording.start({"session": "s-1"})
    break_writes(recording)

    recording.query(b"{}")  # queued, not written yet
    recording.flush()  # fails: the loss
    recording.output(b"more")  # ignored from now on
    recording.flush()
    recording.close(EndReason.EXIT)  # nothing left to close
    gateway.run_writes()

    assert not recording.active
    assert gateway.recordings == set()
    reason = "writing recording failed: No space left on device"
    mandatory = mode == "mandatory"
    assert gate.events == [("lost", "s-1", reason, mandatory), ("sealed-failed", "s-1")]
    expected = [(EndReason.RECORDING_FAILED, f"{reason} - session closed")] if mandatory else []
    assert owner.failed == expected


async def test_the_mode_at_the_time_of_the_loss_decides(tmp_path: Path) -> None:
    recording, owner, _, _ = make(tmp_path, "best-effort")
    await recording.start({"session": "s-1"})
    owner.recording_mode = "mandatory"  # a reload made it stricter
    break_writes(recording)

    recording.marker("approval requested")
    recording.flush()

    assert [reason for reason, _ in owner.failed] == [EndReason.RECORDING_FAILED]


@pytest.mark.parametrize(
    ("mode", "fail_start", "raises", "events"),
    [
        ("off", False, False, [("off", "s-1")]),
        ("best-effort", True, False, [("lost", "s-1", "can't create recording: "
                                       "No space left on device", False)]),
        ("mandatory", True, True, []),
    ],
)  # fmt: skip
async def test_start_per_mode(
    tmp_path: Path, mode: str, fail_start: bool, raises: bool, events: list[Any]
) -> None:
    recording, owner, gateway, gate = make(tmp_path, mode, fail_start)

    if raises:
        with pytest.raises(RecordingFailed):
            await recording.start({"session": "s-1"})
    else:
        await recording.start({"session": "s-1"})

    assert not recording.active
    assert gateway.recordings == set()
    assert gate.events == events
    recording.output(b"x")  # a no-op, and nothing fails
    assert owner.failed == []
