"""Reading and writing OpenSSH key files safely.

Private keys are written with mode 0600 through a temporary file and a hard link, so
an existing key is never overwritten and a crash leaves no half-written key.
Public keys are parsed strictly: a certificate, a private key or garbage where a
public key is expected is an `InvalidInput` naming the file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHPublicKeyTypes,
)

from bastion.errors import AlreadyExists, InvalidInput, KeyMaterialError


def fingerprint(public_key: SSHPublicKeyTypes) -> str:
    """`SHA256:...`, as `ssh-keygen -l` prints it."""
    blob = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def public_line(public_key: SSHPublicKeyTypes, comment: str = "") -> str:
    line = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    return f"{line} {comment}".rstrip()


# The public key types accepted wherever a key is read: what OpenSSH's sshd accepts by
# default, less DSA (refused since OpenSSH 7.0).
ACCEPTED_KEY_TYPES = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)
AcceptedPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _key_kind(line: str) -> str:
    kind = line.split(maxsplit=1)[0]
    return "DSA" if kind == "ssh-dss" else repr(kind)


# Below this an RSA key is refused wherever one is read (agents' keys, targets' host keys).
MIN_RSA_BITS = 2048


def parse_public_key(text: str, source: str) -> AcceptedPublicKey:
    """One OpenSSH public key line (`ssh-ed25519 AAAA... comment`), not a certificate."""
    # Before counting lines: a private key file has many, and the useful message is this one.
    if "PRIVATE KEY" in text:
        raise InvalidInput(f"{source}: this is a private key; give the .pub file")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise InvalidInput(f"{source}: expected exactly one OpenSSH public key line")
    line = lines[0]
    try:
        identity = serialization.load_ssh_public_identity(line.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"{source}: not an OpenSSH public key ({exc})") from None
    if isinstance(identity, SSHCertificate):
        raise InvalidInput(f"{source}: is a certificate; give the plain public key")
    if not isinstance(identity, ACCEPTED_KEY_TYPES):
        # An allowlist, so a key type a newer cryptography learns to parse (DSA is long
        # obsolete; ML-DSA hybrids are not yet OpenSSH's) is refused, not silently accepted.
        raise InvalidInput(f"{source}: {_key_kind(line)} keys are not accepted; use an Ed25519 key")
    weak = too_weak(identity)
    if weak is not None:
        raise InvalidInput(
            f"{source}: {weak}; use an Ed25519 key or RSA of at least {MIN_RSA_BITS} bits"
        )
    return identity


def too_weak(key: object) -> str | None:
    """Why `key` is too weak to accept ("a 1024-bit RSA key is too weak"), or None."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return f"a {key.key_size}-bit RSA key is too weak"
    return None


def read_public_key(path: Path) -> AcceptedPublicKey:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"can't read public key {path}: {_reason(exc)}") from None
    return parse_public_key(text, str(path))


def check_private_permissions(path: Path) -> None:
    """Refuse a private key that group or others may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyMaterialError(f"{path} does not exist (run `bastion init`)") from None
    except OSError as exc:
        raise KeyMaterialError(f"can't read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(
            f"{path} has permissions {stat.S_IMODE(mode):04o}, readable by others; "
            f"run `chmod 600 {path}`"
        )


def load_private_key(path: Path, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    check_private_permissions(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"can't read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_ssh_private_key(data, passphrase)
    except TypeError:
        if passphrase is None:
            raise KeyMaterialError(
                f"{path} is encrypted: set BASTION_CA_PASSPHRASE to its passphrase"
            ) from None
        raise KeyMaterialError(f"{path} is not encrypted; unset BASTION_CA_PASSPHRASE") from None
    except ValueError as exc:
        if passphrase is not None and "checksum" in str(exc):
            raise KeyMaterialError(f"wrong passphrase for {path}") from None
        raise KeyMaterialError(f"{path} is not an OpenSSH private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyMaterialError(f"{path} is not an Ed25519 key")
    return key


def private_bytes(key: ed25519.Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` atomically; fail if it exists (never overwrite)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{path} already exists; refusing to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_temp_beside(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` (fsynced, `mode`) to a new temporary file in `path`'s folder.

    `os.replace(temp, path)` then puts it in place atomically; the caller removes the
    temporary file if it decides not to.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write `path` atomically (temp file + rename), replacing what was there."""
    tmp = write_temp_beside(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


CERTIFICATE_TYPE_SUFFIX = b"-cert-v01@openssh.com"


def is_certificate_file(path: Path) -> bool | None:
    """Whether `path` holds an OpenSSH certificate (by its first word); None if it's absent."""
    try:
        with path.open("rb") as handle:
            head = handle.read(128)
    except (FileNotFoundError, NotADirectoryError):
        return None if not path.is_symlink() else False
    except OSError as exc:
        raise InvalidInput(f"can't read {path}: {_reason(exc)}") from None
    words = head.split(maxsplit=1)
    return bool(words) and words[0].endswith(CERTIFICATE_TYPE_SUFFIX)


def generate_keypair(path: Path, comment: str, passphrase: bytes | None = None) -> str:
    """A new Ed25519 key at `path` (0600) and `path.pub`; returns the public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    pub = public_line(key.public_key(), comment) + "\n"
    write_new_file(path, private_bytes(key, passphrase), 0o600)
    pub_path = path.with_name(path.name + ".pub")
    try:
        write_new_file(pub_path, pub.encode("ascii"), 0o644)
    except BaseException:
        path.unlink()
        raise
    return pub.strip()


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "not UTF-8 text"
