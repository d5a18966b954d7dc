"""Appending a session's frames to its recording file: the hot path.

Frames are queued in memory as a list of byte strings (a frame's header, then its
payload as the relay received it: no copy on the event loop), written with one
`writev` when they pass 1 MiB and at least every quarter second (the gateway's flusher
calls `flush`, `transport/recording.py`), so a `kill -9` of the bastion loses at most the
last half second. (Handing the
writer thread 256 KiB at a time cost the event loop a third more CPU in a bulk transfer:
each hand-over is a wake-up and a GIL exchange.) The SHA-256 of
everything written is computed when it closes, from the file (see `_digest`).

With an executor (the gateway passes a one-thread pool), writing and hashing happen off
the event loop: both release the GIL, so they run on another core while the loop relays
(measured: recording 200 MB cost 40 % of relay throughput inline, a few percent off-loop).
At most `_MAX_QUEUED` bytes wait for the writer; past that `flush` waits, which slows the
relay down to the disk's pace instead of buffering without bound.

A failed write raises `RecordingFailed` (at that flush or the next): the gateway then
ends the session (recording is mandatory unless the target says best-effort).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from bastion.clock import Clock
from bastion.recording import format as fmt

_FLUSH_SIZE = 1024 * 1024
_MAX_QUEUED = 16 * 1024 * 1024
_IOV_MAX = 1024  # Linux's limit on the buffers of one writev


class RecordingFailed(Exception):
    """The recording can't be created or written; the message says why."""


