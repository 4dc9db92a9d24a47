"""Per-worker HTTP accounting: counters for the metrics and the access-log hand-off.

One :class:`HttpStats` per worker, shared by its HTTP connections, exists only
when ``--metrics`` or ``--access-log`` is on; otherwise the adapter's hooks are a
``None`` test each. With it, the adapter tells it three things per request
(:meth:`~HttpStats.begin` before the dispatch, :meth:`~HttpStats.sent` for each
piece of response handed to the core, :meth:`~HttpStats.end` after the dispatch),
and it counts once per finished response: the status class, a latency histogram
bucket, bytes out. Bytes in are counted per read.

Compiled with Cython like the adapter (``stats.pxd``): the counters are C
integers and the calls are C calls, so the cost per request is a few dozen
instructions plus two clock reads (README, "Metrics", has the callgrind figures).
Interpreted, the same code runs with Python lists.

Latency is from the dispatch to the moment the last piece of the response is
handed to the connection (not when the kernel took it): the time the server
spent, as nginx's ``$request_time`` without the client's reading. A response
that finishes inside its dispatch (the usual case) needs no bookkeeping beyond
the ``cur_*`` slots; one still running when the dispatch returns (async handler,
streamed file) moves to ``pending`` until its last piece, or until its
connection is lost (then it is counted as 499, nginx's "client closed request").
"""

from __future__ import annotations

from time import monotonic_ns
from typing import Any, Callable

try:
    import cython
    COMPILED = cython.compiled  # True in the module Cython built from this file
except ImportError:  # plain Python without Cython installed
    COMPILED = False

from eightys.wire import error_response

#: Upper bounds of the latency histogram's buckets, in microseconds (then +Inf).
LATENCY_BOUNDS_US = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
                     250000, 500000, 1000000, 2500000, 5000000, 10000000)
#: Buckets including +Inf.
BUCKETS = len(LATENCY_BOUNDS_US) + 1
#: The status of a response whose client went away before it was complete.
CLIENT_GONE = 499

#: ``log(conn, request, status, bytes_sent, head_bytes, microseconds)``: one access-log
#: line (``request`` is None for a request refused before it was complete).
AccessHook = Callable[[Any, Any, int, int, int, int], None]


def now_us() -> int:
    """The monotonic clock in microseconds (compiled: clock_gettime straight from C,
    the same clock as time.monotonic_ns() without a Python call, twice per request)."""
    if COMPILED:
        clock_gettime(CLOCK_MONOTONIC, cython.address(ts))  # noqa: F821 - from the .pxd
        return ts.tv_sec * 1000000 + ts.tv_nsec // 1000  # noqa: F821
    return monotonic_ns() // 1000


def status_of(data: bytes) -> int:
    """The status code of a response head (``HTTP/1.1 200 ...``), 0 if it is not one."""
    if len(data) < 12 or data[0] != 72 or data[4] != 47:  # b"H", b"/"
        return 0
    return (data[9] - 48) * 100 + (data[10] - 48) * 10 + (data[11] - 48)


def head_size(data: bytes) -> int:
    """Bytes of the response head at the start of ``data`` (all of it if no blank line)."""
    end = data.find(b"\r\n\r\n")
    return len(data) if end == -1 else end + 4


