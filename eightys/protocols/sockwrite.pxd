# C declarations of sockwrite.pyx, for http.py compiled (http.pxd cimports them).

cdef class SocketWriter:
    cdef int fd
    cdef object transport_write
    cdef object is_closing
    cdef object buffered

    cpdef void write(self, bytes data) except *
