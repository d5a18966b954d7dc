"""The README's walk-through, run as written against a real sshd and a real PostgreSQL.

The shell blocks of README.md's "A walk through" section are read from the README
itself, so the README and this test can't drift apart. Only what must differ on a test
machine is substituted, each substitution listed in `HOSTS` and `_agent_line`:

- hosts and ports: `web1.internal` is the session's sshd on 127.0.0.1, `db1.internal` a
  TLS-only PostgreSQL 15 on 127.0.0.1 (the README says `--sslmode require`), port 2222 the
  port this test's `bastion serve --listen` bound (as `scripts/serve --listen` would);
- the upstream login `deploy` is the sshd's test user, whose key `./deploy_ed25519` is;
- the agent's `ssh` gets `-F` with a config that pins the bastion's host key as the README
  tells the agent to (`[host]:port ssh-ed25519 AAAA…` in known_hosts) and never prompts;
- `systemctl status nginx` becomes `systemctl --version` (no nginx unit here), and the
  foreground `-L` tunnel runs in the background while the next line's psql uses it;
- the humans' block runs every line but those naming ids the reader fills in (`s-…`,
  `a-…`); `g-7f3a0c12` is the grant the walk-through issued, `[--dry-run]` is `--dry-run`.

Every command must exit 0, and what the README shows as output must be what is printed.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Server, Spawned, wait_until
from tests.integration.pg_helpers import client_env
from tests.integration.test_postgres_tls import tls_postgres  # noqa: F401 (a fixture)
from tests.peers import PG_BIN, Postgres, Sshd, free_port

README = Path(__file__).resolve().parents[2] / "README.md"
VENV = Path(sys.executable).parents[1]
DB_PASSWORD = "walk-through-secret"


def walkthrough_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## A walk through\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    joined = block.replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


def expected_output(block: str, after: str) -> list[str]:
    """The `#  …` lines the README shows right after the command starting with `after`."""
    lines = block.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(after))
    while lines[start].endswith("\\"):
        start += 1
    shown = []
    for line in lines[start + 1 :]:
        if not line.startswith("#  "):
            break
        shown.append(line[3:])
    return shown


@pytest.fixture(scope="module")
def db(tls_postgres: tuple[Postgres, Path, Path]) -> Postgres:  # noqa: F811
    server, _, _ = tls_postgres
    server.create_role("app_ro", DB_PASSWORD)
    server.create_database("app", "app_ro")
    return server


@pytest.fixture
def work(tmp_path: Path, sshd: Sshd, target_login_key: Path, db: Postgres) -> Path:
    work = tmp_path / "walk"
    work.mkdir()
    (work / ".venv").symlink_to(VENV)  # `source .venv/bin/activate`, as in a checkout
    shutil.copy(target_login_key, work / "deploy_ed25519")
    (work / "deploy_ed25519").chmod(0o600)
    (work / "app_ro.password").write_text(DB_PASSWORD + "\n")
    (work / "dump.sql").write_text("BEGIN;\nSELECT 1;\nCOMMIT;\n")
    (work / "report.txt").write_text("walk-through report\n")
    return work


def hosts(sshd: Sshd, db: Postgres, bastion_port: int) -> dict[str, str]:
    return {
        "ssh-keyscan web1.internal": f"ssh-keyscan -p {sshd.port} 127.0.0.1",
        "--host web1.internal --user deploy": (
            f"--host 127.0.0.1 --port {sshd.port} --user {sshd.login_user}"
        ),
        "--host db1.internal": f"--host 127.0.0.1 --port {db.port}",
        "-p 2222 ": f"-p {bastion_port} ",
        "-P 2222 ": f"-P {bastion_port} ",
        "@bastion-host": "@127.0.0.1",
    }


def substitute(line: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        line = line.replace(old, new)
    return line


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def env() -> dict[str, str]:
    clean = {k: v for k, v in client_env().items() if not k.startswith(("BASTION_", "VIRTUAL"))}
    clean["PATH"] = f"{PG_BIN}:{clean['PATH']}"
    return clean


def test_the_walkthrough_runs_as_written(
    work: Path, env: dict[str, str], sshd: Sshd, db: Postgres
) -> None:
    setup, agent, humans = walkthrough_blocks()
    port = free_port()
    table = hosts(sshd, db, port)
    lines = [substitute(c, table) for c in commands(setup)]

    # Up to `bastion init`; then the gateway starts, as `scripts/serve --listen` would.
    at_init = next(i for i, c in enumerate(lines) if c.startswith("bastion init"))
    env_lines = lines[:2]
    assert env_lines[0].startswith("source .venv/bin/activate")
    assert env_lines[1].startswith("export BASTION_HOME=$PWD")
    done = bash("\n".join(lines[: at_init + 1]), work, env)
    assert done.returncode == 0, done.stderr
    assert "ssh-ed25519 " in done.stdout  # init prints the CA and host public keys
    server = Server(work, work)
    server.port = port
    server.start()
    try:
        outputs = []
        for line in lines[at_init + 1 :]:
            ran = bash("\n".join([*env_lines, line]), work, env)
            assert ran.returncode == 0, (line, ran.stdout, ran.stderr)
            outputs.append((line, ran.stdout))
        added = next(out for cmd, out in outputs if cmd.startswith("bastion target add-ssh"))
        _assert_shown(added, expected_output(setup, "bastion target add-ssh"), port)
        issued = next(out for cmd, out in outputs if cmd.startswith("bastion grant issue"))
        _assert_shown(issued, expected_output(setup, "bastion grant issue"), port)
        grant_id = re.search(r"issued grant (g-[0-9a-f]+)", issued)
        assert grant_id is not None

        _run_agent_block(agent, work, env, table, server)
        _run_humans_block(humans, work, env, env_lines, grant_id.group(1), server)
    finally:
        server.stop()


def _assert_shown(printed: str, shown: list[str], port: int) -> None:
    """The lines the README shows are the first lines printed (the README may stop
    before the end), with the grant's id, its end and the port as they came."""
    got = [ln.strip() for ln in printed.splitlines()][: len(shown)]
    assert len(got) == len(shown), printed
    for want, line in zip(shown, got, strict=True):
        pattern = re.escape(" ".join(want.split()))
        pattern = pattern.replace("g\\-7f3a0c12", "g-[0-9a-f]+")
        pattern = re.sub(r"2026\\-11\\-28T[\d:]+Z", r"\\d{4}-\\d\\d-\\d\\dT[\\d:]+Z", pattern)
        pattern = pattern.replace("serial:\\ 1", "serial:\\ \\d+")
        pattern = pattern.replace("\\-p\\ 2222", f"\\-p\\ {port}")
        assert re.fullmatch(pattern, " ".join(line.split())), (want, line)


