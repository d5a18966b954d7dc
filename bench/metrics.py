"""The measurements. Each returns a dict of raw numbers (JSON-ready) for one metric.

"direct" is the stock OpenSSH client straight to sshd as ``bastion-t``; "bastion" is the
same client through `bastion serve` as ``prod-web`` (``relay``/``pg`` for forwards). Where
both paths are measured, their runs are interleaved (alternating which goes first) so
that drift on the machine hits both alike.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pty
import select
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from bench import source
from bench.env import (
    BINARY_FILE,
    PG_DB,
    PG_ROLE,
    PG_TABLE,
    PG_TARGET,
    PYTHON,
    RELAY_TARGET,
    REPO,
    SLOW_READER,
    Procs,
    World,
    cpu_seconds,
    rss_kib,
)
from tests import peers

PATHS = ("direct", "bastion")
MB = 1_000_000  # throughput is in decimal MB/s
MIB = 1 << 20


# -- small helpers -------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (``p`` in 0..100), like numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def _drain(stream: Any, chunk: int = MIB) -> tuple[int, float | None, int, float]:
    """Read ``stream`` to EOF: (total bytes, time of first byte, first chunk size, end)."""
    buf = bytearray(chunk)
    total, first_at, first_n = 0, None, 0
    while True:
        n = stream.readinto(buf)
        if not n:
            break
        if first_at is None:
            first_at, first_n = time.perf_counter(), n
        total += n
    return total, first_at, first_n, time.perf_counter()


def _rate(total: int, first_at: float | None, first_n: int, end: float) -> float:
    """MB/s from the first byte to EOF (connection setup excluded on both paths)."""
    if first_at is None or end <= first_at:
        return math.nan
    return (total - first_n) / (end - first_at) / MB


def _wait_for_output(
    procs: Sequence[subprocess.Popen[bytes]], marker: bytes, timeout: float
) -> None:
    """Wait until each process has written ``marker`` on stdout (b"" = any byte)."""
    sel = selectors.DefaultSelector()
    seen: dict[int, bytes] = {}
    for proc in procs:
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ, proc)
        seen[proc.pid] = b""
    deadline = time.monotonic() + timeout
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(sel.get_map())} of {len(procs)} sessions not up")
            for key, _ in sel.select(left):
                proc = key.data
                data = os.read(key.fd, 4096)
                if not data:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"ssh {proc.pid} ended before it was up: {err.strip()}")
                seen[proc.pid] += data
                if marker in seen[proc.pid]:
                    sel.unregister(key.fileobj)
    finally:
        sel.close()


def _start_sessions(
    procs: Procs,
    argvs: Sequence[Sequence[str]],
    marker: bytes,
    batch: int,
    stdin: int = subprocess.PIPE,
) -> list[subprocess.Popen[bytes]]:
    """Start ssh clients ``batch`` at a time, each batch up before the next starts."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(0, len(argvs), batch):
            group = [
                procs.popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for argv in argvs[i : i + batch]
            ]
            started.extend(group)
            _wait_for_output(group, marker, timeout=60)
    except BaseException:
        procs.stop_many(started)
        raise
    return started


def _warm_up(world: World, procs: Procs, n: int = 3) -> None:
    for _ in range(n):
        _run_ssh(procs, world.ssh("bastion", "true"))


def _run_ssh(procs: Procs, argv: Sequence[str], timeout: float = 60) -> float:
    """Run one ssh command to completion, output discarded; return its wall time."""
    t0 = time.perf_counter()
    proc = procs.popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=timeout)
        elapsed = time.perf_counter() - t0
    finally:
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode().strip()}")
    return elapsed


def _sample_rss(pid: int, until: Callable[[], bool], every: float = 0.02) -> list[int]:
    samples = []
    while not until():
        samples.append(rss_kib(pid))
        time.sleep(every)
    samples.append(rss_kib(pid))
    return samples


# -- 1, 2: bulk exec -------------------------------------------------------------

