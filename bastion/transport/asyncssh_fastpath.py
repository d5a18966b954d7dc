"""A leaner packet path through asyncssh for AES-GCM, the cipher the gateway negotiates.

Relaying a 32 KiB data packet, asyncssh 2.24.1 copied it about fifteen times: the
receive buffer was re-sliced (one copy of everything still buffered, per packet) and
the ciphertext re-joined before decryption; on the way out the payload was copied into
a bytearray, prefixed with its length, the channel number, the message type and the
padding length, each by concatenation, then header, ciphertext and tag were joined
again. Memory copies were a sixth of the gateway's CPU time in a bulk transfer.

This module keeps asyncssh's logic and its wire format, with fewer copies:

- receive: the input buffer is a `bytearray` consumed from the front (`del buf[:n]`,
  which CPython does without moving the rest), and the packet is decrypted straight
  out of it through a `memoryview`;
- send: a channel's queued data stays the caller's immutable `bytes`, split into
  packets through a `memoryview`; the packet is assembled with one `join` and
  encrypted into its output buffer (`AESGCM.encrypt_into`) with a key schedule kept
  per direction and key, not rebuilt per packet.

It engages only where nothing else can happen to a packet: AES-GCM in that direction,
no compression, key exchange and authentication complete, no rekey due, and packet
logging off. Anything else (key exchange, authentication, other ciphers, a rekey, debug
level 3) goes through asyncssh's own code unchanged. `asyncssh_fixes.apply` installs it.
"""

from __future__ import annotations

import functools
import inspect
import os
import struct
import time
from collections.abc import Sequence
from typing import Any

from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EOF,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_CHANNEL_FIRST,
    MSG_CHANNEL_LAST,
    MSG_KEX_FIRST,
    MSG_KEX_LAST,
    MSG_UNIMPLEMENTED,
    MSG_USERAUTH_FIRST,
    MSG_USERAUTH_LAST,
)
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import MACError, ProtocolError
from asyncssh.packet import PacketDecodeError, SSHPacket, UInt32
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_TAG = 16  # AES-GCM's authentication tag, which is the SSH MAC
_PKTLEN = 4  # the packet length, sent in the clear and authenticated as associated data


_fallback: dict[str, Any] = {}


def install(send_packet: Any) -> None:
    """Patch asyncssh; ``send_packet`` is the connection method to fall back to."""
    _fallback.update(
        send_packet=send_packet,
        recv_pkthdr=SSHConnection._recv_pkthdr,
        recv_packet=SSHConnection._recv_packet,
        write=SSHChannel.write,
    )
    SSHConnection.send_packet = _send_packet  # type: ignore[method-assign]
    SSHConnection._send = _send  # type: ignore[method-assign]
    SSHConnection.data_received = _data_received  # type: ignore[method-assign]
    SSHConnection._recv_pkthdr = _recv_pkthdr  # type: ignore[method-assign]
    SSHConnection._recv_packet = _recv_packet  # type: ignore[method-assign]
    SSHChannel.send_packet = _channel_send_packet  # type: ignore[method-assign]
    SSHChannel.write = _channel_write  # type: ignore[method-assign]
    SSHChannel._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]
    GCMCipher._update_iv = _update_iv  # type: ignore[method-assign,assignment]
    _fallback.update(
        reset_keepalive=SSHConnection._reset_keepalive_timer,
        keepalive_callback=SSHConnection._keepalive_timer_callback,
    )
    SSHConnection._reset_keepalive_timer = _reset_keepalive_timer  # type: ignore[method-assign]
    SSHConnection._keepalive_timer_callback = _keepalive_timer_callback  # type: ignore[method-assign]


# -- keepalive --------------------------------------------------------------------------


def _reset_keepalive_timer(self: Any) -> None:
    """asyncssh re-armed the keepalive timer on every read (a cancel and a new timer);
    this notes the time instead, and the timer, when it fires, moves itself to an
    interval after the last read. The keepalive request still goes out an interval after
    the last data received, as before."""
    if self._auth_complete and self._keepalive_timer is not None:
        self._bastion_read_at = self._loop.time()
    else:
        _fallback["reset_keepalive"](self)


def _keepalive_timer_callback(self: Any) -> None:
    read_at = self.__dict__.pop("_bastion_read_at", None)
    if read_at is not None:
        due = read_at + self._keepalive_interval
        if due > self._loop.time():
            self._keepalive_timer = self._loop.call_at(due, self._keepalive_timer_callback)
            return
    _fallback["keepalive_callback"](self)


# -- AES-GCM with a kept key schedule -------------------------------------------------


def _aead(cipher: GCMCipher) -> AESGCM:
    aead: AESGCM | None = cipher.__dict__.get("_bastion_aead")
    if aead is None:
        aead = cipher._bastion_aead = AESGCM(cipher._key)  # type: ignore[attr-defined]
    return aead


