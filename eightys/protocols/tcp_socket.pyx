# cython: language_level=3, boundscheck=False, wraparound=False
"""Plain TCP connections read and written by eightys, from one epoll set per worker.

uvloop runs libuv with the GIL released, so each read it delivers takes the GIL
back twice (once to allocate the buffer, once for the data), enters the
protocol's context and makes a Python call: about 2,200 instructions per request
outside the protocol (callgrind, ``scripts/profile_worker.sh``), paid once per
ready connection. nginx pays one ``epoll_wait`` for all the connections that
became ready. So does this module:

* every accepted connection's socket is in one epoll set of the worker's
  (:class:`Poller`), level-triggered; the loop watches that set's descriptor;
* when it is readable, one ``epoll_wait`` (no waiting) says which connections
  are ready, and each gets its ``recv(2)`` and its protocol's ``data_received`` in
  one C loop, with the GIL held once for all of them;
* :class:`TcpTransport` is an asyncio transport (write, close, abort, write_eof,
  flow control with ``pause_writing``/``resume_writing``, ``pause_reading``,
  ``set_protocol`` for the WebSocket switch, ``get_extra_info``): the HTTP,
  WebSocket and raw protocols run on it unchanged. ``write`` calls ``send(2)``
  while nothing is queued; what the socket does not take waits in order, with the
  socket watched for writing.

What it costs: a transport of eightys' own to keep right (its tests are
``tests/unit/test_tcp_socket.py``, and the whole suite runs on it), and one more
``epoll_wait`` per loop iteration with ready connections. ``EIGHTYS_UVLOOP_TCP=1``
serves through uvloop's transports instead.

Only built when Cython compiles eightys (``setup.py``); Linux only (epoll).
"""

import os
import socket
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno

from eightys.protocols.listener import Listener
from eightys.protocols.sockwrite cimport SocketTransport

cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    cdef struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "sys/socket.h" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int MSG_NOSIGNAL
    int SHUT_WR

cdef extern from "unistd.h" nogil:
    int close(int fd)

cdef extern from "errno.h":
    int EWOULDBLOCK  # EAGAIN on Linux; not in Cython's libc.errno

cdef enum:
    MAX_EVENTS = 256  # connections served per readable event of the set
    READ_SIZE = 262144  # as uvloop's read buffer: a big body in few reads

cdef char READ_BUFFER[READ_SIZE]  # one read, copied into its bytes at once
cdef epoll_event EVENTS[MAX_EVENTS]  # one batch (the loop runs one callback at a time)


cdef object _os_error(int code):
    # the OSError subclass Python gives for errno `code` (ConnectionResetError...)
    return OSError(code, os.strerror(code))


cdef class Poller:
    """One epoll set of sockets, watched by the loop as one reader; it serves the
    ready ones in one callback."""

    cdef int epfd
    cdef readonly object loop
    cdef set transports  # the open ones: the set's events point to them
    cdef list retired  # closed during the batch being served: freed after it
    cdef bint in_batch

    def __init__(self, loop: object) -> None:
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise _os_error(errno)
        self.loop = loop
        self.transports = set()
        self.retired = []
        loop.add_reader(self.epfd, self._ready)

    cdef int watch(self, TcpTransport transport, unsigned int old, unsigned int new) noexcept:
        # old -> new events of the transport's socket (0: not in the set; level-
        # triggered, and out of it when nothing is wanted: a socket that hung up is
        # always "ready"). 0, or the errno of a failed change (a failed removal is
        # not one: the descriptor may be gone already, which removed it)
        cdef epoll_event event
        cdef int op
        event.events = new
        event.data.ptr = <void *>transport  # held by self.transports while in the set
        if new == 0:
            op = EPOLL_CTL_DEL
        elif old == 0:
            op = EPOLL_CTL_ADD
        else:
            op = EPOLL_CTL_MOD
        if epoll_ctl(self.epfd, op, transport.fd, &event) < 0 and op != EPOLL_CTL_DEL:
            return errno
        return 0

    def _ready(self) -> None:
        cdef int count = epoll_wait(self.epfd, EVENTS, MAX_EVENTS, 0)
        cdef int i
        cdef TcpTransport transport
        self.in_batch = True
        try:
            for i in range(count):
                # the event's pointer is good for the whole batch: a transport closed
                # by an earlier callback of it waits in `retired` (and says closed)
                transport = <TcpTransport>EVENTS[i].data.ptr
                transport._event(EVENTS[i].events)
        finally:
            self.in_batch = False
            if self.retired:
                self.retired.clear()

    cdef void forget(self, TcpTransport transport) except *:
        # a closed transport (out of the set): freed now, or after the batch if one runs
        self.transports.discard(transport)
        if self.in_batch:
            self.retired.append(transport)

    def close(self) -> None:
        """Stop watching the set and close it (its connections are closed already)."""
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
            close(self.epfd)
            self.epfd = -1


