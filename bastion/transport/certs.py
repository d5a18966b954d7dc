"""Reading the certificate a client presented, from the raw key blob asyncssh verified.

asyncssh keeps no certificate after authentication (no serial, key id or validity),
so the listener captures the blob it validated and parses it here with cryptography.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    load_ssh_public_identity,
)

from bastion.keyfiles import MIN_RSA_BITS, fingerprint, too_weak
from bastion.models import PresentedCertificate

_FOREVER = 2**64 - 1


def parse_key_blob(key_data: bytes) -> SSHCertificate | None:
    """The certificate in an SSH wire-format key blob, or None for a plain key or garbage."""
    identity = _identity(key_data)
    return identity if isinstance(identity, SSHCertificate) else None


def _identity(key_data: bytes) -> object:
    """The key or certificate in an SSH wire-format key blob, or None for garbage."""
    try:
        size = int.from_bytes(key_data[:4], "big")
        algorithm = key_data[4 : 4 + size]
        return load_ssh_public_identity(algorithm + b" " + base64.b64encode(key_data))
    except Exception:  # cryptography raises several kinds
        return None


def weak_key(key_data: bytes, cert: SSHCertificate | None) -> str | None:
    """Why the key in a login's blob is too weak to accept, or None: an RSA key under
    `MIN_RSA_BITS` (as `bastion grant issue` and enrollment refuse it, for certificates
    signed before they did). The key is the certificate's, or the plain key's."""
    key = cert.public_key() if cert is not None else _identity(key_data)
    weak = too_weak(key)
    return None if weak is None else f"{weak} (at least {MIN_RSA_BITS} bits)"


def presented(cert: SSHCertificate) -> PresentedCertificate:
    before = min(cert.valid_before, 253402300799)  # clamp "forever" to year 9999
    return PresentedCertificate(
        serial=cert.serial,
        key_id=cert.key_id.decode("utf-8", errors="replace"),
        principals=tuple(p.decode("utf-8", errors="replace") for p in cert.valid_principals),
        valid_after=datetime.fromtimestamp(cert.valid_after, UTC),
        valid_before=datetime.fromtimestamp(before, UTC),
        key_fingerprint=fingerprint(cert.public_key()),
        critical_options={
            k.decode(errors="replace"): v.decode(errors="replace")
            for k, v in cert.critical_options.items()
        },
        extensions=tuple(sorted(k.decode(errors="replace") for k in cert.extensions)),
    )


def signed_by(cert: SSHCertificate, ca_public_line: str) -> bool:
    ca = load_ssh_public_identity(ca_public_line.encode("ascii"))
    return fingerprint(cert.signature_key()) == fingerprint(ca)  # type: ignore[arg-type]


def blob_fingerprint(key_data: bytes) -> str:
    """`SHA256:…` of an SSH wire-format public key blob, as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key_data).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
