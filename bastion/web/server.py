"""Serving the console with uvicorn, on its own or inside `bastion serve`.

The listening socket is bound here (so port 0 works and the bound port is known before
the first request); uvicorn's own signal handling is turned off, because the process
that runs the console (`daemon`) owns SIGTERM/SIGINT and stops it through `stop`.
uvicorn's access log is off: a login link's token is part of its URL path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from bastion.clock import Clock
from bastion.service import Bastion
from bastion.web.app import create_app


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def run_console(
    bastion: Bastion,
    clock: Clock,
    sock: socket.socket,
    tls: Tls | None,
    stop: asyncio.Event,
    on_ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Serve on `sock` until `stop` is set."""
    app = create_app(bastion, clock, tls=tls is not None)
    config = uvicorn.Config(
        app,
        access_log=False,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=2,
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        server_header=False,
    )
    server = _Server(config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():
        await serving  # raises what stopped it
        return
    on_ready(f"{'https' if tls else 'http'}://{shown}:{port}")
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await serving
