"""The error hierarchy.

Every error a user can cause derives from `BastionError` and carries the exit code
the CLI returns for it, so `cli.py` never decides exit codes case by case. Messages
are one line that says what went wrong and where.
"""

from __future__ import annotations


class BastionError(Exception):
    """Root of every error bastion reports to a user."""

    exit_code = 1


class InvalidInput(BastionError):
    """A value given by the user is malformed or out of policy."""

    exit_code = 2


class NotFound(BastionError):
    """A named object (target, grant, ...) does not exist."""

    exit_code = 3


class AlreadyExists(BastionError):
    """Creating something whose name or id is taken, or changing a final state."""

    exit_code = 4


class KeyMaterialError(BastionError):
    """A key is missing, unreadable, too widely readable, or its passphrase is wrong."""

    exit_code = 5


class ConfigError(BastionError):
    """bastion.toml is missing a value, has an unknown key, or a value of the wrong type."""

    exit_code = 6


class StoreError(BastionError):
    """The state store can't be opened, or its schema is newer than this bastion."""

    exit_code = 7


class VerificationFailed(BastionError):
    """An integrity check (the audit chain, a recording) found tampering or loss."""

    exit_code = 8


class TargetCheckFailed(BastionError):
    """Registering a target: the one connection made to check it failed (nothing stored)."""

    exit_code = 9
