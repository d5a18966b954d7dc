"""Notification hooks for access requests and approval waits: a webhook (HTTP POST of
JSON) and/or a command. What the events say is the caller's (`Gateway.notify_request`,
`approvalnotice.approval_event`); this module only delivers them.

Hooks run one at a time on their own thread, in the order of the events, each bounded
by `[requests] hook_timeout`; a failure is logged (never with the webhook's path or
query, which often carry a token) and never reaches the gateway's event loop or the
waiting agent.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bastion.config import RequestsConfig

log = logging.getLogger("bastion.notify")


class Notifier:
    def __init__(self, config: RequestsConfig) -> None:
        self.config = config
        self._pool: ThreadPoolExecutor | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.config.webhook or self.config.command)

    def send(self, event: dict[str, Any]) -> list[Future[None]]:
        """Fire every configured hook in the background; returns their futures (for tests)."""
        if not self.enabled:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        body = json.dumps(event, sort_keys=True).encode()
        futures = []
        if self.config.webhook:
            futures.append(self._pool.submit(self._post, body))
        if self.config.command:
            futures.append(self._pool.submit(self._run, body))
        return futures

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _post(self, body: bytes) -> None:
        url = self.config.webhook
        shown = _redacted(url)
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "bastion"},
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.config.hook_timeout.total_seconds()
            ) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            log.warning("webhook %s answered HTTP %d", shown, exc.code)
        except (OSError, ValueError) as exc:
            log.warning("webhook %s failed: %s", shown, getattr(exc, "reason", exc))

    def _run(self, body: bytes) -> None:
        argv = list(self.config.command)
        try:
            done = subprocess.run(
                argv,
                input=body,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=self.config.hook_timeout.total_seconds(),
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("notify command %s timed out", argv[0])
            return
        except OSError as exc:
            log.warning("notify command %s failed: %s", argv[0], exc.strerror)
            return
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            log.warning("notify command %s exited %d: %s", argv[0], done.returncode, tail[0])


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}/…"
