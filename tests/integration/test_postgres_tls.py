"""TLS from the bastion to a PostgreSQL target, as the target's sslmode says.

A PostgreSQL 15 of this module's own serves TLS with a certificate from a throwaway CA
(IP address 127.0.0.1 in its subjectAltName) and accepts only TLS connections
(`hostssl`). Through the real gateway: `require` and `verify-full` with the right CA
connect (and the server reports the connection as encrypted); `verify-full` with another
CA and `disable` are refused with a clear error for the agent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bastion import pgwire
from bastion.models import SslMode, Target, TargetKind
from bastion.transport import pgupstream
from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, cli
from tests.peers import Postgres

LOOPBACK = "127.0.0.1"


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, Path, Path]]:
    """A TLS-only PostgreSQL; yields it, its CA file and another CA's file."""
    if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        pytest.skip("PostgreSQL 15 is not installed")
    server = Postgres()
    server.start()
    try:
        ca_key, ca = _ca("bastion test CA")
        key, cert = _server_cert(ca_key, ca)
        data = server.datadir
        (data / "server.crt").write_bytes(_pem(cert))
        (data / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        for name in ("server.crt", "server.key"):
            shutil.chown(data / name, "postgres", "postgres")
        (data / "server.key").chmod(0o600)
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"hostssl all all {LOOPBACK}/32 scram-sha-256\n"
            f"hostnossl all all {LOOPBACK}/32 reject\n"
        )
        server.psql("ALTER SYSTEM SET ssl = on")
        server.psql("SELECT pg_reload_conf()")
        server.create_role(pg.APP_USER, pg.APP_PASSWORD)
        server.create_database(pg.APP_DB, pg.APP_USER)
        files = tmp_path_factory.mktemp("tls")
        right, wrong = files / "ca.pem", files / "other-ca.pem"
        right.write_bytes(_pem(ca))
        wrong.write_bytes(_pem(_ca("someone else")[1]))
        yield server, right, wrong
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_gateway(
    tls_postgres: tuple[Postgres, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    server_pg, right_ca, wrong_ca = tls_postgres
    base = tmp_path_factory.mktemp("tls-gateway")
    home = base / "home"
    cli(home, "init")
    targets = {
        "tls-require": ["--sslmode", "require"],
        "tls-verified": ["--sslmode", "verify-full", "--sslrootcert", str(right_ca)],
        # Refused by the gateway, as the tests below check: registered without the check.
        "tls-wrong-ca": ["--sslmode", "verify-full", "--sslrootcert", str(wrong_ca), "--no-check"],
        "tls-off": ["--sslmode", "disable", "--no-check"],
    }
    for name, options in targets.items():
        cli(
            home,
            *("target", "add-postgres", name, "--host", LOOPBACK),
            *("--port", str(server_pg.port), "--database", pg.APP_DB, "--user", pg.APP_USER),
            *("--password-env", "PW", *options),
            env={"PW": pg.APP_PASSWORD},
        )
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("target", ["tls-require", "tls-verified"])
def test_tls_to_the_target_as_its_sslmode_says(tls_gateway: Server, target: str) -> None:
    tunnel = pg.open_tunnel(tls_gateway, pg.issue(tls_gateway, target), target)
    try:
        result = pg.psql(tunnel.port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        tunnel.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "t"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tls-wrong-ca", "TLS to target tls-wrong-ca"),
        ("tls-off", "refused the bastion's login"),
    ],
)
def test_a_target_whose_tls_fails_is_a_clear_error(
    tls_gateway: Server, target: str, message: str
) -> None:
    tunnel = pg.open_tunnel(tls_gateway, pg.issue(tls_gateway, target), target)
    try:
        result = pg.psql(tunnel.port, "SELECT 1")
    finally:
        tunnel.stop()
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("injected", [True, False], ids=["bytes-after-S", "S-alone"])
async def test_bytes_sent_in_the_clear_after_the_servers_s_are_refused(injected: bool) -> None:
    """A man in the middle answers the SSLRequest with 'S' and, in the same write, a
    plaintext message meant to be read as if it came over TLS (CVE-2021-23222). The
    bastion refuses before any TLS handshake; an honest 'S' goes on to the handshake."""
    hello = asyncio.Event()

    async def mitm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)  # the SSLRequest
        forged = pgwire.encode(pgwire.AuthenticationOk()) if injected else b""
        writer.write(b"S" + forged)
        first = await reader.read(1)
        if first == b"\x16":  # a TLS ClientHello: the handshake began
            hello.set()
        writer.close()

    server = await asyncio.start_server(mitm, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    target = Target(
        name="mitm-db", kind=TargetKind.POSTGRES, host=LOOPBACK, port=port, user="app",
        created_at=dt.datetime.now(dt.UTC), created_by="test", database="app",
        sslmode=SslMode.REQUIRE,
    )  # fmt: skip
    try:
        with pytest.raises(pgupstream.PgUpstreamError) as caught:
            await pgupstream.login(target, "pw", "app", {}, timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    if injected:
        assert "refused" in str(caught.value)
        assert "unencrypted bytes followed the server's b'S'" in str(caught.value)
        assert not hello.is_set()
    else:
        assert hello.is_set()  # refused later, by the TLS handshake with a closed peer
