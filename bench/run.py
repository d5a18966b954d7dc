"""Bastion vs direct OpenSSH, side by side in one run: `python -m bench.run [--quick]`.

Sets up a real sshd target (tests.peers.Sshd, login user bastion-t), a bastion home with
an SSH target, the same target unrecorded, a byte-relay forward target, a PostgreSQL
target (tests.peers.Postgres, when a PostgreSQL metric runs) and a grant, and a `bastion
serve` process; measures both paths with the stock OpenSSH client (and recording on vs
off, reading recordings back, SQL classification); prints a table and writes JSON with
every raw number. Exits 0 when goals are missed (it is a measurement, not a test), 1
when the setup or a measurement itself failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import metrics, pg_metrics, rec_metrics
from bench.env import BINARY_FILE, REPO, TEXT_FILE, Procs, World

M = 1_000_000


@dataclass(frozen=True)
class Settings:
    data_bytes: int  # size of each file `cat` through both paths
    bulk_reps: int
    forward_bytes: int
    forward_reps: int
    pg_bytes: int
    pg_reps: int
    setup_runs: int
    keystrokes: int
    idle_sessions: int
    slow_bytes: int
    expiry_sessions: int
    expiry_ttl: str
    pty_bytes: int  # PTY variant of recording on/off
    pty_reps: int
    screen_bytes: int  # output of the PTY recording read back (screen_at, text_search)
    screen_probes: int
    screen_cli_probes: int
    search_total_bytes: int  # recordings text and search go through
    pgbench_seconds: int
    pgbench_reps: int
    pgbench_scale: int
    pg_copy_rows: int  # 1001 bytes each
    pg_copy_reps: int
    classify_batches: int
    classify_batch: int


FULL = Settings(
    data_bytes=200 * M,
    bulk_reps=5,
    forward_bytes=200 * M,
    forward_reps=5,
    pg_bytes=100 * M,
    pg_reps=3,
    setup_runs=20,
    keystrokes=500,
    idle_sessions=200,
    slow_bytes=100 * M,
    expiry_sessions=50,
    expiry_ttl="20s",
    pty_bytes=100 * M,
    pty_reps=3,
    screen_bytes=100 * M,
    screen_probes=20,
    screen_cli_probes=5,
    search_total_bytes=1000 * M,
    pgbench_seconds=20,
    pgbench_reps=3,
    pgbench_scale=10,
    pg_copy_rows=200_000,
    pg_copy_reps=3,
    classify_batches=15,
    classify_batch=200,
)
QUICK = Settings(
    data_bytes=32 * M,
    bulk_reps=2,
    forward_bytes=32 * M,
    forward_reps=2,
    pg_bytes=16 * M,
    pg_reps=2,
    setup_runs=5,
    keystrokes=100,
    idle_sessions=50,
    slow_bytes=10 * M,
    expiry_sessions=20,
    expiry_ttl="6s",
    pty_bytes=16 * M,
    pty_reps=2,
    screen_bytes=10 * M,
    screen_probes=10,
    screen_cli_probes=3,
    search_total_bytes=100 * M,
    pgbench_seconds=5,
    pgbench_reps=1,
    pgbench_scale=1,
    pg_copy_rows=32_000,
    pg_copy_reps=2,
    classify_batches=5,
    classify_batch=100,
)

# Goals (issue 3, "Performance").
GOAL_BULK = 0.8
GOAL_FORWARD = 0.7
GOAL_SETUP = 1.5
GOAL_KEYSTROKE_MS = 1.0
GOAL_SESSION_MIB = 2.0
GOAL_SLOW_MIB = 8.0  # "bounded": a few 2 MiB channel windows, not the transfer size
GOAL_EXPIRY_MS = 100.0
# Issue 4: recording on / off on the same path; `screen --at` once indexed.
GOAL_RECORDING = 0.85
GOAL_SCREEN_S = 0.3
# Issue 5: bastion / direct `ssh -L` for pgbench -S TPS and COPY throughput.
GOAL_PG = 0.8

# Other processes using more than this share of all CPUs during the run: not a quiet machine.
BUSY_SHARE = 0.1

METRICS = (
    "setup",
    "keystroke",
    "bulk_text",
    "bulk_binary",
    "forward",
    "forward_pg",
    "slow_upload",
    "slow_download",
    "idle_sessions",
    "expiry",
    "rec_bulk_text",
    "rec_bulk_binary",
    "rec_pty",
    "screen_at",
    "rec_text_search",
    "pgbench",
    "pgbench_own_cpu",
    "pg_copy",
    "sql_classify",
    "pg_relay",
)
# The PostgreSQL server runs for these. `forward` needs it too: a grant permits `-L`
# only when it covers a database target (policy.certificate_permissions).
PG_METRICS = {"forward", "forward_pg", "pgbench", "pgbench_own_cpu", "pg_copy"}


def _measurements(world: World, procs: Procs, s: Settings) -> dict[str, Callable[[], Any]]:
    return {
        "setup": lambda: metrics.connection_setup(world, procs, s.setup_runs),
        "keystroke": lambda: metrics.keystroke(world, procs, s.keystrokes),
        "bulk_text": lambda: metrics.bulk_exec(world, procs, TEXT_FILE, s.data_bytes, s.bulk_reps),
        "bulk_binary": lambda: metrics.bulk_exec(
            world, procs, BINARY_FILE, s.data_bytes, s.bulk_reps
        ),
        "forward": lambda: metrics.forward(world, procs, s.forward_bytes, s.forward_reps),
        "forward_pg": lambda: metrics.forward_pg(world, procs, s.pg_reps),
        "slow_upload": lambda: metrics.slow_upload(world, procs, s.slow_bytes),
        "slow_download": lambda: metrics.slow_download(world, procs, s.slow_bytes),
        "idle_sessions": lambda: metrics.idle_sessions(world, procs, s.idle_sessions),
        "expiry": lambda: metrics.expiry(world, procs, s.expiry_sessions, s.expiry_ttl),
        "rec_bulk_text": lambda: rec_metrics.rec_bulk(
            world, procs, TEXT_FILE, s.data_bytes, s.bulk_reps
        ),
        "rec_bulk_binary": lambda: rec_metrics.rec_bulk(
            world, procs, BINARY_FILE, s.data_bytes, s.bulk_reps
        ),
        "rec_pty": lambda: rec_metrics.rec_pty(world, procs, s.pty_bytes, s.pty_reps),
        "screen_at": lambda: rec_metrics.screen_at(
            world, procs, s.screen_bytes, s.screen_probes, s.screen_cli_probes
        ),
        "rec_text_search": lambda: rec_metrics.text_search(
            world, procs, s.screen_bytes, s.search_total_bytes
        ),
        "pgbench": lambda: pg_metrics.pgbench(
            world, procs, s.pgbench_seconds, s.pgbench_reps, s.pgbench_scale
        ),
        "pgbench_own_cpu": lambda: pg_metrics.pgbench_own_cpu(
            world, procs, s.pgbench_seconds, s.pgbench_reps, s.pgbench_scale
        ),
        "pg_copy": lambda: pg_metrics.pg_copy(world, procs, s.pg_copy_rows, s.pg_copy_reps),
        "sql_classify": lambda: pg_metrics.sql_classify(s.classify_batches, s.classify_batch),
        "pg_relay": lambda: pg_metrics.pg_relay(s.classify_batches, s.classify_batch * 10),
    }


# -- the table -----------------------------------------------------------------


@dataclass
class Row:
    metric: str
    direct: str
    bastion: str
    ratio: str
    goal: str
    result: str  # PASS, FAIL, info, ERROR


def _f(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _info(metric: str, bastion: str) -> Row:
    """A row with only the bastion's figure, reported without a goal."""
    return Row(metric, "-", bastion, "-", "-", "info")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(results: dict[str, Any], s: Settings) -> list[Row]:
    rows: list[Row] = []

    def error_row(name: str, label: str) -> bool:
        data = results.get(name)
        if data is None:
            return True  # not run (--only)
        if "error" in data:
            rows.append(Row(label, "-", "-", "-", "-", "ERROR"))
            return True
        return False

    for name, label in (
        ("bulk_text", f"bulk exec, base64 text, {s.data_bytes // M} MB (MB/s)"),
        ("bulk_binary", f"bulk exec, binary, {s.data_bytes // M} MB (MB/s)"),
        ("forward", f"-L forward, bytes, {s.forward_bytes // M} MB (MB/s)"),
        ("forward_pg", f"-L forward, psql COPY ~{s.pg_bytes // M} MB (MB/s)"),
    ):
        if error_row(name, label):
            continue
        med = results[name]["median_mb_s"]
        ratio = med["bastion"] / med["direct"]
        goal = GOAL_FORWARD if name.startswith("forward") else GOAL_BULK
        rows.append(
            Row(
                label,
                _f(med["direct"]),
                _f(med["bastion"]),
                f"{ratio:.2f}x",
                f">= {goal}x",
                _verdict(ratio >= goal),
            )
        )
        rows.append(
            Row(
                "  same, direct pinned to aes128-gcm",
                _f(med["direct_aes_gcm"]),
                _f(med["bastion"]),
                f"{med['bastion'] / med['direct_aes_gcm']:.2f}x",
                "-",
                "info",
            )
        )

    label = "connection setup, ssh true (ms, median)"
    if not error_row("setup", label):
        med = results["setup"]["median_ms"]
        ratio = med["bastion"] / med["direct"]
        rows.append(
            Row(
                label,
                _f(med["direct"]),
                _f(med["bastion"]),
                f"{ratio:.2f}x",
                f"<= {GOAL_SETUP}x",
                _verdict(ratio <= GOAL_SETUP),
            )
        )
        like = med["direct_curve25519"]
        rows.append(
            Row(
                "  same, direct pinned to curve25519 kex",
                _f(like),
                _f(med["bastion"]),
                f"{med['bastion'] / like:.2f}x",
                "-",
                "info",
            )
        )

    label = "keystroke round trip, PTY (ms, p50)"
    if not error_row("keystroke", label):
        k = results["keystroke"]
        p50, p99 = k["p50_ms"], k["p99_ms"]
        over = p50["bastion"] - p50["direct"]
        rows.append(
            Row(
                label,
                _f(p50["direct"], 3),
                _f(p50["bastion"], 3),
                f"{over:+.3f} ms",
                f"+<= {GOAL_KEYSTROKE_MS:g} ms",
                _verdict(over <= GOAL_KEYSTROKE_MS),
            )
        )
        rows.append(
            Row(
                "keystroke round trip, PTY (ms, p99)",
                _f(p99["direct"], 3),
                _f(p99["bastion"], 3),
                f"{p99['bastion'] - p99['direct']:+.3f} ms",
                "-",
                "info",
            )
        )

    label = f"{s.idle_sessions} idle shells: bastion RSS per session (MiB)"
    if not error_row("idle_sessions", label):
        per = results["idle_sessions"]["per_session_mib"]
        rows.append(
            Row(
                label,
                "-",
                _f(per, 2),
                "-",
                f"<= {GOAL_SESSION_MIB:g} MiB",
                _verdict(per <= GOAL_SESSION_MIB),
            )
        )

    for name, label in (
        ("slow_upload", f"slow reader, {s.slow_bytes // M} MB upload: max RSS growth (MiB)"),
        ("slow_download", f"slow reader, {s.slow_bytes // M} MB download: max RSS growth (MiB)"),
    ):
        if error_row(name, label):
            continue
        growth = results[name]["max_growth_mib"]
        rows.append(
            Row(
                label,
                "-",
                _f(growth, 1),
                "-",
                f"<= {GOAL_SLOW_MIB:g} MiB",
                _verdict(growth <= GOAL_SLOW_MIB),
            )
        )

    label = f"expiry, {s.expiry_sessions} sessions: exit - valid_before (ms, p50)"
    if not error_row("expiry", label):
        e = results["expiry"]
        all_out = e["exited"] == e["sessions"]
        rows.append(_info(label, _f(e["p50_ms"])))
        rows.append(
            Row(
                f"expiry, {s.expiry_sessions} sessions: exit - valid_before (ms, p99)",
                "-",
                _f(e["p99_ms"]),
                "-",
                f"<= {GOAL_EXPIRY_MS:g} ms",
                _verdict(all_out and e["p99_ms"] <= GOAL_EXPIRY_MS),
            )
        )

    # Issue 4: recordings. In these rows "direct" is the bastion with recording off.
    for name, label in (
        ("rec_bulk_text", f"rec off|on: bulk exec, text, {s.data_bytes // M} MB (MB/s)"),
        ("rec_bulk_binary", f"rec off|on: bulk exec, binary, {s.data_bytes // M} MB (MB/s)"),
        ("rec_pty", f"rec off|on: PTY `ssh -tt` text, {s.pty_bytes // M} MB (MB/s)"),
    ):
        if error_row(name, label):
            continue
        med = results[name]["median_mb_s"]
        ratio = results[name]["on_off_ratio"]
        rows.append(
            Row(
                label,
                _f(med[rec_metrics.OFF]),
                _f(med["bastion"]),
                f"{ratio:.2f}x",
                f">= {GOAL_RECORDING}x",
                _verdict(ratio >= GOAL_RECORDING),
            )
        )
        ceiling = results[name]["bastion_one_core_ceiling_mb_s"]
        off, on = ceiling["recording_off"], ceiling["recording_on"]
        label = "  same, bastion's one-core ceiling (MB/s per CPU s)"
        rows.append(Row(label, _f(off), _f(on), f"{on / off:.2f}x", "-", "info"))
        if "direct" in med:
            rows.append(
                Row(
                    "  same PTY path: direct vs bastion (rec on)",
                    _f(med["direct"]),
                    _f(med["bastion"]),
                    f"{med['bastion'] / med['direct']:.2f}x",
                    "-",
                    "info",
                )
            )

    label = f"screen_at, {s.screen_bytes // M} MB PTY recording: first call, builds index (s)"
    if not error_row("screen_at", label):
        sc = results["screen_at"]
        rows.append(_info(label, _f(sc["first_call_s"], 1)))
        for key, what in (("p50_s", "p50"), ("max_s", "max")):
            rows.append(
                Row(
                    f"screen_at after indexing, {len(sc['samples_s'])} random times (s, {what})",
                    "-",
                    _f(sc[key], 3),
                    "-",
                    f"<= {GOAL_SCREEN_S:g} s",
                    _verdict(sc[key] <= GOAL_SCREEN_S),
                )
            )
        cli = sc["cli"]
        cli_label = "`bastion recordings screen ID --at T`, end to end (s, p50)"
        if not cli["available"]:
            rows.append(Row(cli_label, "-", "n/a", "-", "-", "no CLI"))
        elif "error" in cli:
            rows.append(Row(cli_label, "-", "-", "-", "-", "ERROR"))
        else:
            rows.append(_info(cli_label, _f(cli["p50_s"], 3)))
            rows.append(
                _info(
                    "  of which start-up: `bastion recordings screen --help` (s)",
                    _f(cli["startup_floor_s"], 3),
                )
            )

    label = "recordings text / search (MB/s of recording)"
    if not error_row("rec_text_search", label):
        ts = results["rec_text_search"]
        for kind, what in (("pty", "PTY, indexed"), ("exec", "exec, no index")):
            k = ts["kinds"][kind]
            for op in ("text", "search_literal", "search_regex"):
                rows.append(
                    _info(
                        f"{op.replace('_', ' ')}, {k['bytes'] // M} MB of {what} recordings (MB/s)",
                        _f(k[op]["mb_s"]),
                    )
                )

    # Issue 5: PostgreSQL.
    label = f"pgbench -S -c 4 -j 2 -T {s.pgbench_seconds} (TPS, median)"
    if not error_row("pgbench", label):
        med = results["pgbench"]["median_tps"]
        ratio = med["bastion"] / med["direct"]
        rows.append(
            Row(
                label,
                _f(med["direct"], 0),
                _f(med["bastion"], 0),
                f"{ratio:.2f}x",
                f">= {GOAL_PG}x",
                _verdict(ratio >= GOAL_PG),
            )
        )
        per_query = results["pgbench"]["bastion_cpu_us_per_query"]
        if per_query is not None:
            rows.append(_info("  bastion's CPU per query (µs)", _f(per_query, 1)))
        if pg_metrics.BYTES in med:  # (results from before the series existed lack it)
            rows.append(
                Row(
                    "  same through the byte relay, no PostgreSQL awareness (diagnostic)",
                    _f(med["direct"], 0),
                    _f(med[pg_metrics.BYTES], 0),
                    f"{med[pg_metrics.BYTES] / med['direct']:.2f}x",
                    "-",
                    "info",
                )
            )
            bytes_per_query = results["pgbench"].get("bytes_cpu_us_per_query")
            if bytes_per_query is not None:
                label = "  bastion's CPU per query through the byte relay (µs)"
                rows.append(_info(label, _f(bytes_per_query, 1)))
    label = "same pgbench, the gateway on a CPU of its own (TPS, median)"
    if not error_row("pgbench_own_cpu", label):
        own = results["pgbench_own_cpu"]
        med = own["median_tps"]
        ratio = med["bastion"] / own["best_direct_tps"]
        rows.append(
            Row(
                label + ", vs the faster direct client",
                _f(own["best_direct_tps"], 0),
                _f(med["bastion"], 0),
                f"{ratio:.2f}x",
                f">= {GOAL_PG}x",
                _verdict(ratio >= GOAL_PG),
            )
        )
        for name, what in (("direct", "stock"), ("direct_aes_gcm", "pinned to aes128-gcm")):
            rows.append(
                Row(f"  direct, client {what} (TPS)", _f(med[name], 0), "-", "-", "-", "info")
            )
        busy = f"{own['bastion_cpu_busy'] * 100:.0f} %"
        rows.append(_info("  how busy the bastion kept its CPU", busy))
    label = f"psql COPY (SELECT ...) TO STDOUT, {s.pg_copy_rows * 1001 // M} MB (MB/s)"
    if not error_row("pg_copy", label):
        med = results["pg_copy"]["median_mb_s"]
        ratio = med["bastion"] / med["direct"]
        rows.append(
            Row(
                label,
                _f(med["direct"]),
                _f(med["bastion"]),
                f"{ratio:.2f}x",
                f">= {GOAL_PG}x",
                _verdict(ratio >= GOAL_PG),
            )
        )
        rows.append(
            Row(
                "  same, direct pinned to aes128-gcm",
                _f(med["direct_aes_gcm"]),
                _f(med["bastion"]),
                f"{med['bastion'] / med['direct_aes_gcm']:.2f}x",
                "-",
                "info",
            )
        )
    if not error_row("sql_classify", "parse + classify a statement (µs)"):
        for what, st in results["sql_classify"]["statements"].items():
            rows.append(_info(f"wire decode + classify_sql: {what} (µs)", _f(st["total_us"], 1)))
            rows.append(
                _info(f"  check_sql (the relay's check): {what} (µs)", _f(st["relay_check_us"], 1))
            )
    label = "relay's Python per pgbench -S query, in-process (µs)"
    if not error_row("pg_relay", label):
        rows.append(_info(label, _f(results["pg_relay"]["us_per_query"], 1)))
    return rows


