# cython: language_level=3, boundscheck=False, wraparound=False
"""Responses written to the socket at once, the way uvloop writes when it can.

``transport.write`` on a uvloop TCP transport costs about 1,800 instructions per
response in user space: the method lookup and call, the write buffer, the queue
of streams to flush at the end of the loop iteration, then libuv's write. Where
uvloop would write straight away (nothing of its own waiting to go out), a
:class:`SocketWriter` calls ``send(2)`` on the transport's socket itself, for
about 200. Whatever ``send`` does not take (a full socket buffer) goes to
``transport.write``, so uvloop keeps owning what is buffered, flow control
(``pause_writing``) and error reporting (a failed ``send`` is left for uvloop to
meet and report as it would).

The order of bytes on the wire is kept: the socket is written to directly only
while uvloop has nothing buffered (``get_write_buffer_size() == 0``). And never
once the transport is closing: uvloop may have closed the descriptor already,
and its number may name another connection by then.

Only for uvloop's plain TCP transport (:func:`for_transport` gives ``None`` for
anything else: TLS, whose socket carries records, not these bytes; asyncio's own
loop). Where eightys reads and writes the socket itself (eightys.protocols.tcp_socket,
the default, and tls_socket), the transport is its own writer: both derive from
:class:`SocketTransport`, a :class:`ByteWriter` with the parts of asyncio's transport
interface they share. Only built when Cython compiles eightys (``setup.py``).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno

cdef extern from "errno.h":
    int EWOULDBLOCK  # EAGAIN on Linux; not in Cython's libc.errno

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

try:
    from uvloop.loop import TCPTransport as _TCPTransport
except ImportError:  # no uvloop: nothing to shortcut
    _TCPTransport = None


cdef class ByteWriter:
    """What HttpProtocol writes its responses through, as a C call: a
    :class:`SocketWriter`, or a transport of eightys' own that is one
    (eightys.protocols.tcp_socket.TcpTransport)."""

    cpdef void write(self, object data) except *:
        """Send ``data`` (in order after what was written before)."""
        raise NotImplementedError


cdef class SocketTransport(ByteWriter):
    """What eightys' own transports share (eightys.protocols.tcp_socket.TcpTransport,
    eightys.protocols.tls_socket.TlsTransport): the parts of asyncio's transport
    interface that do not depend on how the socket is read and written."""

    # closing: close() or abort() was called, or the connection ended; closed: the
    # socket is closed; reading: the protocol is given what arrives; pending: a
    # deque of bytes not sent yet, pending_size their length

    def abort(self) -> None:
        """Close at once: what is queued is dropped (over TLS, no close_notify)."""
        self._fatal(None)

    cdef void _fatal(self, object exc) except *:
        # end the connection at once: connection_lost(exc) follows
        self.closing = True
        self.pending.clear()
        self.pending_size = 0
        self._lost(exc)

    cdef void _lost(self, object exc) except *:
        if self.closed:
            return
        protocol = self.protocol
        self._release()
        if protocol is not None:
            self.loop.call_soon(protocol.connection_lost, exc)

    cdef void _release(self) except *:
        # stop watching the socket and close it (each transport's own); sets closed
        raise NotImplementedError

    cdef void _protocol_failed(self, object exc, str what) except *:
        # as uvloop does: report the protocol's exception, end the connection
        self.loop.call_exception_handler({
            "message": f"{what} of {type(self.protocol).__name__} raised",
            "exception": exc, "transport": self, "protocol": self.protocol})
        self._fatal(exc)

    def writelines(self, list_of_data: object) -> None:
        """Write the items of ``list_of_data`` as one."""
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        """Whether close() or abort() was called, or the connection ended."""
        return self.closing

    def is_reading(self) -> bool:
        """Whether the protocol is being given what arrives."""
        return self.reading and not self.closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """High- and low-water marks of the write buffer (asyncio's defaults: 64 KiB
        and a quarter of high)."""
        if high is None:
            high = 65536 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """(low, high), as asyncio's transports give them."""
        return (self.low, self.high)

    def get_write_buffer_size(self) -> int:
        """Bytes given to write() that the socket has not taken yet."""
        return self.pending_size

    def get_protocol(self) -> object:
        """The protocol the connection's data goes to."""
        return self.protocol


cdef class SocketWriter(ByteWriter):
    """Writes to one uvloop TCP transport's socket while uvloop has nothing buffered."""

    def __init__(self, transport: object, fd: int) -> None:
        self.fd = fd
        self.transport_write = transport.write
        self.is_closing = transport.is_closing
        self.buffered = transport.get_write_buffer_size

    cpdef void write(self, object data) except *:
        """Send ``data`` now if the socket takes it, else hand (the rest of) it to
        the transport."""
        cdef Py_ssize_t size
        cdef ssize_t sent
        if type(data) is not bytes or self.fd < 0 or self.is_closing() or self.buffered():
            self.transport_write(data)
            return
        size = PyBytes_GET_SIZE(data)
        sent = send(self.fd, PyBytes_AS_STRING(data), <size_t>size, MSG_DONTWAIT | MSG_NOSIGNAL)
        if sent == size:
            return
        if sent < 0:
            if errno != EAGAIN and errno != EWOULDBLOCK and errno != EINTR:
                # a reset or closed peer: uvloop's own write meets it and closes the
                # transport through its usual path (connection_lost)
                self.transport_write(data)
                return
            sent = 0
        self.transport_write(data[sent:])


def for_transport(transport: object) -> ByteWriter | None:
    """What to write ``transport``'s responses through as a C call: the transport
    itself if it is a :class:`ByteWriter` (eightys' own), a :class:`SocketWriter` if
    it is uvloop's plain TCP transport with a socket, else ``None`` (write through
    the transport)."""
    if isinstance(transport, ByteWriter):
        return transport
    if _TCPTransport is None or type(transport) is not _TCPTransport:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd = sock.fileno()
    if fd < 0:
        return None
    return SocketWriter(transport, fd)
