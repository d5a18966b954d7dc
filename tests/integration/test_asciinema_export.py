"""An exported recording read by the real `asciinema` CLI (the PyPI release 2.4).

The session is synthetic but PTY-like (prompt with OSC title and colours, echoed typing,
UTF-8 split across frames, stderr, a resize, a marker), written by the real Recorder.
`asciinema cat` must print exactly the session's output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.recording import format as fmt
from bastion.recording.export import export
from tests.unit.recording_synth import Event, shell_session, write_recording


def _asciinema() -> str:
    local = Path(sys.executable).with_name("asciinema")
    found = str(local) if local.exists() else shutil.which("asciinema")
    if found is None:
        pytest.skip("needs the asciinema CLI 2.4 (pip install asciinema==2.4.0)")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    if not version.stdout.strip().startswith("asciinema 2."):
        pytest.skip(f"needs asciinema 2.x, found {version.stdout.strip()}")
    return found


def _session() -> list[Event]:
    prompt = b"\x1b]0;root@prod-web: ~\x07\x1b[01;32mroot@prod-web\x1b[00m:~# "
    events: list[Event] = [(0.2, fmt.OUTPUT, prompt)]
    now = 0.5
    for char in "echo 'naïve → 日本語'\r".encode():
        events.append((now, fmt.INPUT, bytes([char])))
        now += 0.05
    echo = "echo 'naïve → 日本語'\r\n".encode()
    for start in range(0, len(echo), 5):  # splits multibyte characters across frames
        events.append((now, fmt.OUTPUT, echo[start : start + 5]))
        now += 0.01
    events += [
        (now + 0.1, fmt.OUTPUT, "\x1b[1mnaïve → 日本語\x1b[0m\r\n".encode()),
        (now + 0.2, fmt.STDERR, b"\x1b[31mwarning\x1b[0m on stderr\r\n"),
        (now + 0.3, fmt.RESIZE, b"120x40"),
        (now + 0.4, fmt.MARKER, b"approval.granted"),
        (now + 0.5, fmt.OUTPUT, prompt),
    ]
    return events


@pytest.mark.parametrize("events", [_session(), list(shell_session(200_000, seed=11))])
def test_asciinema_cat_prints_the_sessions_output(tmp_path: Path, events: list[Event]) -> None:
    asciinema = _asciinema()
    recording = write_recording(tmp_path / "session.rec", events)
    cast = tmp_path / "session.cast"
    cast.write_bytes(export(recording, "asciicast-v2"))

    result = subprocess.run(
        [asciinema, "cat", str(cast)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    expected = b"".join(p for _t, k, p in events if k in (fmt.OUTPUT, fmt.STDERR))
    assert result.stdout == expected
    assert "naïve → 日本語".encode() in result.stdout
