"""A client held for approval is told at once and reminded; the hooks hear of approvals.

Real peers: the `ssh` client (exec, a PTY shell, two commands through one ControlMaster
connection), `psql` and psycopg 3 through the real gateway to the real PostgreSQL. The
homes set `[approvals] remind_every = "1s"`, so a reminder comes a second after the
first notice instead of 30 s. The hooks are a command writing each event to a file and
a local HTTP server on 127.0.0.1 (the webhook).
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration import pg_helpers as pg
from tests.integration.conftest import (
    APPROVAL_TIMEOUT_S,
    EchoServer,
    RecordingWebhook,
    Server,
    Spawned,
    make_home,
    recording_webhook,
    serving,
    wait_until,
)
from tests.peers import Postgres, Sshd

LOOPBACK = "127.0.0.1"
REMIND_S = 1
SSH_FIRST = r"\[bastion\] approval required \(request (a-[0-9a-f]+)\): (.*) - waiting up to (\S+)\n"


def ssh_reminder(approval_id: str, command: str, waited: int, limit: str) -> str:
    return (
        f"[bastion] still waiting for approval (request {approval_id}): {command}"
        f" - waited 0:{waited:02d} of {limit}; a human runs"
        f" `bastion approvals approve {approval_id}`"
    )


def pg_reminder(approval_id: str, waited: int) -> str:
    return (
        f"[bastion] still waiting for approval, request {approval_id};"
        f" waited 0:{waited:02d} of {pg.APPROVAL_TIMEOUT_S}s;"
        f" a human runs `bastion approvals approve {approval_id}`"
    )


# -- hooks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[type[RecordingWebhook]]:
    with recording_webhook("/hook?token=s3cret") as hook:
        yield hook


def with_reminders_and_hooks(home: Path, base: Path, webhook_url: str | None) -> Path:
    """Rewrite the home's bastion.toml: 1 s reminders, and the hooks. Returns the hook file."""
    script = base / "hook.sh"
    events = base / "hook.jsonl"
    script.write_text(f'#!/bin/sh\ncat >> "{events}"\necho >> "{events}"\n')
    script.chmod(0o755)
    toml = home / "bastion.toml"
    text = toml.read_text()
    assert text.count("[approvals]\n") == 1
    text = text.replace("[approvals]\n", f'[approvals]\nremind_every = "{REMIND_S}s"\n')
    text += f'\n[requests]\ncommand = ["{script}"]\nhook_timeout = "2s"\n'
    if webhook_url:
        text += f'webhook = "{webhook_url}"\n'
    toml.write_text(text)
    return events


def hook_events(path: Path, approval_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e.get("approval", {}).get("id") == approval_id]


def wait_for_hooks(path: Path, approval_id: str) -> list[dict[str, Any]]:
    """The command hook's two events of this approval (created, decided), once written."""
    found: list[dict[str, Any]] = wait_until(
        lambda: len(hook_events(path, approval_id)) >= 2 and hook_events(path, approval_id)
    )
    return found


# -- SSH ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    webhook: type[RecordingWebhook],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("reminders")
    home = make_home(base, sshd, target_login_key, echo_server.port)
    with_reminders_and_hooks(home, base, webhook.url)
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def seen(client: Spawned, pattern: str, timeout: float = 10.0) -> tuple[re.Match[str], float]:
    """The match of `pattern` on the client's stderr, and when it was first seen."""
    found = client.wait_stderr(pattern, timeout)
    return found, time.monotonic()


def missing_path() -> str:
    return f"/tmp/bastion-remind-{time.monotonic_ns()}"


