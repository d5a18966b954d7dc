"""Fixes to asyncssh internals the gateway depends on, checked against the pinned version.

asyncssh 2.24.1 re-grants a channel's whole receive window as soon as any data is
delivered, even while earlier data still sits in the channel's receive buffer of a
paused session. A slow reader then makes the gateway buffer without bound (measured:
45 MB for a 50 MB upload). The fix credits the peer only for bytes actually handed
to the session, which keeps at most about one window buffered per channel at no cost
in throughput. (Apache MINA sshd had the same bug.)
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.constants import MSG_CHANNEL_WINDOW_ADJUST
from asyncssh.misc import ProtocolError
from asyncssh.packet import UInt32

PINNED_VERSION = "2.24.1"
_applied = False


def apply() -> None:
    """Install the fixes once; refuse to run on an asyncssh they were not written for."""
    global _applied
    if _applied:
        return
    if asyncssh.__version__ != PINNED_VERSION:
        raise RuntimeError(
            f"bastion needs asyncssh {PINNED_VERSION} (found {asyncssh.__version__}):"
            " its flow-control fix patches that version's internals"
        )
    SSHChannel._deliver_data = _deliver_data  # type: ignore[method-assign]
    _applied = True


def _deliver_data(self: Any, data: bytes, datatype: int | None) -> None:
    # Invariant: recv_window + buffered + delivered-but-uncredited == initial window.
    credit = getattr(self, "_bastion_uncredited", 0) + len(data)
    if credit >= self._init_recv_window / 2:
        self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(credit))
        self._recv_window += credit
        credit = 0
    self._bastion_uncredited = credit
    if self._encoding:
        try:
            data = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ProtocolError(str(exc)) from None
    if self._session is not None:
        self._session.data_received(data, datatype)
