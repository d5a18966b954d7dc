"""The two ways pgwire fails: the peer broke the protocol, or the caller misused the API.

Kept apart (as h11 does) because callers react differently: a `ProtocolError` ends the
connection, ideally after telling the peer why (`sqlstate` is PostgreSQL's own code for a
protocol violation); a `UsageError` is a bug in the code calling pgwire.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The bytes received are not valid PostgreSQL v3 protocol. The parser stops here."""

    sqlstate = "08P01"  # PostgreSQL's protocol_violation


class UsageError(Exception):
    """pgwire was called in a way it does not support (a bug in the caller)."""