def _update_iv(cipher: GCMCipher) -> None:
    """GCMCipher._update_iv, in fewer steps: add one to the 64-bit invocation counter."""
    iv = cipher._iv
    cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _COUNTER_MASK).to_bytes(8, "big")


_COUNTER_MASK = (1 << 64) - 1


def seal(cipher: GCMCipher, header: bytes, plain: bytes) -> tuple[bytes, bytes]:
    """``header`` and ``ciphertext + tag`` of one packet, as asyncssh's GCMCipher makes them."""
    body = _aead(cipher).encrypt(cipher._iv, plain, header)
    _update_iv(cipher)
    return header, body


def open_packet(cipher: GCMCipher, buf: bytearray, end: int) -> bytes | None:
    """Decrypt the packet in ``buf[:end]`` (length, ciphertext, tag) without copying it.

    Returns the plaintext (padding length, payload, padding), or None if the tag doesn't
    verify. ``buf`` is left as it was; the caller consumes it.
    """
    view = memoryview(buf)
    body = view[_PKTLEN:end]
    try:
        plain: bytes | None = _aead(cipher).decrypt(cipher._iv, body, buf[:_PKTLEN])
    except InvalidTag:
        plain = None
    finally:
        body.release()
        view.release()
    _update_iv(cipher)
    return plain


# -- sending ----------------------------------------------------------------------------

# While one SSH connection handles what it read, what any connection sends is collected
# per transport and written when the handler returns: one `send()` for the eight or so
# packets relayed out of a 256 KiB read, not one each. Keyed by transport, not by
# connection, so that a packet queued just before asyncssh drops its transport (a
# disconnect) still goes out, ahead of the abort it schedules.
_batch: dict[Any, list[bytes | bytearray]] | None = None


def _data_received(self: Any, data: bytes, datatype: Any = None) -> None:
    global _batch
    outermost = _batch is None  # the event loop doesn't nest callbacks; be safe anyway
    if outermost:
        _batch = {}
    try:
        self._inpbuf += data
        self._recv_data()
    finally:
        if outermost:
            batch, _batch = _batch, None
            for transport, chunks in (batch or {}).items():
                _write(transport, chunks)


def _send(self: Any, data: bytes | bytearray) -> None:
    _send_parts(self, (data,))


def _send_parts(self: Any, parts: tuple[bytes | bytearray, ...]) -> None:
    """asyncssh's _send, of a packet in parts: collected while a read is handled."""
    transport = self._transport
    if not transport:
        return  # as asyncssh's _send: dropped with the transport
    if _batch is not None:
        _batch.setdefault(transport, []).extend(parts)
    else:
        _write(transport, parts)


def _write(transport: Any, chunks: Sequence[bytes | bytearray]) -> None:
    # As asyncssh's _send; try, not contextlib.suppress, which costs an object per packet.
    try:  # noqa: SIM105
        transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    except ConnectionError:
        pass


def _send_packet(self: Any, pkttype: int, *args: Any, handler: Any = None) -> None:
    if pkttype <= MSG_USERAUTH_LAST or not _sends_plainly(self):
        _fallback["send_packet"](self, pkttype, *args, handler=handler)
        return
    _seal_and_send(self, bytes((pkttype,)), args)


def _sends_plainly(self: Any) -> bool:
    """May this connection send a packet past key exchange and authentication as it is:
    AES-GCM, no compression, no rekey due, packets not logged?"""
    return (
        type(self._send_encryption) is GCMEncryption
        and self._kex_complete
        and self._auth_complete
        and not self._compressor
        and self._rekey_bytes_sent < self._rekey_bytes
        and not (self._rekey_seconds and time.monotonic() >= self._rekey_time)
        and SSHLogger._debug_level < 3
    )


def _seal_and_send(self: Any, head: bytes, args: Sequence[bytes]) -> None:
    """What asyncssh's send_packet does past its checks, for the `_sends_plainly` case: no
    SSH_MSG_IGNORE (asyncssh_fixes drops it for AEAD), padding to the block size with at
    least 4 random bytes, then the packet length in the clear as GCM's associated data.
    `head` is the message type and any fixed fields; `args` the rest of the payload."""
    payload_len = len(head) + sum(map(len, args))
    blocksize = self._send_blocksize
    padlen = -(self._send_enchdrlen + payload_len) % blocksize
    if padlen < 4:
        padlen += blocksize
    plain = b"".join((bytes((padlen,)) + head, *args, _padding(padlen)))
    pktlen = len(plain)
    header, body = seal(self._send_encryption._cipher, pktlen.to_bytes(4, "big"), plain)
    _send_parts(self, (header, body))  # dropped without a transport; the sequence advances
    self._send_seq = (self._send_seq + 1) & 0xFFFFFFFF
    self._rekey_bytes_sent += pktlen


