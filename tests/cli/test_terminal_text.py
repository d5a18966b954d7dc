"""What an approver's terminal shows of an agent's text: escaped, whole, never a spoof.

An agent controls the command it runs, the SQL it sends and the reason it gives. Printed
raw, `rm -rf D` followed by a comment of cursor movements shows as `ls -la D`; a bidi
override reorders a line; a newline fakes a table row. Every human-readable output here
must show such characters as escapes, and `--json` must carry them escaped as well.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.access import LoginPermit
from bastion.accessrequests import AccessRequests
from bastion.clock import FixedClock
from bastion.config import open_home
from bastion.gatekeeper import Gatekeeper
from bastion.models import Approval, Session, SessionKind
from bastion.service import Bastion
from tests.cli.conftest import NOT_FOUND, assert_error, make_key, ok, ok_json, pub, run

# The spoof: the line is erased and the cursor sent back, then a harmless row.
SPOOF_EXEC = "rm -rf /srv/data #\x1b[2K\r\x1b[1Als -la /srv/data"
SPOOF_SQL = "DROP TABLE users; --\x9b2K\x9b1A\nSELECT 1"
BIDI = "ls \u202eatad/vrs/ fr- mr"  # displays as `ls rm -rf /srv/data`
PADDED = "ls -la" + " " * 500 + "; rm -rf /"

FORBIDDEN = {"\x1b", "\x9b", "\r", "\u202e", "\x07"}


@dataclass
class Stored:
    sessions: list[Session]
    approvals: list[Approval]


def _gatekeeper(home: Path) -> tuple[Bastion, Gatekeeper]:
    service = Bastion.open(open_home(str(home)), FixedClock(datetime.now(UTC)), "gateway")
    return service, Gatekeeper(service, "node-1")


def store_agent_text(home: Path, grant_id: str) -> Stored:
    """What the gateway stores when an agent's session asks for approval of `texts`."""
    service, gate = _gatekeeper(home)
    try:
        grant = service.get_grant(grant_id)
        target = service.get_target("prod-web")
        permit = LoginPermit(grant=grant, target=target, deadline=grant.valid_before)
        stored = Stored([], [])
        for kind, text in (("exec", SPOOF_EXEC), ("statement", SPOOF_SQL), ("exec", BIDI)):
            session = gate.open_session(permit, "prod-web", SessionKind.EXEC, "127.0.0.1:1", text)
            stored.sessions.append(session)
            reasons = ("deletes files",)
            approval = gate.request_approval(session, kind, text, reasons, timedelta(minutes=5))
            stored.approvals.append(approval)
        return stored
    finally:
        service.close()


@pytest.fixture
def stored(home: Path, web: str, agent_key: Path) -> Stored:
    grant = ok_json(
        home,
        *("grant", "issue", "--agent", "bot", "--target", web, "--task", "t-1"),
        *("--pubkey", str(pub(agent_key))),
    )
    return store_agent_text(home, grant["id"])


def assert_safe(output: str) -> None:
    """No control character but the layout's newlines, nothing that reorders or hides."""
    bad = [
        f"U+{ord(c):04X}"
        for c in output
        if c != "\n"
        and (
            c in FORBIDDEN
            or ord(c) < 0x20
            or 0x7F <= ord(c) < 0xA0
            or unicodedata.category(c) in ("Cf", "Zl", "Zp")
        )
    ]
    assert bad == []


def test_approvals_list_shows_the_real_command_escaped(home: Path, stored: Stored) -> None:
    out = ok(home, "approvals", "list").stdout
    assert_safe(out)
    lines = out.splitlines()
    assert len(lines) == 1 + len(stored.approvals)  # a newline can't add a row
    assert lines[0].split() == [
        "ID",
        "STATE",
        "AGENT",
        "TARGET",
        "TASK",
        "SESSION",
        "EXPIRES",
        "LEN",
        "COMMAND",
    ]
    by_id = {line.split()[0]: line for line in lines[1:]}
    exec_row = by_id[stored.approvals[0].id]
    assert exec_row.endswith("rm -rf /srv/data #\\x1b[2K\\r\\x1b[1Als -la /srv/data")
    assert re.search(rf"Z  {len(SPOOF_EXEC)} +rm -rf /srv/data #", exec_row)
    assert by_id[stored.approvals[1].id].endswith("DROP TABLE users; --\\x9b2K\\x9b1A\\nSELECT 1")
    assert by_id[stored.approvals[2].id].endswith("ls \\u202eatad/vrs/ fr- mr")


