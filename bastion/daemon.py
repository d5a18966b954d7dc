"""`bastion serve`: the composition root of a running gateway.

config -> store -> service -> gatekeeper -> gateway; signals; recovery of sessions a
crash left open; the metrics endpoint; systemd's notify protocol (READY=1 once the
listener is bound, STATUS= lines, WATCHDOG=1 pings, STOPPING=1 at SIGTERM). First start
on a fresh home runs `init` (CA, host key, store). With `[web] listen` set, the web
console runs in the same process and event loop, on a service (and state store
connection) of its own; `bastion web` runs the console alone. `target_check()` hands
`bastion target add-*` the gateway's upstream code to check a new target with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bastion.clock import Clock
from bastion.config import (
    DEFAULT_WEB_LISTEN,
    Home,
    ca_passphrase,
    check_web_listen,
    load_config,
    metrics_host_port,
    notify_environment,
    split_host_port,
)
from bastion.configreload import plan_reload
from bastion.errors import ConfigError, InvalidInput
from bastion.gatekeeper import Gatekeeper
from bastion.keyfiles import load_private_key
from bastion.metrics import Metrics, PrometheusMetrics
from bastion.sdnotify import SystemdNotifier
from bastion.service import Bastion, TargetCheck, initialize
from bastion.transport.gateway import Gateway
from bastion.transport.probe import NetworkTargetCheck
from bastion.transport.reconfigure import reconfigure
from bastion.web.server import Tls, bind, run_console

log = logging.getLogger("bastion")


def run(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run the daemon's main coroutine on the configured event loop (`server.event_loop`).

    uvloop (libuv) is the default: relaying many small messages (`pgbench -S` through a
    PostgreSQL forward) costs about a fifth less CPU per message than on asyncio's own
    selector loop. Both run the same code; "asyncio" is there to rule the loop out.
    """
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def target_check() -> TargetCheck:
    """The network check `bastion target add-*` runs before storing a target.

    Composed here because the CLI may not import `transport`: the check is the gateway's
    own upstream code (`transport/probe.py`), so a target that registers is one the
    gateway can reach.
    """
    return NetworkTargetCheck()


def needs_init(home: Home) -> bool:
    # A shared (PostgreSQL) store is never "missing": only the keys can be.
    store_there = bool(home.config.store.url) or home.store_path.exists()
    return not (home.ca_key.exists() and home.host_key.exists() and store_there)


async def serve(
    home: Home,
    clock: Clock,
    actor: str,
    listen: str | None = None,
    metrics_listen: str | None = None,
) -> None:
    notifier = SystemdNotifier.from_env(notify_environment(), os.getpid())
    try:
        await _serve(home, clock, actor, listen, metrics_listen, notifier)
    finally:
        notifier.close()


