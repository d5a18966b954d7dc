"""The SSH algorithm rules (`bastion.sshalgs`): pure, fed signature blobs."""

from __future__ import annotations

import asyncssh.kex
from hypothesis import given
from hypothesis import strategies as st

from bastion import sshalgs


def blob(algorithm: bytes, signature: bytes = b"\x01" * 64) -> bytes:
    """An SSH signature blob: string algorithm, string signature."""
    return (
        len(algorithm).to_bytes(4, "big")
        + algorithm
        + len(signature).to_bytes(4, "big")
        + signature
    )


def test_sha1_signatures_are_refused() -> None:
    for name in (b"ssh-rsa", b"ssh-dss"):
        reason = sshalgs.refused_signature(blob(name))
        assert reason == (
            f"{name.decode()} signatures (SHA-1) are not accepted: use rsa-sha2-256 or rsa-sha2-512"
        )


def test_sha2_and_modern_signatures_pass() -> None:
    for name in (
        b"rsa-sha2-256",
        b"rsa-sha2-512",
        b"ssh-ed25519",
        b"ecdsa-sha2-nistp256",
        b"sk-ssh-ed25519@openssh.com",
    ):
        assert sshalgs.refused_signature(blob(name)) is None


def test_a_query_without_signature_is_not_judged_here() -> None:
    assert sshalgs.refused_signature(b"") is None


def test_malformed_blobs_are_refused() -> None:
    for bad in (b"\x00", b"\x00\x00\x00\x00sig", b"\x00\x00\x00\x10ssh-rsa"):
        assert sshalgs.refused_signature(bad) == "malformed signature"


@given(st.binary(max_size=64))
def test_any_bytes_get_an_answer_without_raising(data: bytes) -> None:
    reason = sshalgs.refused_signature(data)
    assert reason is None or isinstance(reason, str)
    if reason is None and data:
        assert sshalgs.signature_algorithm(data) not in (b"ssh-rsa", b"ssh-dss", None)


def test_kex_list_has_no_sha1_and_only_methods_asyncssh_has() -> None:
    assert not [name for name in sshalgs.KEX if "sha1" in name]
    assert sshalgs.KEX[0] == "mlkem768x25519-sha256"
    supported = {name.decode() for name in asyncssh.kex.get_kex_algs()}
    assert set(sshalgs.KEX) <= supported