def test_approvals_list_marks_a_cut_command_and_its_length(
    home: Path, web: str, agent_key: Path
) -> None:
    grant = ok_json(
        home,
        *("grant", "issue", "--agent", "bot", "--target", web, "--task", "t-1"),
        *("--pubkey", str(pub(agent_key))),
    )
    service, gate = _gatekeeper(home)
    try:
        g = service.get_grant(grant["id"])
        permit = LoginPermit(g, service.get_target(web), g.valid_before)
        session = gate.open_session(permit, web, SessionKind.EXEC, "127.0.0.1:1", PADDED)
        approval = gate.request_approval(session, "exec", PADDED, ("rm",), timedelta(minutes=5))
    finally:
        service.close()

    [row] = ok(home, "approvals", "list").stdout.splitlines()[1:]
    assert row.startswith(approval.id)
    assert re.search(rf"Z  {len(PADDED)} +ls -la ", row)
    assert row.endswith(f"… [cut: {len(PADDED)} chars in all]")
    assert len(row) < 250

    shown = ok(home, "approvals", "show", approval.id).stdout
    assert "length:    516 chars, 1 line" in shown
    assert shown.splitlines()[-1].rstrip().endswith("; rm -rf /")  # the tail, on screen
    assert all(len(line) <= 90 for line in shown.splitlines())


def test_approvals_show_prints_every_line_numbered_and_escaped(home: Path, stored: Stored) -> None:
    sql = stored.approvals[1]
    out = ok(home, "approvals", "show", sql.id).stdout
    assert_safe(out)
    lines = out.splitlines()
    assert f"id:        {sql.id}" in lines
    assert "kind:      statement" in lines
    assert "why:       deletes files" in lines
    assert (
        f"length:    {len(SPOOF_SQL)} chars, 2 lines,"
        " 2 hidden or control characters shown as escapes"
    ) in lines
    assert lines[-3:] == [
        "statement:",
        "  1 | DROP TABLE users; --\\x9b2K\\x9b1A",
        "  2 | SELECT 1",
    ]

    bidi = ok(home, "approvals", "show", stored.approvals[2].id).stdout
    assert_safe(bidi)
    assert bidi.splitlines()[-1] == "  1 | ls \\u202eatad/vrs/ fr- mr"


def test_decisions_quote_the_command_escaped(home: Path, stored: Stored) -> None:
    first = stored.approvals[0]
    out = ok(home, "--as", "alice", "approvals", "deny", first.id, "--reason", "no").stdout
    assert_safe(out)
    assert out == (
        f"denied {first.id}: bot on prod-web:"
        " rm -rf /srv/data #\\x1b[2K\\r\\x1b[1Als -la /srv/data\n"
    )


def test_sessions_list_and_show(home: Path, stored: Stored) -> None:
    out = ok(home, "sessions", "list").stdout
    assert_safe(out)
    lines = out.splitlines()
    assert len(lines) == 1 + len(stored.sessions)
    assert lines[0].split()[-1] == "COMMAND"
    assert any(line.endswith("DROP TABLE users; --\\x9b2K\\x9b1A\\nSELECT 1") for line in lines)

    shown = ok(home, "sessions", "show", stored.sessions[0].id).stdout
    assert_safe(shown)
    assert (
        "command:     rm -rf /srv/data #\\x1b[2K\\r\\x1b[1Als -la /srv/data" in shown.splitlines()
    )


