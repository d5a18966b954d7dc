"""PostgreSQL measurements (issue 5, "Performance"). Each returns a JSON-ready dict.

Both paths reach the same real PostgreSQL 15 (`World.start_postgres`, role `bench`, a
random SCRAM password, database `benchdb`) through the stock `ssh -N -L`: **direct** to
`127.0.0.1:PGPORT` via sshd (the client logs in with the password), **bastion** to the
`pg` target (the protocol-aware relay: it injects the credentials, parses every frame and
classifies every statement, and keeps the query log in the session's recording).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import time
from typing import Any

from bench.env import PG_BYTES_TARGET, PG_DB, PG_ROLE, PG_TARGET, Procs, World
from bench.metrics import _open_tunnels, _rotations, cpu_seconds, median, psql_copy
from tests import peers

PGBENCH = str(peers.PG_BIN / "pgbench")
BYTES = "bastion_bytes"  # the pgbench series through the byte relay (`PG_BYTES_TARGET`)


def pgbench(world: World, procs: Procs, seconds: int, reps: int, scale: int) -> dict[str, Any]:
    """`pgbench -n -S -c 4 -j 2 -T SECONDS` per path, ``reps`` runs each (interleaved).

    The tables (`pgbench -i -s SCALE`) are made beforehand straight to the server. `-S`
    sends `SELECT abalance FROM pgbench_accounts WHERE aid = N` as simple queries with a
    new N each time, so the bastion parses and classifies every one.

    A third series, `bastion_bytes`, goes through the bastion to the same server as an
    SSH-kind target: the byte relay, with no PostgreSQL awareness (pgbench logs in itself).
    It is a diagnostic, not a way to use the bastion: it splits the bastion's cost into
    the SSH layer and event loop, and the per-statement work on top.
    """
    assert world.pg is not None
    t0 = time.perf_counter()
    world.init_pgbench(scale)
    init_s = time.perf_counter() - t0
    tunnels, local = _open_tunnels(
        world, procs, PG_TARGET, world.pg.port, names=("direct", "bastion")
    )
    try:
        more, port = _open_tunnels(world, procs, PG_BYTES_TARGET, world.pg.port, names=("bastion",))
    except BaseException:
        procs.stop_many(list(tunnels.values()))
        raise
    tunnels[BYTES], local[BYTES] = more["bastion"], port["bastion"]
    try:
        runs = _pgbench_runs(world, procs, local, seconds, reps)
    finally:
        procs.stop_many(list(tunnels.values()))
    return {
        "scale": scale,
        "clients": 4,
        "threads": 2,
        "seconds": seconds,
        "init_s": init_s,
        "runs": runs,
        "median_tps": {name: median([r["tps"] for r in rs]) for name, rs in runs.items()},
        # The bastion's CPU per query (relay, parse, classify, query log, recording):
        "bastion_cpu_us_per_query": _cpu_us_per_query(runs["bastion"]),
        # ... and through the byte relay (the SSH layer and the event loop alone):
        "bytes_cpu_us_per_query": _cpu_us_per_query(runs[BYTES]),
    }


def pgbench_own_cpu(
    world: World, procs: Procs, seconds: int, reps: int, scale: int
) -> dict[str, Any]:
    """The same `pgbench -S`, with the gateway on a CPU of its own, as it is deployed.

    On this machine everything shares two cores, so the bastion's CPU per query is taken
    from pgbench and PostgreSQL, which a bastion on its own host would not do. Here the
    gateway (sshd with its per-connection processes, or the bastion with its threads) runs
    on the last CPU, and pgbench, the `ssh` client and PostgreSQL (its postmaster and every
    backend it forks) on the others: the same split on both paths. Affinities are put
    back afterwards, for the measurements that follow.

    With the gateway's CPU out of the way, the other CPU is the bottleneck, and on it the
    `ssh` client's cipher counts: the stock client picks chacha20-poly1305 for sshd, and
    AES-GCM for the bastion (which prefers it), which costs the client less. So the direct
    path is also measured with the client pinned to AES-GCM, and `best_direct_tps` is the
    faster of the two direct series: the one to compare with.
    """
    assert world.pg is not None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError(f"needs at least 2 CPUs, this process may use {len(cpus)}")
    gateway, rest = {cpus[-1]}, set(cpus[:-1])
    world.init_pgbench(scale)
    tunnels, local = _open_tunnels(
        world, procs, PG_TARGET, world.pg.port, names=("direct", "direct_aes_gcm", "bastion")
    )
    pinned = {world.sshd.pid: gateway, world.bastion_pid: gateway, world.pg.pid: rest}
    pinned.update({tunnel.pid: rest for tunnel in tunnels.values()})
    try:
        for pid, where in pinned.items():
            _pin(pid, where)
        runs = _pgbench_runs(world, procs, local, seconds, reps, cpus=rest)
    finally:
        procs.stop_many(list(tunnels.values()))
        for pid in pinned:
            _pin(pid, set(cpus))
    wall = sum(r["wall_s"] for r in runs["bastion"])
    tps = {name: median([r["tps"] for r in rs]) for name, rs in runs.items()}
    return {
        "scale": scale,
        "clients": 4,
        "threads": 2,
        "seconds": seconds,
        "gateway_cpus": sorted(gateway),
        "other_cpus": sorted(rest),
        "runs": runs,
        "median_tps": tps,
        "best_direct_tps": max(tps["direct"], tps["direct_aes_gcm"]),
        "bastion_cpu_us_per_query": _cpu_us_per_query(runs["bastion"]),
        # How busy the bastion kept its CPU while pgbench ran through it:
        "bastion_cpu_busy": sum(r["bastion_cpu_s"] for r in runs["bastion"]) / wall,
    }


def _pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` and of its descendants (processes
    they fork later inherit it). A process that ended meanwhile is skipped."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)
            with open(f"/proc/{pid}/task/{tid}/children") as children:
                for child in children.read().split():
                    _pin(int(child), cpus)


def _pgbench_runs(
    world: World,
    procs: Procs,
    local: dict[str, int],
    seconds: int,
    reps: int,
    cpus: set[int] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """`pgbench -n -S -c 4 -j 2` through each tunnel of `local`, ``reps`` runs each
    (interleaved); pgbench itself on `cpus` when given."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in local}
    for order in _rotations(list(local), reps):
        for name in order:
            env = {**os.environ, "PGCONNECT_TIMEOUT": "20"}
            if name != "bastion":  # the client logs in itself, password and all
                env["PGPASSWORD"] = world.pg_password
            argv = [
                PGBENCH, "-n", "-S", "-c", "4", "-j", "2", "-T", str(seconds),
                "-h", "127.0.0.1", "-p", str(local[name]), "-U", PG_ROLE, PG_DB,
            ]  # fmt: skip
            cpu0 = cpu_seconds(world.bastion_pid)
            t0 = time.perf_counter()
            proc = procs.popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
            try:
                out, err = proc.communicate(timeout=seconds + 120)
            finally:
                procs.stop(proc)
            wall = time.perf_counter() - t0
            text = out.decode(errors="replace")
            tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", text, re.M)
            if proc.returncode != 0 or tps is None:
                raise RuntimeError(
                    f"{name}: pgbench exited {proc.returncode}:"
                    f" {text[-800:]}{err.decode(errors='replace')[-800:]}"
                )
            latency = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
            done = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
            failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
            runs[name].append(
                {
                    "tps": float(tps.group(1)),
                    "latency_avg_ms": float(latency.group(1)) if latency else None,
                    "transactions": int(done.group(1)) if done else None,
                    "failed": int(failed.group(1)) if failed else None,
                    "bastion_cpu_s": cpu_seconds(world.bastion_pid) - cpu0,
                    "wall_s": wall,
                }
            )
    return runs