cdef class TcpTransport(SocketTransport):
    """One accepted connection on ``poller``'s set: an asyncio transport whose
    ``write`` is also a C call (a :class:`~eightys.protocols.sockwrite.ByteWriter`)."""

    cdef object __weakref__
    cdef Poller poller
    cdef object data_received  # the protocol's, bound once
    cdef int fd
    cdef unsigned int events  # what the set watches for (0: not in it)
    cdef bint protocol_paused
    cdef bint eof_after_write  # write_eof() with output queued: shutdown once it left
    cdef bint eof_written

    def __init__(self, Poller poller not None, sock: socket.socket, protocol_factory: object) -> None:
        self.poller = poller
        self.loop = poller.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peername = sock.getpeername()
        self.sockname = sock.getsockname()
        self.pending = deque()
        self.high = 65536
        self.low = 16384
        self.reading = True
        self.set_protocol(protocol_factory())
        poller.transports.add(self)
        self._sync()
        try:
            self.protocol.connection_made(self)
        except Exception as exc:  # as uvloop does: report it, end the connection
            self._protocol_failed(exc, "connection_made")

    cdef void _sync(self) except *:
        # the set watches for reading while the protocol reads, for writing while
        # output is queued, and not at all otherwise
        cdef unsigned int want = 0
        cdef int failed
        if not self.closed:
            if self.reading and not self.closing:
                want = EPOLLIN
            if self.pending_size:
                want |= EPOLLOUT
        if want != self.events:
            failed = self.poller.watch(self, self.events, want)
            if failed:
                self._fatal(_os_error(failed))  # (out of the set then: want is 0)
                return
            self.events = want

    cdef void _event(self, unsigned int events) except *:
        if self.closed:
            return
        if self.pending_size and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            self._flush_pending()
            if self.closed:
                return
        if self.reading and not self.closing and events & (EPOLLIN | EPOLLERR | EPOLLHUP):
            self._read()

    # -- reading ------------------------------------------------------------------------

    cdef void _read(self) except *:
        cdef ssize_t count = recv(self.fd, READ_BUFFER, READ_SIZE, 0)
        cdef int code
        if count > 0:
            try:
                self.data_received(PyBytes_FromStringAndSize(READ_BUFFER, count))
            except Exception as exc:
                self._protocol_failed(exc, "data_received")
            return
        if count == 0:
            self._eof()
            return
        code = errno
        if code == EAGAIN or code == EWOULDBLOCK or code == EINTR:
            return  # a spurious wake-up: level-triggered, it comes again if it is real
        self._fatal(_os_error(code))

    cdef void _eof(self) except *:
        self.reading = False
        self._sync()
        try:
            keep_open = self.protocol.eof_received()
        except Exception as exc:
            self._protocol_failed(exc, "eof_received")
            return
        if not keep_open:
            self.close()

    # -- writing ------------------------------------------------------------------------

    cpdef void write(self, object data) except *:
        """Send ``data`` now as far as the socket takes it, keep the rest (in order)
        until it takes more; ``pause_writing`` past the high-water mark."""
        cdef Py_ssize_t size
        cdef ssize_t sent = 0
        cdef int code
        if self.closing or self.eof_after_write or self.eof_written:
            return  # asyncio's transports drop it too (after close(): nobody to get it)
        if type(data) is not bytes:
            data = bytes(data)
        size = PyBytes_GET_SIZE(data)
        if size == 0:
            return
        if not self.pending_size:
            sent = send(self.fd, PyBytes_AS_STRING(data), <size_t>size, MSG_NOSIGNAL)
            if sent == size:
                return
            if sent < 0:
                code = errno
                if code != EAGAIN and code != EWOULDBLOCK and code != EINTR:
                    self._fatal(_os_error(code))
                    return
                sent = 0
            data = data[sent:]
        self.pending.append(data)
        self.pending_size += size - sent
        self._sync()
        if self.pending_size > self.high and not self.protocol_paused:
            self.protocol_paused = True
            try:
                self.protocol.pause_writing()
            except Exception as exc:
                self._protocol_failed(exc, "pause_writing")

    cdef void _flush_pending(self) except *:
        cdef bytes head
        cdef Py_ssize_t size
        cdef ssize_t sent
        cdef int code
        while self.pending:
            head = self.pending[0]
            size = PyBytes_GET_SIZE(head)
            sent = send(self.fd, PyBytes_AS_STRING(head), <size_t>size, MSG_NOSIGNAL)
            if sent < 0:
                code = errno
                if code == EAGAIN or code == EWOULDBLOCK or code == EINTR:
                    return
                self._fatal(_os_error(code))
                return
            self.pending_size -= sent
            if sent < size:
                self.pending[0] = head[sent:]
                return  # the socket is full again: the set says when it has room
            self.pending.popleft()
        self._sync()
        if self.protocol_paused and self.pending_size <= self.low:
            self.protocol_paused = False
            try:
                self.protocol.resume_writing()
            except Exception as exc:
                self._protocol_failed(exc, "resume_writing")
                return
        if self.closing and not self.closed:
            self._lost(None)
        elif self.eof_after_write:
            self.eof_after_write = False
            self._shutdown_write()

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, then close the socket; ``connection_lost(None)``
        follows."""
        if self.closing:
            return
        self.closing = True
        self.reading = False
        if not self.pending_size:
            self._lost(None)
        else:
            self._sync()

    cdef void _release(self) except *:
        self.closed = True
        self.reading = False
        self._sync()  # out of the set before the descriptor goes
        self.poller.forget(self)
        self.sock.close()

    def can_write_eof(self) -> bool:
        """True: the write side can be shut down alone (write_eof)."""
        return True

    def write_eof(self) -> None:
        """Shut down the sending side once what is queued has gone (the peer reads
        an end of stream; it can still send)."""
        if self.closing or self.eof_after_write or self.eof_written:
            return
        if self.pending_size:
            self.eof_after_write = True
        else:
            self._shutdown_write()

    cdef void _shutdown_write(self) except *:
        self.eof_written = True
        shutdown(self.fd, SHUT_WR)

    # -- the rest of asyncio's transport --------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the socket until resume_reading()."""
        if not self.closing and self.reading:
            self.reading = False
            self._sync()

    def resume_reading(self) -> None:
        """Read again (what arrived meanwhile comes at once: the set is level-triggered)."""
        if self.closing or self.reading:
            return
        self.reading = True
        self._sync()

    def set_protocol(self, protocol: object) -> None:
        """Hand the connection to another protocol (the WebSocket switch)."""
        self.protocol = protocol
        self.data_received = protocol.data_received

    def get_extra_info(self, name: str, default: object = None) -> object:
        """``peername``, ``sockname`` and ``socket``, as asyncio's transports have them."""
        if name == "peername":
            return self.peername
        if name == "sockname":
            return self.sockname
        if name == "socket":
            return self.sock
        return default


class TcpListener(Listener):
    """Accepts connections on a listening socket and serves each through a
    :class:`TcpTransport` on one :class:`Poller`: what ``loop.create_server`` would do."""

    def __init__(self, loop: object, sock: socket.socket, protocol_factory: object) -> None:
        poller = Poller(loop)
        self.poller = poller
        super().__init__(loop, sock, lambda conn: TcpTransport(poller, conn, protocol_factory))
