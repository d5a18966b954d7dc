"""bastion.toml and the home directory, validated at load into frozen dataclasses.

This is the one place that reads environment variables (`BASTION_HOME`,
`BASTION_CA_PASSPHRASE`). An unknown key or a value of the wrong type is a
`ConfigError` naming the key and the file; nothing else in bastion re-validates.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bastion.cmdpolicy import DEFAULT_RULES, CommandRule, parse_rule
from bastion.errors import ConfigError, InvalidInput
from bastion.models import Node
from bastion.requestpolicy import AutoApproval, TargetRequestPolicy, parse_hours
from bastion.sqlclass import DEFAULT_RULES as DEFAULT_STATEMENT_RULES
from bastion.sqlclass import StatementRule
from bastion.sqlclass import parse_rule as parse_statement_rule
from bastion.startups import MAX_LIMIT as MAX_STARTUPS_LIMIT
from bastion.startups import StartupLimits, parse_max_startups, parse_netblock
from bastion.timespec import parse_duration

CONFIG_NAME = "bastion.toml"

DEFAULT_CONFIG_TEXT = """\
# bastion.toml: configuration of the bastion whose home is this directory.
# Every key is optional; the values shown are the defaults.
# Durations are written like 90s, 30m, 2h or 1h30m.

[server]
# Address the SSH gateway listens on (`bastion serve`).
listen = "127.0.0.1:2222"
# Host and port that agents use to reach the bastion, as printed in `ssh` lines
# after `bastion grant issue`. Empty means the listen address.
advertise = ""
# This node's name in session records. Empty means the machine's host name.
node = ""
# How long a client may take to authenticate, counted from its TCP connection (sshd's
# LoginGraceTime): one silent or stalled before it has logged in is closed then.
login_timeout = "30s"
# Shells, commands and sftp open at once on one connection (as sshd's MaxSessions);
# `-L` forwards are not counted: see max_forwards.
max_sessions = 10
# `-L` forwards open at once on one connection (each PostgreSQL forward is a database
# login on the target, each other forward a TCP connection to it); see also
# [grants] max_forwards.
max_forwards = 10
# Connections still authenticating at once (as sshd's MaxStartups): more are closed as
# they arrive, so that a flood of idle connections can't hold the gateway's resources.
# "start:rate:full" (like "10:30:100") refuses rate% of new ones from `start` on, rising
# to all of them at `full` (sshd's random early drop).
max_startups = 100
# Of those, at most this many from one source netblock (sshd's PerSourceMaxStartups), so
# that one host's idle connections can't lock every agent out. A host that starts more
# logins than this at the same moment (a CI runner, a NAT) needs a higher value.
per_source_max_startups = 10
# What one source is: "IPv4 prefix length:IPv6 prefix length" (sshd's
# PerSourceNetBlockSize); "24:64" counts a /24 or a /64 as one source.
per_source_netblock = "32:128"
# On SIGTERM: live sessions are told why and closed; this bounds how long that may take.
shutdown_grace = "10s"
# Log lines on stderr: "text", or "json" (one object per line, for a log shipper).
log_format = "text"
# The event loop: "uvloop" (libuv; the default, about a fifth less CPU per relayed
# message) or "asyncio" (the standard library's).
event_loop = "uvloop"
# Several nodes on one PostgreSQL store: how often this node says it is alive, and how
# long another node may stay silent before its live sessions are ended as `node-lost`.
heartbeat = "2s"
node_timeout = "15s"

[store]
# State store (grants, targets, sessions, audit chain). SQLite, relative to the home.
path = "state.db"
# Or PostgreSQL, shared by several nodes (replaces `path`); run `bastion migrate` first.
# The password may be in the URL or come from PGPASSWORD / ~/.pgpass.
# url = "postgresql://bastion@db.internal:5432/bastion?sslmode=verify-full"

[recordings]
# Where session recordings are written, relative to the home.
dir = "recordings"

[metrics]
# Prometheus metrics endpoint (http://HOST:PORT/metrics). Empty: off.
# listen = "127.0.0.1:9464"
listen = ""
# A non-loopback listen address is refused unless this is true.
allow_remote = false

