"""Recording measurements (issue 4, "Performance"). Each returns a JSON-ready dict.

- what recording costs the relay: bulk exec (and a PTY session) through the bastion to
  `prod-web` (recorded, the default) vs `prod-web-norec`, the same sshd with
  `recording = "off"`, runs interleaved in the same bastion process;
- reading recordings back: `screen_at` on a real ~100 MB PTY recording made through the
  bastion (first call builds the keyframe index; then random times), and transcript text
  and search throughput over ~1 GB of recordings.

The recordings read back are real ones: `bench/termgen.py` (varied terminal text with
escape codes) run on the target through the bastion, once under a PTY (120x40) and once
without; see `recording`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pty
import random
import shutil
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.env import BASTION, NOREC_TARGET, SSH_TARGET, TERMGEN, TEXT_FILE, Procs, World
from bench.metrics import (
    MB,
    _ceiling,
    _drain,
    _rate,
    _rotations,
    _summary,
    bulk_runs,
    cpu_seconds,
    median,
    percentile,
)

OFF = "bastion_rec_off"  # the series through the bastion to the unrecorded target
TERM_SIZE = (120, 40)
NEEDLE = "rm -rf /var/lib/bench-needle"  # a prompt line of termgen, every 997 blocks
REGEX = r"status=5\d\d .*rollback"


def _check_unrecorded(world: World) -> int:
    """Recordings the store has for the `recording = "off"` target (must be none)."""
    found = json.loads(world.bastion_cli("recordings", "list", "--target", NOREC_TARGET, "--json"))
    if found:
        raise RuntimeError(f"{len(found)} sessions to {NOREC_TARGET} were recorded anyway")
    return len(found)


def _on_off(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    med = _summary(runs)
    return {
        "median_mb_s": med,
        "on_off_ratio": med["bastion"] / med[OFF],
        "bastion_one_core_ceiling_mb_s": {
            "recording_on": _ceiling(runs, "bastion"),
            "recording_off": _ceiling(runs, OFF),
        },
    }


# -- recording on vs off ---------------------------------------------------------


def rec_bulk(world: World, procs: Procs, filename: str, size: int, reps: int) -> dict[str, Any]:
    """`ssh ... cat FILE` through the bastion, recorded vs not, ``reps`` runs each."""
    series = {
        OFF: world.ssh_bastion("cat", filename, user=NOREC_TARGET),
        "bastion": world.ssh_bastion("cat", filename, user=SSH_TARGET),
    }
    runs = bulk_runs(world, procs, series, size, reps)
    return {
        "file": filename,
        "bytes": size,
        "runs": runs,
        **_on_off(runs),
        "recorded_sessions_of_off_target": _check_unrecorded(world),
    }


def _pty_child(argv: Sequence[str], size: tuple[int, int]) -> tuple[int, int]:
    """Fork ``argv`` on a new PTY of ``size`` (columns, rows); returns (pid, master fd)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: become ssh; never return into the benchmark
        try:
            winsize = struct.pack("HHHH", size[1], size[0], 0, 0)
            fcntl.ioctl(0, termios.TIOCSWINSZ, winsize)
            os.execvp(argv[0], list(argv))
        finally:
            os._exit(127)
    return pid, fd


def _pty_drain(
    procs: Procs, argv: Sequence[str], timeout: float = 300.0
) -> tuple[int, float | None, int, float, int]:
    """Run ``argv`` on a PTY, read the master to EOF: (bytes, first at, first n, end, status)."""
    pid, fd = _pty_child(argv, TERM_SIZE)
    procs.add_raw(pid)
    status = -1
    try:
        with open(fd, "rb", buffering=0, closefd=True) as master:
            buf = bytearray(1 << 16)
            total, first_at, first_n = 0, None, 0
            while True:
                try:
                    n = master.readinto(buf)
                except OSError:  # EIO: every slave end closed (ssh exited)
                    n = 0
                if not n:
                    break
                if first_at is None:
                    first_at, first_n = time.perf_counter(), n
                total += n
            end = time.perf_counter()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
                break
            time.sleep(0.01)
    finally:
        procs.stop_raw(pid)
    return total, first_at, first_n, end, status