def _agent_line(line: str, config: Path, tunnel_port: int) -> str:
    line = line.replace("'systemctl status nginx'", "'systemctl --version'")
    line = line.replace("15432", str(tunnel_port))
    return re.sub(r"(^|\| )(ssh|scp) ", rf"\1\2 -F {config} ", line)


def _run_agent_block(
    block: str, work: Path, env: dict[str, str], table: dict[str, str], server: Server
) -> None:
    config = work / "agent_ssh_config"
    known_hosts = work / "agent_known_hosts"
    host_key = (work / "keys" / "host_ed25519.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {' '.join(host_key)}\n")
    config.write_text(
        f"UserKnownHostsFile {known_hosts}\nGlobalKnownHostsFile /dev/null\n"
        "StrictHostKeyChecking yes\nBatchMode yes\nLogLevel ERROR\n"
    )
    tunnel_port = free_port()
    tunnel: Spawned | None = None
    try:
        for raw in commands(block):
            line = _agent_line(substitute(raw, table), config, tunnel_port)
            if " -N -L " in line:
                tunnel = Spawned(["bash", "-c", f"cd {work} && exec {line}"])
                wait_until(lambda: _listening(tunnel_port), timeout=15)
                continue
            ran = bash(line, work, env)
            assert ran.returncode == 0, (line, ran.stdout, ran.stderr)
            if "'wc -l'" in line:
                assert ran.stdout.strip() == "3"
            elif "systemctl" in line:
                assert "systemd" in ran.stdout
            elif line.startswith("psql"):
                # Through the tunnel, as `app_ro` in `app`: the bastion injected its login.
                psql = line.split("#")[0].strip()
                check = bash(f"{psql} -Atc 'select current_user, current_database()'", work, env)
                assert check.stdout.strip() == "app_ro|app", check.stderr
        copied = bash(_agent_line(
            f"ssh -p {server.port} -i agent/id_ed25519 prod-web@127.0.0.1 'cat /tmp/report.txt'",
            config, tunnel_port), work, env)  # fmt: skip
        assert copied.stdout == "walk-through report\n", copied.stderr
    finally:
        if tunnel is not None:
            tunnel.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _run_humans_block(
    block: str,
    work: Path,
    env: dict[str, str],
    env_lines: list[str],
    grant_id: str,
    server: Server,
) -> None:
    ran_any = []
    for raw in commands(block):
        if "…" in raw:
            continue  # an id the reader fills in
        line = raw.replace("g-7f3a0c12", grant_id).replace("[--dry-run]", "--dry-run")
        ran = bash("\n".join([*env_lines, line]), work, env)
        assert ran.returncode == 0, (line, ran.stdout, ran.stderr)
        ran_any.append(line.split("#")[0].strip())
    assert any(c.startswith("bastion grant revoke") for c in ran_any)
    assert any(c.startswith("bastion audit verify") for c in ran_any)
    listed = bash("\n".join([*env_lines, "bastion grant list --all"]), work, env)
    assert re.search(rf"{grant_id}.*revoked", listed.stdout), listed.stdout
