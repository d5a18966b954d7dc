"""`bastion.knownhosts`: the host key to pin from known_hosts lines, .pub files, key lines.

The differential tests against the real `ssh-keygen -F/-H/-lf` and `ssh-keyscan` are in
tests/integration/test_target_checks.py.
"""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from bastion import knownhosts
from bastion.errors import InvalidInput
from bastion.keyfiles import fingerprint, public_line

ED = public_line(ed25519.Ed25519PrivateKey.generate().public_key())
ED2 = public_line(ed25519.Ed25519PrivateKey.generate().public_key())
EC = public_line(ec.generate_private_key(ec.SECP256R1()).public_key())
RSA = public_line(rsa.generate_private_key(65537, 2048).public_key())
WEAK_RSA = public_line(rsa.generate_private_key(65537, 1024).public_key())


def pick(text: str, host: str = "web1.internal", port: int = 22, wanted: str | None = None) -> str:
    return knownhosts.select_host_key(text, "f", host, port, wanted).public_line


def test_a_literal_line_and_a_pub_file() -> None:
    assert pick(ED) == ED
    assert pick(f"{ED} root@web1\n") == ED


def test_keyscan_output_picks_the_strongest() -> None:
    text = (
        "# web1.internal:22 SSH-2.0-OpenSSH_9.2p1\n"
        f"web1.internal {RSA}\n\n"
        f"web1.internal {EC}\n"
        f"web1.internal {ED}\n"
    )
    assert pick(text) == ED
    assert pick(text, wanted="ecdsa-sha2-nistp256") == EC
    for rsa_name in ("ssh-rsa", "rsa-sha2-512", "rsa-sha2-256"):
        assert pick(text, wanted=rsa_name) == RSA
    assert pick(text.replace(f"web1.internal {ED}\n", "")) == EC


def test_a_type_not_there() -> None:
    with pytest.raises(
        InvalidInput, match=r"^f: no ecdsa-sha2-nistp256 key \(it has ssh-ed25519\)"
    ):
        pick(f"web1.internal {ED}\n", wanted="ecdsa-sha2-nistp256")


def test_non_standard_port_uses_the_bracket_form() -> None:
    text = f"[web1.internal]:2222 {ED}\nweb1.internal {ED2}\n"
    assert pick(text, port=2222) == ED
    assert pick(text, port=22) == ED2
    with pytest.raises(InvalidInput, match=r"no key for \[web1.internal\]:2200 "):
        pick(text, port=2200)


def test_other_hosts_only_names_the_host_looked_for() -> None:
    text = f"web2.internal {ED}\ndb1.internal,10.0.0.5 {EC}\n"
    with pytest.raises(InvalidInput) as info:
        pick(text)
    assert str(info.value) == (
        "f: no key for web1.internal (its 2 known_hosts line(s) name other hosts)"
    )


def test_hashed_entries() -> None:
    salt = os.urandom(20)
    text = f"{knownhosts.hash_name('web1.internal', salt)} {ED}\n"
    text += f"{knownhosts.hash_name('[web1.internal]:2222', os.urandom(20))} {ED2}\n"
    assert pick(text) == ED
    assert pick(text, port=2222) == ED2
    with pytest.raises(InvalidInput, match=r"no key for web2\.internal"):
        pick(text, host="web2.internal")