def rec_pty(world: World, procs: Procs, size: int, reps: int) -> dict[str, Any]:
    """`ssh -tt ... 'head -c SIZE text'` on a local PTY: the shell path, recorded vs not.

    The direct path is run too, for reference. The text file is base64 without newlines,
    so neither PTY changes a byte and every path delivers exactly ``size`` bytes.
    """
    remote = f"head -c {size} {TEXT_FILE}"
    series = {
        OFF: world.ssh_bastion(remote, opts=["-tt"], user=NOREC_TARGET),
        "bastion": world.ssh_bastion(remote, opts=["-tt"], user=SSH_TARGET),
        "direct": world.ssh_direct(remote, opts=["-tt"]),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in series}
    for order in _rotations(list(series), reps):
        for name in order:
            cpu0 = cpu_seconds(world.bastion_pid)
            t0 = time.perf_counter()
            total, first_at, first_n, end, status = _pty_drain(procs, series[name])
            if total != size or status != 0:
                raise RuntimeError(f"{name}: got {total} of {size} bytes on the PTY, exit {status}")
            runs[name].append(
                {
                    "bytes": total,
                    "mb_s": _rate(total, first_at, first_n, end),
                    "wall_s": end - t0,
                    "bastion_cpu_s": cpu_seconds(world.bastion_pid) - cpu0,
                }
            )
    return {
        "bytes": size,
        "runs": runs,
        **_on_off(runs),
        "recorded_sessions_of_off_target": _check_unrecorded(world),
    }


# -- real recordings to read back ------------------------------------------------


def recording(world: World, procs: Procs, kind: str, size: int) -> dict[str, Any]:
    """A real recording of ``size`` bytes of termgen output through the bastion, made once
    per run and kept in ``world.cache``: ``kind`` "pty" (`ssh -tt`, 120x40) or "exec"."""
    key = f"recording-{kind}-{size}"
    if key in world.cache:
        made: dict[str, Any] = world.cache[key]
        return made
    remote = f"exec /usr/bin/python3 {TERMGEN} {size} {1 if kind == 'pty' else 2}"
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    if kind == "pty":
        total, _first, _n, _end, status = _pty_drain(procs, world.ssh_bastion(remote, opts=["-tt"]))
    else:
        proc = procs.popen(
            world.ssh_bastion(remote),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        try:
            total = _drain(proc.stdout)[0]
            status = proc.wait(60)
        finally:
            procs.stop(proc)
    if status != 0 or total < size:
        raise RuntimeError(f"termgen through the bastion: {total} of {size} bytes, exit {status}")
    elapsed = time.perf_counter() - t0
    # The session's recording: the newest on prod-web since we started; wait until closed.
    deadline = time.monotonic() + 60
    while True:
        listed = world.bastion_cli("recordings", "list", "--target", SSH_TARGET, "--json")
        since = started.replace(microsecond=0)
        mine = [r for r in json.loads(listed) if datetime.fromisoformat(r["started_at"]) >= since]
        entry = max(mine, key=lambda r: r["started_at"]) if mine else None
        if entry is not None and entry["state"] != "recording":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no closed recording of the termgen session: {mine}")
        time.sleep(0.2)
    path = world.home / "recordings" / entry["path"]
    made = {
        "session": entry["session"],
        "path": path,
        "kind": kind,
        "bytes_shown": total,
        "recording_bytes": path.stat().st_size,
        "made_in_s": elapsed,
    }
    world.cache[key] = made
    return made


# -- screen --at -------------------------------------------------------------------


def _has_cli(*words: str) -> bool:
    """Whether `bastion <words[:-1]> --help` lists the subcommand ``words[-1]``."""
    out = subprocess.run(
        [BASTION, *words[:-1], "--help"], capture_output=True, text=True, check=False
    ).stdout
    return any(line.split()[:1] == [words[-1]] for line in out.splitlines())


def screen_at(
    world: World, procs: Procs, size: int, probes: int, cli_probes: int, seed: int = 7
) -> dict[str, Any]:
    """`render.screen_at` on a ~``size`` PTY recording: the first call (builds the keyframe
    index), then ``probes`` random times and "end" (each call opens the cached index, as
    the CLI would); and the `bastion recordings screen ID --at T` CLI if it exists."""
    from bastion.recording import indexfile, render, replay

    made = recording(world, procs, "pty", size)
    path: Path = made["path"]
    index_path = indexfile.default_index_path(path)
    index_path.unlink(missing_ok=True)
    info = replay.read_info(path)
    rng = random.Random(seed)
    times = [rng.uniform(0, info.duration) for _ in range(probes)]

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    render.screen_at(path, times[0])
    first_s = time.perf_counter() - t0
    first_cpu = time.process_time() - cpu0
    index = indexfile.read_index(index_path)
    if index is None:
        raise RuntimeError(f"no keyframe index at {index_path} after the first screen_at")
    with index:
        keyframes = len(index.keyframes)

    samples: list[float] = []
    for at in times:
        t0 = time.perf_counter()
        render.screen_at(path, at)
        samples.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    render.screen_at(path, "end")
    end_s = time.perf_counter() - t0

    cli: dict[str, Any] = {"available": _has_cli("recordings", "screen")}
    if cli["available"]:
        cli_samples: list[float] = []
        # The same times, as plain seconds (`--at 12.345`, which the CLI accepts).
        specs = [f"{at:.3f}" for at in times[:cli_probes]] + ["end"]
        for spec in specs:
            argv = [
                BASTION, "--home", str(world.home), "--as", "bench",
                "recordings", "screen", made["session"], "--at", spec,
            ]  # fmt: skip
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, env=world.env, check=False)
            elapsed = time.perf_counter() - t0
            if out.returncode != 0:
                command = " ".join(argv[3:])
                cli["error"] = f"`{command}` exited {out.returncode}: {out.stderr[-500:]}"
                break
            cli_samples.append(elapsed)
        # The floor under any CLI call: interpreter start-up and the CLI's imports.
        floor = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(
                [BASTION, "recordings", "screen", "--help"], capture_output=True, check=False
            )
            floor.append(time.perf_counter() - t0)
        cli.update(
            {
                "startup_floor_s": median(floor),
                "specs": specs,
                "samples_s": cli_samples,
                "p50_s": median(cli_samples),
                "max_s": max(cli_samples) if cli_samples else math.nan,
            }
        )
    return {
        "session": made["session"],
        "recording_bytes": info.size,
        "output_bytes": info.output_bytes,
        "frames": info.frames,
        "recording_duration_s": info.duration,
        "term_size": list(replay.header_size(info.header)),
        "index_bytes": index_path.stat().st_size,
        "keyframes": keyframes,
        "first_call_s": first_s,
        "first_call_cpu_s": first_cpu,
        "index_build_mb_s": info.size / first_s / MB,
        "probe_times_s": times,
        "samples_s": samples,
        "p50_s": median(samples),
        "p90_s": percentile(samples, 90),
        "max_s": max(samples),
        "end_s": end_s,
        "cli": cli,
    }


