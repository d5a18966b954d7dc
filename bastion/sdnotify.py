"""systemd's notify protocol (sd_notify), in the standard library.

A service started with `Type=notify` tells systemd it is ready (`READY=1`), what it is
doing (`STATUS=...`), that it is stopping (`STOPPING=1`) and that it is alive
(`WATCHDOG=1`, at least every `WatchdogSec`) by sending datagrams to the AF_UNIX socket
named in `$NOTIFY_SOCKET`; a name starting with `@` is in the abstract namespace. Outside
systemd the variable is unset and every call does nothing.

This module sends; it does not decide when. The daemon does (see `daemon.py`). It
reads no environment itself: `config.notify_environment()` does, for
`SystemdNotifier.from_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping

log = logging.getLogger("bastion.sdnotify")


class SystemdNotifier:
    """Sends notify messages to one socket; a SystemdNotifier with no address is a no-op."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], pid: int) -> SystemdNotifier:
        """`$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (ignored if `$WATCHDOG_PID` isn't `pid`)."""
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog: int | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(pid)):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send `KEY=value` lines as one datagram; False (logged once per call) if it fails."""
        if self._sock is None or self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc.strerror or exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    async def watchdog(self) -> None:
        """Ping `WATCHDOG=1` at half the watchdog interval, until cancelled."""
        if self.watchdog_usec is None or not self.enabled:
            return
        interval = self.watchdog_usec / 1_000_000 / 2
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
