"""The certificate authority: the bastion's Ed25519 key and the user certificates it signs.

The CA decides nothing: `service.py` and `policy.py` decide what a grant allows and
pass it here as a `CertificateRequest`; this module turns it into an OpenSSH user
certificate that `ssh-keygen -L`, sshd and the gateway all read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
)

from bastion.keyfiles import fingerprint, load_private_key, public_line


@dataclass(frozen=True)
class CertificateRequest:
    public_key: SSHCertPublicKeyTypes
    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    permit_pty: bool
    permit_port_forwarding: bool
    source_addresses: tuple[str, ...] = ()
    force_command: str | None = None


class CertificateAuthority:
    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None) -> CertificateAuthority:
        return cls(load_private_key(path, passphrase))

    @property
    def public_line(self) -> str:
        return public_line(self._key.public_key())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._key.public_key())

    def sign(self, request: CertificateRequest) -> str:
        """The certificate as an OpenSSH `-cert.pub` line."""
        if not request.principals:
            # An empty principal list means "any user" to some SSH servers.
            raise ValueError("a certificate must name at least one principal")
        builder = (
            SSHCertificateBuilder()
            .public_key(request.public_key)
            .type(SSHCertificateType.USER)
            .serial(request.serial)
            .key_id(request.key_id.encode("utf-8"))
            .valid_principals([p.encode("utf-8") for p in request.principals])
            .valid_after(int(request.valid_after.timestamp()))
            .valid_before(int(request.valid_before.timestamp()))
        )
        # OpenSSH requires options and extensions sorted by name; the builder sorts them.
        if request.force_command is not None:
            builder = builder.add_critical_option(
                b"force-command", request.force_command.encode("utf-8")
            )
        if request.source_addresses:
            builder = builder.add_critical_option(
                b"source-address", ",".join(request.source_addresses).encode("ascii")
            )
        if request.permit_port_forwarding:
            builder = builder.add_extension(b"permit-port-forwarding", b"")
        if request.permit_pty:
            builder = builder.add_extension(b"permit-pty", b"")
        cert = builder.sign(self._key)
        return cert.public_bytes().decode("ascii")
