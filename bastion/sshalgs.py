"""The SSH algorithms the bastion accepts where asyncssh's defaults are wider than OpenSSH's.

asyncssh 2.24 accepts by default two things that OpenSSH has refused by default for years:

- SHA-1 key exchanges (`diffie-hellman-group14-sha1`, `diffie-hellman-group-exchange-sha1`,
  `rsa1024-sha1`, ...). `KEX` is OpenSSH 9's default list with ML-KEM first (the
  post-quantum hybrid OpenSSH 10 prefers; asyncssh has no sntrup761) and no SHA-1.
- `ssh-rsa` signatures in public key authentication, which are RSA with SHA-1 (OpenSSH's
  sshd refuses them since 8.8: `PubkeyAcceptedAlgorithms`). asyncssh verifies whatever
  algorithm the signature names, so `refused_signature` is asked before it does.

Pure: no I/O.
"""

from __future__ import annotations

KEX = [
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
]

# Public key signature algorithms that hash with SHA-1, by the name a signature carries.
_SHA1_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss"})


def signature_algorithm(signature: bytes) -> bytes | None:
    """The algorithm name at the head of an SSH signature blob (string alg, string sig)."""
    if len(signature) < 4:
        return None
    size = int.from_bytes(signature[:4], "big")
    if size == 0 or len(signature) < 4 + size:
        return None
    return signature[4 : 4 + size]


def refused_signature(signature: bytes) -> str | None:
    """Why a login's signature is refused, or None. An empty blob (a query that asks
    whether a key would do, before signing) is not refused here."""
    if not signature:
        return None
    algorithm = signature_algorithm(signature)
    if algorithm is None:
        return "malformed signature"
    if algorithm in _SHA1_SIGNATURES:
        name = algorithm.decode("ascii", errors="replace")
        return f"{name} signatures (SHA-1) are not accepted: use rsa-sha2-256 or rsa-sha2-512"
    return None