[grants]
# TTL of a grant when `--ttl` is not given.
default_ttl = "30m"
# Shortest and longest TTL a grant may have. Just-in-time access means hours, not days.
min_ttl = "1m"
max_ttl = "8h"
# Certificates are valid from this long before issuance, to absorb clock skew.
clock_skew = "60s"
# `-L` forwards open at once under one grant, across all its connections to this node.
max_forwards = 20

[approvals]
# How long a command waits for a human's `bastion approvals approve`.
timeout = "5m"
# While it waits, the client is reminded this often (stderr, or a PostgreSQL NOTICE).
remind_every = "30s"
# Commands that need approval before an `exec` runs, on every target unless a
# [targets.NAME] table says otherwise. Leave unset for the built-in list
# (rm -r, dd, mkfs*, shutdown, reboot, systemctl stop, kill -9, ...); see README.
# commands = ["rm -r|-R|--recursive", "dd", "mkfs*"]

# Statements that need approval on PostgreSQL targets; unset: the built-in list
# (drop, truncate, delete-without-where, update-without-where, alter-drop, copy-program).
# statements = ["drop", "truncate", "delete-without-where", "grant", "revoke"]

# Per-target policy:
# [targets.prod-db]
# statements = ["drop", "truncate", "ddl"]   # replaces [approvals] statements
# databases = ["app", "reporting"]           # databases the agent may pick
# redact_parameters = true                   # keep bound values out of the query log
# recording = "mandatory"                    # or "best-effort", or "off"
# [targets.prod-web]
# commands = ["rm -r|-R|--recursive", "reboot"]   # replaces [approvals] commands
# shell_requires_approval = true                  # opening a shell waits for approval
# raw_forwarding = false       # -L/-W/-J to this SSH target's port: raw, unrecorded bytes

[requests]
# Enrolled agents ask for grants with `ssh … request@BASTION -- --target …`.
# How long such a request waits for a human's `bastion requests approve`.
timeout = "10m"
# TTL of a requested grant when the request gives no --ttl, and the longest it may
# ask for (an agent's --max-ttl and a target's request_max_ttl may be shorter).
default_ttl = "30m"
max_ttl = "1h"
# Told of every new request and decision, and of every approval a command or
# statement waits for and its decision (JSON); a failure is logged, never blocks.
# webhook = "https://chat.example.com/hooks/bastion"   # HTTP POST
# command = ["/usr/local/bin/notify-chat"]            # the event's JSON on stdin
hook_timeout = "5s"

# Per-target request policy:
# [targets.replica-db]
# requestable = true                    # false: only `bastion grant issue` grants it
# request_max_ttl = "2h"
# auto_approve = true                   # grant without a human when all of these hold:
# auto_approve_agents = ["chatgpt-agent"]   # empty: any agent that may request it
# auto_approve_hours = "Mon-Fri 09:00-18:00"
# auto_approve_timezone = "Europe/Paris"
# auto_approve_max_ttl = "30m"