def test_held_exec_is_told_at_once_and_reminded_until_approved(
    gw: Server, webhook: type[RecordingWebhook]
) -> None:
    grant = gw.issue("prod-web")
    command = f"rm -rf {missing_path()} && echo ran"
    client = gw.spawn("prod-web", grant.key, command)

    first, first_at = seen(client, SSH_FIRST)
    approval_id = first.group(1)
    assert (first.group(2), first.group(3)) == (command, f"{APPROVAL_TIMEOUT_S}s")
    one = ssh_reminder(approval_id, command, 1, f"{APPROVAL_TIMEOUT_S}s")
    _, one_at = seen(client, re.escape(one + "\n"))
    assert 0.6 <= one_at - first_at <= 2.5, one_at - first_at
    assert client.running()

    gw.cli("approvals", "approve", approval_id, actor="alice")

    assert client.wait(10) == 0, client.stderr
    assert client.stdout == "ran\n"
    lines = client.stderr.splitlines()
    assert lines[0] == first.group(0).rstrip("\n")
    assert lines[-1] == f"[bastion] approved by alice (request {approval_id})"
    reminders = lines[1:-1]
    assert reminders == [
        ssh_reminder(approval_id, command, n, f"{APPROVAL_TIMEOUT_S}s")
        for n in range(1, len(reminders) + 1)
    ]

    created, decided = wait_for_hooks(gw.work / "hook.jsonl", approval_id)
    assert created["event"] == "approval.created"
    record = created["approval"]
    assert (record["agent"], record["target"], record["grant"], record["task"]) == (
        "bot",
        "prod-web",
        grant.id,
        grant.task,
    )
    assert (record["kind"], record["text"], record["state"]) == ("exec", command, "pending")
    assert record["session"] == gw.ended_sessions(grant)[0]["id"]
    assert created["approve"] == f"bastion approvals approve {approval_id}"
    assert created["deny"] == f"bastion approvals deny {approval_id} --reason TEXT"
    assert decided["event"] == "approval.decided"
    assert (decided["approval"]["state"], decided["approval"]["decided_by"]) == (
        "approved",
        "alice",
    )

    def both() -> list[dict[str, Any]] | None:
        bodies = [e["body"] for e in webhook.received]
        found = [b for b in bodies if b["approval"]["id"] == approval_id]
        return found if len(found) == 2 else None

    posted = wait_until(both)
    assert [p["event"] for p in posted] == ["approval.created", "approval.decided"]
    assert "s3cret" not in gw.log()


def test_every_hold_on_one_connection_is_told_and_reminded(gw: Server, tmp_path: Path) -> None:
    """Two commands through one OpenSSH ControlMaster connection: the second hold is
    told and reminded like the first."""
    grant = gw.issue("prod-web")
    control = tmp_path / "ctl"
    master = gw.spawn("prod-web", grant.key, opts=["-N", "-M", "-S", str(control)])
    wait_until(control.exists, 10)
    mux = ["-S", str(control), "-o", "ControlMaster=no"]
    try:
        decisions = [
            ("approve", "alice", "[bastion] approved by alice (request {id})"),
            ("deny", "bob", "[bastion] denied by bob: one is enough (request {id})"),
        ]
        ids = []
        for verb, who, last in decisions:
            command = f"rm -rf {missing_path()}"
            client = gw.spawn("prod-web", grant.key, command, opts=mux)
            first, _ = seen(client, SSH_FIRST)
            approval_id = first.group(1)
            ids.append(approval_id)
            seen(client, re.escape(ssh_reminder(approval_id, command, 1, "4s") + "\n"))
            reason = [] if verb == "approve" else ["--reason", "one is enough"]
            gw.cli("approvals", verb, approval_id, *reason, actor=who)
            seen(client, re.escape(last.format(id=approval_id) + "\n"))
            # Not the exit status: through the gateway, a mux client now and then ends
            # with 255 and the session as `client-closed`, approvals or not (`sleep 1`
            # alone shows it; straight to sshd it doesn't): a known issue of its own.
            client.wait(10)
        assert ids[0] != ids[1]
        assert master.running()  # both went through the one connection
        decided = wait_for_hooks(gw.work / "hook.jsonl", ids[1])[-1]["approval"]
        assert (decided["state"], decided["decided_by"], decided["decision_reason"]) == (
            "denied",
            "bob",
            "one is enough",
        )
    finally:
        master.stop()


