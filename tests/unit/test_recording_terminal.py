"""The pyte fast paths against stock pyte, and screen snapshots: differential and round trip."""

from __future__ import annotations

import contextlib
import itertools

import pyte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.recording.snapshot import snapshot_screen
from bastion.recording.terminal import FastScreen, FastStream, Terminal, display
from bastion.recording.transcript import TranscriptScreen
from tests.unit.recording_synth import BoundedScreen

# Pieces that exercise the fast paths and pyte's corners: SGR, cursor moves, erases, scroll
# regions, insert mode, autowrap off, charsets, wide and combining characters, malformed
# CSI (too many parameters, huge numbers), C1 controls, OSC.
PIECES = [
    "a", "hello ", "x" * 90, "é", "naïve", "日本", "\u0301", "\u200b", "\x01", "→", "─┼─",
    "\r", "\n", "\r\n", "\t", "\b", "\x00", "\x7f", "\x9b", "\x9d", "\x18",
    "\x1b[", "\x1b[1;32m", "\x1b[0m", "\x1b[m", "\x1b[38;5;300m", "\x1b[38;2;1;2;3m",
    "\x1b[2J", "\x1b[H", "\x1b[5;10H", "\x1b[;5H", "\x1b[1;m", "\x1b[10C", "\x1b[3D",
    "\x1b[K", "\x1b[1K", "\x1b[2K", "\x1b[3L", "\x1b[2M", "\x1b[3P", "\x1b[2@", "\x1b[5X",
    "\x1b[2;20r", "\x1b[r", "\x1b[10d", "\x1b[5G", "\x1b[1;2;3A", "\x1b[99999999999m",
    "\x1b[?25l", "\x1b[?7l", "\x1b[?7h", "\x1b[4h", "\x1b[4l", "\x1b[?6h", "\x1b[?6l",
    "\x1b[20h", "\x1b[20l", "\x1b[?5h", "\x1b[?3h", "\x1b[6n", "\x1b[c", "\x1b[g", "\x1b[3g",
    "\x1bM", "\x1bD", "\x1bE", "\x1bH", "\x1b7", "\x1b8", "\x1bc", "\x1b#8",
    "\x1b]0;title\x07", "\x1b(0", "\x1b)0", "\x0e", "\x0f", "\x1b%@", "\x1b%G",
    "\x1b[1$", "\x1b[ q", "\x1b[>c", "\x1b[?1049h", "\x1b[²m", "\x1b7" * 20, "\x1b8" * 20,
]  # fmt: skip

text_streams = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)
byte_streams = st.one_of(
    text_streams.map(lambda s: s.encode("utf-8")),
    st.binary(max_size=600),
    st.tuples(text_streams, st.binary(max_size=200)).map(lambda p: p[0].encode() + p[1]),
)
sizes = st.sampled_from([(80, 24), (10, 5), (3, 2), (132, 40), (1, 1)])


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def normalized(screen: pyte.Screen) -> tuple[object, ...]:
    """The full state of a screen, independent of how the snapshot numbered its chars."""
    snap = snapshot_screen(screen)
    chars = [tuple(c) for c in snap["chars"]]
    rows = {
        y: (chars[default], {x: chars[c] for x, c in zip(cells[0::2], cells[1::2], strict=True)})
        for y, default, cells in snap["rows"]
    }
    cursor = snap["cursor"]
    rest = {k: v for k, v in snap.items() if k not in ("rows", "chars", "cursor", "savepoints")}
    points = [(p[0][:2], chars[p[0][2]], p[0][3], *p[1:]) for p in snap["savepoints"]]
    return rows, (cursor[0], cursor[1], chars[cursor[2]], cursor[3]), rest, points


