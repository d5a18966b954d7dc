"""The bastion's own login to a PostgreSQL target: TCP, optional TLS, authentication.

The agent never sees the password: the bastion answers the agent's startup itself and
logs in upstream with the target's registered role, SCRAM-SHA-256 through scramp (MD5
and cleartext only when the server asks for them; cleartext only over TLS). TLS follows
the target's sslmode: `require` encrypts without verifying, `verify-full` verifies the
server's certificate and host name against `sslrootcert`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass, field
from typing import Literal

import scramp

from bastion import pgwire
from bastion.models import SslMode, Target

_READ = 65536


class PgUpstreamError(Exception):
    """Connecting or logging in to the target failed; the message is for the agent."""

    def __init__(self, message: str, sqlstate: str = "08001") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass
class PgLogin:
    """A logged-in upstream connection and what the server said during startup."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parser: pgwire.BackendParser
    parameters: list[pgwire.ParameterStatus] = field(default_factory=list)
    backend_key: pgwire.BackendKeyData | None = None
    status: Literal["I", "T", "E"] = "I"


def tls_context(target: Target) -> ssl.SSLContext | None:
    if target.sslmode in (None, SslMode.DISABLE):
        return None
    if target.sslmode is SslMode.VERIFY_FULL:
        return ssl.create_default_context(cafile=target.sslrootcert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # sslmode=require: encrypted, not verified (libpq's)
    return context


async def open_stream(
    target: Target, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP to the target, then TLS when its sslmode asks for it."""
    where = f"{target.name} ({target.host}:{target.port})"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout
        )
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = getattr(exc, "strerror", None) or "timed out"
        raise PgUpstreamError(f"can't reach target {where}: {reason}") from None
    context = tls_context(target)
    if context is None:
        return reader, writer
    writer.write(pgwire.encode(pgwire.SSLRequest()))
    # Everything the server sent so far (`read`, not `readexactly(1)`): a byte after its
    # 'S' can't be the server's, which waits for our ClientHello, so someone injected it
    # in the clear; left in the reader's buffer it would be read as if it came over TLS
    # (libpq's CVE-2021-23222). No await comes between this read and `start_tls`
    # pausing the socket, so nothing can slip in after the check either.
    answer: bytes | pgwire.Signal = b""
    try:
        data = await asyncio.wait_for(reader.read(_READ), timeout)
        encryption = pgwire.BackendParser()
        encryption.receive_data(data)
        answer = encryption.next_encryption_answer() if data else b""
    except (OSError, TimeoutError) as exc:
        writer.close()
        raise PgUpstreamError(f"TLS to target {where} failed: {exc or 'timed out'}") from None
    except pgwire.ProtocolError as exc:
        writer.close()
        raise PgUpstreamError(f"TLS to target {where} refused: {exc}") from None
    if answer != b"S":
        writer.close()
        raise PgUpstreamError(f"target {where} does not offer TLS (sslmode {target.sslmode})")
    try:
        await writer.start_tls(context, server_hostname=target.host)
    except (ssl.SSLError, OSError) as exc:
        writer.close()
        raise PgUpstreamError(f"TLS to target {where} failed: {exc}") from None
    return reader, writer


async def login(
    target: Target,
    password: str,
    database: str,
    extra: dict[str, str],
    timeout: float = 10.0,
) -> PgLogin:
    reader, writer = await open_stream(target, timeout)
    parser = pgwire.BackendParser()
    params = {"user": target.user, "database": database, **extra}
    writer.write(pgwire.encode(pgwire.StartupMessage(params)))
    result = PgLogin(reader, writer, parser)
    scram: scramp.ScramClient | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await _next(reader, parser)
                if isinstance(message, pgwire.AuthenticationOk):
                    continue
                if isinstance(message, pgwire.AuthenticationSASL):
                    if "SCRAM-SHA-256" not in message.mechanisms:
                        raise PgUpstreamError(f"target {target.name} offers no SCRAM-SHA-256")
                    scram = scramp.ScramClient(["SCRAM-SHA-256"], target.user, password)
                    first = scram.get_client_first().encode()
                    writer.write(pgwire.encode(pgwire.SASLInitialResponse("SCRAM-SHA-256", first)))
                elif isinstance(message, pgwire.AuthenticationSASLContinue):
                    assert scram is not None
                    scram.set_server_first(message.data.decode())
                    writer.write(
                        pgwire.encode(pgwire.SASLResponse(scram.get_client_final().encode()))
                    )
                elif isinstance(message, pgwire.AuthenticationSASLFinal):
                    assert scram is not None
                    try:
                        scram.set_server_final(message.data.decode())
                    except scramp.ScramException:
                        raise PgUpstreamError(
                            f"target {target.name} failed SCRAM server verification"
                        ) from None
                elif isinstance(message, pgwire.AuthenticationMD5Password):
                    inner = hashlib.md5((password + target.user).encode()).hexdigest()
                    digest = hashlib.md5(inner.encode() + message.salt).hexdigest()
                    writer.write(pgwire.encode(pgwire.PasswordMessage("md5" + digest)))
                elif isinstance(message, pgwire.AuthenticationCleartextPassword):
                    if writer.get_extra_info("sslcontext") is None:
                        raise PgUpstreamError(
                            f"target {target.name} asks for a cleartext password without TLS;"
                            " refusing (set --sslmode require)"
                        )
                    writer.write(pgwire.encode(pgwire.PasswordMessage(password)))
                elif isinstance(message, pgwire.ErrorResponse):
                    raise PgUpstreamError(
                        f"target {target.name} refused the bastion's login {target.user!r}:"
                        f" {message.message}",
                        message.sqlstate or "28000",
                    )
                elif isinstance(message, pgwire.ParameterStatus):
                    result.parameters.append(message)
                elif isinstance(message, pgwire.BackendKeyData):
                    result.backend_key = message
                elif isinstance(message, pgwire.ReadyForQuery):
                    result.status = message.status
                    return result
                elif isinstance(message, pgwire.NoticeResponse | pgwire.NegotiateProtocolVersion):
                    continue
                else:
                    raise PgUpstreamError(
                        f"target {target.name} sent {type(message).__name__} during login"
                    )
    except TimeoutError:
        writer.close()
        raise PgUpstreamError(f"target {target.name} did not complete the login in time") from None
    except (PgUpstreamError, pgwire.ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        if isinstance(exc, PgUpstreamError):
            raise
        raise PgUpstreamError(f"login to target {target.name} failed: {exc}") from None


def hand_over(login: PgLogin, protocol: asyncio.Protocol) -> tuple[bytes, bool]:
    """Give the logged-in socket to `protocol`, leaving the login's stream behind.

    Returns what the stream had read but not yet handed out (the server may speak first:
    a notice, a notification), and whether the server had already closed its side.
    """
    leftover = bytes(getattr(login.reader, "_buffer", b""))  # StreamReader keeps it there
    at_eof = login.reader.at_eof()
    login.writer.transport.set_protocol(protocol)
    return leftover, at_eof


async def _next(reader: asyncio.StreamReader, parser: pgwire.BackendParser) -> pgwire.Message:
    while True:
        event = parser.next_event()
        if event is pgwire.NEED_DATA:
            data = await reader.read(_READ)
            parser.receive_data(data)
            continue
        if event is pgwire.CLOSED:
            raise PgUpstreamError("the target closed the connection during login")
        assert not isinstance(event, pgwire.Signal)
        return event


async def cancel(target: Target, key: pgwire.BackendKeyData) -> None:
    """Ask the target to cancel what backend `key.pid` is running (a new connection)."""
    try:
        reader, writer = await open_stream(target, timeout=5.0)
    except PgUpstreamError:
        return
    try:
        writer.write(pgwire.encode(pgwire.CancelRequest(key.pid, key.key)))
        await writer.drain()
        await asyncio.wait_for(reader.read(1), 5.0)  # the server closes when done
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