# The stock client picks chacha20-poly1305 with sshd but AES-GCM with the bastion (it
# offers nothing else). An extra "direct_aes_gcm" series pins the direct client to the
# bastion's cipher, for a like-for-like reading; the goals use the default series.
AES_GCM = ["-c", "aes128-gcm@openssh.com"]


def _rotations(names: Sequence[str], reps: int) -> list[list[str]]:
    """Per repetition, the series in a rotated order, so none is always first."""
    names = list(names)
    return [names[i % len(names) :] + names[: i % len(names)] for i in range(reps)]


def _bulk_series(world: World, *remote: str) -> dict[str, list[str]]:
    return {
        "direct": world.ssh("direct", *remote),
        "bastion": world.ssh("bastion", *remote),
        "direct_aes_gcm": world.ssh("direct", *remote, opts=AES_GCM),
    }


def _summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    return {name: median([r["mb_s"] for r in rs]) for name, rs in runs.items()}


def _ceiling(runs: dict[str, list[dict[str, float]]], series: str = "bastion") -> float:
    """MB/s the bastion could relay with one full core: bytes over its CPU time per run.

    Unlike the wall-clock rate, this hardly depends on what else runs on the machine.
    """
    return median([r["bytes"] / r["bastion_cpu_s"] / MB for r in runs[series]])


def bulk_exec(world: World, procs: Procs, filename: str, size: int, reps: int) -> dict[str, Any]:
    """`ssh ... cat FILE`, bytes counted on the client: MB/s per series, ``reps`` runs each."""
    runs = bulk_runs(world, procs, _bulk_series(world, "cat", filename), size, reps)
    return {
        "file": filename,
        "bytes": size,
        "runs": runs,
        "median_mb_s": _summary(runs),
        "bastion_one_core_ceiling_mb_s": _ceiling(runs),
    }