def _cpu_us_per_query(runs: list[dict[str, Any]]) -> float | None:
    transactions = sum(r["transactions"] or 0 for r in runs)
    cpu = sum(r["bastion_cpu_s"] for r in runs)
    return cpu / transactions * 1e6 if transactions else None


def pg_copy(world: World, procs: Procs, rows: int, reps: int) -> dict[str, Any]:
    """`psql -c "COPY (SELECT repeat('x', 1000) FROM generate_series(1, ROWS)) TO STDOUT"`:
    1001 bytes a row, generated by the server (no table read); MB/s on psql's stdout."""
    sql = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT"
    return psql_copy(world, procs, sql, reps)


# -- parse and classify ------------------------------------------------------------


def _statements() -> dict[str, str]:
    insert = "INSERT INTO orders (id, customer, total) VALUES " + ", ".join(
        f"({i}, 'customer-{i}', {i * 10.25:.2f})" for i in range(1, 11)
    )
    report = (
        "WITH recent AS (SELECT o.id, o.customer_id, o.total, o.created_at FROM orders o"
        " WHERE o.created_at >= now() - interval '30 days' AND o.status IN ('paid', 'shipped',"
        " 'delivered')), ranked AS (SELECT r.customer_id, sum(r.total) AS spent, count(*) AS n,"
        " rank() OVER (ORDER BY sum(r.total) DESC) AS pos FROM recent r GROUP BY r.customer_id)"
        " SELECT c.id, c.name, c.email, k.spent, k.n, k.pos, CASE WHEN k.spent > 10000 THEN"
        " 'gold' WHEN k.spent > 1000 THEN 'silver' ELSE 'bronze' END AS tier, coalesce(a.city,"
        " 'unknown') AS city, (SELECT max(p.amount) FROM payments p WHERE p.customer_id = c.id)"
        " AS biggest FROM customers c JOIN ranked k ON k.customer_id = c.id LEFT JOIN addresses"
        " a ON a.customer_id = c.id AND a.kind = 'billing' WHERE c.active AND c.id NOT IN"
        " (SELECT customer_id FROM blocked) AND c.region = ANY (ARRAY['eu-west', 'eu-central',"
        " 'us-east', 'us-west']) AND c.id IN ("
    )
    ids = []
    while len(report) + len(", ".join(ids)) < 1900:
        ids.append(str(100_000 + len(ids) * 7))
    report += ", ".join(ids) + ") ORDER BY k.pos, c.name LIMIT 100 OFFSET 0"
    return {
        "select (pgbench -S)": "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        "insert, 10 rows of VALUES": insert,
        f"query of {len(report.encode())} bytes": report,
        "delete with WHERE (full walk)": (
            "DELETE FROM sessions WHERE expires_at < now() - interval '1 day'"
        ),
        "drop table (needs approval)": "DROP TABLE users",
    }


