"""`bastion doctor`: is this home ready to serve? One check per line, and a verdict.

Each check returns a `Check` (ok / warn / fail, with what was looked at and why);
`diagnose` runs them all and never raises for what it finds: a broken home is a report,
not a traceback. What is checked:

- config: bastion.toml parses and validates;
- the CA key and host key: present, owned by the user running doctor (run it as the
  service's user), no group or world permission bits;
- the state store: reachable, schema version equal to this bastion's (`LATEST_VERSION`);
- clock skew against the store's server clock: a store that has a clock (PostgreSQL)
  implements `clock_skew() -> timedelta` (the database's now minus ours); SQLite has
  none, so the check says n/a. The hook is looked up with `getattr`: it is not part of
  the `Store` protocol, which every backend would then have to implement;
- the recordings directory: a temp file is actually created and removed in it;
- the listen port: free (a bind succeeds), or ours (it answers with asyncssh's banner,
  which is what `bastion serve` speaks); anything else holding it is a failure.

It opens the state store the way `bastion serve` does (`Bastion.open`), which applies
pending migrations on SQLite. It changes nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from bastion.clock import Clock
from bastion.config import Home, load_config, split_host_port
from bastion.errors import BastionError
from bastion.service import Bastion
from bastion.store.migrations import LATEST_VERSION

OK, WARN, FAIL = "ok", "warn", "fail"
SKEW_WARN = timedelta(seconds=1)
SKEW_FAIL = timedelta(seconds=5)
BANNER_TIMEOUT = 2.0
OUR_BANNER = b"SSH-2.0-AsyncSSH_"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


@dataclass(frozen=True)
class Report:
    home: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def to_dict(self) -> dict[str, object]:
        return {"home": self.home, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def diagnose(root: Path, clock: Clock, actor: str, listen: str | None = None) -> Report:
    try:
        home = Home(root=root, config=load_config(root))
    except BastionError as exc:
        return Report(str(root), (Check("config", FAIL, str(exc)),))
    found = home.config_path.exists()
    detail = f"{home.config_path} is valid" if found else f"no {home.config_path}: the defaults"
    checks = [Check("config", OK, detail)]
    checks.append(check_private_key("ca key", home.ca_key))
    checks.append(check_private_key("host key", home.host_key))
    checks.extend(check_store(home, clock, actor))
    checks.append(check_recordings_dir(home.recordings_dir))
    checks.append(check_listen(listen or home.config.server.listen))
    return Report(str(root), tuple(checks))


def check_private_key(name: str, path: Path) -> Check:
    try:
        info = path.stat()
    except FileNotFoundError:
        return Check(name, FAIL, f"{path} is missing: run `bastion init`")
    except OSError as exc:
        return Check(name, FAIL, f"can't stat {path}: {exc.strerror}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check(
            name,
            FAIL,
            f"{path} has mode {mode:04o}: group/other may access a private key (chmod 600)",
        )
    if info.st_uid != os.geteuid():
        return Check(
            name,
            FAIL,
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})",
        )
    return Check(name, OK, f"{path} mode {mode:04o}, owned by uid {info.st_uid}")


def check_store(home: Home, clock: Clock, actor: str) -> list[Check]:
    try:
        bastion = Bastion.open(home, clock, actor)
    except BastionError as exc:
        return [Check("store", FAIL, str(exc)), Check("clock skew", WARN, "store unreachable")]
    try:
        store = bastion.store
        kind = {"SqliteStore": "SQLite"}.get(type(store).__name__, type(store).__name__)
        try:
            version = store.schema_version()
        except Exception as exc:  # whatever the backend raises: this is a report
            return [
                Check("store", FAIL, f"can't read the schema version: {exc}"),
                Check("clock skew", WARN, "store unreadable"),
            ]
        if version == LATEST_VERSION:
            found = Check("store", OK, f"{kind} reachable, schema version {version} (current)")
        elif version < LATEST_VERSION:
            found = Check(
                "store",
                FAIL,
                f"schema version {version}, older than this bastion's {LATEST_VERSION}",
            )
        else:
            found = Check(
                "store",
                FAIL,
                f"schema version {version}, newer than this bastion's {LATEST_VERSION}:"
                " upgrade bastion",
            )
        return [found, check_clock_skew(getattr(store, "clock_skew", None), kind)]
    finally:
        bastion.close()


def check_clock_skew(clock_skew: Callable[[], timedelta] | None, kind: str) -> Check:
    if clock_skew is None:
        return Check("clock skew", OK, f"n/a ({kind}: local clock)")
    try:
        skew = clock_skew()
    except Exception as exc:  # whatever the backend raises: this is a report
        return Check("clock skew", FAIL, f"can't read the database clock: {exc}")
    seconds = skew.total_seconds()
    detail = (
        f"database clock {'ahead of' if seconds >= 0 else 'behind'} ours by {abs(seconds):.3f}s"
    )
    if abs(skew) >= SKEW_FAIL:
        return Check("clock skew", FAIL, f"{detail}: expiry and revocation timing suffer; fix NTP")
    if abs(skew) >= SKEW_WARN:
        return Check("clock skew", WARN, detail)
    return Check("clock skew", OK, detail)


def check_recordings_dir(path: Path) -> Check:
    name = "recordings"
    if not path.exists():
        return Check(name, WARN, f"{path} does not exist yet (created at the first recording)")
    if not path.is_dir():
        return Check(name, FAIL, f"{path} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-", delete=True) as probe:
            probe.write(b"bastion doctor\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return Check(name, FAIL, f"can't write in {path}: {exc.strerror or exc}")
    return Check(name, OK, f"{path} is writable")


def check_listen(listen: str) -> Check:
    name = "listen"
    try:
        host, port = split_host_port(listen, "server.listen")
    except BastionError as exc:
        return Check(name, FAIL, str(exc))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As asyncssh binds: SO_REUSEADDR, so a port in TIME_WAIT counts as free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _who_listens(host, port, family)
        if exc.errno == errno.EACCES:
            return Check(
                name,
                FAIL,
                f"{listen}: permission denied (a port below 1024 needs CAP_NET_BIND_SERVICE)",
            )
        return Check(name, FAIL, f"can't bind {listen}: {exc.strerror or exc}")
    return Check(name, OK, f"{listen} is free")


def _who_listens(host: str, port: int, family: int) -> Check:
    where = f"{host}:{port}"
    banner = b""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(BANNER_TIMEOUT)
            sock.connect((host, port))
            with contextlib.suppress(TimeoutError):
                while b"\n" not in banner and len(banner) < 256:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    banner += chunk
    except OSError as exc:
        return Check("listen", FAIL, f"{where} is in use, and connecting failed: {exc}")
    line = banner.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("ascii", "replace")
    if banner.startswith(OUR_BANNER):
        return Check("listen", OK, f"{where} is in use by a running bastion ({line})")
    if banner.startswith(b"SSH-"):
        return Check("listen", FAIL, f"{where} is in use by another SSH server ({line})")
    return Check("listen", FAIL, f"{where} is in use by something that is not an SSH server")
