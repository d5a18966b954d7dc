"""Converting a recording for other tools: asciicast v2 and v3, raw output bytes, text.

Output is produced as a stream of byte chunks (`iter_export`), so exporting a 1 GB
recording holds one chunk, not the file, in memory.

asciicast v2 (what `asciinema` 2.x plays) and v3 (asciinema 3.x, web player >= 3.10):
- terminal bytes are decoded with one incremental UTF-8 decoder per stream
  (`errors="replace"`), so a multibyte character split across frames comes out whole;
- stderr is shown like stdout (`"o"`: a terminal shows both), typed input is `"i"`,
  resizes `"r"` with `COLSxROWS`, bastion event markers `"m"`; v3 adds `"x"` with the
  exit status;
- a session without a PTY wrote bare `\\n` line ends: they become `\\r\\n` in the cast, as
  a terminal's output processing would have made them, so the cast doesn't staircase;
- every line is one JSON value: never a blank line (asciinema 2.2 fails on one); v2 times
  are absolute with 6 decimals, v3 times are intervals in milliseconds, rounded from the
  absolute time so the rounding error does not add up;
- the header carries bastion's metadata (the recording's header and end frames) under
  one nested key, `"bastion"`, which asciinema ignores.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from typing import IO, Any, Literal

from bastion.recording import format as fmt
from bastion.recording.replay import Recording, RecordingInfo, parse_resize
from bastion.recording.search import iter_text

Format = Literal["asciicast-v2", "asciicast-v3", "raw", "text"]
FORMATS: tuple[Format, ...] = ("asciicast-v2", "asciicast-v3", "raw", "text")
_CHUNK = 256 * 1024
_BARE_LF = re.compile(r"(?<!\r)\n")


def export(path: str | os.PathLike[str], format: Format) -> bytes:
    """The whole export in memory: for small recordings and tests (see `iter_export`)."""
    return b"".join(iter_export(path, format))


def export_to(path: str | os.PathLike[str], format: Format, out: IO[bytes]) -> int:
    """Write the export to `out`; returns the number of bytes written."""
    written = 0
    for chunk in iter_export(path, format):
        out.write(chunk)
        written += len(chunk)
    return written


def iter_export(path: str | os.PathLike[str], format: Format) -> Iterator[bytes]:
    if format == "asciicast-v2":
        yield from _asciicast(path, 2)
    elif format == "asciicast-v3":
        yield from _asciicast(path, 3)
    elif format == "raw":
        yield from _raw(path)
    elif format == "text":
        yield from _chunked(iter_text(path))
    else:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")


def _chunked(lines: Iterator[str]) -> Iterator[bytes]:
    pending: list[str] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= _CHUNK:
            yield "".join(pending).encode("utf-8", "replace")
            pending.clear()
            size = 0
    if pending:
        yield "".join(pending).encode("utf-8", "replace")


def _raw(path: str | os.PathLike[str]) -> Iterator[bytes]:
    with Recording.open(path) as recording:
        pending = bytearray()
        for kind, _time, body, end in recording.raw_frames():
            if kind == fmt.OUTPUT or kind == fmt.STDERR:
                pending += recording.payload(body, end)
                if len(pending) >= _CHUNK:
                    yield bytes(pending)
                    pending.clear()
        if pending:
            yield bytes(pending)


def cast_header(info: RecordingInfo, version: int) -> dict[str, Any]:
    header = info.header
    columns, rows = info.term_size
    term_type = header.get("term_type") if isinstance(header.get("term_type"), str) else None
    value: dict[str, Any] = {"version": version}
    if version == 2:
        value |= {"width": columns, "height": rows}
    else:
        value["term"] = {"cols": columns, "rows": rows} | ({"type": term_type} if term_type else {})
    if info.started_at is not None:
        value["timestamp"] = int(info.started_at.timestamp())
    if version == 2:
        value["duration"] = round(info.duration, 6)
    if isinstance(header.get("command"), str):
        value["command"] = header["command"]
    value["title"] = _title(header, info.session_id)
    value["env"] = {"TERM": term_type or "xterm"}
    value["bastion"] = {
        "header": header,
        "end": info.end,
        "complete": info.complete,
        "size": info.size,
    }
    return value


def _title(header: dict[str, Any], session: str) -> str:
    who = header.get("agent") or "?"
    where = header.get("target") or "?"
    return f"{who} on {where} (session {session})"


def _asciicast(path: str | os.PathLike[str], version: int) -> Iterator[bytes]:
    with Recording.open(path) as recording:
        info = recording.info()
        lines = [json.dumps(cast_header(info, version), ensure_ascii=False) + "\n"]
        size = len(lines[0])
        decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(3)]
        plain = not recording.pty
        last = 0.0
        emitted_ms = 0

        def event(time: float, code: str, data: str) -> str:
            nonlocal emitted_ms
            if version == 2:
                stamp = f"{time:.6f}"
            else:
                absolute_ms = round(time * 1000)
                stamp = f"{(absolute_ms - emitted_ms) / 1000:.3f}"
                emitted_ms = absolute_ms
            return f'[{stamp}, "{code}", {json.dumps(data, ensure_ascii=False)}]\n'

        for kind, frame_time, body, end in recording.raw_frames():
            time = last = max(last, frame_time)  # never backwards, whatever the file says
            line = None
            if kind == fmt.OUTPUT or kind == fmt.STDERR:
                text = decoders[kind == fmt.STDERR].decode(recording.payload(body, end))
                if plain and "\n" in text:
                    text = _BARE_LF.sub("\r\n", text)
                if text:
                    line = event(time, "o", text)
            elif kind == fmt.INPUT:
                text = decoders[2].decode(recording.payload(body, end))
                if text:
                    line = event(time, "i", text)
            elif kind == fmt.RESIZE:
                size_ = parse_resize(recording.payload(body, end))
                if size_ is not None:
                    line = event(time, "r", f"{size_[0]}x{size_[1]}")
            elif kind == fmt.MARKER:
                label = recording.payload(body, end).decode("utf-8", "replace")
                line = event(time, "m", label)
            if line is not None:
                lines.append(line)
                size += len(line)
                if size >= _CHUNK:
                    yield "".join(lines).encode("utf-8")
                    lines.clear()
                    size = 0
        for index, code in ((0, "o"), (1, "o"), (2, "i")):
            rest = decoders[index].decode(b"", final=True)
            if rest:
                lines.append(event(last, code, rest))
        exit_status = info.end.get("exit_status") if info.end else None
        if version == 3 and isinstance(exit_status, int):
            lines.append(event(info.duration if info.end else last, "x", str(exit_status)))
        if lines:
            yield "".join(lines).encode("utf-8")
