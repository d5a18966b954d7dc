"""A `-L` byte relay keeps what the target sends before the agent's channel is open.

uvloop starts reading a new connection right after `connection_made`, even when that
callback paused it; asyncio's own loop honours the pause. On both, a target that speaks
first (an SSH banner, an SMTP greeting) must reach the agent from its first byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from bastion.transport.relay import ForwardRelay
from tests.integration.conftest import LOOPBACK

GREETING = b"220 target ready\r\n"
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


class _Channel:
    """Stands in for the agent's SSH channel: keeps what the relay writes to it."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.eof = False

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True


class _Conn:
    def __init__(self) -> None:
        self.forwards: set[Any] = set()


async def _greet_then_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    await reader.read()  # until the relay closes
    writer.close()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # as a service that turns connections away does


async def _open_late(
    target: Callable[..., Coroutine[Any, Any, None]], said: bytes, ends: bool
) -> None:
    server = await asyncio.start_server(target, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        relay = await ForwardRelay.open(_Conn(), LOOPBACK, port, record=None)  # type: ignore[arg-type]
        await asyncio.sleep(0.2)  # the greeting, or the end, arrives before the channel opens
        chan = _Channel()
        relay.connection_made(chan)
        for _ in range(100):
            if len(chan.written) == len(said) and chan.eof == ends:
                break
            await asyncio.sleep(0.01)
        assert bytes(chan.written) == said
        assert relay.bytes_down == len(said)
        assert chan.eof == ends  # the target's end reached the agent as EOF
        assert relay.tcp.transport is not None
        relay.tcp.transport.close()


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_what_the_target_says_first_is_kept_until_the_channel_opens(loop: str) -> None:
    RUNNERS[loop](_open_late(_greet_then_hold, GREETING, ends=False))


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_a_target_that_ends_before_the_channel_opens_ends_the_channel(loop: str) -> None:
    RUNNERS[loop](_open_late(_close_at_once, b"", ends=True))
