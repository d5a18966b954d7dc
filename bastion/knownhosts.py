"""A target's host key from what an operator has: a known_hosts file, a .pub file, a line.

`ssh-keyscan web1.internal > web1.keys` writes known_hosts lines (`web1.internal
ssh-ed25519 AAAA…`), hashed with `-H` (`|1|salt|hash ssh-ed25519 AAAA…`), with the
`[host]:port` form for a port other than 22, and one line per key type the server offers.
This module reads those, `/etc/ssh/ssh_host_*_key.pub` files and literal key lines, keeps
the keys that belong to the host being registered (a hashed name is matched as OpenSSH
does: HMAC-SHA1 of the name under the entry's salt), and picks one: the type asked for,
or else the strongest, in OpenSSH's own preference order (Ed25519, then ECDSA, then RSA).

Every key goes through `keyfiles.parse_public_key`, so the allowlist of key types and the
weak-RSA rule are the same as everywhere else. `@cert-authority` and `@revoked` lines for
the host are refused: the gateway pins one plain host key, it neither trusts a host CA
nor would it knowingly pin a revoked key. Pure: no I/O, the caller reads the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.errors import InvalidInput
from bastion.keyfiles import (
    AcceptedPublicKey,
    fingerprint,
    parse_public_key,
    public_line,
    too_weak,
)

# `--host-key-type` names, each with the key type it selects. The RSA signature names
# select the one RSA key type (`ssh-rsa` keys sign with rsa-sha2-256/512 as well).
HOST_KEY_TYPES: dict[str, str] = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "rsa-sha2-512": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "ssh-rsa": "ssh-rsa",
}

# Strongest first: OpenSSH's default HostKeyAlgorithms order for plain keys.
PREFERENCE = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)

# The second word of a known_hosts line; the first word of a plain key line.
_KEY_TYPE = re.compile(r"(?:ssh|ecdsa|sk|rsa)-[A-Za-z0-9@._+-]+")
_HASH_MAGIC = "|1|"


@dataclass(frozen=True)
class HostKey:
    """One key found for the host: its type, the key, and the line it came from."""

    key_type: str
    key: AcceptedPublicKey
    line_number: int

    @property
    def public_line(self) -> str:
        return public_line(self.key)


def lookup_name(host: str, port: int) -> str:
    """The name OpenSSH files `host:port` under: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def hash_name(name: str, salt: bytes) -> str:
    """A hashed known_hosts entry for `name`, as `ssh-keygen -H` writes it."""
    digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return f"{_HASH_MAGIC}{_b64(salt)}|{_b64(digest)}"


def host_matches(field: str, name: str) -> bool:
    """Whether a known_hosts host field (patterns or one hashed entry) matches `name`.

    As OpenSSH's `match_hostname`: comma-separated patterns with `*` and `?`, compared
    without regard to case; a matching negated pattern (`!pat`) means no match at all.
    """
    if field.startswith(_HASH_MAGIC):
        return _hashed_matches(field, name) or _hashed_matches(field, name.lower())
    matched = False
    for pattern in field.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern).fullmatch(name.lower()):
            if negated:
                return False
            matched = True
    return matched


def find_host_keys(text: str, source: str, host: str, port: int) -> list[HostKey]:
    """Every accepted key in `text` for `host:port`; plain key lines belong to any host.

    Refuses what can't be read, a marker line for the host, and a file naming only
    other hosts. A key refused by `keyfiles.parse_public_key` (a DSA key, a weak RSA
    key) is left out, and its refusal is the error when no key is left.
    """
    found, refused = _read(text, source, host, port)
    if not found:
        raise refused[0][1]
    return found


