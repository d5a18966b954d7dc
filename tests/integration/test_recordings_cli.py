"""The auditor's commands on recordings made by the real gateway: text, search, screen,
export (read by the real `asciinema` CLI) and play, against a scripted PTY session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server, wait_until


def _asciinema() -> str | None:
    local = Path(sys.executable).with_name("asciinema")
    return str(local) if local.exists() else shutil.which("asciinema")


def _closed_recording(gateway: Server, grant_task: str) -> dict[str, Any]:
    def closed() -> dict[str, Any] | None:
        found = json.loads(gateway.cli("recordings", "list", "--task", grant_task, "--json"))
        done = [r for r in found if r["state"] == "closed"]
        return done[-1] if done else None

    found: dict[str, Any] = wait_until(closed)
    return found


@pytest.fixture(scope="module")
def pty_session(gateway: Server) -> dict[str, Any]:
    """A shell session: typed commands, coloured output, a resize, then exit."""
    grant = gateway.issue("prod-web", task="audit-demo")
    term = gateway.spawn_pty("prod-web", grant.key, rows=24, cols=80)
    term.expect(r"\$ $")
    term.type("printf 'deploy \\033[1;32mOK\\033[0m caf\\303\\251\\n'\r")
    term.expect("deploy")
    term.type("echo marker-$((6*7))\r")
    term.expect("marker-42")
    term.type("exit 0\r")
    assert term.wait() == 0
    return _closed_recording(gateway, "audit-demo")


def test_text_shows_what_was_typed_and_shown_without_escape_codes(
    gateway: Server, pty_session: dict[str, Any]
) -> None:
    text = gateway.cli("recordings", "text", pty_session["session"])
    assert "deploy OK café" in text
    assert "\x1b" not in text
    assert "marker-42" in text
    typed = [line for line in text.splitlines() if "  > " in line]
    assert any("echo marker-$((6*7))" in line for line in typed)


def test_search_finds_output_and_typed_input_with_the_session_and_time(
    gateway: Server, pty_session: dict[str, Any]
) -> None:
    hits = json.loads(gateway.cli("recordings", "search", "marker-", "--json"))
    mine = [h for h in hits if h["session"] == pty_session["session"]]
    assert {h["kind"] for h in mine} == {"input", "output"}
    assert all(h["seconds"] > 0 for h in mine)
    regex = gateway.cli("recordings", "search", r"marker-\d+", "--regex", "--agent", "bot")
    assert pty_session["session"] in regex and "marker-42" in regex
    none = gateway.run_cli("recordings", "search", "no-such-text-anywhere")
    assert none.returncode == 0 and "no matches" in none.stderr
    bad = gateway.run_cli("recordings", "search", "(", "--regex")
    assert bad.returncode == 2 and "invalid --regex" in bad.stderr


def test_screen_at_end_shows_the_final_screen(gateway: Server, pty_session: dict[str, Any]) -> None:
    screen = gateway.cli("recordings", "screen", pty_session["session"], "--at", "end")
    assert "marker-42" in screen
    assert "deploy OK café" in screen
    early = gateway.cli("recordings", "screen", pty_session["session"], "--at", "0s")
    assert "marker-42" not in early


def test_export_plays_in_the_real_asciinema(
    gateway: Server, pty_session: dict[str, Any], tmp_path: Path
) -> None:
    player = _asciinema()
    if player is None:
        pytest.skip("the asciinema CLI is not installed")
    cast = tmp_path / "session.cast"
    out = gateway.cli("recordings", "export", pty_session["session"], "-o", str(cast))
    assert "asciicast-v2" in out
    header = json.loads(cast.read_text().splitlines()[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    shown = subprocess.run(
        [player, "cat", str(cast)], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "marker-42" in shown
    assert "caf" in shown


def test_play_writes_the_session_at_speed(gateway: Server, pty_session: dict[str, Any]) -> None:
    played = gateway.run_cli("recordings", "play", pty_session["session"], "--speed", "50")
    assert played.returncode == 0
    assert "marker-42" in played.stdout


def test_unknown_recording_is_a_clear_error(gateway: Server) -> None:
    result = gateway.run_cli("recordings", "text", "s-000000000000")
    assert result.returncode == 3
    assert result.stderr.startswith("bastion: error: no recording for session 's-000000000000'")
