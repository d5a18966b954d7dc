"""Throughput of pgwire's relay paths over a synthetic, DataRow-heavy server stream.

    .venv/bin/python -m tests.unit.test_pgwire_bench     # prints MB/s per path and read size

The test below only checks that the benchmark runs and counts right: timing is not
asserted, a shared machine is too noisy for that.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bastion import pgwire as pg
from bastion.pgwire import NEED_DATA, BackendParser, encode

ROWS = frozenset({b"D", b"d"})


def result_set(rows: int, seed: int = 1) -> bytes:
    """A SELECT's answer: RowDescription, `rows` DataRows of ~80 bytes, CommandComplete, Z."""
    rnd = random.Random(seed)
    fields = (
        pg.FieldDescription("id", type_oid=23),
        pg.FieldDescription("name"),
        pg.FieldDescription("created", type_oid=1114),
    )
    parts = [encode(pg.RowDescription.from_fields(fields))]
    for i in range(rows):
        created = None if i % 7 == 0 else b"2024-05-01 12:00:00"
        parts.append(
            encode(pg.DataRow.from_values((str(i).encode(), b"x" * rnd.randint(10, 80), created)))
        )
    parts += [encode(pg.CommandComplete(f"SELECT {rows}")), encode(pg.ReadyForQuery("I"))]
    return b"".join(parts)


def copy_out(rows: int) -> bytes:
    """A COPY TO STDOUT: one CopyData per row (~60 bytes), as PostgreSQL sends it."""
    row = encode(pg.CopyData(b"12345\tsome text value of a row\t2024-05-01 12:00:00\n"))
    return encode(pg.CopyOutResponse(0, (0, 0, 0))) + row * rows + encode(pg.CopyDone())


def _by_frame(parser: BackendParser) -> int:
    count = 0
    next_frame = parser.next_frame
    while next_frame() is not NEED_DATA:
        count += 1
    return count


def _by_run(parser: BackendParser) -> int:
    count = 0
    while True:
        count += len(parser.next_run(ROWS)) > 0
        if parser.next_frame() is NEED_DATA:
            return count
        count += 1


def _by_event(parser: BackendParser) -> int:
    count = 0
    next_event = parser.next_event
    while next_event() is not NEED_DATA:
        count += 1
    return count


PATHS: dict[str, Callable[[BackendParser], int]] = {
    "next_frame": _by_frame,
    "next_run+next_frame": _by_run,
    "next_event": _by_event,
}


def measure(stream: bytes, read: int, path: Callable[[BackendParser], int], repeats: int) -> float:
    """Best MB/s over `repeats` passes, the stream fed in reads of `read` bytes."""
    chunks = [stream[i : i + read] for i in range(0, len(stream), read)]
    best = float("inf")
    for _ in range(repeats):
        parser = BackendParser()
        started = time.perf_counter()
        for chunk in chunks:
            parser.receive_data(chunk)
            path(parser)
        best = min(best, time.perf_counter() - started)
        assert parser.buffered == 0
    return len(stream) / best / 1e6


def main() -> None:
    streams = {
        "DataRow (~80 B rows)": result_set(50_000),
        "CopyData (~60 B rows)": copy_out(60_000),
    }
    for label, stream in streams.items():
        print(f"{label}: {len(stream) / 1e6:.1f} MB")
        for name, path in PATHS.items():
            rates = [measure(stream, read, path, repeats=15) for read in (16384, 65536, 262144)]
            shown = "  ".join(f"{rate:6.0f} MB/s" for rate in rates)
            print(f"  {name:22} {shown}   (16/64/256 KiB reads)")


def test_benchmark_runs_and_counts() -> None:
    stream = result_set(500)
    for path in PATHS.values():
        assert measure(stream, 4096, path, repeats=1) > 0
    parser = BackendParser()
    parser.receive_data(stream)
    assert _by_frame(parser) == 503
    parser = BackendParser()
    parser.receive_data(copy_out(10))
    assert _by_run(parser) == 3  # CopyOutResponse, one run of 10 rows, CopyDone


if __name__ == "__main__":
    main()