def test_patterns_and_negation() -> None:
    assert pick(f"*.internal {ED}\n") == ED
    assert pick(f"web?.INTERNAL {ED}\n") == ED
    assert pick(f"db1,web1.internal {ED}\n") == ED
    with pytest.raises(InvalidInput, match=r"no key for web1\.internal"):
        pick(f"*.internal,!web1.internal {ED}\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"@cert-authority *.internal {ED}", "host certificates are not supported"),
        (f"@revoked web1.internal {ED}", "a key of web1.internal is marked @revoked"),
        (f"@trusted web1.internal {ED}", "unknown marker '@trusted'"),
    ],
)
def test_markers_are_refused(line: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        pick(f"web1.internal {ED}\n{line}\n")


def test_markers_for_other_hosts_are_ignored() -> None:
    assert pick(f"@revoked web2.internal {ED2}\nweb1.internal {ED}\n") == ED


def test_two_different_keys_of_one_type_are_ambiguous() -> None:
    with pytest.raises(
        InvalidInput, match=r"different ssh-ed25519 keys for the host \(lines 1, 3\)"
    ):
        pick(f"web1.internal {ED}\nweb2.internal {ED2}\n*.internal {ED2}\n")
    assert pick(f"web1.internal {ED}\n*.internal {ED}\n") == ED  # the same key twice: fine


def test_refused_keys_are_skipped_or_explained() -> None:
    unknown = "ssh-ed448 AAAAC3NzaC1lZDQ0OAAAADk" + "A" * 76  # a type outside the allowlist
    assert pick(f"web1.internal {unknown}\nweb1.internal {RSA}\n") == RSA
    assert pick(f"web1.internal {WEAK_RSA}\nweb1.internal {ED}\n") == ED
    with pytest.raises(InvalidInput, match="1024-bit RSA key is too weak"):
        pick(f"web1.internal {WEAK_RSA}\nweb1.internal {ED}\n", wanted="ssh-rsa")
    with pytest.raises(InvalidInput, match="too weak"):
        pick(f"web1.internal {WEAK_RSA}\n")
    with pytest.raises(InvalidInput, match=r"not an OpenSSH public key \(Unsupported key type"):
        pick(f"web1.internal {unknown}\n")


def test_a_damaged_line_for_the_host_is_never_skipped() -> None:
    with pytest.raises(InvalidInput, match="f line 2: not an OpenSSH public key"):
        pick(f"web1.internal {RSA}\nweb1.internal ssh-ed25519 AAAAnotbase64\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "f: no OpenSSH public key or known_hosts line"),
        ("# only a comment\n\n", "f: no OpenSSH public key or known_hosts line"),
        ("web1.internal", "f: not an OpenSSH public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n", "this is a private key"),
    ],
)
def test_nothing_usable(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        pick(text)


def test_describe_is_ssh_keygen_lf_shaped() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    assert knownhosts.describe(key, "[h]:2222") == f"256 {fingerprint(key)} [h]:2222 (ED25519)"
    ec_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    assert knownhosts.describe(ec_key, "").endswith(" no comment (ECDSA)")
    assert knownhosts.describe(ec_key, "").startswith("384 SHA256:")


hostnames = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)
ports = st.integers(min_value=1, max_value=65535)


@given(host=hostnames, port=ports, other=hostnames, salt=st.binary(min_size=20, max_size=20))
def test_a_hashed_entry_matches_its_own_name_only(
    host: str, port: int, other: str, salt: bytes
) -> None:
    name = knownhosts.lookup_name(host, port)
    entry = knownhosts.hash_name(name, salt)
    assert entry.startswith("|1|") and base64.b64decode(entry.split("|")[2]) == salt
    assert knownhosts.host_matches(entry, name)
    if other != host:
        assert not knownhosts.host_matches(entry, knownhosts.lookup_name(other, port))
    if port != 22:
        assert not knownhosts.host_matches(entry, host)


@given(
    order=st.permutations([ED, EC, RSA]),
    hashed=st.lists(st.booleans(), min_size=3, max_size=3),
    port=ports,
)
def test_the_choice_does_not_depend_on_order_or_hashing(
    order: list[str], hashed: list[bool], port: int
) -> None:
    name = knownhosts.lookup_name("web1.internal", port)
    lines = [
        f"{knownhosts.hash_name(name, os.urandom(20)) if h else name} {key}"
        for key, h in zip(order, hashed, strict=True)
    ]
    text = "\n".join([f"web9.internal {ED2}", *lines]) + "\n"
    assert pick(text, port=port) == ED
    assert pick(text, port=port, wanted="rsa-sha2-512") == RSA