# -- text and search -------------------------------------------------------------


def _copy_recording(src: Path, dst: Path, with_index: bool) -> None:
    """Copy a recording (and its index): same bytes and mtime, so the index stays current."""
    from bastion.recording import indexfile

    shutil.copy2(src, dst)
    if with_index:
        shutil.copy2(indexfile.default_index_path(src), indexfile.default_index_path(dst))
        a, b = src.stat(), dst.stat()
        if (a.st_size, a.st_mtime_ns) != (b.st_size, b.st_mtime_ns):
            raise RuntimeError(f"copy of {src} has another size or mtime: its index would be stale")


def _timed(fn: Any) -> tuple[Any, float, float]:
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0, time.process_time() - cpu0


def text_search(world: World, procs: Procs, size: int, total: int) -> dict[str, Any]:
    """`transcript.iter_text` and `search.search` over ~``total`` bytes of recordings: half
    copies of the ~``size`` PTY recording (with its keyframe index, built beforehand:
    the transcript is read back from it), half copies of a ~``size`` exec recording of the
    same kind of text (decoded on the fly: exec transcripts have no index)."""
    from bastion.recording import render, search

    pty_made = recording(world, procs, "pty", size)
    exec_made = recording(world, procs, "exec", size)
    _, index_s, _ = _timed(lambda: render.ensure_index(pty_made["path"]).close())
    copies = max(1, round(total / 2 / size))
    corpus = Path(tempfile.mkdtemp(prefix="corpus-", dir=world.work))
    result: dict[str, Any] = {
        "copies_per_kind": copies,
        "index_ready_s": index_s,  # ~0 when screen_at built it already
        "needle": NEEDLE,
        "regex": REGEX,
        "kinds": {},
    }
    try:
        paths: dict[str, list[Path]] = {"pty": [], "exec": []}
        for kind, made in (("pty", pty_made), ("exec", exec_made)):
            for i in range(copies):
                dst = corpus / f"{kind}-{i}.rec"
                _copy_recording(made["path"], dst, with_index=kind == "pty")
                paths[kind].append(dst)
        all_bytes = all_s = 0.0
        for kind, kind_paths in paths.items():
            nbytes = sum(p.stat().st_size for p in kind_paths)

            def text(kind_paths: list[Path] = kind_paths) -> int:
                return sum(len(line) for p in kind_paths for line in search.iter_text(p))

            def literal(kind_paths: list[Path] = kind_paths) -> int:
                return sum(1 for _ in search.search(kind_paths, NEEDLE))

            def regex(kind_paths: list[Path] = kind_paths) -> int:
                return sum(1 for _ in search.search(kind_paths, REGEX, regex=True))

            ops: dict[str, Any] = {"bytes": nbytes}
            for op, fn in (("text", text), ("search_literal", literal), ("search_regex", regex)):
                value, wall, cpu = _timed(fn)
                ops[op] = {"mb_s": nbytes / wall / MB, "wall_s": wall, "cpu_s": cpu}
                ops[op]["chars" if op == "text" else "matches"] = value
                all_s += wall
            all_bytes += nbytes * 3
            result["kinds"][kind] = ops
        result["bytes"] = sum(result["kinds"][k]["bytes"] for k in paths)
        result["overall_mb_s"] = all_bytes / all_s / MB
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
    with contextlib.suppress(OSError):
        result["corpus_removed"] = not corpus.exists()
    return result