def bulk_runs(
    world: World, procs: Procs, series: dict[str, list[str]], size: int, reps: int
) -> dict[str, list[dict[str, float]]]:
    """Run each ssh argv of ``series`` ``reps`` times (rotated), reading its stdout to EOF."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in series}
    for order in _rotations(list(series), reps):
        for name in order:
            cpu0 = cpu_seconds(world.bastion_pid)
            t0 = time.perf_counter()
            proc = procs.popen(
                series[name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
            try:
                total, first_at, first_n, end = _drain(proc.stdout)
                proc.wait(30)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            finally:
                procs.stop(proc)
            if total != size or proc.returncode != 0:
                raise RuntimeError(
                    f"{name}: got {total} of {size} bytes, exit {proc.returncode}: {err.strip()}"
                )
            runs[name].append(
                {
                    "bytes": total,
                    "mb_s": _rate(total, first_at, first_n, end),
                    "wall_s": end - t0,
                    "bastion_cpu_s": cpu_seconds(world.bastion_pid) - cpu0,
                }
            )
    return runs


# -- 3: -L forward ---------------------------------------------------------------


def forward(world: World, procs: Procs, size: int, reps: int) -> dict[str, Any]:
    """Read ``size`` bytes from a local TCP source through `ssh -N -L`, per series.

    Through the bastion the forward names the `relay` target, an SSH-kind target whose
    registered address is the source: `-L` to such a target is relayed as plain bytes.
    """
    src_port = world.fwd_port
    src = procs.popen(
        [PYTHON, "-m", "bench.source", str(src_port)], cwd=str(REPO), stdin=subprocess.DEVNULL
    )
    tunnels: dict[str, subprocess.Popen[bytes]] = {}
    try:
        peers.wait_for_port(src_port, proc=src)
        tunnels, local = _open_tunnels(world, procs, RELAY_TARGET, src_port)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in local}
        for order in _rotations(list(local), reps):
            for name in order:
                cpu0 = cpu_seconds(world.bastion_pid)
                t0 = time.perf_counter()
                with source.request(local[name], size) as sock, sock.makefile("rb", 0) as f:
                    total, first_at, first_n, end = _drain(f)
                if total != size:
                    raise RuntimeError(f"{name}: forward gave {total} of {size} bytes")
                runs[name].append(
                    {
                        "bytes": total,
                        "mb_s": _rate(total, first_at, first_n, end),
                        "wall_s": end - t0,
                        "bastion_cpu_s": cpu_seconds(world.bastion_pid) - cpu0,
                    }
                )
    finally:
        procs.stop_many([*tunnels.values(), src])
    return {
        "bytes": size,
        "runs": runs,
        "median_mb_s": _summary(runs),
        "bastion_one_core_ceiling_mb_s": _ceiling(runs),
    }


def _open_tunnels(
    world: World,
    procs: Procs,
    target: str,
    dest_port: int,
    names: Sequence[str] = ("direct", "bastion", "direct_aes_gcm"),
) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, int]]:
    """`ssh -N -L` per series: direct (to 127.0.0.1:dest_port via sshd) or via the bastion."""
    tunnels: dict[str, subprocess.Popen[bytes]] = {}
    local: dict[str, int] = {}
    common = ["-N", "-o", "ExitOnForwardFailure=yes"]
    try:
        for name in names:
            local[name] = peers.free_port()
            if name == "bastion":
                spec = f"127.0.0.1:{local[name]}:{target}:{dest_port}"
                argv = world.ssh_bastion(opts=[*common, "-L", spec], user=target)
            else:
                spec = f"127.0.0.1:{local[name]}:127.0.0.1:{dest_port}"
                extra = AES_GCM if name == "direct_aes_gcm" else []
                argv = world.ssh_direct(opts=[*common, *extra, "-L", spec])
            tunnels[name] = procs.popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        for name, port in local.items():
            peers.wait_for_port(port, 30.0, proc=tunnels[name])
    except BaseException:
        procs.stop_many(list(tunnels.values()))
        raise
    return tunnels, local


def forward_pg(world: World, procs: Procs, reps: int) -> dict[str, Any]:
    """`psql -c 'COPY blob TO STDOUT'` through `ssh -N -L` per series; MB/s on psql's stdout.

    Direct: psql logs in as the role with its password through sshd's forward. Bastion:
    the forward names the `pg` target; the bastion's PostgreSQL relay injects the role's
    credentials (psql sends none) and parses every frame on the way.
    """
    return psql_copy(world, procs, f"COPY {PG_TABLE} TO STDOUT", reps)


def psql_copy(world: World, procs: Procs, sql: str, reps: int) -> dict[str, Any]:
    """`psql -c SQL` (a COPY ... TO STDOUT) through `ssh -N -L` per series (see forward_pg)."""
    assert world.pg is not None
    tunnels, local = _open_tunnels(world, procs, PG_TARGET, world.pg.port)
    psql = str(peers.PG_BIN / "psql")
    env = {**os.environ, "PGCONNECT_TIMEOUT": "20"}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in local}
    sizes: set[int] = set()
    try:
        for order in _rotations(list(local), reps):
            for name in order:
                dsn = (
                    f"host=127.0.0.1 port={local[name]} dbname={PG_DB} user={PG_ROLE}"
                    " sslmode=disable"
                )
                run_env = dict(env)
                if name != "bastion":
                    run_env["PGPASSWORD"] = world.pg_password
                cpu0 = cpu_seconds(world.bastion_pid)
                t0 = time.perf_counter()
                proc = procs.popen(
                    [psql, "-X", "-q", "-d", dsn, "-c", sql],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    bufsize=0,
                    env=run_env,
                )
                try:
                    total, first_at, first_n, end = _drain(proc.stdout)
                    proc.wait(30)
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                finally:
                    procs.stop(proc)
                if proc.returncode != 0 or total == 0:
                    raise RuntimeError(f"{name}: psql exited {proc.returncode}: {err.strip()}")
                sizes.add(total)
                runs[name].append(
                    {
                        "bytes": total,
                        "mb_s": _rate(total, first_at, first_n, end),
                        "wall_s": end - t0,
                        "bastion_cpu_s": cpu_seconds(world.bastion_pid) - cpu0,
                    }
                )
    finally:
        procs.stop_many(list(tunnels.values()))
    if len(sizes) != 1:
        raise RuntimeError(f"COPY output differs between paths: {sorted(sizes)} bytes")
    return {
        "sql": sql,
        "bytes": sizes.pop(),
        "runs": runs,
        "median_mb_s": _summary(runs),
        "bastion_one_core_ceiling_mb_s": _ceiling(runs),
    }


# -- 4: connection setup ---------------------------------------------------------


# OpenSSH 9.2 prefers the post-quantum hybrid sntrup761x25519, which neither asyncssh
# leg of the bastion path offers (both end up on curve25519-sha256). A third series
# pins the direct client to curve25519 for a like-for-like comparison.
LIKE_FOR_LIKE_KEX = ["-o", "KexAlgorithms=curve25519-sha256"]


def connection_setup(world: World, procs: Procs, n: int) -> dict[str, Any]:
    """Wall time of `ssh ... true`, ``n`` runs per series after one unrecorded warm-up."""
    series = {
        "direct": world.ssh("direct", "true"),
        "bastion": world.ssh("bastion", "true"),
        "direct_curve25519": world.ssh("direct", "true", opts=LIKE_FOR_LIKE_KEX),
    }
    for argv in series.values():
        _run_ssh(procs, argv)
    samples: dict[str, list[float]] = {name: [] for name in series}
    for order in _rotations(list(series), n):
        for name in order:
            samples[name].append(_run_ssh(procs, series[name]) * 1000)
    return {
        "samples_ms": samples,
        "median_ms": {name: median(v) for name, v in samples.items()},
        "p90_ms": {name: percentile(v, 90) for name, v in samples.items()},
    }


# -- 5: keystroke round trip -----------------------------------------------------


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {marker!r} from the PTY session; got {got[-200:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the PTY
                data = b""
            if not data:
                raise RuntimeError(f"PTY session ended early; got {got[-200:]!r}")
            got += data
    return got


def _open_pty_session(procs: Procs, argv: Sequence[str]) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # child: become ssh; never return into the benchmark
        try:
            os.execvp(argv[0], list(argv))
        finally:
            os._exit(127)
    procs.add_raw(pid)
    _read_until(fd, b"READY", 30)
    return pid, fd


def keystroke(world: World, procs: Procs, n: int, gap: float = 0.002) -> dict[str, Any]:
    """One byte into `ssh -tt` running raw `cat` under a PTY, timed until it echoes back."""
    remote = "stty raw -echo; printf READY; exec cat"
    sessions: dict[str, tuple[int, int]] = {}
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    try:
        for path in PATHS:
            sessions[path] = _open_pty_session(procs, world.ssh(path, remote, opts=["-tt"]))
        for order in _rotations(PATHS, n):
            for path in order:
                fd = sessions[path][1]
                t0 = time.perf_counter_ns()
                os.write(fd, b"x")
                ready, _, _ = select.select([fd], [], [], 5.0)
                if not ready:
                    raise TimeoutError(f"{path}: keystroke not echoed within 5 s")
                data = os.read(fd, 64)
                t1 = time.perf_counter_ns()
                if data != b"x":
                    raise RuntimeError(f"{path}: unexpected echo {data!r}")
                samples[path].append((t1 - t0) / 1e6)
                time.sleep(gap)
    finally:
        for pid, fd in sessions.values():
            procs.stop_raw(pid)
            with contextlib.suppress(OSError):
                os.close(fd)
    return {
        "samples_ms": samples,
        "p50_ms": {p: percentile(samples[p], 50) for p in PATHS},
        "p99_ms": {p: percentile(samples[p], 99) for p in PATHS},
        "gap_s": gap,
    }


# -- 6: idle sessions ------------------------------------------------------------


def idle_sessions(world: World, procs: Procs, n: int, batch: int = 20) -> dict[str, Any]:
    """``n`` concurrent idle PTY shells through a freshly started bastion: RSS per session."""
    world.start_bastion()
    pid = world.bastion_pid
    # Warm up the code paths (imports, first allocations) with a couple of shells.
    warm = _start_sessions(procs, [world.ssh("bastion", opts=["-tt"])] * 2, b"$ ", batch)
    procs.stop_many(warm)
    time.sleep(1.0)
    before = rss_kib(pid)
    clients: list[subprocess.Popen[bytes]] = []
    t0 = time.perf_counter()
    try:
        argv = world.ssh("bastion", opts=["-tt"])  # an interactive shell, no command
        clients = _start_sessions(procs, [argv] * n, b"$ ", batch)
        open_s = time.perf_counter() - t0
        time.sleep(2.0)
        after_samples = []
        for _ in range(5):
            after_samples.append(rss_kib(pid))
            time.sleep(0.1)
        after = int(median(after_samples))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        alive = sum(1 for c in clients if c.poll() is None)
    finally:
        procs.stop_many(clients)
    time.sleep(2.0)
    after_close = rss_kib(pid)
    leftovers = world.sshd.processes_of_login_user()
    world.sshd.kill_processes_of_login_user()
    return {
        "sessions": n,
        "alive_at_measurement": alive,
        "open_all_s": open_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_samples_kib": after_samples,
        "rss_after_close_kib": after_close,
        "bastion_fds_with_sessions": fds,
        "per_session_mib": (after - before) / n / 1024,
        "target_processes_left_after_close": leftovers,
    }


# -- 7: slow reader --------------------------------------------------------------


def slow_upload(
    world: World, procs: Procs, size: int, chunk: int = 64 << 10, pause: float = 0.01
) -> dict[str, Any]:
    """Upload ``size`` bytes through the bastion to a target reader that sips slowly."""
    world.start_bastion()
    pid = world.bastion_pid
    _warm_up(world, procs)
    time.sleep(0.5)
    before = rss_kib(pid)
    remote = f"sleep 2; exec /usr/bin/python3 {SLOW_READER} {chunk} {pause}"
    proc = procs.popen(
        world.ssh("bastion", remote),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    written = [0]

    def feed() -> None:
        assert proc.stdin is not None
        block = bytes(MIB)
        try:
            left = size
            while left > 0:
                n = min(left, len(block))
                proc.stdin.write(block[:n])
                written[0] += n
                left -= n
            proc.stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass

    t0 = time.perf_counter()
    writer = threading.Thread(target=feed, daemon=True)
    out = b""
    try:
        writer.start()
        samples = _sample_rss(pid, lambda: proc.poll() is not None)
        elapsed = time.perf_counter() - t0
        writer.join(5)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        procs.stop(proc)
        writer.join(5)
    received = int(out.strip() or -1)
    if received != size:
        raise RuntimeError(f"target reader got {received} of {size} bytes: {err.decode()}")
    return _slow_result(size, chunk, pause, before, samples, elapsed)


def slow_download(
    world: World, procs: Procs, size: int, chunk: int = 64 << 10, pause: float = 0.01
) -> dict[str, Any]:
    """Download ``size`` bytes through the bastion to a local reader that sips slowly."""
    world.start_bastion()
    pid = world.bastion_pid
    _warm_up(world, procs)
    time.sleep(0.5)
    before = rss_kib(pid)
    proc = procs.popen(
        world.ssh("bastion", "head", "-c", str(size), BINARY_FILE),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    received = [0]

    def sip() -> None:
        assert proc.stdout is not None
        while True:
            data = proc.stdout.read(chunk)
            if not data:
                return
            received[0] += len(data)
            time.sleep(pause)

    t0 = time.perf_counter()
    reader = threading.Thread(target=sip, daemon=True)
    try:
        reader.start()
        samples = _sample_rss(pid, lambda: not reader.is_alive())
        elapsed = time.perf_counter() - t0
        proc.wait(30)
    finally:
        procs.stop(proc)
        reader.join(5)
    if received[0] != size:
        raise RuntimeError(f"local reader got {received[0]} of {size} bytes")
    return _slow_result(size, chunk, pause, before, samples, elapsed)


def _slow_result(
    size: int, chunk: int, pause: float, before: int, samples: list[int], elapsed: float
) -> dict[str, Any]:
    return {
        "bytes": size,
        "reader": f"{chunk} bytes every {pause * 1000:g} ms",
        "elapsed_s": elapsed,
        "rss_before_kib": before,
        "rss_max_kib": max(samples),
        "rss_samples_kib": samples,
        "max_growth_mib": (max(samples) - before) / 1024,
    }


# -- 8: expiry precision ---------------------------------------------------------


def expiry(world: World, procs: Procs, n: int, ttl: str, batch: int = 10) -> dict[str, Any]:
    """``n`` `sleep 600` sessions on one short grant: client exit time minus valid_before."""
    issued = world.issue_grant(ttl, world.keys / "expiry")
    key = Path(issued["private_key"])
    grant_end = datetime.fromisoformat(world.grant_valid_before(issued["id"])).timestamp()
    cert = load_ssh_public_identity(Path(issued["certificate"]).read_bytes())
    assert isinstance(cert, SSHCertificate)
    # The certificate counts whole seconds; the bastion closes at the earlier of the two.
    valid_before = min(float(cert.valid_before), grant_end)
    argv = world.ssh_bastion("echo up; exec sleep 600", opts=["-n"], key=key)
    exits: dict[int, float] = {}
    clients: list[subprocess.Popen[bytes]] = []
    threads: list[threading.Thread] = []

    def watch(proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        exits[proc.pid] = time.time()

    try:
        clients = _start_sessions(procs, [argv] * n, b"up", batch, stdin=subprocess.DEVNULL)
        margin = valid_before - time.time()
        if margin <= 0.5:
            raise RuntimeError(f"sessions took too long to open: {margin:.2f}s left of {ttl}")
        for proc in clients:
            thread = threading.Thread(target=watch, args=(proc,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, valid_before + 10 - time.time()))
        delays = [(exits[c.pid] - valid_before) * 1000 for c in clients if c.pid in exits]
        notices = 0
        statuses: dict[str, int] = {}
        for c in clients:
            if c.pid in exits and c.stderr is not None:
                notices += b"expired" in c.stderr.read()
            key_s = str(c.returncode)
            statuses[key_s] = statuses.get(key_s, 0) + 1
    finally:
        procs.stop_many(clients)
    world.sshd.kill_processes_of_login_user()
    # When the bastion itself recorded each session's end, relative to the same deadline:
    # tells the gateway's own latency apart from the clients' reaction.
    records = json.loads(world.bastion_cli("sessions", "list", "--json", "--limit", str(4 * n)))
    recorded = [
        (datetime.fromisoformat(r["ended_at"]).timestamp() - valid_before) * 1000
        for r in records
        if r.get("grant") == issued["id"] and r.get("end_reason") == "expired" and r["ended_at"]
    ]
    return {
        "sessions": n,
        "ttl": ttl,
        "grant": issued["id"],
        "grant_valid_before": grant_end,
        "cert_valid_before": cert.valid_before,
        "deadline": valid_before,
        "margin_at_all_open_s": margin,
        "exited": len(delays),
        "exit_statuses": statuses,
        "with_expiry_notice": notices,
        "delays_ms": delays,
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays) if delays else math.nan,
        "min_ms": min(delays) if delays else math.nan,
        "bastion_recorded_end_ms": sorted(recorded),
        "bastion_recorded_end_p50_ms": percentile(recorded, 50),
        "bastion_recorded_end_p99_ms": percentile(recorded, 99),
    }
