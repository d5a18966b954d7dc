"""The gateway sends no SSH_MSG_IGNORE padding packets on its AEAD ciphers.

asyncssh puts an empty SSH_MSG_IGNORE before every packet, a countermeasure for CBC
mode that doubles the packets of a bulk transfer; `asyncssh_fixes` drops it for
AES-GCM and chacha20-poly1305. An asyncssh client in the test counts the IGNOREs it
receives from a real `bastion serve` while a command streams 4 MB through it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE

from tests.integration.conftest import LOOPBACK, Server

STREAM = "head -c 4194304 /dev/zero"


async def _stream(server: Server, key: Path, cert: Path, cipher: str) -> tuple[int, int]:
    host_key = asyncssh.read_public_key(str(server.home / "keys" / "host_ed25519.pub"))
    ignored = 0
    handlers: dict[int, Any] = SSHConnection._packet_handlers  # type: ignore[assignment]
    original = handlers[MSG_IGNORE]

    def count(self: Any, *args: Any) -> Any:
        nonlocal ignored
        ignored += 1
        return original(self, *args)

    handlers[MSG_IGNORE] = count
    try:
        async with asyncssh.connect(
            LOOPBACK,
            server.port,
            username="prod-web",
            client_keys=[
                (asyncssh.read_private_key(str(key)), asyncssh.read_certificate(str(cert)))
            ],
            known_hosts=([host_key], [], []),
            agent_path=None,
            config=None,
            encryption_algs=[cipher],
        ) as conn:
            result = await conn.run(STREAM, encoding=None, check=True)
            received = len(result.stdout or b"")
    finally:
        handlers[MSG_IGNORE] = original
    return received, ignored


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])
def test_no_ignore_packets_on_aead_ciphers(gateway: Server, cipher: str) -> None:
    grant = gateway.issue("prod-web")
    received, ignored = asyncio.run(_stream(gateway, grant.key, grant.cert, cipher))
    assert received == 4 * 1024 * 1024
    assert ignored == 0