async def _serve(
    home: Home,
    clock: Clock,
    actor: str,
    listen: str | None,
    metrics_listen: str | None,
    notifier: SystemdNotifier,
) -> None:
    server = home.config.server
    if needs_init(home):
        notifier.status("initializing the bastion home")
        report = initialize(home, clock, actor, ca_passphrase())
        log.info("initialized %s: created %s", home.root, ", ".join(report.created))
    # Both checked before anything starts: a bad address fails the start, not a scrape.
    host, port = split_host_port(listen, "--listen") if listen else server.listen_host_port
    metrics_address = _metrics_address(home, metrics_listen)
    bastion = Bastion.open(home, clock, actor, ca_passphrase())
    # Recording files are written and hashed on this thread, off the event loop.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-writer")
    metrics: Metrics = Metrics()
    watchdog: asyncio.Task[None] | None = None
    try:
        ca = bastion.load_ca()  # fails now, not at the first login, on a bad key or passphrase
        signing_key = load_private_key(home.host_key, None)
        gate = Gatekeeper(bastion, server.node_name, signing_key, writer)
        recovered = gate.recover()
        if recovered:
            log.warning("marked %d sessions left open by a crash as ended", len(recovered))
        if metrics_address is not None:
            metrics = PrometheusMetrics(gate.node)
        gateway = Gateway(gate, home.config, ca.public_line, str(home.host_key), metrics=metrics)
        web = _web_socket(home) if home.config.web.listen else None
        bound = await gateway.listen(host, port)
        if isinstance(metrics, PrometheusMetrics) and metrics_address is not None:
            try:
                metrics_port = await metrics.serve(*metrics_address)
            except OSError as exc:
                where = f"{metrics_address[0]}:{metrics_address[1]}"
                raise ConfigError(
                    f"can't serve metrics on {where}: {exc.strerror or exc}"
                ) from None
            log.info(
                "metrics on http://%s:%d/metrics",
                metrics_address[0],
                metrics_port,
                extra={"event": "metrics.listening", "port": metrics_port},
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        services: list[Bastion] = []  # the web console's, told of a reloaded config
        reloader = _Reloader(home, gateway, services, notifier, stop)
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
        console = None
        if web is not None:
            web_sock, tls = web
            console = asyncio.create_task(_console(home, clock, web_sock, tls, stop, services))
        event_loop = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        log.info(
            "listening on %s:%d (node %s, home %s, %s event loop)",
            host,
            bound,
            gate.node,
            home.root,
            event_loop,
            extra={
                "event": "listening",
                "host": host,
                "port": bound,
                "node": gate.node,
                "event_loop": event_loop,
            },
        )
        # Everything loaded so far (modules, config, the listener) lives as long as the
        # process: moved out of the collector's reach, a full collection no longer scans
        # it. Such a collection had landed in the middle of an expiry and held 50 clients'
        # closes back by 30-40 ms (measured with gc.callbacks).
        gc.collect()
        gc.freeze()
        notifier.ready(f"listening on {host}:{bound}")
        watchdog = asyncio.ensure_future(notifier.watchdog())
        await stop.wait()
        count = len(gateway.connections)
        log.info(
            "stopping: closing %d live connections",
            count,
            extra={"event": "stopping", "connections": count},
        )
        gateway.stop_accepting()
        notifier.stopping(f"stopping: closing {count} live connections")
        await reloader.finish()
        # The running value: `shutdown_grace` is among the settings a reload applies.
        await gateway.shutdown(grace=gateway.config.server.shutdown_grace.total_seconds())
        gate.stop_node()
        if console is not None:
            await console
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if isinstance(metrics, PrometheusMetrics):
            with contextlib.suppress(Exception):
                await metrics.close()
        writer.shutdown(wait=True)
        bastion.close()


def _metrics_address(home: Home, option: str | None) -> tuple[str, int] | None:
    config = home.config.metrics
    if option is not None:
        return metrics_host_port(option, config.allow_remote, "--metrics-listen")
    if config.listen:
        return metrics_host_port(config.listen, config.allow_remote, "metrics.listen")
    return None


def _web_socket(home: Home) -> tuple[socket.socket, Tls | None]:
    web = home.config.web
    tls = _tls(web.tls_cert, web.tls_key, home.root, "web.tls_cert/tls_key")
    host, port = check_web_listen(web.listen or DEFAULT_WEB_LISTEN, tls is not None, "web.listen")
    return _bind(host, port, "web.listen"), tls


def _tls(cert: str | None, key: str | None, base: Path, what: str) -> Tls | None:
    if not cert and not key:
        return None
    if not cert or not key:
        raise InvalidInput(f"{what}: give both the certificate and the key")
    paths = Tls(base / cert, base / key)
    for path in (paths.cert, paths.key):
        if not path.is_file():
            raise ConfigError(f"{what}: no such file {path}")
    return paths


def _bind(host: str, port: int, what: str) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        raise ConfigError(f"{what}: can't listen on {host}:{port}: {exc.strerror}") from None


async def _console(
    home: Home,
    clock: Clock,
    sock: socket.socket,
    tls: Tls | None,
    stop: asyncio.Event,
    services: list[Bastion] | None = None,
) -> None:
    # Its own service and store connection: a slow page never holds the gateway's lock.
    bastion = Bastion.open(home, clock, "web", ca_passphrase())
    if services is not None:
        services.append(bastion)
    try:

        def ready(url: str) -> None:
            log.info("web console on %s", url, extra={"event": "web.listening", "url": url})

        await run_console(bastion, clock, sock, tls, stop, ready)
    finally:
        bastion.close()


async def serve_web(
    home: Home,
    clock: Clock,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """`bastion web`: the console alone (the gateway may run elsewhere on the same store)."""
    web = home.config.web
    if tls_cert or tls_key:
        tls = _tls(tls_cert, tls_key, Path.cwd(), "--tls-cert/--tls-key")
    else:
        tls = _tls(web.tls_cert, web.tls_key, home.root, "web.tls_cert/tls_key")
    what = "--listen" if listen else "web.listen"
    host, port = check_web_listen(listen or web.listen or DEFAULT_WEB_LISTEN, tls is not None, what)
    if needs_init(home):
        raise InvalidInput(f"no bastion state in {home.root}: run `bastion init` first")
    sock = _bind(host, port, what)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await _console(home, clock, sock, tls, stop)


class _Reloader:
    """SIGHUP: read bastion.toml again, with the loader of start-up.

    A file that doesn't load (bad TOML, an unknown key, a bad value) changes nothing: the
    running configuration stays, and the error is logged in one line and audited
    (`config.reload_failed`). Otherwise `configreload.plan_reload` keeps the settings
    that need a restart at their running values (logged as such), the gateway and the
    services take the rest at once, and live channels are re-checked under it
    (`transport/reconfigure.py`); `config.reloaded` audits what changed and what closed.
    Reloads run one at a time, in the order the signals came.
    """

    def __init__(
        self,
        home: Home,
        gateway: Gateway,
        services: list[Bastion],
        notifier: SystemdNotifier,
        stop: asyncio.Event,
    ) -> None:
        self.home = home
        self.gateway = gateway
        self.services = services
        self.notifier = notifier
        self.stop = stop
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        if self.stop.is_set():
            return
        task = asyncio.ensure_future(self._reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """At stop: let a reload under way end (it never waits on the network)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def _reload(self) -> None:
        async with self._lock:
            try:
                await self._reload_once()
            except Exception:
                log.exception("reloading the configuration failed")

    async def _reload_once(self) -> None:
        gate = self.gateway.gate
        path = self.home.config_path
        try:
            loaded = await asyncio.to_thread(load_config, self.home.root)
        except Exception as exc:  # ConfigError, and anything else the loader may raise
            error = str(exc) or type(exc).__name__
            log.error(
                "configuration not reloaded, still running the previous one: %s",
                error,
                extra={"event": "config.reload_failed", "reason": error},
            )
            await self._audit(gate.config_reload_failed, error)
            return
        plan = plan_reload(self.gateway.config, loaded)
        # One step of the loop, no await: nothing sees half of the new configuration.
        # (The gateway's own service is the gatekeeper's: `reconfigure` updates it.)
        for service in self.services:
            service.home = dataclasses.replace(service.home, config=plan.config)
        closed = reconfigure(self.gateway, plan.config)
        if plan.restart_required:
            log.warning(
                "%s changed settings that take effect only after a restart, still running"
                " the previous values: %s",
                path,
                ", ".join(plan.restart_required),
                extra={
                    "event": "config.restart_required",
                    "settings": list(plan.restart_required),
                },
            )
        applied = ", ".join(plan.applied) if plan.applied else "nothing changed"
        log.info(
            "configuration reloaded from %s: %s; %d live sessions closed by the new policy",
            path,
            applied,
            len(closed),
            extra={
                "event": "config.reloaded",
                "applied": list(plan.applied),
                "sessions_closed": [c.session for c in closed],
            },
        )
        self.notifier.status(f"configuration reloaded ({len(plan.applied)} settings applied)")
        details: dict[str, object] = {
            **plan.summary(),
            "sessions_closed": [
                {"session": c.session, "target": c.target, "reason": c.reason} for c in closed
            ],
        }
        await self._audit(gate.config_reloaded, details)

    async def _audit(self, write: Callable[[Any], None], details: Any) -> None:
        try:
            await self.gateway.write_behind(write, details)
        except Exception as exc:
            log.error("could not audit the configuration reload: %s", exc)
