"""The AES-GCM packet path (`asyncssh_fastpath`) keeps asyncssh's wire format and logic.

- Its sealing and opening of a packet give byte for byte what asyncssh's own GCMCipher
  gives, packet after packet (the IV advances the same way), and a changed byte fails.
- Data crosses intact through it in both directions with a rekey every 64 KiB, over
  AES-GCM (the fast path) and chacha20-poly1305 (asyncssh's own code): writes larger
  than a packet, stderr, bytearray writes, EOF and exit status.
- A small write that finds the window open and nothing queued goes out as one packet at
  once; many small writes past the window arrive whole and in order.
- The real OpenSSH client forcing rekeys mid-transfer through a real `bastion serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_DATA
from asyncssh.crypto.cipher import GCMCipher
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.transport import asyncssh_fastpath, asyncssh_fixes
from tests.integration.conftest import LOOPBACK, Server

asyncssh_fixes.apply()

GCM = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]


@settings(max_examples=60, deadline=None)
@given(
    cipher=st.sampled_from(GCM),
    packets=st.lists(st.binary(min_size=1, max_size=40_000), min_size=1, max_size=5),
    trailing=st.binary(max_size=64),
)
def test_seal_and_open_match_asyncssh_packet_for_packet(
    cipher: str, packets: list[bytes], trailing: bytes
) -> None:
    key = os.urandom(16 if cipher.startswith("aes128") else 32)
    iv = os.urandom(12)
    name = cipher.removesuffix("@openssh.com")
    theirs, ours, opener = (GCMCipher(name, key, iv) for _ in range(3))
    for plain in packets:
        header = len(plain).to_bytes(4, "big")
        body, tag = theirs.encrypt_and_sign(header, plain)
        sealed = b"".join(asyncssh_fastpath.seal(ours, header, plain))
        assert sealed == body + tag
        buf = bytearray(sealed + trailing)
        assert asyncssh_fastpath.open_packet(opener, buf, len(sealed)) == plain
        assert buf == sealed + trailing  # left for the caller to consume


def test_a_changed_byte_fails_to_open() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    sealer, opener = GCMCipher("aes128-gcm", key, iv), GCMCipher("aes128-gcm", key, iv)
    plain = os.urandom(1000)
    sealed = b"".join(asyncssh_fastpath.seal(sealer, len(plain).to_bytes(4, "big"), plain))
    for where in (0, 4, 500, len(sealed) - 1):  # length, body, tag
        tampered = bytearray(sealed)
        tampered[where] ^= 0x01
        fresh = GCMCipher("aes128-gcm", key, iv)
        assert asyncssh_fastpath.open_packet(fresh, tampered, len(sealed)) is None
    assert asyncssh_fastpath.open_packet(opener, bytearray(sealed), len(sealed)) == plain


# -- asyncssh to asyncssh, both through the patched code ----------------------------------


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


async def _echo(process: Any) -> None:
    """Echo stdin, in pieces of every shape the relay meets, then report on stderr."""
    received = bytearray()
    while chunk := await process.stdin.read(300_000):
        received += chunk
    data = bytes(received)
    process.stdout.write(data[:1])  # one byte
    process.stdout.write(bytearray(data[1:70_000]))  # a bytearray: asyncssh's own write
    process.stdout.write(data[70_000:])  # bytes larger than a packet, split by memoryview
    process.stderr.write(hashlib.sha256(data).hexdigest().encode())
    process.exit(7)


@contextlib.asynccontextmanager
async def _pair(
    process_factory: Any, cipher: str, client_only: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """An asyncssh server running `process_factory` and a client connected to it, both
    through the patched code; `options` go to both ends, `client_only` to the client."""
    server = await asyncssh.listen(
        LOOPBACK,
        0,
        server_factory=_NoAuth,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=process_factory,
        encoding=None,
        encryption_algs=[cipher],
        **options,
    )
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            LOOPBACK,
            port,
            username="test",
            known_hosts=None,
            agent_path=None,
            config=None,
            client_keys=None,
            encryption_algs=[cipher],
            **options,
            **(client_only or {}),
        ) as conn:
            yield conn
    finally:
        server.close()
        await server.wait_closed()


async def _round_trip(cipher: str, data: bytes) -> tuple[Any, int, int]:
    kexinits = 0
    fast = 0
    original = SSHConnection._send_kexinit
    channel_data = asyncssh_fastpath._channel_data

    def counting_fast(self: Any, seq: int, packet_data: bytes) -> bool:
        nonlocal fast
        handled = channel_data(self, seq, packet_data)
        fast += handled
        return handled

    def counting(self: Any) -> None:
        nonlocal kexinits
        kexinits += 1
        original(self)

    SSHConnection._send_kexinit = counting  # type: ignore[method-assign]
    asyncssh_fastpath._channel_data = counting_fast  # type: ignore[assignment]
    try:
        async with _pair(_echo, cipher, rekey_bytes=65536) as conn:
            result = await conn.run(input=data, encoding=None)
    finally:
        SSHConnection._send_kexinit = original  # type: ignore[method-assign]
        asyncssh_fastpath._channel_data = channel_data
    return result, kexinits, fast


@pytest.mark.parametrize("cipher", [*GCM, "chacha20-poly1305@openssh.com"])
def test_data_survives_rekeys_every_64k_in_both_directions(cipher: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)

    result, kexinits, fast = asyncio.run(_round_trip(cipher, data))

    assert result.exit_status == 7
    assert result.stdout == data
    assert result.stderr == hashlib.sha256(data).hexdigest().encode()
    # 3 MiB each way at one rekey per 64 KiB sent by either side.
    assert kexinits > 50
    # Every data packet (at most 32 KiB) went through the fast path on AES-GCM, none
    # on chacha20, which asyncssh handles itself.
    if cipher in GCM:
        assert fast >= 2 * len(data) // 32768
    else:
        assert fast == 0


# -- a small write goes out as one packet, unless something waits before it ------------------

SMALL_WRITES = [os.urandom(1 + (n * 7919) % 9000) for n in range(400)]  # 1 byte to 9000


async def _small_writes(process: Any) -> None:
    """Many small writes at once: more than the client's window, so some wait in the queue
    while later ones must not overtake them; then stderr, which has its own type."""
    for chunk in SMALL_WRITES:
        process.stdout.write(chunk)
    process.stderr.write(b"done")
    process.exit(0)


async def _count_direct_packets() -> tuple[Any, int]:
    direct = 0
    original = asyncssh_fastpath._seal_and_send

    def counting(conn: Any, head: bytes, args: Any) -> None:
        nonlocal direct
        # A write sent at once passes the whole data header (type, channel, length) as
        # `head`; the queue's packets, through `send_packet`, pass only the type.
        direct += len(head) == 9 and head[0] == MSG_CHANNEL_DATA and not conn.is_client()
        original(conn, head, args)

    asyncssh_fastpath._seal_and_send = counting  # type: ignore[assignment]
    try:
        async with _pair(_small_writes, GCM[0], {"window": 65536}) as conn:
            result = await conn.run(encoding=None)
    finally:
        asyncssh_fastpath._seal_and_send = original  # type: ignore[assignment]
    return result, direct


def test_small_writes_arrive_whole_and_in_order_past_the_window() -> None:
    result, direct = asyncio.run(_count_direct_packets())

    assert result.stdout == b"".join(SMALL_WRITES)
    assert result.stderr == b"done"
    # The writes that found the window open and nothing queued went straight out; the
    # client's 64 KiB window ran out long before 1.8 MB, and the rest waited their turn.
    sent = sum(map(len, SMALL_WRITES))
    assert sent > 20 * 65536
    assert 0 < direct < len(SMALL_WRITES)


# -- the real OpenSSH client through bastion serve ------------------------------------------


@pytest.mark.parametrize("cipher", GCM)
def test_openssh_rekeying_every_256k_through_the_gateway(gateway: Server, cipher: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    grant = gateway.issue("prod-web")

    result = subprocess.run(
        gateway.ssh_argv(
            "prod-web", grant.key, "cat", opts=["-o", "RekeyLimit=256K", "-c", cipher]
        ),
        input=data,
        capture_output=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    [record] = gateway.ended_sessions(grant)
    assert record["bytes_up"] == record["bytes_down"] == len(data)


# -- keepalive: noted on each read, checked when the timer fires --------------------------


async def _trickle(process: Any) -> None:
    """Output every 50 ms for a second, or nothing for a second."""
    quiet = process.command == "quiet"
    for _ in range(20):
        if not quiet:
            process.stdout.write(b"x" * 100)
        await asyncio.sleep(0.05)
    process.exit(0)


async def _keepalives(command: str) -> tuple[int, bytes]:
    sent = 0
    original = SSHConnection._make_keepalive_request

    async def counting(self: Any) -> None:
        nonlocal sent
        if self.is_client():
            sent += 1
        await original(self)

    SSHConnection._make_keepalive_request = counting  # type: ignore[method-assign]
    try:
        async with _pair(_trickle, GCM[0], {"keepalive_interval": 0.3}) as conn:
            result = await conn.run(command, encoding=None)
    finally:
        SSHConnection._make_keepalive_request = original  # type: ignore[method-assign]
    return sent, result.stdout


def test_keepalives_go_out_on_a_quiet_connection() -> None:
    sent, output = asyncio.run(_keepalives("quiet"))
    assert output == b""
    assert sent >= 2  # one second of silence at one keepalive per 0.3 s


def test_no_keepalives_while_data_keeps_arriving() -> None:
    sent, output = asyncio.run(_keepalives("talk"))
    assert output == b"x" * 2000
    assert sent == 0


def test_padding_never_reuses_a_random_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[bytes] = []

    def urandom(n: int) -> bytes:
        block = bytes((len(drawn) * 7 + i) % 256 for i in range(n))
        drawn.append(block)
        return block

    padding = asyncssh_fastpath._Padding()
    monkeypatch.setattr(asyncssh_fastpath.os, "urandom", urandom)
    sizes = [4 + i % 16 for i in range(1000)]
    pieces = [padding(n) for n in sizes]

    assert [len(p) for p in pieces] == sizes
    assert len(drawn) > 1  # refilled on the way
    # Every piece is the next unused stretch of what os.urandom returned: nothing is used
    # twice, and a piece that doesn't fit the rest of a pool starts a fresh one.
    position = {id(block): 0 for block in drawn}
    block_index = 0
    for piece in pieces:
        block = drawn[block_index]
        if position[id(block)] + len(piece) > len(block):
            block_index += 1
            block = drawn[block_index]
        start = position[id(block)]
        assert piece == block[start : start + len(piece)]
        position[id(block)] = start + len(piece)
    assert block_index == len(drawn) - 1
    assert padding(5000) == drawn[-1] and len(drawn[-1]) == 5000  # larger than the pool


def test_a_forked_child_draws_fresh_padding() -> None:
    padding = asyncssh_fastpath._Padding()
    padding(4)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it gets must not be the parent's next bytes
        os.write(write, padding(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != padding(16)