def _per_call_us(fn: Any, arg: Any, batches: int, batch: int) -> tuple[float, float]:
    """Median and min over ``batches`` of the mean µs per call within a batch."""
    for _ in range(min(batch, 200)):
        fn(arg)
    means = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn(arg)
        means.append((time.perf_counter_ns() - t0) / batch / 1000)
    return statistics.median(means), min(means)


def sql_classify(batches: int, batch: int) -> dict[str, Any]:
    """µs per statement: the wire decode of its Query message, and `classify_sql` with the
    default rules (what the relay runs for every Query/Parse text it has not seen)."""
    from bastion import pgwire, sqlclass

    def wire(raw: bytes) -> Any:
        parser = pgwire.FrontendParser(startup=False)
        parser.receive_data(raw)
        frame = parser.next_frame()
        assert isinstance(frame, tuple)
        return pgwire.decode_frontend(frame)

    ruleset = sqlclass.compile_rules()
    out: dict[str, Any] = {"batches": batches, "batch": batch, "statements": {}}
    for label, sql in _statements().items():
        raw = pgwire.encode(pgwire.Query(sql))
        verdict = sqlclass.classify_sql(sql)
        wire_us, wire_min = _per_call_us(wire, raw, batches, batch)
        classify_us, classify_min = _per_call_us(sqlclass.classify_sql, sql, batches, batch)
        check_us, _ = _per_call_us(lambda q: sqlclass.check_sql(q, ruleset), sql, batches, batch)
        out["statements"][label] = {
            "sql_bytes": len(sql.encode()),
            "verdict": type(verdict).__name__,
            "wire_decode_us": wire_us,
            "classify_us": classify_us,
            "total_us": wire_us + classify_us,
            "relay_check_us": check_us,  # check_sql: the relay's check (no statement kinds)
            "min_wire_decode_us": wire_min,
            "min_classify_us": classify_min,
        }
    return out