def test_audit_list_escapes_what_agents_wrote(home: Path, stored: Stored, tmp_path: Path) -> None:
    """An access request's reason is the agent's own text, and audit list shows it.

    The request parser refuses C0 controls in it, not C1 controls or bidi overrides."""
    key = make_key(tmp_path / "asker", "asker_key")
    ok(home, "agent", "enroll", "asker", "--pubkey", str(pub(key)), "--may-request", "prod-web")
    reason = "routine\x9b2K\u202eok\u2066 fake"
    line = shlex.join(["--target", "prod-web", "--task", "t-2", "--reason", reason])
    service = Bastion.open(open_home(str(home)), FixedClock(datetime.now(UTC)), "gateway")
    try:
        requests = AccessRequests(service)
        request = requests.open(requests.get_agent("asker"), line, "127.0.0.1:2", "node-1")
    finally:
        service.close()
    assert request.reason == reason

    events = ok_json(home, "audit", "list")
    out = ok(home, "audit", "list").stdout
    assert_safe(out)
    assert len(out.splitlines()) == 1 + len(events)
    assert "reason=routine\\x9b2K\\u202eok\\u2066 fake" in out

    listed = ok(home, "requests", "list").stdout
    assert_safe(listed)
    assert listed.splitlines()[-1].endswith("routine\\x9b2K\\u202eok\\u2066 fake")
    assert_safe(ok(home, "requests", "show", request.id).stdout)


@pytest.mark.parametrize(
    "args",
    [("approvals", "list"), ("sessions", "list"), ("audit", "list")],
    ids=lambda a: " ".join(a),
)
def test_json_carries_the_exact_text_escaped(
    home: Path, stored: Stored, args: tuple[str, ...]
) -> None:
    out = ok(home, *args, "--json").stdout
    assert_safe(out)
    texts = set(strings(json.loads(out)))
    assert {SPOOF_EXEC, SPOOF_SQL, BIDI} <= texts


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_an_error_quoting_an_argument_is_escaped(home: Path) -> None:
    failed = run(home, "approvals", "show", "a-\x1b[2J\u202e")
    line = assert_error(failed, NOT_FOUND, "unknown approval")
    assert_safe(failed.stderr)
    assert "a-\\\\x1b[2J\\\\u202e" in line  # the message's repr(), shown as it reads


# -- what a human really sees ------------------------------------------------------------


class Tmux:
    """A tmux server of our own (its own socket), with one window of a fixed size."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen_after(self, command: str, marker: str = "END-OF-OUTPUT") -> str:
        """What the pane shows once `command` has run in it (tmux's own terminal emulator)."""
        script = f"clear; {command}; printf '%s\\n' {marker}; sleep 60"
        self.run("new-session", "-d", "-x", "200", "-y", "50", "sh", "-c", script)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            screen = self.run("capture-pane", "-p", "-J")
            if marker in screen:
                self.run("kill-session")
                return screen.split(marker)[0]
            time.sleep(0.1)
        raise AssertionError(f"no {marker} in the pane: {screen!r}")


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    server = Tmux(tmp_path / "tmux.sock")
    try:
        yield server
    finally:
        subprocess.run(["tmux", "-S", str(server.socket), "kill-server"], capture_output=True)


def test_in_a_real_terminal_the_approver_sees_rm_rf(
    home: Path, stored: Stored, tmux: Tmux, tmp_path: Path
) -> None:
    # The attack is real: the raw text, printed as it is, shows only the harmless command.
    raw = tmp_path / "raw.txt"
    raw.write_text(f"a-1  pending  {SPOOF_EXEC}\n")
    spoofed = tmux.screen_after(f"cat {shlex.quote(str(raw))}")
    assert "ls -la /srv/data" in spoofed
    assert "rm -rf" not in spoofed

    bastion = shlex.join([sys.executable, "-m", "bastion", "--home", str(home)])
    shown = tmux.screen_after(f"{bastion} approvals list")
    rows = [line for line in shown.splitlines() if line.strip()]
    assert rows[0].split()[0] == "ID" and len(rows) == 1 + len(stored.approvals)
    assert "rm -rf /srv/data #\\x1b[2K\\r\\x1b[1Als -la /srv/data" in shown
    assert "DROP TABLE users; --\\x9b2K\\x9b1A\\nSELECT 1" in shown
    assert "ls \\u202eatad/vrs/ fr- mr" in shown
    for approval in stored.approvals:
        assert approval.id in shown

    one = tmux.screen_after(f"{bastion} approvals show {stored.approvals[0].id}")
    assert "  1 | rm -rf /srv/data #\\x1b[2K\\r\\x1b[1Als -la /srv/data" in one
