# C declarations of sockwrite.pyx, for http.py compiled (http.pxd cimports them).

cdef class ByteWriter:
    cpdef void write(self, object data) except *

cdef class SocketWriter(ByteWriter):
    cdef int fd
    cdef object transport_write
    cdef object is_closing
    cdef object buffered

    cpdef void write(self, object data) except *
