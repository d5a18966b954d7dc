"""Sealing recordings for tamper evidence: a SHA-256 signed with the bastion's host key.

The seal goes into the audit chain when a recording closes (or is recovered after a
crash); `verify` recomputes the file's hash and checks both the hash and the signature.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _message(session_id: str, sha256: str, size: int) -> bytes:
    return f"bastion-recording:{session_id}:{sha256}:{size}".encode()


def sign(key: ed25519.Ed25519PrivateKey, session_id: str, sha256: str, size: int) -> str:
    return base64.b64encode(key.sign(_message(session_id, sha256, size))).decode("ascii")


def signature_valid(
    key: ed25519.Ed25519PublicKey, session_id: str, sha256: str, size: int, signature: str
) -> bool:
    try:
        key.verify(base64.b64decode(signature), _message(session_id, sha256, size))
    except (InvalidSignature, ValueError):
        return False
    return True
