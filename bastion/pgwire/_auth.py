"""The authentication exchange: the server's 'R' requests and the client's 'p' answers.

A 'p' message cannot be decoded on its own: whether it is a password, a SASL initial
response, a SASL response or a GSSAPI token depends on the 'R' request it answers, which
is in the other direction's stream. So it decodes to `AuthResponse` (the body, raw), and
the caller, who knows what it asked for, reads it with `as_password()`,
`as_sasl_initial()` or `as_sasl()`.

Not here: SCRAM or MD5 computations (use a maintained library such as scramp).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.pgwire._codec import Reader
from bastion.pgwire._errors import ProtocolError
from bastion.pgwire._messages import BackendMessage, FrontendMessage

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class AuthenticationOk(BackendMessage):
    """'R' 0: authentication succeeded."""


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(BackendMessage):
    """'R' 3: send the password in clear text."""


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(BackendMessage):
    """'R' 5: send md5(md5(password + user) + salt), as 'md5' + hex."""

    salt: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(BackendMessage):
    """'R' 10: start SASL with one of these mechanisms (e.g. SCRAM-SHA-256)."""

    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(BackendMessage):
    """'R' 11: a SASL challenge (for SCRAM, the server-first-message)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(BackendMessage):
    """'R' 12: the SASL outcome data (for SCRAM, the server signature)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationOther(BackendMessage):
    """'R' with any other code (Kerberos 2, GSS 7, GSSContinue 8, SSPI 9, ...)."""

    code: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class PasswordMessage(FrontendMessage):
    """'p' answering cleartext or MD5: the password (or 'md5' + hex digest)."""

    password: str


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(FrontendMessage):
    """'p' answering AuthenticationSASL: the chosen mechanism and the first message."""

    mechanism: str
    data: bytes | None  # None: no initial response (length -1)


@dataclass(frozen=True, slots=True)
class SASLResponse(FrontendMessage):
    """'p' answering AuthenticationSASLContinue."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthResponse(FrontendMessage):
    """'p' as received: read it with the helper matching the request it answers."""

    data: bytes

    def as_password(self) -> PasswordMessage:
        reader = Reader(self.data, 0, "PasswordMessage")
        password = reader.cstring()
        reader.end()
        return PasswordMessage(password, raw=self.raw)

    def as_sasl_initial(self) -> SASLInitialResponse:
        reader = Reader(self.data, 0, "SASLInitialResponse")
        mechanism = reader.cstring()
        data = reader.value()
        reader.end()
        return SASLInitialResponse(mechanism, data, raw=self.raw)

    def as_sasl(self) -> SASLResponse:
        return SASLResponse(self.data, raw=self.raw)


def decode_auth_response(raw: bytes) -> AuthResponse:
    return AuthResponse(raw[5:], raw=raw)


def decode_authentication(raw: bytes) -> BackendMessage:
    reader = Reader(raw, 5, "Authentication")
    code = reader.int32()
    if code == AUTH_OK:
        reader.end()
        return AuthenticationOk(raw=raw)
    if code == AUTH_CLEARTEXT:
        reader.end()
        return AuthenticationCleartextPassword(raw=raw)
    if code == AUTH_MD5:
        salt = reader.take(4)
        reader.end()
        return AuthenticationMD5Password(salt, raw=raw)
    if code == AUTH_SASL:
        mechanisms = []
        while mechanism := reader.cstring():
            mechanisms.append(mechanism)
        reader.end()
        if not mechanisms:
            raise ProtocolError("AuthenticationSASL offers no mechanism")
        return AuthenticationSASL(tuple(mechanisms), raw=raw)
    if code == AUTH_SASL_CONTINUE:
        return AuthenticationSASLContinue(reader.rest(), raw=raw)
    if code == AUTH_SASL_FINAL:
        return AuthenticationSASLFinal(reader.rest(), raw=raw)
    return AuthenticationOther(code, reader.rest(), raw=raw)
