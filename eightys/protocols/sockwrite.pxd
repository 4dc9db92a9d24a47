# C declarations of sockwrite.pyx, for http.py compiled (http.pxd cimports them).

cdef class ByteWriter:
    cpdef void write(self, object data) except *

cdef class SocketTransport(ByteWriter):
    cdef object loop
    cdef object sock
    cdef object protocol
    cdef object peername
    cdef object sockname
    cdef bint closing
    cdef bint closed
    cdef bint reading
    cdef object pending
    cdef Py_ssize_t pending_size
    cdef Py_ssize_t high
    cdef Py_ssize_t low

    cdef void _fatal(self, object exc) except *
    cdef void _lost(self, object exc) except *
    cdef void _release(self) except *
    cdef void _protocol_failed(self, object exc, str what) except *

cdef class SocketWriter(ByteWriter):
    cdef int fd
    cdef object transport_write
    cdef object is_closing
    cdef object buffered

    cpdef void write(self, object data) except *
