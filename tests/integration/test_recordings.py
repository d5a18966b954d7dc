"""Session recordings end to end: the real `bastion serve`, the stock `ssh`, a real sshd.

What an auditor relies on, seen from outside the gateway: every exec and PTY session
leaves a recording (`recordings list`) whose file parses into a header, the output
(stdout as `o`, stderr as `e`), the agent's input, resizes, markers for bastion events
and an end frame; a `kill -9` of the bastion loses at most about a second and the next
start seals what was written; `recordings verify` catches an edited, truncated or
deleted file; a full disk refuses or ends mandatory sessions and is audited under
best-effort; `recording = "off"` is audited; `prune` deletes old files and says so.

The full-disk tests run `bastion serve` in a private mount namespace whose recordings
directory is a 2 MiB tmpfs: the host's mounts are never touched, and the tmpfs goes away
with the process. Its files are read through `/proc/PID/root`, which resolves paths in
that process's mount namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bastion.recording import format as fmt
from tests.integration.conftest import (
    BASTION_BIN,
    CONFIG,
    LOOPBACK,
    EchoServer,
    Grant,
    Server,
    Spawned,
    cli,
    kill_target_processes,
    make_home,
    unique_sleep,
    wait_until,
)
from tests.peers import Sshd

# A target whose sessions are not recorded, beside the conftest's targets.
QUIET_TARGET = "quiet-web"
MODULE_CONFIG = CONFIG + f'\n[targets.{QUIET_TARGET}]\nrecording = "off"\n'
REQUEST = r"\[bastion\] approval required \(request (a-[0-9a-f]+)\): (.*) - waiting up to \S+\n"
BIG_OUTPUT = "head -c 5000000 /dev/zero | base64"
BIG_OUTPUT_SIZE = len(
    subprocess.run(["sh", "-c", BIG_OUTPUT], capture_output=True, check=True).stdout
)
TMPFS_SIZE = "2m"
_CLEAN_ENV = ("BASTION_HOME", "BASTION_CA_PASSPHRASE")  # as the conftest's Server
BEST_EFFORT = '\n[targets.prod-web]\nrecording = "best-effort"\n'
TICKS = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"


# -- reading recordings ------------------------------------------------------------


def recordings(server: Server, grant: Grant | None = None) -> list[dict[str, Any]]:
    """`recordings list --json`, only `grant`'s if given."""
    found: list[dict[str, Any]] = server.cli_json_all("recordings", "list")
    return [r for r in found if grant is None or r["grant"] == grant.id]


def recording_of(server: Server, session_id: str) -> dict[str, Any]:
    [found] = [r for r in recordings(server) if r["session"] == session_id]
    return found


def recording_path(server: Server, entry: dict[str, Any], root: Path = Path("/")) -> Path:
    """The file of a `recordings list` entry; `root` is a /proc/PID/root for a namespace."""
    path = server.home / "recordings" / str(entry["path"])
    return root / path.relative_to("/")


def parsed(data: bytes) -> fmt.Parsed:
    result = fmt.parse(data)
    assert result.frames, "no frames"
    assert result.frames[0].kind == fmt.HEADER
    times = [f.time for f in result.frames]
    assert times == sorted(times), "frame times go back"
    return result


def of_kind(frames: list[fmt.Frame], kind: bytes) -> list[fmt.Frame]:
    return [f for f in frames if f.kind == kind]


def joined(frames: list[fmt.Frame], kind: bytes) -> bytes:
    return b"".join(f.payload for f in of_kind(frames, kind))


def markers(frames: list[fmt.Frame]) -> list[str]:
    return [f.payload.decode() for f in of_kind(frames, fmt.MARKER)]


def sealed(server: Server, grant: Grant) -> dict[str, Any]:
    """`grant`'s one recording once sealed (the gateway seals after the session's end)."""
    found: dict[str, Any] = wait_until(
        lambda: next((r for r in recordings(server, grant) if r["state"] != "recording"), None)
    )
    return found


