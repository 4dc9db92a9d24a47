"""The access log (``--access-log -|FILE``, ``--access-log-format combined|json``).

Each worker writes its own lines: formatted per response, kept in memory and
written with one ``write`` at least once a second, when 64 KiB are waiting, and
at exit, so no request costs a system call. The file is opened ``O_APPEND``: on
Linux a ``write`` to a regular file in append mode is atomic with respect to other
appenders (the inode lock is held for the whole write), so whole lines from
several workers never interleave. A pipe or terminal (``-``) only guarantees that
for writes of at most ``PIPE_BUF`` (4096) bytes, so for those the buffer goes out
in pieces of at most 4096 bytes cut at line ends.

Why not through the master: a line relayed over the control channel costs a
marshal, a socket write and read and a second write in one process that all
workers share; writing directly costs one ``write`` per worker per second and
nothing in the master (README, "Access log", has the measurement).

SIGUSR1 (sent to the master, relayed to every worker) flushes and reopens the
file: logrotate's ``postrotate kill -USR1 $(cat eightys.pid)``.

Combined format (Apache/nginx), then the request time in microseconds and the
worker id::

    127.0.0.1 - - [02/Dec/2026:15:08:30 +0000] "GET /echo?name=x HTTP/1.1" 200 12 "-" "curl/8.5.0" 57 0
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
import time
from typing import Any

#: Flush once this much is waiting (else once a second).
FLUSH_SIZE = 64 * 1024
#: The largest write a pipe takes atomically.
PIPE_BUF = 4096
FORMATS = ("combined", "json")

_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def _escape(value: bytes) -> bytes:
    # as nginx does: quotes, backslashes and non-printable bytes as \xHH
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(lambda m: b"\\x%02X" % m.group()[0], value)


#: (at the start, anywhere else) forms of the two header names a line shows
_REFERER = (b"referer\0", b"\0referer\0")
_USER_AGENT = (b"user-agent\0", b"\0user-agent\0")


def _header(fields: bytes, lowered: bytes, name: tuple[bytes, bytes]) -> bytes:
    """The value of a header in ``name\\0value\\0...`` (``lowered`` is
    ``fields.lower()``, ``name`` one of the forms above), or b"". Finds, not a
    split: a line is formatted per response."""
    first, inner = name
    if lowered.startswith(first):
        start = len(first)
    else:
        at = lowered.find(inner)
        if at == -1:
            return b""
        start = at + len(inner)
    end = fields.find(b"\0", start)
    return fields[start:] if end == -1 else fields[start:end]


class AccessLog:
    """One worker's access log: format lines, buffer them, write them out."""

    def __init__(self, path: str, fmt: str, worker_id: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown access log format {fmt!r}")
        self.path = path
        self.json = fmt == "json"
        self.worker_id = worker_id
        self.fd = -1
        self.chunk = 0  # largest single write (0: any)
        self.lines: list[bytes] = []
        self.size = 0
        self.peers: dict[int, bytes] = {}
        self._second = -1
        self._stamp = b""
        self._timer: asyncio.TimerHandle | None = None
        self.open()

    # -- the file ---------------------------------------------------------------------

    def open(self) -> None:
        """Open (or, after a rename, reopen) the log file."""
        if self.path == "-":
            self.fd = sys.stdout.fileno()
        else:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                              0o644)
        self.chunk = 0 if stat.S_ISREG(os.fstat(self.fd).st_mode) else PIPE_BUF

    def reopen(self) -> None:
        """SIGUSR1: flush, then reopen the path (logrotate moved the old file away)."""
        self.flush()
        if self.path != "-":
            old = self.fd
            try:
                self.open()
            except OSError as exc:
                print(f"access log: cannot reopen {self.path}: {exc}", file=sys.stderr)
                return
            os.close(old)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush once a second from now on."""
        self._timer = loop.call_later(1.0, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.flush()
        self._timer = loop.call_later(1.0, self._tick, loop)

    def close(self) -> None:
        """Flush what is waiting and stop the timer (the worker exits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self.path != "-" and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def flush(self) -> None:
        """Write every buffered line (whole lines per write)."""
        if not self.lines:
            return
        lines, self.lines, self.size = self.lines, [], 0
        if self.chunk == 0:
            self._write(b"".join(lines))
            return
        piece: list[bytes] = []
        size = 0
        for line in lines:
            if size + len(line) > self.chunk and piece:
                self._write(b"".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece:
            self._write(b"".join(piece))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:  # a full disk must not take the worker down
            print(f"access log: cannot write to {self.path}: {exc}", file=sys.stderr)

    # -- lines ------------------------------------------------------------------------

    def forget(self, fd: int) -> None:
        """Connection ``fd`` ended: drop its cached peer address."""
        self.peers.pop(fd, None)

    def _peer(self, conn: Any) -> bytes:
        fd = conn.fd
        peer = self.peers.get(fd)
        if peer is None:
            name = conn.transport.get_extra_info("peername") if conn.transport else None
            if isinstance(name, tuple):
                peer = str(name[0]).encode()
            else:
                peer = b"unix" if name is not None else b"-"
            self.peers[fd] = peer
        return peer

    def record(self, conn: Any, request: Any, status: int, sent: int, head: int,
               micros: int) -> None:
        """One response: format its line and buffer it (HttpStats' log hook)."""
        peer = self._peer(conn)
        if request is not None:
            method, url, flags, fields = request[1], request[2], request[4], request[5]
            protocol = b"HTTP/1.0" if flags & 2 else b"HTTP/1.1"
            lowered = fields.lower()
            referer = _header(fields, lowered, _REFERER)
            agent = _header(fields, lowered, _USER_AGENT)
        else:
            method = url = protocol = referer = agent = b""
        body = sent - head if sent > head else 0
        if self.json:
            line = json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "remote_addr": peer.decode(),
                "method": method.decode("latin-1"),
                "uri": url.decode("utf-8", "backslashreplace"),
                "protocol": protocol.decode(),
                "status": status,
                "bytes_sent": sent,
                "body_bytes_sent": body,
                "referer": referer.decode("utf-8", "backslashreplace"),
                "user_agent": agent.decode("utf-8", "backslashreplace"),
                "request_time_us": micros,
                "worker": self.worker_id,
            }, separators=(",", ":")).encode() + b"\n"
        else:
            second = int(time.time())
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z",
                                            time.localtime(second)).encode()
            requested = (b"%s %s %s" % (method, _escape(url), protocol)) if method else b"-"
            line = b'%s - - [%s] "%s" %d %d "%s" "%s" %d %d\n' % (
                peer, self._stamp, requested, status, body,
                _escape(referer) or b"-", _escape(agent) or b"-", micros, self.worker_id)
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_SIZE:
            self.flush()