class Recorder:
    def __init__(
        self,
        path: Path,
        clock: Clock,
        header: Mapping[str, Any],
        executor: Executor | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._executor = executor
        self._last: Future[None] | None = None
        self._inflight: list[Future[None]] = []
        self._error: str | None = None
        self.loss_reported = False  # the failure was audited by whoever noticed it
        self._start = clock.monotonic()
        self._chunks: list[bytes | memoryview] = []
        self._queued = 0
        self.size = 0
        self.closed = False
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise RecordingFailed(f"can't create recording {path}: {exc.strerror}") from None
        # The header is written here, on this thread: a recording that can't be written
        # (a full disk) must refuse the session before it starts, not after.
        self._write([fmt.MAGIC + fmt.encode_json(fmt.HEADER, 0.0, header)])
        if self._error is not None:
            os.close(self._fd)
            self.closed = True
            raise RecordingFailed(self._error)

    def elapsed(self) -> float:
        return max(0.0, self._clock.monotonic() - self._start)

    def _frame(self, kind: bytes, payload: bytes) -> None:
        now = self.elapsed()
        if type(payload) is not bytes:
            payload = bytes(payload)  # queued until written: it must not change meanwhile
        chunks = self._chunks
        if len(payload) <= fmt.MAX_PAYLOAD:
            # The hot path: the header, then the payload object itself.
            chunks.append(fmt.frame_header(kind, now, len(payload)))
            chunks.append(payload)
        else:
            for start in range(0, len(payload), fmt.MAX_PAYLOAD):
                chunks.append(fmt.encode(kind, now, payload[start : start + fmt.MAX_PAYLOAD]))
        self._queued += fmt.HEADER_SIZE + len(payload)
        if self._queued >= _FLUSH_SIZE:
            self.flush()

    def output(self, data: bytes, stderr: bool = False) -> None:
        self._frame(fmt.STDERR if stderr else fmt.OUTPUT, data)

    def input(self, data: bytes) -> None:
        self._frame(fmt.INPUT, data)

    def resize(self, columns: int, rows: int) -> None:
        self._frame(fmt.RESIZE, f"{columns}x{rows}".encode())

    def query(self, entry: bytes) -> None:
        """One statement of a PostgreSQL session's query log (JSON)."""
        self._frame(fmt.QUERY, entry)

    def marker(self, label: str) -> None:
        self._frame(fmt.MARKER, label.encode("utf-8"))

    def flush(self) -> None:
        if self._error is not None:
            raise RecordingFailed(self._error)
        if not self._chunks or self.closed:
            return
        data, self._chunks, self._queued = self._chunks, [], 0  # handed over, not copied
        if self._executor is None:
            self._write(data)
        else:
            self._inflight = [f for f in self._inflight if not f.done()]
            if len(self._inflight) * _FLUSH_SIZE > _MAX_QUEUED:
                self._inflight[0].result()  # let the disk catch up
            self._last = self._executor.submit(self._write, data)
            self._inflight.append(self._last)
        if self._error is not None:
            raise RecordingFailed(self._error)

    def _write(self, chunks: list[bytes | memoryview]) -> None:
        """Write queued chunks in order; runs on the executor's thread when there is one."""
        if self._error is not None:
            return
        try:
            while chunks:
                written = os.writev(self._fd, chunks[:_IOV_MAX])
                self.size += written  # what reached the file, a partly written chunk too
                done = 0
                while done < len(chunks) and written >= len(chunks[done]):
                    written -= len(chunks[done])
                    done += 1
                del chunks[:done]
                if written:  # the first chunk left was written in part
                    chunks[0] = memoryview(chunks[0])[written:]
        except OSError as exc:
            self._error = f"writing recording {self.path} failed: {exc.strerror}"

    def _drain(self) -> None:
        if self._last is not None:
            self._last.result()

    def close(self, end: Mapping[str, Any]) -> tuple[str, int]:
        """Write the end frame, sync, close; returns (sha256 hex, size)."""
        if self.closed:
            return self._digest(), self.size
        try:
            self._chunks.append(fmt.encode_json(fmt.END, self.elapsed(), end))
            self.flush()
            self._drain()
            if self._error is not None:
                raise RecordingFailed(self._error)
            os.fsync(self._fd)
        except OSError as exc:
            raise RecordingFailed(f"closing recording {self.path} failed: {exc.strerror}") from None
        finally:
            self.closed = True
            os.close(self._fd)
        return self._digest(), self.size

    def _digest(self) -> str:
        """SHA-256 of the file's first `size` bytes, read back once it is complete.

        Hashing at close rather than on every write keeps about a sixth of the relay's
        CPU off the hot path; the file is still in the page cache, and with an executor
        this runs on its thread.
        """
        digest = hashlib.sha256()
        remaining = self.size
        with self.path.open("rb") as handle:
            while remaining > 0 and (chunk := handle.read(min(remaining, 1 << 20))):
                digest.update(chunk)
                remaining -= len(chunk)
        return digest.hexdigest()

    @property
    def failed(self) -> str | None:
        """Why writing failed, or None."""
        return self._error

    def written(self) -> tuple[str, int]:
        """SHA-256 and size of what is in the file (after `abandon` or `close`)."""
        return self._digest(), self.size

    def close_in_background(self, end: Mapping[str, Any]) -> Future[tuple[str, int]] | None:
        """Like `close`, with the last write and the fsync on the executor's thread.

        Returns a future of (sha256, size), or None without an executor (then call
        `close`). Closing 50 sessions at one expiry must not wait for 50 fsyncs in turn.
        """
        if self._executor is None or self.closed:
            return None
        self._chunks.append(fmt.encode_json(fmt.END, self.elapsed(), end))
        self.flush()  # RecordingFailed: the caller abandons the recorder
        self.closed = True
        return self._executor.submit(self._finalize)

    def _finalize(self) -> tuple[str, int]:
        try:
            if self._error is not None:
                raise RecordingFailed(self._error)
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise RecordingFailed(
                    f"closing recording {self.path} failed: {exc.strerror}"
                ) from None
            return self._digest(), self.size
        finally:
            os.close(self._fd)

    def abandon(self) -> None:
        """Close the file descriptor after a failure, keeping what was written."""
        if not self.closed:
            with contextlib.suppress(RecordingFailed):
                self.flush()
            self._drain()
            self.closed = True
            os.close(self._fd)