class _Padding:
    """Random padding bytes cut from 4 KiB of `os.urandom` at a time.

    Fresh CSPRNG output for every packet, as with asyncssh's `os.urandom(padlen)`, but
    one `getrandom()` call for a few hundred small packets, not one each. (AES-GCM
    encrypts the padding; OpenSSH fills it from arc4random, a user-space CSPRNG.)
    """

    SIZE = 4096

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0
        os.register_at_fork(after_in_child=self.discard)  # a child never reuses bytes

    def discard(self) -> None:
        self.pool, self.pos = b"", 0

    def __call__(self, n: int) -> bytes:
        pos = self.pos
        if pos + n > len(self.pool):
            self.pool, pos = os.urandom(max(self.SIZE, n)), 0
        self.pos = pos + n
        return self.pool[pos : pos + n]


_padding = _Padding()


def _channel_send_packet(self: Any, pkttype: int, *args: Any) -> None:
    # asyncssh concatenated the channel number and the arguments here, one more copy of
    # the data; the connection joins them anyway.
    if self._send_chan is None:  # pragma: no cover - as in asyncssh
        return
    self._conn.send_packet(pkttype, UInt32(self._send_chan), *args, handler=self)


def _channel_write(self: Any, data: Any, datatype: Any = None) -> None:
    if type(data) is not bytes or self._encoding or SSHLogger._debug_level >= 2:
        _fallback["write"](self, data, datatype)
        return
    # asyncssh's checks, then the bytes are queued as they are: immutable, so no copy.
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    size = len(data)
    if not size:
        return
    if (
        datatype is None
        and not self._send_buf
        and size <= self._send_window
        and size <= self._send_pktsize
        and self._send_chan is not None
        and not self._send_paused
        and _sends_plainly(self._conn)
    ):
        # The usual answer of a relay: one packet, nothing queued before it. What queuing
        # it and `_flush_send_buf` would do, without the queue.
        self._send_window -= size
        _seal_and_send(
            self._conn, _DATA_HEADER.pack(MSG_CHANNEL_DATA, self._send_chan, size), (data,)
        )
        return
    self._send_buf.append((data, datatype))
    self._send_buf_len += size
    self._flush_send_buf()


_DATA_HEADER = struct.Struct(">BII")  # SSH_MSG_CHANNEL_DATA, recipient channel, data length


def _flush_send_buf(self: Any) -> None:
    """asyncssh's, with the queued data split through a memoryview, not copied."""
    send_buf = self._send_buf
    while send_buf and self._send_window:
        pktsize = min(self._send_window, self._send_pktsize)
        buf, datatype = send_buf[0]
        if len(buf) > pktsize:
            if type(buf) is bytearray:  # queued by asyncssh itself: copy it once
                buf = bytes(buf)
            view = buf if type(buf) is memoryview else memoryview(buf)
            data = view[:pktsize]
            send_buf[0] = (view[pktsize:], datatype)
        else:
            data = buf
            del send_buf[0]
        datalen = len(data)
        self._send_buf_len -= datalen
        self._send_window -= datalen
        if datatype is None:
            self.send_packet(MSG_CHANNEL_DATA, UInt32(datalen), data)
        else:
            self.send_packet(MSG_CHANNEL_EXTENDED_DATA, UInt32(datatype), UInt32(datalen), data)
    self._pause_resume_writing()
    if not send_buf:
        if self._send_state == "eof_pending":
            self.send_packet(MSG_CHANNEL_EOF)
            self._send_state = "eof"
        elif self._send_state == "close_pending":
            self._close_send()


# -- receiving --------------------------------------------------------------------------


def _recv_pkthdr(self: Any) -> bool:
    if type(self._recv_encryption) is not GCMEncryption:
        _inpbuf_as_bytes(self)
        return bool(_fallback["recv_pkthdr"](self))
    buf = self._inpbuf
    if len(buf) < self._recv_blocksize:
        return False
    # The length is in the clear with GCM; the packet stays in the buffer until it is
    # complete, then is decrypted in place.
    pktlen = int.from_bytes(buf[:_PKTLEN], "big")
    if pktlen > self._max_recv_pktlen:
        raise ProtocolError("Max packet size exceeded")
    self._pktlen = pktlen
    self._packet = b""
    self._recv_handler = self._recv_packet
    return True


def _inpbuf_as_bytes(self: Any) -> None:
    if type(self._inpbuf) is bytearray:
        self._inpbuf = bytes(self._inpbuf)