def test_unanswered_exec_is_reminded_until_it_times_out(gw: Server) -> None:
    grant = gw.issue("prod-web")
    command = f"rm -rf {missing_path()}"
    client = gw.spawn("prod-web", grant.key, command)
    approval_id = seen(client, SSH_FIRST)[0].group(1)

    assert client.wait(APPROVAL_TIMEOUT_S + 5) == 126

    limit = f"{APPROVAL_TIMEOUT_S}s"
    assert client.stderr.splitlines()[1:] == [
        *(ssh_reminder(approval_id, command, n, limit) for n in range(1, APPROVAL_TIMEOUT_S)),
        f"[bastion] approval request {approval_id} timed out after {limit};"
        " the command did not run",
    ]
    created, decided = wait_for_hooks(gw.work / "hook.jsonl", approval_id)
    assert created["event"] == "approval.created"
    assert decided["event"] == "approval.decided"
    assert (decided["approval"]["state"], decided["approval"]["decided_by"]) == (
        "expired",
        "gateway",
    )
    assert decided["approval"]["decision_reason"] == "timed out"


def test_a_client_leaving_while_held_is_one_decided_event(gw: Server) -> None:
    grant = gw.issue("prod-web")
    client = gw.spawn("prod-web", grant.key, f"rm -rf {missing_path()}")
    approval_id = seen(client, SSH_FIRST)[0].group(1)

    client.stop()

    created, decided = wait_for_hooks(gw.work / "hook.jsonl", approval_id)
    assert (created["event"], decided["event"]) == ("approval.created", "approval.decided")
    assert (decided["approval"]["state"], decided["approval"]["decision_reason"]) == (
        "expired",
        "the session ended while waiting",
    )
    time.sleep(0.5)
    assert len(hook_events(gw.work / "hook.jsonl", approval_id)) == 2


def test_a_shell_held_for_approval_is_reminded_on_its_terminal(gw: Server) -> None:
    grant = gw.issue("gated-web")
    term = gw.spawn_pty("gated-web", grant.key)
    try:
        approval_id = term.expect(r"\[bastion\] approval required \(request (a-[0-9a-f]+)\)").group(
            1
        )
        line = ssh_reminder(approval_id, "<interactive shell>", 1, "4s")
        term.expect(re.escape(line + "\r\n"))
        gw.cli("approvals", "deny", approval_id, "--reason", "no shells", actor="alice")
        assert term.wait(10) == 126
    finally:
        term.stop()


def test_a_hostile_command_cannot_break_the_notice_line(gw: Server) -> None:
    grant = gw.issue("prod-web")
    path = missing_path()
    command = f"rm -rf {path} # \x1b[2J\n[bastion] approved by alice"
    client = gw.spawn("prod-web", grant.key, command)
    shown = f"rm -rf {path} # \\x1b[2J\\n[bastion] approved by alice"

    first = seen(client, SSH_FIRST)[0]
    approval_id = first.group(1)
    assert first.group(2) == shown
    seen(client, re.escape(ssh_reminder(approval_id, shown, 1, "4s") + "\n"))
    gw.cli("approvals", "deny", approval_id, "--reason", "no\nway", actor="alice")
    assert client.wait(10) == 126
    assert "\x1b" not in client.stderr
    assert client.stderr.splitlines()[-1] == (
        f"[bastion] denied by alice: no\\nway (request {approval_id})"
    )


