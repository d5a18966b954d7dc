"""One session's recording as the gateway runs it: started, flushed, written, lost, sealed.

Every recorded channel has one `SessionRecording`, whatever it carries: a shell, exec or
sftp session (`relay.SessionRelay`, terminal frames) or a PostgreSQL forward
(`pgrelay.PgRelay`, query-log entries). They used to each hold a raw `Recorder`, and the
two paths drifted: only SSH sessions were handed to the half-second flusher, so a
database session's query log stayed in memory until it closed (a `kill -9` lost all of
it, and `recordings text`/`search` and the live view showed nothing of a live session).
Keeping the whole life of a recording here means the two can't diverge again:

- `start` creates the file and its index row on a thread (the store and the disk may be
  slow). What a failure means is the target's recording mode: `mandatory` raises
  `RecordingFailed` to the relay, which refuses the session in its own protocol;
  `best-effort` audits the loss and the session runs unrecorded; `off` records nothing
  and audits that.
- Once started it is in the gateway's `recordings`, which the flusher hands to the
  writer every `FLUSH_INTERVAL` (the writer also writes every MiB by itself).
- Writes (`output`, `input`, `resize`, `marker`, `query`) queue frames. The first write
  or flush that fails ends the recording, once: the loss is audited and what reached the
  file is sealed as failed (both on the gateway's writes thread, in order with the
  session's own records); then, under the mode the session runs with *now* (a reload
  can only make it stricter), `mandatory` ends the session with the reason
  (`recording-failed`) and `best-effort` lets it run on, unrecorded.
- `close` writes the end frame; the last write, the fsync and the hash run on the
  recording thread, and the seal goes to the writes thread.

Not here: the file format and the hot-path queue (`recording.writer`), the seal's hash,
signature and index row (`gatekeeper`).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from bastion.models import EndReason
from bastion.recording.writer import Recorder, RecordingFailed

if TYPE_CHECKING:
    from bastion.transport.connection import GatewayConnection

log = logging.getLogger("bastion.gateway")

# How often the gateway's flusher hands each recording's queue to the writer. The
# promise is that a `kill -9` loses at most the last half second: flushing every quarter
# leaves the writer thread a quarter second to reach the page cache, even when the loop
# is busy.
FLUSH_INTERVAL = 0.25


class Recorded(Protocol):
    """The channel a recording belongs to (`SessionRelay`, `PgRelay`)."""

    @property
    def record(self) -> Any: ...  # models.Session

    @property
    def recording_mode(self) -> str | None: ...  # as tightened by a reload

    def fail(self, reason: EndReason, message: str) -> None: ...


class SessionRecording:
    """The recording of one channel; inactive (writes are no-ops) until `start` succeeds
    and again once it is lost or closed."""

    def __init__(self, conn: GatewayConnection, owner: Recorded) -> None:
        self._conn = conn
        self._owner = owner
        self._recorder: Recorder | None = None

    @property
    def active(self) -> bool:
        """Frames written now reach the recording."""
        return self._recorder is not None

    async def start(self, header: dict[str, object]) -> None:
        """Create the recording, under the owner's recording mode.

        Raises `RecordingFailed` only when recording is mandatory (the caller refuses
        the session, saying why); otherwise a failure or `off` is audited here and the
        session runs unrecorded.
        """
        gate = self._conn.gate
        record = self._owner.record
        mode = self._owner.recording_mode
        if mode == "off":
            await asyncio.to_thread(gate.recording_off, record)
            return
        try:
            recorder = await asyncio.to_thread(gate.start_recording, record, header)
        except RecordingFailed as exc:
            if mode == "mandatory":
                raise
            await asyncio.to_thread(gate.recording_lost, record, str(exc), False)
            return
        self._recorder = recorder
        self._conn.gateway.recordings.add(self)

    # -- writes (on the relay's hot path) ---------------------------------------------

    def output(self, data: bytes, stderr: bool = False) -> None:
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.output(data, stderr)
            except RecordingFailed as exc:
                self.lost(str(exc))

    def input(self, data: bytes) -> None:
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.input(data)
            except RecordingFailed as exc:
                self.lost(str(exc))

    def query(self, entry: bytes) -> None:
        """One entry of a PostgreSQL session's query log (JSON)."""
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.query(entry)
            except RecordingFailed as exc:
                self.lost(str(exc))

    def resize(self, columns: int, rows: int) -> None:
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.resize(columns, rows)
            except RecordingFailed as exc:
                self.lost(str(exc))

    def marker(self, label: str) -> None:
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.marker(label)
            except RecordingFailed as exc:
                self.lost(str(exc))

    def flush(self) -> None:
        """Hand what is queued to the writer (the gateway's flusher calls this)."""
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.flush()
            except RecordingFailed as exc:
                self.lost(str(exc))

    # -- the end ---------------------------------------------------------------------

    def lost(self, reason: str) -> None:
        """Writing failed: audit and seal what was written, once; end a mandatory session."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        conn = self._conn
        conn.gateway.recordings.discard(self)
        owner = self._owner
        mandatory = owner.recording_mode == "mandatory"
        recorder.loss_reported = True  # audited by `_seal_lost`, not again by the seal
        conn.gateway.write_later(self._seal_lost, owner.record, recorder, reason, mandatory)
        if mandatory:
            owner.fail(EndReason.RECORDING_FAILED, f"{reason} - session closed")

    def _seal_lost(self, record: Any, recorder: Recorder, reason: str, ended: bool) -> None:
        """On the writes thread: the audit of the loss, then the seal of what was written."""
        gate = self._conn.gate
        try:
            gate.recording_lost(record, reason, ended)
        finally:
            gate.seal_failed(record, recorder)

    def close(self, reason: EndReason, exit_status: int | None = None, detail: str = "") -> None:
        """The session ended: write the end frame, then close and seal the file."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        conn = self._conn
        conn.gateway.recordings.discard(self)
        end = {
            "ended_at": conn.gate.now().isoformat(),
            "end_reason": reason.value,
            "exit_status": exit_status,
            "detail": detail,
        }
        if conn.closing:
            # As the records (`close_record`): the recording's last write, fsync and hash
            # start once every connection closed in this turn has sent its notice.
            asyncio.get_running_loop().call_soon(self._close, recorder, end)
        else:
            self._close(recorder, end)

    def _close(self, recorder: Recorder, end: dict[str, Any]) -> None:
        """Close and seal, the last write and fsync off the event loop."""
        gateway, gate, record = self._conn.gateway, self._conn.gate, self._owner.record
        try:
            pending = recorder.close_in_background(end)
        except RecordingFailed:
            gateway.write_later(gate.seal_failed, record, recorder)
            return
        if pending is None:  # no recording thread: closed here
            try:
                gate.finish_recording(record, recorder, end)
            except Exception:
                log.exception("could not seal the recording of session %s", record.id)
            return
        gateway.run_detached(self._seal_when_written(record, recorder, pending))

    async def _seal_when_written(
        self, record: Any, recorder: Recorder, pending: Future[tuple[str, int]]
    ) -> None:
        written: tuple[str, int] | None
        try:
            written = await asyncio.wrap_future(pending)
        except RecordingFailed:
            written = None
        gateway = self._conn.gateway
        try:
            await gateway.write_behind(self._conn.gate.seal_recording, record, recorder, written)
        except Exception:
            log.exception("could not seal the recording of session %s", record.id)


def recording_header(
    session: Any, kind: str, pty: tuple[str, tuple[int, int, int, int], Any] | None = None
) -> dict[str, object]:
    """The metadata at the head of a recording (a PTY session adds its terminal)."""
    header: dict[str, object] = {
        "session": session.id,
        "agent": session.agent,
        "grant": session.grant_id,
        "task": session.task,
        "target": session.target,
        "client": session.client,
        "kind": kind,
        "command": session.command,
        "term_type": None,
        "term_size": None,
        "pty": False,
        "started_at": session.started_at.isoformat(),
    }
    if pty is not None:
        term_type, size = pty[0], pty[1]
        header.update(term_type=term_type, term_size=[size[0], size[1]], pty=True)
    return header