# -- the relay's own work per statement --------------------------------------------


def pg_relay(batches: int, batch: int) -> dict[str, Any]:
    """µs of the PostgreSQL relay's Python per `pgbench -S` query, in this process.

    A real `PgRelay` between stand-ins for the SSH channel and the target's socket (they
    only count bytes), a real recording for its query log: one Query in; RowDescription,
    DataRow, CommandComplete and ReadyForQuery out. That is framing both ways, decoding
    the Query and CommandComplete, `check_sql`, the pending-statement queue and the log
    entry; not asyncssh, the event loop or the four `send()`/`recv()` calls. Steadier
    than the pgbench run on a shared machine, so it shows what a change to the relay buys.
    """
    import struct
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace as Fake

    from bastion import pgwire
    from bastion.clock import SystemClock
    from bastion.config import Config
    from bastion.recording.writer import Recorder
    from bastion.transport import pgrelay

    class Ends:  # the SSH channel and the target's transport
        def __init__(self) -> None:
            self.bytes = 0

        def write(self, data: bytes) -> None:
            self.bytes += len(data)

        def get_write_buffer_size(self) -> int:
            return 0

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    clock = SystemClock()
    gateway = Fake(config=Config(), pg_backends={})
    conn = Fake(gateway=gateway, forwards=set(), gate=Fake(bastion=Fake(clock=clock)))
    chan, target = Ends(), Ends()
    with tempfile.TemporaryDirectory() as tmp:
        recorder = Recorder(Path(tmp) / "pg.rec", clock, {"bench": True})
        relay = pgrelay.PgRelay(
            conn,  # type: ignore[arg-type]
            Fake(name="pg", database="d", user="u"),  # type: ignore[arg-type]
            Fake(agent="bench", grant_id="g"),
        )
        relay.recording._recorder = recorder  # as `SessionRecording.start` leaves it
        relay.connection_made(chan)
        # Past the login (which needs a server): the relay's state after `_connect`.
        relay._client.receive_data(pgwire.encode(pgwire.StartupMessage({"user": "u"})))
        assert isinstance(relay._client.next_event(), pgwire.StartupMessage)
        relay._phase = "ready"
        relay._writer = Fake(write=target.write, transport=target)  # type: ignore[assignment]
        relay._server = pgrelay._ServerSide(relay, pgwire.BackendParser(), target)
        body = struct.pack("!h", 1) + b"abalance\0" + struct.pack("!ihihih", 16390, 3, 23, 4, -1, 0)
        answer = b"".join(
            (
                b"T" + struct.pack("!i", 4 + len(body)) + body,
                b"D\x00\x00\x00\x0f\x00\x01\x00\x00\x00\x05-4321",
                pgwire.encode(pgwire.CommandComplete("SELECT 1")),
                pgwire.encode(pgwire.ReadyForQuery("I")),
            )
        )
        total = batches * batch + min(batch, 200)
        select = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
        queries = iter([pgwire.encode(pgwire.Query(select.format(n))) for n in range(total)])

        def one(_: None) -> None:
            relay.data_received(next(queries), None)
            relay._server_data(answer)

        median, best = _per_call_us(one, None, batches, batch)
        logged = recorder.size + sum(len(c) for c in recorder._chunks)
    return {
        "batches": batches,
        "batch": batch,
        "us_per_query": median,
        "min_us_per_query": best,
        "bytes_to_agent": chan.bytes,
        "bytes_to_target": target.bytes,
        "query_log_bytes": logged,
    }