class HttpStats:
    """One worker's HTTP counters (see the module docstring)."""

    # Attributes are declared (with their C types) in stats.pxd.

    def __init__(self, log: Any = None, forget: Any = None) -> None:
        #: Responses by status class: index 1..5 for 1xx..5xx, 0 for anything else.
        self.classes = [0, 0, 0, 0, 0, 0]
        #: Responses per latency bucket (not cumulative), the last one +Inf.
        self.buckets = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        self.bounds = [100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
                       250000, 500000, 1000000, 2500000, 5000000, 10000000]
        self.latency_us = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: The access log's line writer (None: no access log) and its per-connection
        #: cleanup, called when a connection ends.
        self.log = log
        self.forget = forget
        self.cur_conn = None
        self.cur_request = None
        self.cur_seq = -1
        self.cur_t0 = 0
        self.cur_status = 0
        self.cur_bytes = 0
        self.cur_head = 0
        #: fd -> {seq: [t0, request, status, bytes, head]} for responses still running
        self.pending = {}

    # -- called by the HTTP adapter -------------------------------------------------------

    def begin(self, conn: Any, request: tuple) -> None:
        """Request ``request`` on ``conn`` is about to be dispatched."""
        self.cur_conn = conn
        self.cur_request = request
        self.cur_seq = request[0]
        self.cur_t0 = now_us()
        self.cur_status = 0
        self.cur_bytes = 0
        self.cur_head = 0

    def sent(self, conn: Any, seq: int, data: bytes, final: bool) -> None:
        """A piece of request ``seq``'s response went to the core; ``final`` ends it."""
        if seq == self.cur_seq and conn is self.cur_conn:
            if self.cur_status == 0:
                self.cur_status = status_of(data)
                if self.log is not None:
                    self.cur_head = head_size(data)
            self.cur_bytes += len(data)
            if final:
                self._count(conn, self.cur_request, self.cur_status, self.cur_bytes,
                            self.cur_head, self.cur_t0)
                self.cur_conn = None
                self.cur_request = None
                self.cur_seq = -1
            return
        records = self.pending.get(conn.fd)
        record = records.get(seq) if records is not None else None
        if record is None:
            if final:  # answered without a dispatch (e.g. a refusal): count it alone
                self._count(conn, None, status_of(data), len(data),
                            head_size(data) if self.log is not None else 0, now_us())
            return
        if record[2] == 0:
            record[2] = status_of(data)
            if self.log is not None:
                record[4] = head_size(data)
        record[3] += len(data)
        if final:
            del records[seq]
            if not records:
                del self.pending[conn.fd]
            self._count(conn, record[1], record[2], record[3], record[4], record[0])

    def end(self) -> None:
        """The dispatch of the current request returned: if its response is not
        complete yet, it waits in ``pending``."""
        conn = self.cur_conn
        if conn is None:
            return
        records = self.pending.get(conn.fd)
        if records is None:
            records = self.pending[conn.fd] = {}
        records[self.cur_seq] = [self.cur_t0, self.cur_request, self.cur_status,
                                 self.cur_bytes, self.cur_head]
        self.cur_conn = None
        self.cur_request = None
        self.cur_seq = -1

    def refused(self, conn: Any, status: int) -> None:
        """The core refused a request (400, 413, 431...) and queued its answer."""
        self._count(conn, None, status, len(error_response(status)), 0, now_us())

    def lost(self, conn: Any) -> None:
        """``conn`` ended: responses still running are counted as 499."""
        if self.pending:
            records = self.pending.pop(conn.fd, None)
            if records is not None:
                for record in records.values():
                    self._count(conn, record[1], CLIENT_GONE, record[3], record[4], record[0])
        if self.forget is not None:
            self.forget(conn.fd)

    def _count(self, conn: Any, request: Any, status: int, nbytes: int, head: int,
               t0: int) -> None:
        elapsed = now_us() - t0
        cls = status // 100
        if cls < 1 or cls > 5:
            cls = 0
        self.classes[cls] += 1
        i = 0
        while i < 16 and elapsed > self.bounds[i]:
            i += 1
        self.buckets[i] += 1
        self.latency_us += elapsed
        self.bytes_out += nbytes
        if self.log is not None:
            self.log(conn, request, status, nbytes, head, elapsed)

    # -- read by the worker ---------------------------------------------------------------

    def snapshot(self) -> dict:
        """The counters so far, as plain data for the control channel."""
        return {
            "classes": [self.classes[i] for i in range(6)],
            "buckets": [self.buckets[i] for i in range(17)],
            "latency_us": self.latency_us,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