def closed_recording(server: Server, grant: Grant) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """`grant`'s one ended session, its closed recording's index entry and file content."""
    [session] = server.ended_sessions(grant)
    entry = sealed(server, grant)
    assert entry["session"] == session["id"]
    return session, entry, recording_path(server, entry).read_bytes()


def assert_indexed(entry: dict[str, Any], session: dict[str, Any], data: bytes) -> None:
    """The index entry matches the session and the file as written."""
    assert entry["session"] == session["id"]
    assert (entry["agent"], entry["target"], entry["task"], entry["grant"]) == (
        session["agent"],
        session["target"],
        session["task"],
        session["grant"],
    )
    assert entry["kind"] == session["kind"]
    assert entry["state"] == "closed"
    assert entry["path"].endswith(f"/{session['id']}.rec")
    assert entry["size"] == len(data)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["ended_at"] is not None


def assert_header(
    header: dict[str, Any], session: dict[str, Any], grant: Grant, **expected: Any
) -> None:
    assert header["session"] == session["id"]
    assert header["agent"] == "bot"
    assert header["grant"] == grant.id
    assert header["task"] == grant.task
    assert header["target"] == session["target"]
    assert header["client"] == session["client"]
    assert header["kind"] == session["kind"]
    assert datetime.fromisoformat(header["started_at"]).tzinfo is not None
    for key, value in expected.items():
        assert header[key] == value, (key, header)


def end_of(result: fmt.Parsed) -> dict[str, Any]:
    """The end frame: last, and the file ends with it."""
    assert result.complete
    last = result.frames[-1]
    assert last.kind == fmt.END
    assert len(of_kind(result.frames, fmt.END)) == 1
    end = last.json()
    assert datetime.fromisoformat(end["ended_at"]).tzinfo is not None
    return end


# -- gateways ------------------------------------------------------------------------


def add_ssh_target(home: Path, name: str, sshd: Sshd, login_key: Path) -> None:
    cli(
        home,
        *("target", "add-ssh", name, "--host", LOOPBACK, "--port", str(sshd.port)),
        *("--user", sshd.login_user, "--identity", str(login_key)),
        *("--host-key", str(sshd.host_pub_path)),
    )


