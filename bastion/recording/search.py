"""Transcripts of recordings, and searching them: `recordings text` and `recordings search`.

A PTY session's transcript comes from its keyframe index (built on first use, then read
back at file speed: see `render`); a session without a PTY is decoded as plain lines on
the fly, which is fast enough not to need a cache. Typed input is searched along with
output; each match says which session, when, whether it was typed or shown, and the line.

A search goes through a transcript segment at a time: one regex (or `str.find`) over the
segment's joined text, and only lines that match are split out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bastion.recording.indexfile import Segment
from bastion.recording.render import Progress, ensure_index
from bastion.recording.replay import Recording
from bastion.recording.transcript import INPUT, OUTPUT, PlainLines, TextLine

Source = str | os.PathLike[str] | tuple[str | os.PathLike[str], str]


@dataclass(frozen=True)
class Match:
    session_id: str
    seconds: float
    kind: str  # "output" or "input"
    line: str
    path: Path

    def as_dict(self) -> dict[str, object]:
        return {
            "session": self.session_id,
            "seconds": round(self.seconds, 3),
            "kind": self.kind,
            "line": self.line,
            "path": str(self.path),
        }


def transcript(
    path: str | os.PathLike[str], *, progress: Progress | None = None
) -> Iterator[TextLine]:
    """Every line the session showed (scrolled-off ones included) and typed, in time
    order, as (seconds, kind, text); kind is "output" or "input"."""
    with Recording.open(path) as recording:
        if not recording.pty:
            yield from _plain(recording)
            return
    with ensure_index(path, progress=progress) as index:
        yield from index.lines()


def _plain(recording: Recording) -> Iterator[TextLine]:
    for batch in _plain_batches(recording):
        yield from batch


def _plain_batches(recording: Recording) -> Iterator[list[TextLine]]:
    lines = PlainLines()
    payload = recording.payload
    for kind, time, body, end in recording.raw_frames():
        if batch := lines.feed(kind, time, payload(body, end)):
            yield batch
    yield lines.finish()


def format_seconds(seconds: float) -> str:
    """`83.25` -> `00:01:23.250`."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest / 1000:06.3f}"


def format_line(line: TextLine) -> str:
    """One transcript line for `recordings text`: time, then `> ` before typed input."""
    marker = "> " if line.kind == INPUT else ""
    return f"{format_seconds(line.seconds)}  {marker}{line.text}"


def iter_text(path: str | os.PathLike[str]) -> Iterator[str]:
    """`recordings text` output: chunks of whole lines, each line ending in a newline.

    Formats a segment (or a frame's worth of lines) at a time; lines of one frame share
    their time, so each time is formatted once.
    """
    last_seconds = -1.0
    last_stamp = ""

    def stamp(seconds: float) -> str:
        nonlocal last_seconds, last_stamp
        if seconds != last_seconds:
            last_seconds, last_stamp = seconds, format_seconds(seconds)
        return last_stamp

    typed = ord("i")
    with Recording.open(path) as recording:
        if not recording.pty:
            pending: list[str] = []
            for lines in _plain_batches(recording):
                pending += [
                    f"{stamp(t)}  {'> ' if k == INPUT else ''}{text}\n" for t, k, text in lines
                ]
                if len(pending) >= 4096:
                    yield "".join(pending)
                    pending.clear()
            if pending:
                yield "".join(pending)
            return
    with ensure_index(path) as index:
        for segment in index.segments():
            yield "".join(
                [
                    f"{stamp(t)}  {'> ' if k == typed else ''}{text}\n"
                    for t, k, text in zip(
                        segment.times, segment.kinds, segment.text.split("\n"), strict=True
                    )
                ]
            )


Finder = Callable[[str], Iterator[tuple[int, int]]]  # text -> (start, end) of each hit