def _read(
    text: str, source: str, host: str, port: int
) -> tuple[list[HostKey], list[tuple[str, InvalidInput]]]:
    if "PRIVATE KEY" in text:
        raise InvalidInput(f"{source}: this is a private key; give the .pub file")
    name = lookup_name(host, port)
    found: list[HostKey] = []
    refused: list[tuple[str, InvalidInput]] = []
    other_hosts = 0
    lines = [(n, raw.strip()) for n, raw in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    for number, line in lines:
        where = source if len(lines) == 1 else f"{source} line {number}"
        words = line.split()
        marker = None
        if words[0].startswith("@"):
            marker, words = words[0], words[1:]
            if marker not in ("@cert-authority", "@revoked"):
                raise InvalidInput(f"{where}: unknown marker {marker!r}")
        if len(words) >= 3 and _KEY_TYPE.fullmatch(words[1]):
            if not host_matches(words[0], name):
                other_hosts += 1
                continue
            key_words = words[1:3]
        elif marker is None:
            key_words = words[:2]
        else:
            raise InvalidInput(f"{where}: not a known_hosts line")
        if marker == "@cert-authority":
            raise InvalidInput(
                f"{where}: a @cert-authority line for {name}; host certificates are not"
                " supported, give the host's own key"
            )
        if marker == "@revoked":
            raise InvalidInput(f"{where}: a key of {name} is marked @revoked; refusing")
        try:
            key = parse_public_key(" ".join(key_words), where)
        except InvalidInput as exc:
            if key_words[0] in PREFERENCE and not _is_weak_rsa(key_words):
                raise  # a damaged line for the host: never fall back to a weaker key
            refused.append((key_words[0], exc))  # a type not accepted, a weak RSA key
            continue
        found.append(HostKey(key_type(key), key, number))
    if not found and not refused:
        if other_hosts:
            raise InvalidInput(
                f"{source}: no key for {name} (its {other_hosts} known_hosts line(s) name"
                " other hosts)"
            )
        raise InvalidInput(f"{source}: no OpenSSH public key or known_hosts line")
    return found, refused


def choose(keys: list[HostKey], wanted: str | None, source: str) -> HostKey:
    """The key of type `wanted` (a `HOST_KEY_TYPES` name), else the strongest one."""
    if wanted is not None:
        if wanted not in HOST_KEY_TYPES:
            raise InvalidInput(
                f"--host-key-type {wanted!r}: use one of {', '.join(HOST_KEY_TYPES)}"
            )
        kind = HOST_KEY_TYPES[wanted]
        candidates = [k for k in keys if k.key_type == kind]
        if not candidates:
            have = ", ".join(sorted({k.key_type for k in keys}))
            raise InvalidInput(f"{source}: no {kind} key (it has {have})")
    else:
        best = min(PREFERENCE.index(k.key_type) for k in keys)
        candidates = [k for k in keys if PREFERENCE.index(k.key_type) == best]
    distinct = {k.public_line for k in candidates}
    if len(distinct) > 1:
        lines = ", ".join(str(k.line_number) for k in candidates)
        raise InvalidInput(
            f"{source}: different {candidates[0].key_type} keys for the host (lines {lines});"
            " keep the right one"
        )
    return candidates[0]


def select_host_key(
    text: str, source: str, host: str, port: int, wanted: str | None = None
) -> HostKey:
    """The one host key to pin for `host:port` from `text` (see the module docstring)."""
    found, refused = _read(text, source, host, port)
    kind = HOST_KEY_TYPES.get(wanted or "")
    if kind is not None and not any(k.key_type == kind for k in found):
        # The key asked for was there but refused (a weak RSA key): say why.
        for word, exc in refused:
            if word == kind:
                raise exc
    if not found:
        raise refused[0][1]
    return choose(found, wanted, source)


def key_type(key: AcceptedPublicKey) -> str:
    """The OpenSSH key type name of `key` (`ssh-ed25519`, `ecdsa-sha2-nistp256`, …)."""
    return public_line(key).split(maxsplit=1)[0]


def describe(key: AcceptedPublicKey, comment: str) -> str:
    """`256 SHA256:… comment (ED25519)`: what `ssh-keygen -lf` prints for the key."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        bits, label = 256, "ED25519"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits, label = key.curve.key_size, "ECDSA"
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        bits, label = key.key_size, "RSA"
    return f"{bits} {fingerprint(key)} {comment or 'no comment'} ({label})"


def _hashed_matches(field: str, name: str) -> bool:
    parts = field[len(_HASH_MAGIC) :].split("|")
    if len(parts) != 2:
        return False
    try:
        salt = base64.b64decode(parts[0], validate=True)
        expected = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(salt) != hashlib.sha1().digest_size:  # OpenSSH refuses other lengths too
        return False
    digest = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(digest, expected)


def _is_weak_rsa(key_words: list[str]) -> bool:
    try:
        key = serialization.load_ssh_public_key(" ".join(key_words).encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
        return False
    return too_weak(key) is not None


def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
    return re.compile("".join(parts), re.DOTALL)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
