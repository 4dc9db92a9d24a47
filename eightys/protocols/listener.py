"""Accepting connections on a worker's listening socket without uvloop's server.

Used where eightys reads and writes accepted sockets itself (plain TCP through
:mod:`eightys.protocols.tcp_socket`, TLS through :mod:`eightys.protocols.tls_socket`):
what ``loop.create_server`` does, for the ``close()`` and ``sockets`` the worker's
drain uses.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any, Callable

log = logging.getLogger("eightys.listener")

#: Connections accepted per readable event of the listening socket (the rest wait for
#: the next loop iteration: the connections already open get their turn in between).
ACCEPT_BATCH = 64

#: errno values that mean the process is out of descriptors or memory: accepting
#: stops for a second (as uvloop does) instead of spinning on a listener that stays
#: readable.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Listener:
    """Accepts on ``sock`` (non-blocking, from the loop's reader callback) and gives
    each connection, non-blocking and with ``TCP_NODELAY``, to
    ``make_transport(conn)``."""

    def __init__(self, loop: Any, sock: socket.socket,
                 make_transport: Callable[[socket.socket], object]) -> None:
        self.loop = loop
        self.sock = sock
        self.make_transport = make_transport
        self.sockets = [sock]
        self._resume: Any = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left, or another worker took it
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    log.error("accept: %s; not accepting for 1 s", exc.strerror)
                    self.loop.remove_reader(self.sock.fileno())
                    self._resume = self.loop.call_later(1.0, self._start)
                return  # ECONNABORTED and the like: that connection is gone
            try:
                conn.setblocking(False)
                if conn.family != socket.AF_UNIX:
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.make_transport(conn)
            except OSError:  # reset before we got to it
                conn.close()
            except Exception as exc:  # noqa: BLE001 - the protocol factory failed: report it
                conn.close()
                self.loop.call_exception_handler({
                    "message": "making the transport of an accepted connection failed",
                    "exception": exc, "socket": conn})

    def _start(self) -> None:
        self._resume = None
        if self.sockets:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting, and close this process's listening socket, as uvloop's
        ``Server.close()`` does: once no process listens (the master's copy is closed
        too when it stops), new connections are refused instead of waiting in a
        backlog nobody accepts from; while the master keeps its copy (a rolling
        restart), they wait there for the next worker."""
        if self.sockets:
            self.sockets = []
            if self._resume is not None:
                self._resume.cancel()
            else:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