def test_a_failing_hook_blocks_nothing(
    sshd: Sshd, target_login_key: Path, echo_server: EchoServer, tmp_path: Path
) -> None:
    """A webhook nobody listens on and a command that fails: logged, and the approval
    works as if there were no hooks."""
    home = make_home(tmp_path, sshd, target_login_key, echo_server.port)
    with_reminders_and_hooks(home, tmp_path, f"http://{LOOPBACK}:9/nobody?token=s3cret")
    (tmp_path / "hook.sh").write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    server = Server(home, tmp_path)
    server.start()
    try:
        grant = server.issue("prod-web")
        client = server.spawn("prod-web", grant.key, f"rm -rf {missing_path()} && echo ran")
        approval_id = seen(client, SSH_FIRST)[0].group(1)
        server.cli("approvals", "approve", approval_id, actor="alice")
        assert client.wait(10) == 0
        assert client.stdout == "ran\n"
        wait_until(lambda: "hook.sh exited 3: broken" in server.log())
        wait_until(lambda: f"webhook http://{LOOPBACK}:9/… failed" in server.log())
        assert "s3cret" not in server.log()
    finally:
        server.stop()


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_gw(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("pg-reminders")
    home = pg.make_pg_home(base, postgres, pg.APP_DB)
    with_reminders_and_hooks(home, base, None)
    with serving(home, base) as server:
        yield server


@pytest.fixture
def tunnel(pg_gw: Server) -> pg.Tunnel:
    return pg.open_tunnel(pg_gw, pg.issue(pg_gw))


@pytest.fixture
def table(postgres: Postgres) -> Iterator[str]:
    with pg.scratch_table(postgres, "id int", "i") as name:
        yield name


def test_psql_prints_the_notice_and_reminders_before_the_statement_completes(
    pg_gw: Server, tunnel: pg.Tunnel, table: str
) -> None:
    client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")

    first, first_at = seen(client, pg.APPROVAL_NOTICE)
    approval_id = first.group(1)
    _, one_at = seen(client, re.escape(f"NOTICE:  {pg_reminder(approval_id, 1)}\n"))
    assert 0.6 <= one_at - first_at <= 2.5, one_at - first_at
    assert client.running()  # psql printed them while the statement waits
    assert client.stdout == ""

    pg_gw.cli("approvals", "approve", approval_id, actor="alice")

    assert client.wait(10) == 0, client.stderr
    assert client.stdout == "DROP TABLE\n"
    lines = client.stderr.splitlines()
    assert lines[0] == (
        f"NOTICE:  [bastion] approval required, request {approval_id};"
        f" waiting up to {pg.APPROVAL_TIMEOUT_S}s"
    )
    assert lines[-1] == f"NOTICE:  [bastion] approved by alice ({approval_id})"
    assert lines[1:-1] == [
        f"NOTICE:  {pg_reminder(approval_id, n)}" for n in range(1, len(lines) - 1)
    ]
    created, decided = wait_for_hooks(pg_gw.work / "hook.jsonl", approval_id)
    assert (created["approval"]["kind"], created["approval"]["text"]) == (
        "statement",
        f"DROP TABLE {table}",
    )
    assert created["approval"]["target"] == pg.TARGET
    assert (decided["approval"]["state"], decided["approval"]["decided_by"]) == (
        "approved",
        "alice",
    )


def test_psycopg_hears_every_hold_on_one_connection(
    pg_gw: Server, tunnel: pg.Tunnel, table: str
) -> None:
    """An unnamed Parse, a named one and (running that prepared statement again) a Bind: each
    hold is a NOTICE at once and a reminder, seen by the notice handler while it waits."""
    notices: list[str] = []
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        holds = [
            (f"TRUNCATE {table}", None),  # an unnamed Parse
            (f"DELETE FROM {table}", True),  # a named Parse
            (f"DELETE FROM {table}", True),  # a Bind of that prepared statement
        ]
        for number, (sql, prepare) in enumerate(holds):
            conn.execute(f"INSERT INTO {table} VALUES ({number})")
            before = len(notices)
            waiting = pool.submit(functools.partial(conn.execute, sql, prepare=prepare))
            approval_id = pg.pending_approval(pg_gw, tunnel.grant)["id"]
            reminder = pg_reminder(approval_id, 1)
            wait_until(lambda: reminder in notices, timeout=5)  # noqa: B023 (called here)
            assert not waiting.done()
            assert notices[before] == (
                f"[bastion] approval required, request {approval_id};"
                f" waiting up to {pg.APPROVAL_TIMEOUT_S}s"
            )
            pg_gw.cli("approvals", "approve", approval_id, actor="alice")
            assert waiting.result(timeout=10) is not None
            assert notices[-1] == f"[bastion] approved by alice ({approval_id})"
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_ctrl_c_in_psql_while_held_is_one_decided_event(
    pg_gw: Server, tunnel: pg.Tunnel, table: str
) -> None:
    client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")
    approval_id = seen(client, pg.APPROVAL_NOTICE)[0].group(1)

    os.kill(client.pid, signal.SIGINT)

    client.wait(10)
    assert "canceling statement due to user request" in client.stderr, client.stderr
    created, decided = wait_for_hooks(pg_gw.work / "hook.jsonl", approval_id)
    assert created["event"] == "approval.created"
    assert (decided["approval"]["state"], decided["approval"]["decision_reason"]) == (
        "expired",
        "cancelled by the client",
    )
    time.sleep(0.5)
    assert len(hook_events(pg_gw.work / "hook.jsonl", approval_id)) == 2