def _recv_packet(self: Any) -> bool:
    enc = self._recv_encryption
    if self._packet or type(enc) is not GCMEncryption:
        # The header was read by asyncssh's code (the keys changed in between).
        _inpbuf_as_bytes(self)
        return bool(_fallback["recv_packet"](self))
    buf = self._inpbuf
    end = _PKTLEN + self._pktlen + _TAG
    if len(buf) < end:
        return False
    if type(buf) is not bytearray:
        buf = self._inpbuf = bytearray(buf)
    seq = self._recv_seq
    packet_data = open_packet(enc._cipher, buf, end)
    if not packet_data:
        raise MACError("MAC verification failed")
    del buf[:end]
    if packet_data[1] == MSG_CHANNEL_DATA and _channel_data(self, seq, packet_data):
        return True
    return _dispatch(self, seq, packet_data)


_process_data = SSHChannel._packet_handlers[MSG_CHANNEL_DATA]
_accept_data = SSHChannel._accept_data


def _channel_data(self: Any, seq: int, packet_data: bytes) -> bool:
    """Channel data, the bulk of every relay, handed over without asyncssh's generic
    packet parsing and dispatch; False (nothing done) for anything unusual.

    ``packet_data`` is padding length, message type, channel number, data length, data,
    padding. The checks are those of asyncssh's `_process_data`.
    """
    end = len(packet_data) - packet_data[0]
    if end < 10 or not self._auth_complete or SSHLogger._debug_level >= 2:
        return False
    chan = self._channels.get(int.from_bytes(packet_data[2:6], "big"))
    if (
        chan is None
        or 10 + int.from_bytes(packet_data[6:10], "big") != end
        or chan._packet_handlers.get(MSG_CHANNEL_DATA) is not _process_data
        or type(chan)._accept_data is not _accept_data
    ):
        return False
    if chan._recv_state != "open":
        raise ProtocolError("Channel not open for sending")
    if end - 10 > chan._recv_window:
        raise ProtocolError("Window exceeded")
    chan._accept_data(packet_data[10:end])
    self._finish_recv_packet(MSG_CHANNEL_DATA, seq)
    return True


def _dispatch(self: Any, seq: int, packet_data: bytes) -> bool:
    """The rest of asyncssh 2.24.1's `_recv_packet`.

    Unchanged, but for the checks that apply only before the first keys are in use
    (strict key exchange, requests before key exchange): here they always are.
    """
    if self._decompressor and (self._auth_complete or not self._decompress_after_auth):
        payload = self._decompressor.decompress(packet_data[1 : -packet_data[0]])
        if payload is None:
            raise ProtocolError("Decompression failed")
    else:
        payload = packet_data[1 : -packet_data[0]]
    packet = SSHPacket(payload)
    pkttype = packet.get_byte()
    handler: Any = self
    skip_reason = ""
    exc_reason = ""
    if MSG_KEX_FIRST <= pkttype <= MSG_KEX_LAST:
        if self._kex:
            if self._ignore_first_kex:  # pragma: no cover
                skip_reason = "ignored first kex"
                self._ignore_first_kex = False
            else:
                handler = self._kex
        else:
            skip_reason = "kex not in progress"
            exc_reason = "Key exchange not in progress"
    elif MSG_USERAUTH_FIRST <= pkttype <= MSG_USERAUTH_LAST:
        if self._auth:
            handler = self._auth
        else:
            skip_reason = "auth not in progress"
            exc_reason = "Authentication not in progress"
    elif pkttype > MSG_USERAUTH_LAST and not self._auth_complete:
        skip_reason = "invalid request before auth complete"
        exc_reason = "Invalid request before authentication was complete"
    elif MSG_CHANNEL_FIRST <= pkttype <= MSG_CHANNEL_LAST:
        try:
            recv_chan = packet.get_uint32()
        except PacketDecodeError:
            skip_reason = "incomplete channel request"
            exc_reason = "Incomplete channel request received"
        else:
            try:
                handler = self._channels[recv_chan]
            except KeyError:
                skip_reason = "invalid channel number"
                exc_reason = f"Invalid channel number {recv_chan} received"
    handler.log_received_packet(pkttype, seq, packet, skip_reason)
    if not skip_reason:
        try:
            result = handler.process_packet(pkttype, seq, packet)
        except PacketDecodeError as exc:
            raise ProtocolError(str(exc)) from None
        if inspect.isawaitable(result):
            # Buffer received data until the current packet is processed
            self._recv_handler = lambda: False
            task = self.create_task(result)
            task.add_done_callback(
                functools.partial(self._finish_recv_packet, pkttype, seq, is_async=True)
            )
            return False
        if not result:
            self.logger.debug1("Unknown packet type %d received", pkttype)
            self.send_packet(MSG_UNIMPLEMENTED, UInt32(seq))
    if exc_reason:
        raise ProtocolError(exc_reason)
    self._finish_recv_packet(pkttype, seq)
    return True