def render(rows: list[Row]) -> str:
    header = Row("metric", "direct", "bastion", "ratio", "goal", "result")
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in asdict(header)]
    right = {"direct", "bastion", "ratio"}

    def line(r: Row) -> str:
        cells = []
        for (field, value), width in zip(asdict(r).items(), widths, strict=True):
            cells.append(value.rjust(width) if field in right else value.ljust(width))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


# -- the run -------------------------------------------------------------------


def _code() -> dict[str, Any]:
    """Which bastion code was measured: HEAD and the files changed in the working tree."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return out.stdout

    return {
        "head": git("rev-parse", "HEAD").strip(),
        "dirty": git("status", "--porcelain").splitlines(),
    }


def _machine() -> dict[str, Any]:
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncssh": metadata.version("asyncssh"),
        "openssh": ssh_v.stderr.strip(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _cpu_accounts() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this run's processes).

    The run's share is this process plus its reaped descendants (sshd reaps its sessions,
    so after sshd is stopped they count too). The difference over the run is what other
    processes took from the machine meanwhile.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    mine = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        mine += usage.ru_utime + usage.ru_stime
    return busy, mine


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (~2 min)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "latest.json",
        help="JSON results file (default: bench/results/latest.json)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated subset of: {','.join(METRICS)}", default=""
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (for debugging)")
    args = parser.parse_args(argv)
    selected = [m for m in args.only.split(",") if m] or list(METRICS)
    unknown = set(selected) - set(METRICS)
    if unknown:
        parser.error(f"unknown metric(s): {', '.join(sorted(unknown))}")
    settings = QUICK if args.quick else FULL

    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    busy0, mine0 = _cpu_accounts()
    work = Path(tempfile.mkdtemp(prefix="bastion-bench-", dir="/tmp"))
    procs = Procs()
    world = World(work, procs)
    results: dict[str, Any] = {}
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "settings": asdict(settings),
        "machine": _machine(),
        "code": _code(),
        "metrics": results,
    }
    failed = False
    try:
        _log(f"work dir {work}; setting up sshd, data files, bastion home")
        world.start_sshd(max(settings.data_bytes, settings.slow_bytes))
        if PG_METRICS.intersection(selected):
            world.start_postgres(settings.pg_bytes)
        world.init_bastion()
        world.start_bastion()
        report["negotiated"] = {p: world.negotiated(p) for p in metrics.PATHS}
        report["ports"] = {"sshd": world.sshd.port, "bastion_first": world.bastion_port}
        _log(f"ready: sshd :{world.sshd.port}, bastion :{world.bastion_port}, "
             f"negotiated {report['negotiated']}")  # fmt: skip
        runners = _measurements(world, procs, settings)
        for name in selected:
            t0 = time.monotonic()
            _log(f"measuring {name} ...")
            try:
                results[name] = runners[name]()
            except Exception as exc:  # keep going: one broken metric must not hide the rest
                failed = True
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                results[name]["traceback"] = traceback.format_exc()
                _log(f"{name} FAILED: {exc}")
            results.setdefault(name, {})["duration_s"] = round(time.monotonic() - t0, 2)
            if world.bastion is not None and world.bastion.poll() is not None:
                _log("bastion serve died; restarting it for the next metric")
                world.start_bastion()
    except Exception as exc:
        failed = True
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()
        _log(f"setup FAILED: {exc}")
    finally:
        try:
            procs.stop_all()
        finally:
            world.stop()
            if args.keep:
                _log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    rows = build_rows(results, settings)
    report["table"] = [asdict(r) for r in rows]
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    busy1, mine1 = _cpu_accounts()
    others = max(0.0, (busy1 - busy0) - (mine1 - mine0))
    report["cpu_s"] = {
        "machine_busy": round(busy1 - busy0, 1),
        "this_run": round(mine1 - mine0, 1),
        "other_processes": round(others, 1),
        "other_share_of_machine": round(others / (report["duration_s"] * (os.cpu_count() or 1)), 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    print()
    machine = report["machine"]
    print(
        f"bastion vs direct OpenSSH ({report['mode']} run, {machine['cpus']} CPUs,"
        f" {report['duration_s']} s; other processes used"
        f" {report['cpu_s']['other_share_of_machine']:.0%} of the CPUs meanwhile)"
    )
    for path, algs in report.get("negotiated", {}).items():
        print(f"{path}: stock client negotiates {algs['kex']}, {algs['cipher']}")
    print(render(rows))
    if any(name.startswith("rec_") and name != "rec_text_search" for name in results):
        print("rec off|on rows: the 'direct' column is the bastion with recording off")
    ceilings = [
        f"{name} {results[name]['bastion_one_core_ceiling_mb_s']:.0f}"
        for name in ("bulk_text", "bulk_binary", "forward", "forward_pg", "pg_copy")
        if "bastion_one_core_ceiling_mb_s" in results.get(name, {})
    ]
    if ceilings:
        print(
            "bastion's own ceiling, MB/s per full core (bytes / its CPU time, load-independent): "
            + ", ".join(ceilings)
        )
    share = report["cpu_s"]["other_share_of_machine"]
    if share >= BUSY_SHARE:
        print(
            f"warning: other processes used {share:.0%} of the machine's CPU during the run;"
            " this hurts the bastion path (one more crypto-heavy process per byte) more than"
            " the direct one"
        )
    print(f"\nraw numbers: {args.out}")
    if "error" in report:
        print(f"setup failed: {report['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