def _feed_both(size: tuple[int, int], chunks: list[bytes], resize_at: int | None = None) -> None:
    columns, rows = size
    stock = BoundedScreen(columns, rows)
    stock_stream = pyte.ByteStream(stock)
    fast = FastScreen(columns, rows)
    fast_stream = FastStream(fast)
    for number, chunk in enumerate(chunks):
        stock_error = fast_error = None
        try:
            stock_stream.feed(chunk)
        except Exception as exc:
            stock_error = type(exc)
        try:
            fast_stream.feed_bytes(chunk)
        except Exception as exc:
            fast_error = type(exc)
        assert fast_error == stock_error
        if number == resize_at:
            stock.resize(rows + 3, columns // 2 or 1)
            fast.resize(rows + 3, columns // 2 or 1)
        assert normalized(fast) == normalized(stock)
        assert fast_stream._taking_plain_text == stock_stream._taking_plain_text
        assert fast_stream.use_utf8 == stock_stream.use_utf8
    assert display(fast) == display(stock)


@settings(max_examples=400, deadline=None)
@given(byte_streams, st.lists(st.integers(0, 10_000), max_size=12), sizes)
def test_fast_paths_leave_the_screen_exactly_as_stock_pyte(
    data: bytes, cuts: list[int], size: tuple[int, int]
) -> None:
    _feed_both(size, _chunks(data, cuts))


@settings(max_examples=100, deadline=None)
@given(byte_streams, st.lists(st.integers(0, 10_000), max_size=6), st.integers(0, 6))
def test_fast_paths_match_stock_pyte_across_a_resize(
    data: bytes, cuts: list[int], resize_at: int
) -> None:
    _feed_both((20, 6), _chunks(data, cuts), resize_at)


@settings(max_examples=100, deadline=None)
@given(st.lists(byte_streams, max_size=8))
def test_the_transcript_screen_draws_exactly_as_stock_pyte(chunks: list[bytes]) -> None:
    stock = BoundedScreen(20, 6)
    stock_stream = pyte.ByteStream(stock)
    tracked = TranscriptScreen(20, 6)
    tracked_stream = FastStream(tracked)
    for chunk in chunks:
        with contextlib.suppress(Exception):
            stock_stream.feed(chunk)
        with contextlib.suppress(Exception):
            tracked_stream.feed_bytes(chunk)
        tracked.end_frame()
        assert normalized(tracked) == normalized(stock)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(byte_streams, sizes)
def test_a_snapshot_restores_the_same_state_and_the_same_future(
    data: bytes, size: tuple[int, int]
) -> None:
    half = len(data) // 2
    terminal = Terminal(FastScreen(*size))
    terminal.feed(b"o", data[:half])
    restored = Terminal.restore(terminal.snapshot())
    assert normalized(restored.screen) == normalized(terminal.screen)
    if terminal.at_boundary():
        # From a boundary, the restored terminal goes on exactly like the original.
        errors_before = terminal.errors
        terminal.feed(b"o", data[half:])
        restored.feed(b"o", data[half:])
        assert normalized(restored.screen) == normalized(terminal.screen)
        assert restored.errors == terminal.errors - errors_before


def test_at_boundary_waits_for_escape_sequences_and_utf8_sequences() -> None:
    terminal = Terminal(FastScreen(80, 24))
    assert terminal.at_boundary()
    terminal.feed(b"o", b"plain \x1b[1;3")
    assert not terminal.at_boundary()
    terminal.feed(b"o", b"1m red")
    assert terminal.at_boundary()
    terminal.feed(b"o", "é".encode()[:1])
    assert not terminal.at_boundary()
    terminal.feed(b"e", b"stderr has its own decoder")
    assert not terminal.at_boundary()
    terminal.feed(b"o", "é".encode()[1:])
    assert terminal.at_boundary()
    assert display(terminal.screen)[0].startswith("plain  redstderr has its own decoderé")


def test_display_survives_a_wide_character_stub_left_alone() -> None:
    screen = FastScreen(10, 2)
    stream = FastStream(screen)
    stream.feed_bytes("日".encode() + b"\x1b[1G" + b"a")  # overwrite the wide char, keep stub
    assert display(screen)[0].startswith("a")