[web]
# The auditors' and approvers' web console. Empty: `bastion serve` runs none (start it
# on its own with `bastion web`). Loopback unless TLS is configured below.
listen = ""
# PEM certificate (chain) and key, relative to the home; required off loopback.
tls_cert = ""
tls_key = ""
# How long a console sign-in lasts, and a `bastion web login-link` stays usable.
session_ttl = "12h"
login_link_ttl = "15m"
# Sign-in throttling: this many failures per user and per client address in the window.
signin_limit = 5
signin_window = "15m"
"""


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:2222"
    advertise: str = ""
    node: str = ""
    login_timeout: timedelta = timedelta(seconds=30)
    max_sessions: int = 10
    max_forwards: int = 10  # `-L` channels open at once on one connection
    max_startups: int | str = 100  # N, or "start:rate:full": see `startup_limits`
    per_source_max_startups: int = 10
    per_source_netblock: str = "32:128"
    shutdown_grace: timedelta = timedelta(seconds=10)
    log_format: str = "text"
    event_loop: str = "uvloop"
    heartbeat: timedelta = timedelta(seconds=2)
    node_timeout: timedelta = timedelta(seconds=15)

    @property
    def node_name(self) -> str:
        return self.node or socket.gethostname()

    @property
    def startup_limits(self) -> StartupLimits:
        """max_startups and the per-source settings, parsed (validated at load)."""
        begin, rate, full = parse_max_startups(self.max_startups)
        ipv4_prefix, ipv6_prefix = parse_netblock(self.per_source_netblock)
        return StartupLimits(
            begin, rate, full, self.per_source_max_startups, ipv4_prefix, ipv6_prefix
        )

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "server.listen")

    @property
    def advertised_host_port(self) -> tuple[str, int]:
        if self.advertise:
            return split_host_port(self.advertise, "server.advertise")
        return self.listen_host_port

    def client_address(self, nodes: Sequence[Node], now: datetime) -> tuple[str, int]:
        """Where an agent should connect, for the `ssh` lines the CLI prints.

        `advertise` when set; else the address a live node really listens on (the store
        knows each node's bound address: `serve --listen` may differ from this file),
        this host's node first, a wildcard listen replaced by that node's name; else
        this file's `listen`.
        """
        if self.advertise:
            return self.advertised_host_port
        alive = [n for n in nodes if n.state(now, self.node_timeout) == "alive"]
        alive.sort(key=lambda n: (n.name != self.node_name, -n.heartbeat_at.timestamp()))
        for node in alive:
            try:
                host, port = split_host_port(node.address, "node address")
            except ConfigError:
                continue
            if host in WILDCARD_HOSTS:
                host = node.name
            return host, port
        return self.listen_host_port


@dataclass(frozen=True)
class StoreConfig:
    path: str = "state.db"
    # postgresql://... : the shared PostgreSQL store (several nodes); empty: SQLite at `path`.
    url: str = ""


@dataclass(frozen=True)
class RecordingsConfig:
    dir: str = "recordings"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # empty: no metrics endpoint
    allow_remote: bool = False


@dataclass(frozen=True)
class GrantsConfig:
    default_ttl: timedelta = timedelta(minutes=30)
    min_ttl: timedelta = timedelta(minutes=1)
    max_ttl: timedelta = timedelta(hours=8)
    clock_skew: timedelta = timedelta(seconds=60)
    # `-L` channels open at once under one grant, over all its connections to this node.
    max_forwards: int = 20


@dataclass(frozen=True)
class ApprovalsConfig:
    timeout: timedelta = timedelta(minutes=5)
    # How often a client held for approval is reminded that it waits, and for what.
    remind_every: timedelta = timedelta(seconds=30)
    # None: the built-in rules of `cmdpolicy.DEFAULT_RULES`.
    commands: tuple[CommandRule, ...] | None = None
    # None: the built-in rules of `sqlclass.DEFAULT_RULES`.
    statements: tuple[StatementRule, ...] | None = None


@dataclass(frozen=True)
class RequestsConfig:
    timeout: timedelta = timedelta(minutes=10)
    default_ttl: timedelta = timedelta(minutes=30)
    max_ttl: timedelta = timedelta(hours=1)
    webhook: str = ""
    command: tuple[str, ...] = ()
    hook_timeout: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class WebConfig:
    listen: str = ""  # empty: `bastion serve` runs no web console
    tls_cert: str = ""
    tls_key: str = ""
    session_ttl: timedelta = timedelta(hours=12)
    login_link_ttl: timedelta = timedelta(minutes=15)
    signin_limit: int = 5
    signin_window: timedelta = timedelta(minutes=15)


DEFAULT_WEB_LISTEN = "127.0.0.1:8443"


def check_web_listen(
    listen: str, tls: bool, key: str, source: Path | None = None
) -> tuple[str, int]:
    """HOST:PORT for the web console: off loopback only with TLS (passwords and cookies)."""
    return _loopback_unless(
        listen,
        tls,
        key,
        source,
        "the web console listens off loopback only with TLS (a certificate and key)",
    )


@dataclass(frozen=True)
class TargetPolicy:
    """Per-target overrides from a `[targets.NAME]` table."""

    commands: tuple[CommandRule, ...] | None = None
    shell_requires_approval: bool = False
    # "mandatory": a session that can't be recorded doesn't run; "best-effort": it runs,
    # and every loss of recording is an audit event; "off": not recorded (audited).
    recording: str = "mandatory"
    # PostgreSQL targets: the statements that need approval (replaces [approvals]),
    # the databases an agent may pick (else the registered one is used), and whether
    # parameter values are left out of the query log.
    statements: tuple[StatementRule, ...] | None = None
    databases: tuple[str, ...] = ()
    redact_parameters: bool = False
    # SSH targets: `-L`/`-W`/`-J` to it carry raw bytes to its port (its sshd), a path
    # with no session recorded and no command gated; off unless a target is meant for it
    # (a plain TCP service registered as an SSH-kind target).
    raw_forwarding: bool = False
    # Access requests (`request@`): see `request_policy`.
    requestable: bool = True
    request_max_ttl: timedelta | None = None
    auto_approve: bool = False
    auto_approve_agents: tuple[str, ...] = ()
    auto_approve_hours: str = ""
    auto_approve_timezone: str = "UTC"
    auto_approve_max_ttl: timedelta | None = None


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    recordings: RecordingsConfig = field(default_factory=RecordingsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    grants: GrantsConfig = field(default_factory=GrantsConfig)
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    targets: dict[str, TargetPolicy] = field(default_factory=dict)

    def command_rules(self, target: str) -> tuple[CommandRule, ...]:
        policy = self.targets.get(target)
        if policy is not None and policy.commands is not None:
            return policy.commands
        if self.approvals.commands is not None:
            return self.approvals.commands
        return DEFAULT_RULES

    def statement_rules(self, target: str) -> tuple[StatementRule, ...]:
        policy = self.targets.get(target)
        if policy is not None and policy.statements is not None:
            return policy.statements
        if self.approvals.statements is not None:
            return self.approvals.statements
        return DEFAULT_STATEMENT_RULES

    def target_policy(self, target: str) -> TargetPolicy:
        return self.targets.get(target, TargetPolicy())

    def request_policy(self, target: str) -> TargetRequestPolicy:
        policy = self.target_policy(target)
        hours = parse_hours(policy.auto_approve_hours) if policy.auto_approve_hours else None
        zone = _zone(policy.auto_approve_timezone)
        auto = None
        if policy.auto_approve:
            auto = AutoApproval(
                agents=policy.auto_approve_agents,
                hours=hours,
                timezone=zone,
                max_ttl=policy.auto_approve_max_ttl,
            )
        return TargetRequestPolicy(
            requestable=policy.requestable, max_ttl=policy.request_max_ttl, auto=auto
        )


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}") from None


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "recordings": RecordingsConfig,
    "metrics": MetricsConfig,
    "grants": GrantsConfig,
    "approvals": ApprovalsConfig,
    "requests": RequestsConfig,
    "web": WebConfig,
}
_RULE_LISTS = {"commands"}
_STATEMENT_LISTS = {"statements"}
_STRING_LISTS = {"databases", "command", "auto_approve_agents"}
_OPTIONAL_DURATIONS = {"request_max_ttl", "auto_approve_max_ttl"}
_NUMBER_OR_TEXT = {"max_startups"}  # 100 or "10:30:100"


# Listen addresses that name no one host: a client can't connect to them as written.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def split_host_port(value: str, key: str, source: Path | None = None) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        where = f"'{key}' in {source}" if source is not None else key
        raise ConfigError(f"{where}: expected HOST:PORT, got {value!r}")
    return host, int(port_text)


LOG_FORMATS = ("text", "json")
EVENT_LOOPS = ("uvloop", "asyncio")
MAX_SHUTDOWN_GRACE = timedelta(minutes=10)


def metrics_host_port(
    value: str, allow_remote: bool, key: str, source: Path | None = None
) -> tuple[str, int]:
    """The metrics endpoint's address; off loopback only when `allow_remote` says so."""
    return _loopback_unless(
        value,
        allow_remote,
        key,
        source,
        "metrics are served on loopback only unless metrics.allow_remote = true",
    )


def _loopback_unless(
    value: str, allowed: bool, key: str, source: Path | None, rule: str
) -> tuple[str, int]:
    """HOST:PORT that must be a loopback address unless `allowed`; `rule` says why."""
    host, port = split_host_port(value, key, source)
    if not allowed and not is_loopback(host):
        where = f"'{key}' in {source}" if source is not None else key
        raise ConfigError(f"{where}: {host} is not a loopback address; {rule}")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: we can't know where it resolves


def _convert(section: str, key: str, value: Any, default: Any, source: Path) -> Any:
    where = f"'{section}.{key}' in {source}"
    if key in _STATEMENT_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of statement rules (strings)")
        try:
            return tuple(parse_statement_rule(v) for v in value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if key in _STRING_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where} must be a list of names (strings)")
        return tuple(value)
    if key in _RULE_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of command rules (strings)")
        try:
            return tuple(parse_rule(v) for v in value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(default, timedelta) or key in _OPTIONAL_DURATIONS:
        if not isinstance(value, str):
            raise ConfigError(f'{where} must be a duration string like "30m"')
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if key in _NUMBER_OR_TEXT and type(value) in (int, str):
        return value
    if type(value) is not type(default):
        raise ConfigError(
            f"{where} must be of type {type(default).__name__}, got {type(value).__name__}"
        )
    return value


def parse_config(data: dict[str, Any], source: Path) -> Config:
    sections: dict[str, Any] = {}
    for name, body in data.items():
        if name == "targets":
            sections[name] = _parse_target_policies(body, source)
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown section or key '{name}' in {source}")
        if not isinstance(body, dict):
            raise ConfigError(f"'{name}' in {source} must be a table ([{name}])")
        sections[name] = cls(**_parse_table(cls, name, body, source))
    if isinstance(data.get("store"), dict) and {"path", "url"} <= data["store"].keys():
        raise ConfigError(f"'store' in {source}: set either 'store.path' (SQLite) or 'store.url'")
    config = Config(**sections)
    _check_consistency(config, source)
    return config


def _parse_target_policies(body: Any, source: Path) -> dict[str, TargetPolicy]:
    if not isinstance(body, dict):
        raise ConfigError(f"'targets' in {source} must be a table of [targets.NAME] tables")
    policies = {}
    for target, table in body.items():
        section = f"targets.{target}"
        if not isinstance(table, dict):
            raise ConfigError(f"'{section}' in {source} must be a table")
        policies[target] = TargetPolicy(**_parse_table(TargetPolicy, section, table, source))
    return policies


def _parse_table(
    cls: type[Any], section: str, table: dict[str, Any], source: Path
) -> dict[str, Any]:
    """A TOML table's values for dataclass `cls`, converted; an unknown key is an error."""
    # Only the dataclass fields: `hasattr` would also accept properties, methods and dunders.
    defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in defaults:
            raise ConfigError(f"unknown key '{section}.{key}' in {source}")
        values[key] = _convert(section, key, value, defaults[key], source)
    return values


def _check_consistency(config: Config, source: Path) -> None:
    for name, policy in config.targets.items():
        if policy.recording not in ("mandatory", "best-effort", "off"):
            raise ConfigError(
                f"'targets.{name}.recording' in {source} must be"
                ' "mandatory", "best-effort" or "off"'
            )
        # Checked whether auto-approval is on or not: a typo must not wait to bite until
        # someone turns it on.
        for key, check in (
            ("auto_approve_hours", lambda v: parse_hours(v) if v else None),
            ("auto_approve_timezone", _zone),
        ):
            try:
                check(getattr(policy, key))
            except InvalidInput as exc:
                raise ConfigError(f"'targets.{name}.{key}' in {source}: {exc}") from None
    requests = config.requests
    if not requests.default_ttl <= requests.max_ttl:
        raise ConfigError(f"'requests' in {source}: need default_ttl <= max_ttl")
    if requests.webhook and not requests.webhook.startswith(("http://", "https://")):
        raise ConfigError(f"'requests.webhook' in {source} must be an http:// or https:// URL")
    grants = config.grants
    if grants.min_ttl < timedelta(seconds=1):
        raise ConfigError(f"'grants.min_ttl' in {source} must be at least 1s")
    if not grants.min_ttl <= grants.default_ttl <= grants.max_ttl:
        raise ConfigError(f"'grants' in {source}: need min_ttl <= default_ttl <= max_ttl")
    if config.server.heartbeat < timedelta(seconds=1) or (
        config.server.node_timeout < 2 * config.server.heartbeat
    ):
        raise ConfigError(
            f"'server' in {source}: need heartbeat >= 1s and node_timeout >= 2 x heartbeat"
        )
    if config.store.url:
        _check_store_url(config.store.url, source)
    _check_web(config.web, source)
    split_host_port(config.server.listen, "server.listen", source)
    server = config.server
    if server.log_format not in LOG_FORMATS:
        raise ConfigError(
            f'\'server.log_format\' in {source} must be "text" or "json", got {server.log_format!r}'
        )
    if server.event_loop not in EVENT_LOOPS:
        raise ConfigError(
            f'\'server.event_loop\' in {source} must be "uvloop" or "asyncio",'
            f" got {server.event_loop!r}"
        )
    if not 1 <= server.max_sessions <= 1000:
        raise ConfigError(f"'server.max_sessions' in {source} must be between 1 and 1000")
    if not 1 <= server.max_forwards <= 1000:
        raise ConfigError(f"'server.max_forwards' in {source} must be between 1 and 1000")
    if not 1 <= grants.max_forwards <= 100_000:
        raise ConfigError(f"'grants.max_forwards' in {source} must be between 1 and 100000")
    try:
        parse_max_startups(server.max_startups)
    except ValueError as exc:
        raise ConfigError(f"'server.max_startups' in {source}: {exc}") from None
    if not 1 <= server.per_source_max_startups <= MAX_STARTUPS_LIMIT:
        raise ConfigError(
            f"'server.per_source_max_startups' in {source} must be between 1 and 100000"
        )
    try:
        parse_netblock(server.per_source_netblock)
    except ValueError as exc:
        raise ConfigError(f"'server.per_source_netblock' in {source}: {exc}") from None
    if server.shutdown_grace > MAX_SHUTDOWN_GRACE:
        raise ConfigError(f"'server.shutdown_grace' in {source} must be at most 10m")
    if config.metrics.listen:
        metrics_host_port(
            config.metrics.listen, config.metrics.allow_remote, "metrics.listen", source
        )
    if config.server.advertise:
        split_host_port(config.server.advertise, "server.advertise", source)


def _check_store_url(url: str, source: Path) -> None:
    """A libpq URL (the password in it, if any, is never repeated in a message)."""
    where = f"'store.url' in {source}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError(f"{where} is not a valid URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{where} must be a postgresql:// URL (got scheme {parts.scheme or 'none'!r})"
        )
    if not parts.path.strip("/"):
        raise ConfigError(f"{where} must name a database: postgresql://USER@HOST:PORT/DATABASE")


def _check_web(web: WebConfig, source: Path) -> None:
    if bool(web.tls_cert) != bool(web.tls_key):
        raise ConfigError(f"'web' in {source}: give both tls_cert and tls_key, or neither")
    if web.listen:
        check_web_listen(web.listen, bool(web.tls_cert), "web.listen", source)
    if not timedelta(minutes=5) <= web.session_ttl <= timedelta(days=7):
        raise ConfigError(f"'web.session_ttl' in {source} must be between 5m and 7d")
    if not timedelta(minutes=1) <= web.login_link_ttl <= timedelta(hours=24):
        raise ConfigError(f"'web.login_link_ttl' in {source} must be between 1m and 24h")
    if not 1 <= web.signin_limit <= 1000:
        raise ConfigError(f"'web.signin_limit' in {source} must be between 1 and 1000")
    if not timedelta(seconds=1) <= web.signin_window <= timedelta(days=1):
        raise ConfigError(f"'web.signin_window' in {source} must be between 1s and 1d")


def load_config(home: Path) -> Config:
    """Read `<home>/bastion.toml`; a missing file means all defaults."""
    path = home / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"can't read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path)


@dataclass(frozen=True)
class Home:
    """The bastion's home directory and the well-known paths inside it."""

    root: Path
    config: Config

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def ca_key(self) -> Path:
        return self.keys_dir / "ca"

    @property
    def ca_pub(self) -> Path:
        return self.keys_dir / "ca.pub"

    @property
    def host_key(self) -> Path:
        return self.keys_dir / "host_ed25519"

    @property
    def store_path(self) -> Path:
        return self.root / self.config.store.path

    @property
    def recordings_dir(self) -> Path:
        return self.root / self.config.recordings.dir


def resolve_home(explicit: str | None) -> Path:
    """`--home`, else `BASTION_HOME`, else the current directory."""
    chosen = explicit or os.environ.get("BASTION_HOME") or os.getcwd()
    return Path(chosen).expanduser().absolute()


def open_home(explicit: str | None) -> Home:
    root = resolve_home(explicit)
    return Home(root=root, config=load_config(root))


def notify_environment() -> dict[str, str]:
    """What systemd tells a `Type=notify` service: where to notify, and the watchdog."""
    names = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    return {name: os.environ[name] for name in names if name in os.environ}


def ca_passphrase() -> bytes | None:
    value = os.environ.get("BASTION_CA_PASSPHRASE")
    return value.encode("utf-8") if value else None
