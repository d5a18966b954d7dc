"""Checking a target at registration, with the gateway's own upstream code.

`bastion target add-ssh` and `add-postgres` connect once before anything is stored: an
SSH target through `upstream.connect` (the pinned host key, then the bastion's login), a
PostgreSQL target through `pgupstream.login` (TLS as its sslmode says, the login, the
database). So a target that registers is one the gateway can reach, and a refusal names
the same reason an agent would otherwise meet at its first connection. `scan_host_key`
fetches a host key for `--scan`; trusting it is the operator's decision, not this module's.

Called from the CLI, which has no event loop: each call runs its own. The CLI reaches
this module only through `daemon.target_check()` (the layer map keeps it from importing
`transport`).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh

from bastion import knownhosts, pgwire, sshalgs
from bastion.errors import InvalidInput, TargetCheckFailed
from bastion.keyfiles import parse_public_key, public_line
from bastion.models import Target, TargetSecret
from bastion.transport import pgupstream, upstream

TIMEOUT = 10.0
_NOT_STORED = "nothing was stored (--no-check adds it without connecting)"


class NetworkTargetCheck:
    """`service.TargetCheck` over the network, as the gateway connects."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout

    def check_ssh(self, target: Target, secret: TargetSecret) -> None:
        asyncio.run(self._check_ssh(target, secret))

    def check_postgres(self, target: Target, secret: TargetSecret) -> None:
        asyncio.run(self._check_postgres(target, secret))

    def scan_host_key(self, host: str, port: int, key_type: str | None) -> str:
        """The host key `host:port` offers (of `key_type`, else the strongest), one line."""
        return asyncio.run(self._scan(host, port, key_type))

    async def _check_ssh(self, target: Target, secret: TargetSecret) -> None:
        try:
            conn = await upstream.connect(target, secret, timeout=self.timeout)
        except upstream.UpstreamError as exc:
            raise TargetCheckFailed(f"{exc}; {_NOT_STORED}") from None
        conn.close()
        await conn.wait_closed()

    async def _check_postgres(self, target: Target, secret: TargetSecret) -> None:
        assert target.database is not None
        try:
            login = await pgupstream.login(
                target,
                secret.value,
                target.database,
                {"application_name": "bastion-check"},
                timeout=self.timeout,
            )
        except pgupstream.PgUpstreamError as exc:
            raise TargetCheckFailed(f"{exc}; {_NOT_STORED}") from None
        login.writer.write(pgwire.encode(pgwire.Terminate()))
        login.writer.close()
        with contextlib.suppress(OSError):
            await login.writer.wait_closed()

    async def _scan(self, host: str, port: int, key_type: str | None) -> str:
        wanted = knownhosts.HOST_KEY_TYPES.get(key_type or "")
        if key_type is not None and wanted is None:
            raise InvalidInput(
                f"--host-key-type {key_type!r}: use one of {', '.join(knownhosts.HOST_KEY_TYPES)}"
            )
        # The signature algorithms to ask for, strongest first, as the gateway offers them.
        algs = [
            alg
            for kind in knownhosts.PREFERENCE
            if wanted in (None, kind)
            for alg in (["rsa-sha2-512", "rsa-sha2-256"] if kind == "ssh-rsa" else [kind])
        ]
        where = f"{host}:{port}"
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    host,
                    port,
                    config=None,
                    kex_algs=sshalgs.KEX,
                    server_host_key_algs=algs,
                ),
                self.timeout,
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = upstream.describe_error(exc)
            if wanted is not None:  # sshd just drops a client whose key types it lacks
                reason += f" (does it have a {wanted} host key?)"
            raise TargetCheckFailed(f"can't scan the host key of {where}: {reason}") from None
        if key is None:
            raise TargetCheckFailed(f"{where} offered no host key")
        line = key.export_public_key("openssh").decode("ascii").split()
        source = f"the host key {where} offers"
        return public_line(parse_public_key(" ".join(line[:2]), source))
