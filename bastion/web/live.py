"""Recordings in the browser: the asciicast a replay loads, and a live session's stream.

Replay (`cast`) is the asciicast v2 export (`recording.export`), streamed, with the
bastion's event markers as `m` events that the asciinema player puts on its timeline.

Live (`events_endpoint`) tails the recording file while the session runs, as server-sent
events in the shape the asciinema player's `eventsource` driver reads: first the terminal
size and everything shown so far (`init`, the last `_INIT_LIMIT` characters of it), then
one `[time, "o", text]` event per output frame as the writer flushes it (at least every
quarter second), and a `done` event when the recording ends. A PostgreSQL session's
statement log is shown as psql-like text lines. Read-only: the stream never writes to the
session. The file is polled (`_POLL_S`) rather than watched: it works the same on any
file system and costs one `read` per poll per watcher.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from bastion.errors import BastionError, InvalidInput
from bastion.recording import format as fmt
from bastion.recording.export import iter_export
from bastion.recording.replay import header_pty, header_size
from bastion.recording.transcript import query_lines
from bastion.web.app import SESSION_COOKIE, Call, Console, _secure_headers
from bastion.webpolicy import Permission, allowed

_POLL_S = 0.25
_KEEPALIVE_S = 15.0
_INIT_LIMIT = 1 << 20
_BARE_LF = re.compile(r"(?<!\r)\n")


def cast(call: Call) -> Response:
    session_id = call.request.path_params["id"]
    path = call.service.recording_file(session_id)
    call.service.note_recording_viewed(session_id, "replay")
    return StreamingResponse(
        iter_export(path, "asciicast-v2"),
        media_type="application/x-asciicast",
        headers={"Cache-Control": "no-store"},
    )


class Tail:
    """Whole frames appended to a recording file since the last read (no file I/O here)."""

    def __init__(self) -> None:
        self.pending = b""
        self.started = False
        self.pty = False
        self.size = (80, 24)
        self.ended = False
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]

    def feed(self, data: bytes) -> list[tuple[float, str]]:
        """Output text per frame in `data` (appended to what was left over)."""
        buffer = self.pending + data
        start = 0
        if not self.started:
            if len(buffer) < len(fmt.MAGIC):
                self.pending = buffer
                return []
            if buffer[: len(fmt.MAGIC)] != fmt.MAGIC:
                raise InvalidInput("not a bastion recording")
            start = len(fmt.MAGIC)
            self.started = True
        out: list[tuple[float, str]] = []
        consumed = start
        for frame in fmt.iter_frames(buffer[start:], 0):
            consumed = start + frame.offset + fmt.HEADER_SIZE + len(frame.payload)
            text = self._text(frame)
            if text:
                out.append((frame.time, text))
        self.pending = buffer[consumed:]
        return out

    def _text(self, frame: fmt.Frame) -> str:
        if frame.kind == fmt.HEADER:
            header = frame.json()
            self.pty = header_pty(header)
            self.size = header_size(header)
            return ""
        if frame.kind in (fmt.OUTPUT, fmt.STDERR):
            text = self._decoders[frame.kind == fmt.STDERR].decode(frame.payload)
            return text if self.pty else _BARE_LF.sub("\r\n", text)
        if frame.kind == fmt.QUERY:
            lines = query_lines(frame.time, frame.payload)
            return "".join(f"{line.text}\r\n" for line in lines)
        if frame.kind == fmt.END:
            self.ended = True
        return ""


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(console: Console, path: Path, session_id: str) -> AsyncIterator[bytes]:
    tail = Tail()
    with path.open("rb") as file:
        shown = tail.feed(await run_in_threadpool(file.read))
        init = "".join(text for _, text in shown)[-_INIT_LIMIT:]
        now = shown[-1][0] if shown else 0.0
        cols, rows = tail.size
        yield _sse({"cols": cols, "rows": rows, "time": now, "init": init})
        idle = 0.0
        while not tail.ended:
            data = await run_in_threadpool(file.read)
            if data:
                idle = 0.0
                for time, text in tail.feed(data):
                    yield _sse([time, "o", text])
                continue
            await asyncio.sleep(_POLL_S)
            idle += _POLL_S
            if idle >= _KEEPALIVE_S:
                idle = 0.0
                yield b": keep-alive\n\n"
                found = await run_in_threadpool(console.bastion.get_session, session_id)
                if not found.active:
                    break
        yield _sse({}, event="done")


def events_endpoint(console: Console) -> Any:
    async def endpoint(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        user = await run_in_threadpool(console.accounts.session_user, token) if token else None
        if user is None:
            return _secure_headers(Response("sign in first\n", status_code=401))
        if not allowed(user.role, Permission.READ):
            return _secure_headers(Response("not allowed\n", status_code=403))
        session_id = request.path_params["id"]
        service = console.bastion.acting_as(user.name)
        try:
            path = await run_in_threadpool(service.recording_file, session_id)
            await run_in_threadpool(service.note_recording_viewed, session_id, "live")
        except BastionError as exc:
            return _secure_headers(Response(f"{exc}\n", status_code=404))
        response = StreamingResponse(
            _stream(console, path, session_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        return _secure_headers(response)

    return endpoint
