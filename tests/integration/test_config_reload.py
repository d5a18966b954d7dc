"""Reloading bastion.toml on SIGHUP, against a real `bastion serve`, sshd and PostgreSQL.

Each test edits its own gateway's bastion.toml, sends SIGHUP to the serve process by
PID (what `systemctl reload bastion` does through `ExecReload`), and looks at what new
and live sessions do, at the log and at the audit chain.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.integration import pg_helpers as pg
from tests.integration.conftest import (
    CONFIG,
    Server,
    Spawned,
    kill_target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Postgres, Sshd

RELOADED = "configuration reloaded from "
NOT_RELOADED = "configuration not reloaded, still running the previous one: "


def reload(server: Server, config: str, expect: str = RELOADED) -> str:
    """Write `config` as the home's bastion.toml, SIGHUP the serve process, and return
    the log written since, once it has a line containing `expect`."""
    (server.home / "bastion.toml").write_text(config)
    offset = len(server.log())
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)

    def logged() -> str | None:
        new = server.log()[offset:]
        return new if expect in new else None

    return wait_until(logged)  # type: ignore[no-any-return]


def test_a_new_session_follows_the_reloaded_policy(
    make_gateway: Callable[[], Server],
) -> None:
    gateway = make_gateway()
    grant = gateway.issue("prod-web")
    assert gateway.ssh("prod-web", grant.key, "echo before").stdout == "before\n"
    seq = gateway.audit_seq()

    log = reload(gateway, CONFIG + '\n[targets.prod-web]\ncommands = ["echo"]\n')

    assert "targets.prod-web.commands; 0 live sessions closed" in log
    held = gateway.spawn("prod-web", grant.key, "echo after")
    held.wait_stderr(r"\[bastion\] approval required \(request a-[0-9a-f]+\): echo after")
    held.stop()
    [event] = gateway.audit("config.reloaded", after=seq)
    assert event["details"]["applied"] == ["targets.prod-web.commands"]
    assert event["details"]["restart_required"] == []
    assert event["details"]["sessions_closed"] == []


def test_settings_that_need_a_restart_keep_their_running_values(
    make_gateway: Callable[[], Server],
) -> None:
    gateway = make_gateway()
    seq = gateway.audit_seq()

    log = reload(
        gateway,
        CONFIG + '\n[server]\nlisten = "127.0.0.1:1"\nmax_sessions = 5\n'
        '\n[metrics]\nlisten = "127.0.0.1:2"\n',
    )

    assert (
        "changed settings that take effect only after a restart, still running the previous"
        " values: server.listen, metrics.listen"
    ) in log
    assert "server.max_sessions" in log
    [event] = gateway.audit("config.reloaded", after=seq)
    assert event["details"]["restart_required"] == ["server.listen", "metrics.listen"]
    assert event["details"]["applied"] == ["server.max_sessions"]
    grant = gateway.issue("prod-web")  # still serving on the address it started with
    assert gateway.ssh("prod-web", grant.key, "echo still").stdout == "still\n"


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        ("[targets.prod-web\n", "is not valid TOML"),
        ('[targets.prod-web]\nrecording = "sometimes"\n', "'targets.prod-web.recording'"),
        ("[targets.prod-web]\nbogus = 1\n", "unknown key 'targets.prod-web.bogus'"),
    ],
)
def test_a_broken_file_keeps_the_running_config(
    make_gateway: Callable[[], Server], broken: str, error: str
) -> None:
    gateway = make_gateway()
    good = CONFIG + '\n[targets.prod-web]\ncommands = ["echo"]\n'
    reload(gateway, good)
    seq = gateway.audit_seq()
    grant = gateway.issue("prod-web")  # the CLI reads bastion.toml too: before breaking it

    log = reload(gateway, CONFIG + broken, expect=NOT_RELOADED)

    [line] = [line for line in log.splitlines() if NOT_RELOADED in line]
    assert error in line
    assert gateway.proc is not None and gateway.proc.poll() is None
    # The policy loaded before still holds: echo needs approval, other commands run.
    assert gateway.ssh("prod-web", grant.key, "printf ok").stdout == "ok"
    held = gateway.spawn("prod-web", grant.key, "echo held")
    held.wait_stderr(r"approval required")
    held.stop()
    (gateway.home / "bastion.toml").write_text(good)  # for the CLI: no reload
    [event] = gateway.audit("config.reload_failed", after=seq)
    assert error in event["details"]["error"]
    assert gateway.audit("config.reloaded", after=seq) == []


@pytest.fixture
def stop_sleeps(sshd: Sshd) -> Iterator[list[str]]:
    sleeps: list[str] = []
    yield sleeps
    for sleep in sleeps:
        kill_target_processes(sshd, sleep)


def test_a_live_session_the_new_policy_refuses_is_closed_and_one_it_allows_stays(
    make_gateway: Callable[[], Server], stop_sleeps: list[str]
) -> None:
    gateway = make_gateway()
    grant = gateway.issue("prod-web")
    sleep = unique_sleep()
    stop_sleeps.append(sleep)
    refused = gateway.spawn("prod-web", grant.key, sleep)
    kept = Spawned(gateway.ssh_argv("prod-web", grant.key, "cat"), stdin=subprocess.PIPE)
    wait_until(lambda: len([s for s in gateway.sessions(grant) if not s["end_reason"]]) == 2)
    seq = gateway.audit_seq()

    log = reload(gateway, CONFIG + '\n[targets.prod-web]\ncommands = ["sleep"]\n')

    assert refused.wait() == 255
    match = refused.wait_stderr(
        r"\[bastion\] session (s-[0-9a-f]+) closed: target policy changed:"
        r" the command now needs approval \(sleep: [^)]*\)"
    )
    closed_id = match.group(1)
    assert "1 live sessions closed" in log
    assert kept.running()
    assert kept.proc.stdin is not None
    kept.proc.stdin.write(b"still relayed\n")
    kept.proc.stdin.flush()
    wait_until(lambda: kept.stdout == "still relayed\n")
    [record] = [s for s in gateway.sessions(grant) if s["id"] == closed_id]
    assert record["end_reason"] == "policy-changed"
    [event] = gateway.audit("config.reloaded", after=seq)
    [closed] = event["details"]["sessions_closed"]
    assert (closed["session"], closed["target"]) == (closed_id, "prod-web")
    ended = [
        e for e in gateway.audit("session.ended", after=seq) if e["details"]["session"] == closed_id
    ]
    assert ended and ended[0]["details"]["reason"] == "policy-changed"
    kept.proc.stdin.close()
    assert kept.wait() == 0


# -- PostgreSQL: the database allow-list ---------------------------------------------------


@pytest.fixture
def pg_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    alt_db = f"altdb_{os.urandom(3).hex()}"
    postgres.create_database(alt_db, owner=pg.APP_USER)
    base = tmp_path_factory.mktemp("pg-reload")
    server = Server(pg.make_pg_home(base, postgres, alt_db), base)
    server.alt_db = alt_db  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()
        postgres.psql(f"DROP DATABASE IF EXISTS {alt_db} WITH (FORCE)")


def test_a_postgres_session_whose_database_left_the_allow_list_is_closed(
    pg_server: Server,
) -> None:
    alt_db: str = pg_server.alt_db  # type: ignore[attr-defined]
    tunnel = pg.open_tunnel(pg_server, pg.issue(pg_server))
    try:
        with (
            pg.connection(tunnel.port, dbname=alt_db, autocommit=True) as leaving,
            pg.connection(tunnel.port, autocommit=True) as staying,
        ):
            assert leaving.execute("select current_database()").fetchone() == (alt_db,)
            new_config = pg.config_text(alt_db).replace(f', "{alt_db}"', "")
            assert new_config != pg.config_text(alt_db)

            log = reload(pg_server, new_config)

            assert "targets.prod-db.databases; 1 live sessions closed" in log
            with pytest.raises(psycopg.OperationalError) as refused:
                leaving.execute("select 1")
            assert "target policy changed" in str(refused.value)
            assert f"database '{alt_db}' is no longer allowed on prod-db" in str(refused.value)
            assert staying.execute("select current_database()").fetchone() == (pg.APP_DB,)
        # A new connection asking for it is refused, as at start-up.
        result = pg.psql(tunnel.port, "select current_database()", db=alt_db)
        assert result.stdout == ""
        assert f"database '{alt_db}' is not allowed through target prod-db" in result.stderr
    finally:
        tunnel.stop()
