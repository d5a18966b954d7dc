"""`bastion serve`: the composition root of a running gateway.

config -> store -> service -> gatekeeper -> gateway; signals; recovery of sessions a
crash left open. First start on a fresh home runs `init` (CA, host key, store).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from bastion.clock import Clock
from bastion.config import Home, ca_passphrase, split_host_port
from bastion.gatekeeper import Gatekeeper
from bastion.keyfiles import load_private_key
from bastion.service import Bastion, initialize
from bastion.transport.gateway import Gateway

log = logging.getLogger("bastion")


def needs_init(home: Home) -> bool:
    return not (home.ca_key.exists() and home.host_key.exists() and home.store_path.exists())


async def serve(home: Home, clock: Clock, actor: str, listen: str | None = None) -> None:
    if needs_init(home):
        report = initialize(home, clock, actor, ca_passphrase())
        log.info("initialized %s: created %s", home.root, ", ".join(report.created))
    bastion = Bastion.open(home, clock, actor, ca_passphrase())
    # Recording files are written and hashed on this thread, off the event loop.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-writer")
    try:
        ca = bastion.load_ca()  # fails now, not at the first login, on a bad key or passphrase
        host, port = (
            split_host_port(listen, "--listen") if listen else home.config.server.listen_host_port
        )
        signing_key = load_private_key(home.host_key, None)
        gate = Gatekeeper(bastion, home.config.server.node_name, signing_key, writer)
        recovered = gate.recover()
        if recovered:
            log.warning("marked %d sessions left open by a crash as ended", len(recovered))
        gateway = Gateway(gate, home.config, ca.public_line, str(home.host_key))
        bound = await gateway.listen(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"bastion: listening on {host}:{bound} (node {gate.node}, home {home.root})",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        log.info("stopping: closing %d live connections", len(gateway.connections))
        await gateway.shutdown()
    finally:
        writer.shutdown(wait=True)
        bastion.close()