@pytest.fixture(scope="module")
def gw(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The conftest's gateway plus `quiet-web` (the same sshd) with `recording = "off"`."""
    base = tmp_path_factory.mktemp("recordings-gw")
    home = make_home(base, sshd, target_login_key, echo_server.port)
    add_ssh_target(home, QUIET_TARGET, sshd, target_login_key)
    (home / "bastion.toml").write_text(MODULE_CONFIG)
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class TmpfsServer(Server):
    """`bastion serve` in a private mount namespace, its recordings dir a small tmpfs there.

    No `--fork`: unshare execs sh, which execs the bastion, so the PID is the bastion's.
    """

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k not in _CLEAN_ENV}
        recordings_dir = self.home / "recordings"
        script = (
            f"mount -t tmpfs -o size={TMPFS_SIZE},mode=0700 tmpfs"
            f" {shlex.quote(str(recordings_dir))}"
            f" && exec {shlex.quote(str(BASTION_BIN))} --home {shlex.quote(str(self.home))}"
            f" serve --listen {LOOPBACK}:{self.port}"
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while f"listening on {LOOPBACK}:{self.port}" not in self.log()[offset:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"bastion serve exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"bastion serve not listening after 20s:\n{self.log()}")
            time.sleep(0.02)

    @property
    def root(self) -> Path:
        """The filesystem as the bastion sees it (its mount namespace)."""
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/root")

    def tmpfs_free(self) -> int:
        st = os.statvfs(self.root / str(self.home / "recordings").lstrip("/"))
        return st.f_bavail * st.f_frsize


@pytest.fixture
def tmpfs_gateway(
    sshd: Sshd, target_login_key: Path, echo_server: EchoServer, tmp_path: Path
) -> Iterator[Callable[[str], TmpfsServer]]:
    """A factory: a fresh home with CONFIG + `extra_config`, served on a 2 MiB tmpfs."""
    servers: list[TmpfsServer] = []

    def make(extra_config: str = "") -> TmpfsServer:
        base = tmp_path / f"tmpfs-gw{len(servers)}"
        base.mkdir()
        home = make_home(base, sshd, target_login_key, echo_server.port)
        (home / "bastion.toml").write_text(CONFIG + extra_config)
        server = TmpfsServer(home, base)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


# -- what a session leaves ----------------------------------------------------------------


def test_exec_session_is_recorded_with_stdin_output_and_end(gw: Server) -> None:
    grant = gw.issue("prod-web")
    command = "cat; echo exec-done; exit 3"
    stdin = "stdin line one\nstdin line two\n"

    result = gw.ssh("prod-web", grant.key, command, input=stdin)

    assert result.returncode == 3, result.stderr
    assert result.stdout == stdin + "exec-done\n"
    session, entry, data = closed_recording(gw, grant)
    assert_indexed(entry, session, data)
    rec = parsed(data)
    assert_header(
        rec.frames[0].json(),
        session,
        grant,
        command=command,
        term_type=None,
        term_size=None,
        pty=False,
        kind="exec",
    )
    assert rec.frames[0].time == 0.0
    assert joined(rec.frames, fmt.INPUT) == stdin.encode()
    assert joined(rec.frames, fmt.OUTPUT) == (stdin + "exec-done\n").encode()
    assert joined(rec.frames, fmt.STDERR) == b""
    assert markers(rec.frames) == []
    end = end_of(rec)
    assert (end["end_reason"], end["exit_status"]) == ("exit", 3)
    assert (session["end_reason"], session["exit_status"]) == ("exit", 3)


def test_stderr_is_recorded_as_its_own_kind(gw: Server) -> None:
    grant = gw.issue("prod-web")

    result = gw.ssh("prod-web", grant.key, "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2")

    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("out-1\nout-2\n", "err-1\nerr-2\n")
    _, _, data = closed_recording(gw, grant)
    rec = parsed(data)
    assert joined(rec.frames, fmt.OUTPUT) == b"out-1\nout-2\n"
    assert joined(rec.frames, fmt.STDERR) == b"err-1\nerr-2\n"
    assert end_of(rec)["exit_status"] == 0


def test_pty_session_records_typing_output_and_resize(gw: Server) -> None:
    grant = gw.issue("prod-web")
    term = gw.spawn_pty("prod-web", grant.key, rows=24, cols=80)
    typed: list[str] = []

    def type_(text: str) -> None:
        typed.append(text)
        term.type(text)

    term.expect(r"\$ $")
    type_("echo pty-$((6*7))-ok\r")
    term.expect(r"pty-42-ok")
    mark = len(term.output)
    term.resize(rows=40, cols=120)
    # ssh sends the window change when it handles SIGWINCH, which may be after keystrokes
    # typed right away: ask again until the target's terminal has the new size.
    for attempt in range(20):
        type_("stty size\r")
        try:
            term.expect(r"\r\n40 120\r\n", timeout=0.5, since=mark)
            break
        except AssertionError:
            if attempt == 19:
                raise
    type_("exit\r")
    assert term.wait(10) == 0, term.output

    session, entry, data = closed_recording(gw, grant)
    assert_indexed(entry, session, data)
    rec = parsed(data)
    assert_header(
        rec.frames[0].json(),
        session,
        grant,
        command=None,
        term_type="vt220",
        term_size=[80, 24],
        pty=True,
        kind="shell",
    )
    # Every keystroke, in order, and nothing else.
    assert joined(rec.frames, fmt.INPUT) == "".join(typed).encode()
    output = joined(rec.frames, fmt.OUTPUT)
    assert b"pty-42-ok" in output
    assert b"40 120" in output
    # The resize lies between the first command's output and `stty size`'s.
    # ssh may send the window change twice (TIOCSWINSZ's SIGWINCH, then the explicit one).
    resizes = of_kind(rec.frames, fmt.RESIZE)
    assert resizes and {f.payload for f in resizes} == {b"120x40"}, resizes
    resize = resizes[0]
    first = next(f for f in of_kind(rec.frames, fmt.OUTPUT) if b"pty-42-ok" in f.payload)
    sized = next(f for f in of_kind(rec.frames, fmt.OUTPUT) if b"40 120" in f.payload)
    assert first.offset < resize.offset < sized.offset
    assert first.time <= resize.time <= sized.time
    end = end_of(rec)
    assert (end["end_reason"], end["exit_status"]) == ("exit", 0)


def test_approval_markers_are_recorded(gw: Server) -> None:
    victim = f"/tmp/bastion-rec-{secrets.token_hex(4)}"
    grant = gw.issue("prod-web")
    command = f"rm -rf {victim} && echo removed"
    client = gw.spawn("prod-web", grant.key, command)
    approval_id = client.wait_stderr(REQUEST).group(1)

    decided = gw.run_cli("approvals", "approve", approval_id, actor="alice")

    assert decided.returncode == 0, decided.stderr
    assert client.wait(10) == 0, client.stderr
    assert client.stdout == "removed\n"
    _, _, data = closed_recording(gw, grant)
    rec = parsed(data)
    assert markers(rec.frames) == [
        f"approval requested {approval_id}",
        f"[bastion] approval required (request {approval_id}): {command} - waiting up to 4s",
        f"approval approved {approval_id}",
        f"[bastion] approved by alice (request {approval_id})",
    ]
    requested, *_, approved = of_kind(rec.frames, fmt.MARKER)
    [removed] = [f for f in of_kind(rec.frames, fmt.OUTPUT) if b"removed" in f.payload]
    assert requested.time < approved.time <= removed.time
    assert approved.offset < removed.offset
    assert joined(rec.frames, fmt.OUTPUT) == b"removed\n"
    end = end_of(rec)
    assert (end["end_reason"], end["exit_status"]) == ("exit", 0)


def test_expiry_close_reason_is_a_marker(gw: Server, sshd: Sshd) -> None:
    grant = gw.issue("prod-web", options=["--ttl", "3s"])
    sleep = unique_sleep()
    try:
        client = gw.spawn("prod-web", grant.key, f"echo started; {sleep}")
        assert client.wait(grant.valid_before - time.time() + 5) == 255
    finally:
        kill_target_processes(sshd, sleep)
    stamp = datetime.fromtimestamp(grant.valid_before, UTC).strftime("%H:%M:%SZ")
    line = (
        f"[bastion] grant {grant.id} (task {grant.task}) expired at {stamp} - session closed;"
        " ask a human for a new grant to continue"
    )
    assert line in client.stderr
    session, entry, data = closed_recording(gw, grant)
    assert_indexed(entry, session, data)
    rec = parsed(data)
    assert joined(rec.frames, fmt.OUTPUT) == b"started\n"
    assert markers(rec.frames) == [line]
    marker = of_kind(rec.frames, fmt.MARKER)[0]
    assert marker.offset < rec.frames[-1].offset
    end = end_of(rec)
    assert (end["end_reason"], end["exit_status"]) == ("expired", 255)
    assert end["detail"] == line.removeprefix("[bastion] ")
    assert session["end_reason"] == "expired"


def test_recording_off_writes_no_file_and_is_audited(gw: Server) -> None:
    grant = gw.issue(QUIET_TARGET)
    seq = gw.audit_seq()

    result = gw.ssh(QUIET_TARGET, grant.key, "echo unrecorded")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "unrecorded\n"
    [session] = gw.ended_sessions(grant)
    assert session["end_reason"] == "exit"
    assert recordings(gw, grant) == []
    assert not list((gw.home / "recordings").rglob(f"{session['id']}*"))
    [off] = gw.audit("recording.off", after=seq)
    assert off["details"]["session"] == session["id"]
    assert off["details"]["target"] == QUIET_TARGET
    assert gw.audit("recording.failed", after=seq) == []


# -- a crash ------------------------------------------------------------------------------


def test_kill_9_keeps_what_was_written_and_recovery_seals_it(
    make_gateway: Callable[[], Server], sshd: Sshd
) -> None:
    server = make_gateway()
    grant = server.issue("prod-web")
    token = f"crash-{secrets.token_hex(4)}"
    client = server.spawn("prod-web", grant.key, f": {token}; {TICKS}")
    try:
        live = server.active_session(grant)
        wait_until(lambda: "tick 25\n" in client.stdout, timeout=15)

        server.stop(signal.SIGKILL)
        assert client.wait(10) == 255
    finally:
        kill_target_processes(sshd, token)
    seen = re.findall(r"tick (\d+)\n", client.stdout)
    assert client.stdout == "".join(f"tick {i}\n" for i in range(len(seen)))

    # Before the restart: the file is there, parses, and stops without an end frame.
    [entry] = recordings(server, grant)
    assert (entry["session"], entry["state"]) == (live["id"], "recording")
    path = recording_path(server, entry)
    data = path.read_bytes()
    rec = parsed(data)
    assert of_kind(rec.frames, fmt.END) == []
    assert rec.valid_size <= len(data)
    assert rec.frames[0].json()["session"] == live["id"]
    recorded = joined(rec.frames, fmt.OUTPUT).decode()
    # What was recorded is what the agent saw, from the start, in order...
    assert recorded and client.stdout.startswith(recorded), recorded[-200:]
    ticks = re.findall(r"tick (\d+)\n", recorded)
    # ... up to at most about a second (10 ticks of 0.1 s) before the kill.
    assert len(ticks) >= len(seen) - 10, (len(ticks), len(seen))

    server.start()

    [record] = server.ended_sessions(grant)
    assert record["id"] == live["id"]
    assert record["end_reason"] == "bastion-crash"
    [entry] = recordings(server, grant)
    assert entry["state"] == "crashed"
    # Recovery sealed exactly what was on disk (only whole frames were ever written).
    assert path.read_bytes() == data
    assert entry["size"] == len(data)
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    [recovered] = [
        e for e in server.audit("recording.recovered") if e["details"]["session"] == live["id"]
    ]
    assert recovered["details"]["state"] == "crashed"
    verified = server.run_cli("recordings", "verify", live["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"OK   {live['id']}")


# -- tamper evidence ------------------------------------------------------------------------


def test_verify_detects_edited_truncated_and_deleted(make_gateway: Callable[[], Server]) -> None:
    server = make_gateway()
    ids: list[str] = []
    paths: list[Path] = []
    for n in range(4):
        grant = server.issue("prod-web")
        result = server.ssh("prod-web", grant.key, f"echo session-{n}; echo err-{n} >&2")
        assert result.returncode == 0, result.stderr
        session, entry, _ = closed_recording(server, grant)
        ids.append(session["id"])
        paths.append(recording_path(server, entry))

    intact = server.run_cli("recordings", "verify", "--all")

    assert intact.returncode == 0, intact.stdout + intact.stderr
    lines = intact.stdout.splitlines()
    assert len(lines) == 4
    for session_id in ids:
        [line] = [x for x in lines if session_id in x]
        assert line.startswith(f"OK   {session_id}  sha256 ")

    edited, truncated, deleted, untouched = paths
    with edited.open("ab") as handle:
        handle.write(b"x")
    data = truncated.read_bytes()
    end = of_kind(fmt.parse(data).frames, fmt.END)[0]
    truncated.write_bytes(data[: end.offset])  # cut at a frame boundary: still parses
    deleted.unlink()

    checked = server.run_cli("recordings", "verify", "--all")

    assert checked.returncode == 8, checked.stdout + checked.stderr
    assert "3 of 4 recordings failed verification" in checked.stderr
    lines = checked.stdout.splitlines()
    assert len(lines) == 4
    expected = list(zip(ids, ["edited", "truncated", "deleted", None], strict=True))
    for session_id, what in expected:
        [line] = [x for x in lines if session_id in x]
        if what is None:
            assert line.startswith(f"OK   {session_id}  "), line
        else:
            assert line.startswith(f"FAIL {session_id}  "), line
            assert what in line, line
    for session_id, what in expected:
        one = server.run_cli("recordings", "verify", session_id)
        assert one.returncode == (0 if what is None else 8), one.stdout + one.stderr
        if what is not None:
            assert what in one.stdout and session_id in one.stdout, one.stdout
    assert untouched.exists()


# -- a full disk ----------------------------------------------------------------------------


def fill(server: TmpfsServer) -> None:
    """Fill the tmpfs to the last byte with a file of no session's."""
    filler = server.root / str(server.home / "recordings" / "filler").lstrip("/")
    with contextlib.suppress(OSError), filler.open("ab") as handle:
        while True:
            handle.write(b"\0" * 65536)
    assert server.tmpfs_free() == 0


def big_session(server: TmpfsServer, exit_status: int) -> tuple[Grant, Spawned]:
    grant = server.issue("prod-web")
    big = server.spawn("prod-web", grant.key, BIG_OUTPUT, keep_stdout=False)
    assert big.wait(30) == exit_status, big.stderr
    return grant, big


def test_full_disk_ends_a_running_mandatory_session(
    tmpfs_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = tmpfs_gateway("")
    assert 1_500_000 < server.tmpfs_free() <= 2 * 1024 * 1024  # the tmpfs, not the host's disk
    seq = server.audit_seq()

    grant, big = big_session(server, 255)

    assert re.fullmatch(
        r"\n?\[bastion\] writing recording \S+\.rec failed: No space left on device"
        r" - session closed\n",
        big.stderr,
    ), big.stderr
    assert big.stdout_size < BIG_OUTPUT_SIZE
    [session] = server.ended_sessions(grant)
    assert (session["end_reason"], session["exit_status"]) == ("recording-failed", 255)
    [failed] = server.audit("recording.failed", after=seq)
    assert failed["details"]["session"] == session["id"]
    assert failed["details"]["session_ended"] is True
    assert "No space left on device" in failed["details"]["reason"]
    # What fitted is still a readable recording (parse() stops at a cut-off tail).
    entry = sealed(server, grant)
    rec = parsed(recording_path(server, entry, server.root).read_bytes())
    assert rec.frames[0].json()["session"] == session["id"]
    output = joined(rec.frames, fmt.OUTPUT)
    assert len(output) > 1_000_000
    assert set(output) <= set(b"AQ=\n")  # base64 of zeros, nothing else
    assert server.tmpfs_free() < 8192


def test_full_disk_refuses_new_mandatory_sessions(
    tmpfs_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = tmpfs_gateway("")
    big_session(server, 255)  # the first session fills the disk (and starts the writer)
    fill(server)  # to the last byte

    for _ in range(3):
        grant = server.issue("prod-web")
        proof = Path(f"/tmp/bastion-rec-ran-{secrets.token_hex(4)}")
        try:
            refused = server.ssh("prod-web", grant.key, f"touch {proof}; echo ran")
            time.sleep(0.3)
            ran = proof.exists()
        finally:
            with contextlib.suppress(FileNotFoundError):
                proof.unlink()

        assert (refused.returncode, refused.stdout, ran) == (255, "", False), refused
        assert re.fullmatch(
            r"\n?\[bastion\] .*recording .*No space left on device - session refused\n",
            refused.stderr,
        ), refused.stderr
        [session] = server.ended_sessions(grant)
        assert (session["end_reason"], session["exit_status"]) == ("recording-failed", 255)


def test_full_disk_recording_is_sealed_failed_and_verifies(
    tmpfs_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = tmpfs_gateway("")
    grant, _ = big_session(server, 255)
    entry = sealed(server, grant)
    data = recording_path(server, entry, server.root).read_bytes()

    # `recordings verify` sees the tmpfs only from inside the bastion's mount namespace.
    assert server.proc is not None
    verify = subprocess.run(
        ["nsenter", "--target", str(server.proc.pid), "--mount", "--",
         str(BASTION_BIN), "--home", str(server.home), "recordings", "verify", entry["session"]],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert entry["state"] == "failed"
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_full_disk_best_effort_session_completes_and_the_loss_is_audited(
    tmpfs_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = tmpfs_gateway(BEST_EFFORT)
    seq = server.audit_seq()

    grant, big = big_session(server, 0)

    assert big.stdout_size == BIG_OUTPUT_SIZE
    assert big.stderr == ""
    [session] = server.ended_sessions(grant)
    assert (session["end_reason"], session["exit_status"]) == ("exit", 0)
    [lost] = server.audit("recording.failed", after=seq)
    assert lost["details"]["session"] == session["id"]
    assert lost["details"]["session_ended"] is False
    assert "No space left on device" in lost["details"]["reason"]
    assert server.tmpfs_free() < 8192


def test_full_disk_best_effort_new_sessions_run_and_each_loss_is_audited(
    tmpfs_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = tmpfs_gateway(BEST_EFFORT)
    big_session(server, 0)
    fill(server)

    for _ in range(3):
        grant = server.issue("prod-web")
        seq = server.audit_seq()
        result = server.ssh("prod-web", grant.key, "echo still-runs")

        assert (result.returncode, result.stdout) == (0, "still-runs\n"), result.stderr
        [session] = server.ended_sessions(grant)
        assert session["end_reason"] == "exit"
        lost = [
            e
            for e in server.audit("recording.failed", after=seq)
            if e["details"]["session"] == session["id"]
        ]
        assert lost, [(e["action"], e["details"]) for e in server.audit(after=seq)]
        assert all(e["details"]["session_ended"] is False for e in lost)


# -- retention ---------------------------------------------------------------------------------


def test_prune_dry_run_then_delete_audited_and_verify_ok(
    make_gateway: Callable[[], Server], sshd: Sshd
) -> None:
    server = make_gateway()
    ids: list[str] = []
    paths: list[Path] = []
    for n in range(2):
        grant = server.issue("prod-web")
        assert server.ssh("prod-web", grant.key, f"echo old-{n}").returncode == 0
        session, entry, _ = closed_recording(server, grant)
        ids.append(session["id"])
        paths.append(recording_path(server, entry))
    # A live session's recording is not old, whatever --older-than says.
    live_grant = server.issue("prod-web")
    sleep = unique_sleep()
    server.spawn("prod-web", live_grant.key, sleep)
    try:
        live = server.active_session(live_grant)
        wait_until(lambda: recordings(server, live_grant))
        time.sleep(1.2)

        dry = server.run_cli("recordings", "prune", "--older-than", "1s", "--dry-run")

        assert dry.returncode == 0, dry.stderr
        for session_id in ids:
            assert f"would delete {session_id} (bot on prod-web)" in dry.stdout
        assert live["id"] not in dry.stdout
        assert dry.stdout.endswith("would delete 2 recordings\n")
        assert all(p.exists() for p in paths)
        assert {r["state"] for r in recordings(server) if r["session"] in ids} == {"closed"}
        assert server.audit("recordings.pruned") == []

        pruned = server.run_cli("recordings", "prune", "--older-than", "1s", actor="carol")

        assert pruned.returncode == 0, pruned.stderr
        for session_id in ids:
            assert f"deleted {session_id} (bot on prod-web)" in pruned.stdout
        assert pruned.stdout.endswith("deleted 2 recordings\n")
        assert not any(p.exists() for p in paths)
        states = {r["session"]: r["state"] for r in recordings(server)}
        assert [states[i] for i in ids] == ["pruned", "pruned"]
        assert states[live["id"]] == "recording"
        [audited] = server.audit("recordings.pruned")
        assert audited["actor"] == "carol"
        assert sorted(audited["details"]["sessions"]) == sorted(ids)
        assert audited["details"]["older_than"] == "1s"

        verified = server.run_cli("recordings", "verify", "--all")

        assert verified.returncode == 0, verified.stdout + verified.stderr
        for session_id in ids:
            assert f"OK   {session_id}  pruned by retention" in verified.stdout
        assert f"OK   {live['id']}  still recording" in verified.stdout
    finally:
        kill_target_processes(sshd, sleep)
