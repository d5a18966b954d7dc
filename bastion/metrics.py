"""Prometheus metrics of a running gateway, and the HTTP endpoint that serves them.

The gateway reports what it decides through a `Metrics` object: `Metrics()` itself does
nothing (the default, and what tests of other parts get); `PrometheusMetrics` counts into
a private `CollectorRegistry` (never prometheus_client's global one, so two gateways in
one process, or a test, don't share counters). What is live (sessions, approvals waiting,
bytes of open sessions) is read from the gateway at scrape time through `live`, not kept
in step by hooks: a scrape runs on the event loop (`serve` is an asyncio handler, not
prometheus_client's thread), so it reads the gateway's sets without racing it.

Labels are bounded: a refusal's free-text reason is reduced to a short category
(`refusal_category`), so an attacker can't mint label values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger("bastion.metrics")

SESSION_KINDS = ("shell", "exec", "sftp", "forward")

# First match wins: (words in the refusal reasons, category). A connection's reasons are
# all its attempts: OpenSSH offers the plain key before its certificate, so "plain-key"
# comes last, for connections that had nothing better to say.
_REFUSALS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("no principals",), "no-principals"),
    (("not signed by this bastion",), "unknown-ca"),
    (("revoked",), "revoked"),
    (("expired",), "expired"),
    (("not yet valid",), "not-yet-valid"),
    (("not a principal", "does not cover target"), "wrong-target"),
    (("no longer exists",), "unknown-target"),
    (("no grant matches", "do not match grant", "not the key grant"), "unknown-grant"),
    (("source-address",), "source-address"),
    (("critical options",), "unsupported-option"),
    (("plain key",), "plain-key"),
)


def refusal_category(reason: str) -> str:
    for words, category in _REFUSALS:
        if any(word in reason for word in words):
            return category
    return "other"


class Relayed(Protocol):
    bytes_up: int
    bytes_down: int


@dataclass
class LiveState:
    """What the gateway has open right now."""

    sessions: dict[str, int] = field(default_factory=dict)  # by kind
    approvals_pending: int = 0
    bytes_up: int = 0  # of sessions still open (agent -> target)
    bytes_down: int = 0


class Metrics:
    """The hooks the gateway calls; this base class ignores them all."""

    def login(self, accepted: bool, reason: str = "") -> None:
        """One connection's login outcome (`reason`: why it was refused)."""

    def forced_close(self, reason: str) -> None:
        """The gateway closed a connection (expiry, revocation, shutdown) or a session (kill)."""

    def connection_dropped(self, setting: str) -> None:
        """A new connection was closed before its SSH banner: too many were authenticating
        (`setting`: "server.max_startups" or "server.per_source_max_startups")."""

    def session_closed(self, relay: Relayed) -> None:
        """A session's record was closed: its bytes now count as relayed."""

    def counted(self, relay: Relayed) -> bool:
        """True once `session_closed` has taken this relay's bytes."""
        return False

    def set_live(self, live: Callable[[], LiveState]) -> None:
        """Where to read what is open at scrape time."""


class PrometheusMetrics(Metrics):
    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._logins = Counter(
            "bastion_logins",
            "SSH logins by result, and by reason category when refused.",
            ["result", "reason"],
            registry=self.registry,
        )
        self._forced = Counter(
            "bastion_forced_closes",
            "Connections (expired, revoked, bastion-shutdown) and sessions (killed) the gateway"
            " closed.",
            ["reason"],
            registry=self.registry,
        )
        self._dropped = Counter(
            "bastion_connections_dropped",
            "New connections closed before the SSH banner because too many were"
            " authenticating, by the limit that refused them (max_startups,"
            " per_source_max_startups).",
            ["limit"],
            registry=self.registry,
        )
        info = Gauge(
            "bastion_build_info",
            "This bastion's version and node name (always 1).",
            ["version", "node"],
            registry=self.registry,
        )
        info.labels(version=_version(), node=node).set(1)
        self._closed_up = 0
        self._closed_down = 0
        self._closed: weakref.WeakSet[Relayed] = weakref.WeakSet()
        self._live: Callable[[], LiveState] = LiveState
        self.registry.register(_LiveCollector(self))
        self._server: asyncio.Server | None = None

    def login(self, accepted: bool, reason: str = "") -> None:
        if accepted:
            self._logins.labels(result="accepted", reason="").inc()
        else:
            self._logins.labels(result="refused", reason=refusal_category(reason)).inc()

    def forced_close(self, reason: str) -> None:
        self._forced.labels(reason=reason).inc()

    def connection_dropped(self, setting: str) -> None:
        self._dropped.labels(limit=setting.removeprefix("server.")).inc()

    def session_closed(self, relay: Relayed) -> None:
        if relay in self._closed:
            return
        self._closed.add(relay)
        self._closed_up += relay.bytes_up
        self._closed_down += relay.bytes_down

    def counted(self, relay: Relayed) -> bool:
        return relay in self._closed

    def set_live(self, live: Callable[[], LiveState]) -> None:
        self._live = live

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # -- the endpoint -------------------------------------------------------------

    async def serve(self, host: str, port: int) -> int:
        """Serve GET /metrics on host:port from the event loop; returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = request.split(b"\r\n", 1)[0].partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path not in (b"/metrics", b"/"):
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, body, kind = "200 OK", self.exposition(), CONTENT_TYPE_LATEST
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("serving /metrics failed")
        finally:
            writer.close()


class _LiveCollector(Collector):
    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        live = self.metrics._live()
        sessions = GaugeMetricFamily(
            "bastion_sessions_active", "Open sessions on this node, by kind.", labels=["kind"]
        )
        for kind in sorted(set(SESSION_KINDS) | set(live.sessions)):
            sessions.add_metric([kind], live.sessions.get(kind, 0))
        yield sessions
        yield GaugeMetricFamily(
            "bastion_approvals_pending",
            "Commands and statements on this node waiting for a human's decision.",
            value=live.approvals_pending,
        )
        relayed = CounterMetricFamily(
            "bastion_bytes_relayed",
            "Bytes relayed between agents and targets (up: agent to target).",
            labels=["direction"],
        )
        relayed.add_metric(["up"], self.metrics._closed_up + live.bytes_up)
        relayed.add_metric(["down"], self.metrics._closed_down + live.bytes_down)
        yield relayed


def _version() -> str:
    try:
        return metadata.version("bastion")
    except metadata.PackageNotFoundError:
        return "unknown"
