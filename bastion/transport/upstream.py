"""Connecting to an SSH target as the bastion's own least-privilege login.

The target's host key is pinned at `target add-ssh`; anything else is refused before
authentication. Nothing is read from ~/.ssh (no config, known_hosts, keys or agent).
"""

from __future__ import annotations

import asyncssh

from bastion import sshalgs
from bastion.models import Target, TargetSecret

# asyncssh's chacha20-poly1305 builds a cipher object per packet and runs at about half
# the speed of AES-GCM; the bastion is the client here, so its order decides.
UPSTREAM_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
]


class UpstreamError(Exception):
    """The target can't be reached or isn't who it should be; the message is for the agent."""

    def __init__(self, message: str, *, host_key_mismatch: bool = False) -> None:
        super().__init__(message)
        self.host_key_mismatch = host_key_mismatch


async def connect(
    target: Target, secret: TargetSecret, timeout: float = 10.0
) -> asyncssh.SSHClientConnection:
    assert target.host_key is not None
    try:
        host_key = asyncssh.import_public_key(target.host_key)
        client_key = asyncssh.import_private_key(secret.value)
        return await asyncssh.connect(
            target.host,
            target.port,
            username=target.user,
            config=None,
            known_hosts=([host_key], [], []),
            client_keys=[client_key],
            agent_path=None,
            agent_identities=None,
            pkcs11_provider=None,
            preferred_auth="publickey",
            password_auth=False,
            kbdint_auth=False,
            gss_auth=False,
            gss_kex=False,
            host_based_auth=False,
            agent_forwarding=False,
            x11_forwarding=False,
            kex_algs=sshalgs.KEX,
            encryption_algs=UPSTREAM_CIPHERS,
            compression_algs=["none"],
            request_pty=False,
            send_env=None,
            connect_timeout=timeout,
            keepalive_interval=30,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError(
            f"target {target.name} presented a host key that does not match the pinned one;"
            " refusing to connect",
            host_key_mismatch=True,
        ) from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            f"target {target.name} refused the bastion's login {target.user!r}"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        reason = describe_error(exc)
        raise UpstreamError(
            f"can't reach target {target.name} ({target.host}:{target.port}): {reason}"
        ) from None


def describe_error(exc: BaseException) -> str:
    """Why a connection failed, in a few words (for one-line messages)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
