"""A TCP byte source for the `-L` forward benchmark: `python -m bench.source PORT`.

Listens on 127.0.0.1:PORT. A client sends an 8-byte big-endian count N; the server
sends N bytes and closes. A connection that closes without asking (a readiness probe)
costs nothing. One thread per connection, blocking `sendall` of a 1 MiB buffer: the
cheapest sender Python has, so that it is not what limits either path.
"""

from __future__ import annotations

import os
import socket
import socketserver
import struct
import sys

CHUNK = memoryview(os.urandom(1 << 20))


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        header = b""
        while len(header) < 8:
            part = sock.recv(8 - len(header))
            if not part:
                return
            header += part
        (left,) = struct.unpack(">Q", header)
        try:
            while left > 0:
                n = min(left, len(CHUNK))
                sock.sendall(CHUNK[:n])
                left -= n
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def request(port: int, size: int, host: str = "127.0.0.1") -> socket.socket:
    """Connect to a source (directly or through a forward) and ask for ``size`` bytes."""
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(struct.pack(">Q", size))
    return sock


def main() -> None:
    port = int(sys.argv[1])
    with _Server(("127.0.0.1", port), _Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
