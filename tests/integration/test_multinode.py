"""Several `bastion serve` nodes on one shared PostgreSQL store, with real peers.

Two gateways (`node-a`, `node-b`) on their own ports and homes share one database on
the session's PostgreSQL 15; B's home holds a copy of A's CA and host key, as an
operator sets a second node up. What one node's CLI decides, the other node carries
out: a grant issued through A logs in on B; a revoke through A closes B's session
within a second (LISTEN/NOTIFY); an approval through A releases B's waiting command.
A third node killed with SIGKILL has its sessions ended `node-lost` by the survivors,
once. Concurrent writers on both homes keep one valid audit chain, 200 concurrent
certificate logins spread over both nodes all succeed, and a PostgreSQL statement held
on B is released by an approval through A.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import asyncssh
import pytest

from tests.integration import pg_helpers as pg
from tests.integration.conftest import (
    BASTION_BIN,
    LOOPBACK,
    EchoServer,
    Server,
    cli,
    kill_target_processes,
    make_home,
    target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Postgres, Sshd
from tests.store_backends import drop_database, fresh_database, store_url

REQUEST = r"\[bastion\] approval required \(request (a-[0-9a-f]+)\)"
NODE_TIMEOUT_S = 3


def node_config(url: str, name: str) -> str:
    # Every client here comes from 127.0.0.1, and 100 log in to one node at once: one
    # source is allowed that many at a time (`server.per_source_max_startups`).
    return (
        f'\n[server]\nnode = "{name}"\nheartbeat = "1s"\nnode_timeout = "{NODE_TIMEOUT_S}s"\n'
        "per_source_max_startups = 100\n"
        f'\n[store]\nurl = "{url}"\n'
    )


class Cluster:
    def __init__(self, base: Path, url: str, sshd: Sshd, login_key: Path, echo: EchoServer):
        self.base = base
        self.url = url
        self._peers = (sshd, login_key, echo.port)
        self.servers: list[Server] = []
        self.a = self.add("node-a", first=True)
        self.b = self.add("node-b")

    def add(self, name: str, first: bool = False) -> Server:
        sshd, login_key, echo_port = self._peers
        work = self.base / name
        home = make_home(
            work,
            sshd,
            login_key,
            echo_port,
            extra_config=node_config(self.url, name),
            keys_from=None if first else self.servers[0].home,
            add_targets=first,
        )
        server = Server(home, work)
        server.start()
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()


@pytest.fixture(scope="module")
def cluster(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    store_server: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    database = fresh_database(store_server)
    nodes = Cluster(
        tmp_path_factory.mktemp("cluster"),
        store_url(store_server, database),
        sshd,
        target_login_key,
        echo_server,
    )
    try:
        yield nodes
    finally:
        nodes.stop()
        drop_database(store_server, database)


def revoked_at(server: Server, grant_id: str) -> float:
    [event] = [e for e in server.audit("grant.revoked") if e["details"]["grant"] == grant_id]
    return datetime.fromisoformat(event["at"]).timestamp()


def test_both_nodes_are_registered_and_alive(cluster: Cluster) -> None:
    nodes = {n["name"]: n for n in cluster.a.cli_json_all("nodes", "list")}
    assert nodes["node-a"]["address"] == f"{LOOPBACK}:{cluster.a.port}"
    assert nodes["node-b"]["address"] == f"{LOOPBACK}:{cluster.b.port}"
    assert {nodes[n]["state"] for n in ("node-a", "node-b")} == {"alive"}
    listing = cluster.b.cli("nodes", "list")
    assert "node-a" in listing and "alive" in listing


def test_a_grant_issued_through_a_logs_in_on_b(cluster: Cluster) -> None:
    grant = cluster.a.issue("prod-web")
    done = cluster.b.ssh("prod-web", grant.key, "echo hello from $(whoami)")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello from bastion-t\n", "")
    [session] = cluster.a.ended_sessions(grant)
    assert (session["node"], session["end_reason"]) == ("node-b", "exit")
    # The recording is on node B; node A says so in one line instead of failing obscurely.
    shown = cluster.a.run_cli("recordings", "text", session["id"])
    assert shown.returncode == 3 and shown.stdout == ""
    assert shown.stderr.count("\n") == 1
    assert (
        f"recording of {session['id']} was written on node node-b and is not reachable from"
        " this node (node-a)"
    ) in shown.stderr
    assert "hello from bastion-t" in cluster.b.cli("recordings", "text", session["id"])


def test_a_revoke_through_a_closes_a_session_on_b_within_a_second(
    cluster: Cluster, sshd: Sshd
) -> None:
    grant = cluster.a.issue("prod-web", task="cross-revoke")
    sleeper = unique_sleep()
    client = cluster.b.spawn("prod-web", grant.key, sleeper)
    try:
        cluster.a.active_session(grant)
        wait_until(lambda: target_processes(sshd, sleeper))
        cluster.a.cli("grant", "revoke", grant.id, "--reason", "incident", actor="alice")
        assert client.wait(5) == 255
        assert client.exited_at is not None
        latency = client.exited_at - revoked_at(cluster.a, grant.id)
        print(f"revoke on node-a -> session closed on node-b: {latency * 1000:.0f} ms")
        assert 0 < latency < 1.0, f"{latency:.3f}s"
        assert f"[bastion] grant {grant.id} (task cross-revoke) revoked by alice" in client.stderr
        [session] = cluster.a.ended_sessions(grant)
        assert (session["node"], session["end_reason"]) == ("node-b", "revoked")
    finally:
        kill_target_processes(sshd, sleeper)


def test_an_approval_through_a_releases_a_command_waiting_on_b(cluster: Cluster) -> None:
    victim = Path(f"/tmp/bastion-multinode-{secrets.token_hex(4)}")
    grant = cluster.a.issue("prod-web")
    assert cluster.b.ssh("prod-web", grant.key, f"mkdir -p {victim}/inner").returncode == 0
    try:
        client = cluster.b.spawn("prod-web", grant.key, f"rm -rf {victim} && echo removed")
        request_id = client.wait_stderr(REQUEST).group(1)
        assert client.running() and victim.exists()
        started = time.time()
        cluster.a.cli("approvals", "approve", request_id, actor="alice")
        assert client.wait(5) == 0
        assert client.exited_at is not None and client.exited_at - started < 1.0
        assert client.stdout == "removed\n"
        assert f"[bastion] approved by alice (request {request_id})" in client.stderr
        assert not victim.exists()
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_kill_9_of_a_node_ends_its_sessions_as_node_lost_once(cluster: Cluster, sshd: Sshd) -> None:
    c = cluster.add("node-c")
    grant = cluster.a.issue("prod-web")
    sleeper = unique_sleep()
    client = c.spawn("prod-web", grant.key, sleeper)
    try:
        session = cluster.a.active_session(grant)
        assert session["node"] == "node-c"
        c.stop(signal.SIGKILL)
        killed_at = time.time()
        [ended] = cluster.a.ended_sessions(grant, timeout=NODE_TIMEOUT_S + 10)
        assert ended["end_reason"] == "node-lost"
        assert time.time() - killed_at < NODE_TIMEOUT_S + 4
        # Both survivors look; one of them declares node-c lost, and only once.
        time.sleep(2.5)
        lost = [e for e in cluster.a.audit("node.lost") if e["details"]["node"] == "node-c"]
        assert len(lost) == 1
        assert lost[0]["details"]["sessions"] == [session["id"]]
        assert lost[0]["details"]["declared_by"] in ("node-a", "node-b")
        states = {n["name"]: n["state"] for n in cluster.b.cli_json_all("nodes", "list")}
        assert states == {"node-a": "alive", "node-b": "alive", "node-c": "lost"}
    finally:
        client.stop()
        kill_target_processes(sshd, sleeper)


def test_concurrent_cli_writes_on_both_homes_keep_one_valid_chain(cluster: Cluster) -> None:
    before = cluster.a.audit_seq()
    procs = []
    for i in range(12):
        server = (cluster.a, cluster.b)[i % 2]
        argv = [
            str(BASTION_BIN), "--home", str(server.home), "--as", f"op{i}",
            "grant", "issue", "--agent", "bot", "--target", "prod-web",
            "--task", f"parallel-{i}", "--generate-key", str(server.work / f"par-{i}"), "--json",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 12, outputs
    serials = [json.loads(out)["serial"] for out, _ in outputs]
    assert len(set(serials)) == 12
    issued = [e for e in cluster.a.audit("grant.issued", after=before)]
    assert len(issued) == 12
    for server in (cluster.a, cluster.b):
        verified = server.run_cli("audit", "verify")
        assert verified.returncode == 0, verified.stderr


async def _login(port: int, key: asyncssh.SSHKey, cert: asyncssh.SSHCertificate) -> None:
    async with asyncssh.connect(
        LOOPBACK,
        port,
        username="prod-web",
        client_keys=[(key, cert)],
        known_hosts=None,
        agent_path=None,
        config=None,
        login_timeout=60,
    ):
        pass  # authenticated: that is the login


def test_200_concurrent_logins_spread_over_both_nodes(cluster: Cluster) -> None:
    grant = cluster.a.issue("prod-web")
    key = asyncssh.read_private_key(str(grant.key))
    cert = asyncssh.read_certificate(str(grant.cert))
    ports = [cluster.a.port, cluster.b.port]

    async def all_logins() -> list[BaseException | None]:
        return await asyncio.gather(
            *(_login(ports[i % 2], key, cert) for i in range(200)), return_exceptions=True
        )

    started = time.monotonic()
    results = asyncio.run(all_logins())
    took = time.monotonic() - started
    print(f"200 concurrent logins over 2 nodes: {took:.2f} s")
    assert [r for r in results if r is not None] == []
    accepted = [e for e in cluster.a.audit("login.accepted") if e["details"]["grant"] == grant.id]
    assert len(accepted) == 200
    per_node = {n: sum(e["details"]["node"] == n for e in accepted) for n in ("node-a", "node-b")}
    assert per_node == {"node-a": 100, "node-b": 100}
    verified = cluster.b.run_cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr


def test_a_statement_approval_through_a_releases_a_drop_waiting_on_b(
    cluster: Cluster, store_server: Postgres
) -> None:
    name = "cross-db"  # the session's PostgreSQL, which also holds the shared store
    cli(
        cluster.a.home,
        *("target", "add-postgres", name, "--host", LOOPBACK),
        *("--port", str(store_server.port), "--database", pg.APP_DB),
        *("--user", pg.APP_USER, "--password-env", "PW"),
        env={"PW": pg.APP_PASSWORD},
    )
    table = f"cross_{secrets.token_hex(4)}"
    store_server.psql(
        f"CREATE TABLE {table} (id int); ALTER TABLE {table} OWNER TO app", db=pg.APP_DB
    )
    grant = pg.issue(cluster.a, name)
    tunnel = pg.open_tunnel(cluster.b, grant, name)
    try:
        client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")
        approval_id = client.wait_stderr(pg.APPROVAL_NOTICE).group(1)
        assert client.running()
        cluster.a.cli("approvals", "approve", approval_id, actor="alice")
        assert client.wait(10) == 0, client.stderr
        assert client.stdout == "DROP TABLE\n"
        assert f"[bastion] approved by alice ({approval_id})" in client.stderr
        gone = store_server.psql(f"SELECT to_regclass('{table}') IS NULL", db=pg.APP_DB)
        assert gone.strip() == "t"
    finally:
        tunnel.stop()
