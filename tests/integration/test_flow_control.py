"""A slow reader on either side never makes the bastion buffer the stream.

asyncssh 2.24.1 re-grants a channel's receive window while data still sits in a paused
session's buffer; `bastion.transport.asyncssh_fixes` credits only what was delivered.
Here 100 MB are pushed through the real gateway towards a reader that drains slowly
(64 KiB every 10 ms) for a few seconds, and the bastion's resident memory is sampled
meanwhile. (A reader that stops outright doesn't show the bug: one that drains does.)
"""

from __future__ import annotations

import subprocess

from tests.integration.conftest import PAUSE_S, SLOW_READER, Server, drain_slowly, peak_growth

MIB = 1 << 20


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
        growth = peak_growth(gateway.proc.pid, upload, PAUSE_S)
        out, _ = upload.communicate(timeout=60)
        assert upload.returncode == 0
    finally:
        for proc in (upload, feeder):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert int(out) == 100 * MIB
    assert growth < 16 * MIB, f"the bastion grew by {growth / MIB:.1f} MiB"


def test_a_slow_reader_on_the_agent_side_does_not_fill_the_bastion(gateway: Server) -> None:
    grant = gateway.issue("prod-web")
    assert gateway.proc is not None
    argv = gateway.ssh_argv("prod-web", grant.key, f"head -c {100 * MIB} /dev/zero")

    growth, received = drain_slowly(gateway.proc.pid, argv)

    assert received == 100 * MIB
    assert growth < 16 * MIB, f"the bastion grew by {growth / MIB:.1f} MiB"
