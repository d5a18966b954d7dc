"""A slow reader on either side never makes the bastion buffer the stream.

asyncssh 2.24.1 re-grants a channel's receive window while data still sits in a paused
session's buffer; `bastion.transport.asyncssh_fixes` credits only what was delivered.
Here 100 MB are pushed through the real gateway towards a reader that drains slowly
(64 KiB every 10 ms) for a few seconds, and the bastion's resident memory is sampled
meanwhile. (A reader that stops outright doesn't show the bug: one that drains does.)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.integration.conftest import Server

MIB = 1 << 20
PAUSE_S = 3
# Reads 64 KiB every 10 ms for PAUSE_S seconds, then the rest at full speed; prints the total.
SLOW_READER = (
    "import sys, time\n"
    f"end = time.monotonic() + {PAUSE_S}; n = 0\n"
    "while (b := sys.stdin.buffer.read1(65536)):\n"
    "    n += len(b)\n"
    "    if time.monotonic() < end: time.sleep(0.01)\n"
    "print(n)\n"
)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _peak_growth(pid: int, proc: subprocess.Popen[bytes], seconds: float) -> int:
    base = _rss(pid)
    peak = base
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        peak = max(peak, _rss(pid))
        time.sleep(0.05)
    return peak - base


def test_a_slow_reader_on_the_target_does_not_fill_the_bastion(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    gateway.ssh("prod-web", grant.key, "true")  # warm up: first-session allocations
    assert gateway.proc is not None
    reader = SLOW_READER.replace("'", "'\\''")
    argv = gateway.ssh_argv("prod-web", grant.key, f"/usr/bin/python3 -c '{reader}'")
    feeder = subprocess.Popen(["head", "-c", str(100 * MIB), "/dev/zero"], stdout=subprocess.PIPE)
    upload = subprocess.Popen(argv, stdin=feeder.stdout, stdout=subprocess.PIPE, text=True)
    assert feeder.stdout is not None
    feeder.stdout.close()
    try:
        growth = _peak_growth(gateway.proc.pid, upload, PAUSE_S)
        out, _ = upload.communicate(timeout=60)
        assert upload.returncode == 0
    finally:
        for proc in (upload, feeder):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert int(out) == 100 * MIB
    assert growth < 16 * MIB, f"the bastion grew by {growth / MIB:.1f} MiB"


def drain_slowly(
    bastion_pid: int, argv: list[str], env: dict[str, str] | None = None
) -> tuple[int, int]:
    """Run `argv` with its output read by SLOW_READER; (the bastion's peak RSS growth
    meanwhile, bytes read). `argv` must exit 0."""
    producer = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    slow = subprocess.Popen(
        ["python3", "-c", SLOW_READER], stdin=producer.stdout, stdout=subprocess.PIPE, text=True
    )
    assert producer.stdout is not None
    producer.stdout.close()
    try:
        growth = _peak_growth(bastion_pid, producer, PAUSE_S)
        out, _ = slow.communicate(timeout=120)
        assert producer.wait(60) == 0
    finally:
        for proc in (producer, slow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return growth, int(out)


def test_a_slow_reader_on_the_agent_side_does_not_fill_the_bastion(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    assert gateway.proc is not None
    argv = gateway.ssh_argv("prod-web", grant.key, f"head -c {100 * MIB} /dev/zero")

    growth, received = drain_slowly(gateway.proc.pid, argv)

    assert received == 100 * MIB
    assert growth < 16 * MIB, f"the bastion grew by {growth / MIB:.1f} MiB"