def _finder(pattern: str, regex: bool, ignore_case: bool) -> Finder:
    if regex or ignore_case:
        flags = re.MULTILINE | (re.IGNORECASE if ignore_case else 0)
        compiled = re.compile(pattern if regex else re.escape(pattern), flags)

        def find_regex(text: str) -> Iterator[tuple[int, int]]:
            for match in compiled.finditer(text):
                yield match.start(), match.end()

        return find_regex
    if not pattern:
        raise ValueError("empty search pattern")

    def find_literal(text: str) -> Iterator[tuple[int, int]]:
        find = text.find
        at = find(pattern)
        while at >= 0:
            yield at, at + len(pattern)
            at = find(pattern, at + 1)

    return find_literal


def _hits(text: str, finder: Finder) -> Iterator[tuple[int, str]]:
    """(line number, line) of each line of `text` with a hit, each line once."""
    number = 0
    counted_to = 0
    line_end = -1
    for start, stop in finder(text):
        if start <= line_end:
            continue  # another hit on a line already reported
        number += text.count("\n", counted_to, start)
        counted_to = start
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        if line_end < 0:
            line_end = len(text)
        if stop > line_end:
            continue  # a regex hit that runs across lines matches no single line
        yield number, text[line_start:line_end]


def _search_block(segment: Segment, finder: Finder) -> Iterator[TextLine]:
    for number, text in _hits(segment.text, finder):
        kind = INPUT if segment.kinds[number] == ord("i") else OUTPUT
        yield TextLine(segment.times[number], kind, text)


def search_recording(
    path: str | os.PathLike[str],
    pattern: str,
    *,
    regex: bool = False,
    ignore_case: bool = False,
    kinds: Collection[str] | None = None,
    session_id: str | None = None,
) -> Iterator[Match]:
    """Matching transcript lines of one recording."""
    path = Path(path)
    finder = _finder(pattern, regex, ignore_case)
    with Recording.open(path) as recording:
        session = session_id or str(recording.header.get("session") or path.stem)
        if not recording.pty:
            for batch in _plain_batches(recording):
                for number, text in _hits("\n".join([line.text for line in batch]), finder):
                    line = batch[number]
                    if kinds is None or line.kind in kinds:
                        yield Match(session, line.seconds, line.kind, text, path)
            return
    with ensure_index(path) as index:
        for segment in index.segments():
            for line in _search_block(segment, finder):
                if kinds is None or line.kind in kinds:
                    yield Match(session, line.seconds, line.kind, line.text, path)


def _source(source: Source) -> tuple[Path, str | None]:
    if isinstance(source, tuple):
        return Path(source[0]), source[1]
    return Path(source), None


def _search_all(
    args: tuple[Path, str | None, str, bool, bool, tuple[str, ...] | None],
) -> list[Match]:
    path, session, pattern, regex, ignore_case, kinds = args
    return list(
        search_recording(
            path, pattern, regex=regex, ignore_case=ignore_case, kinds=kinds, session_id=session
        )
    )


def search(
    recordings: Iterable[Source],
    pattern: str,
    *,
    regex: bool = False,
    ignore_case: bool = False,
    kinds: Collection[str] | None = None,
    workers: int = 1,
) -> Iterator[Match]:
    """Matching lines across recordings, recording by recording in the order given.

    `recordings` are paths, or (path, session id) pairs when the caller knows the id
    (from the store's index). `workers` > 1 searches that many recordings at once in
    worker processes (the first search of a PTY recording renders it, which is CPU
    bound); matches still come in the order given. Raises `re.error` for a bad regex
    before reading anything.
    """
    finder = _finder(pattern, regex, ignore_case)  # fail early on a bad pattern
    del finder
    kind_filter = tuple(kinds) if kinds is not None else None
    sources = [_source(source) for source in recordings]
    if workers <= 1 or len(sources) <= 1:
        for path, session in sources:
            yield from search_recording(
                path, pattern, regex=regex, ignore_case=ignore_case, kinds=kind_filter,
                session_id=session,
            )  # fmt: skip
        return
    jobs = [(path, session, pattern, regex, ignore_case, kind_filter) for path, session in sources]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for matches in pool.map(_search_all, jobs):
            yield from matches
