# C types for http_core.py when Cython compiles it (pure-Python mode: the .py is
# the source; interpreted, this file is not used). See setup.py.

cimport cython

cdef extern from "string.h" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

cdef bint _has_http10(bytes data)

# states and after-response actions (their Python names: see http_core.py)
cdef int IDLE, HEAD, BODY, WAITING, CLOSING, SWITCHING, SWITCHED, CLOSED
cdef int KEEP_ALIVE, CLOSE, SWITCH

cdef class Clock:
    cdef public double now

cdef class HttpLimits:
    cdef public Py_ssize_t max_header
    cdef public Py_ssize_t max_headers
    cdef public Py_ssize_t max_body
    cdef public double header_timeout
    cdef public double keepalive_timeout
    cdef public double handler_timeout
    cdef public dict stream_routes
    cdef public object spool_dir
    cdef public Py_ssize_t spill_at

cdef class HttpConnection:
    cdef public HttpLimits limits
    cdef public Clock clock
    cdef int base_flags
    cdef object parser
    cdef object feed
    cdef object get_method
    cdef object should_keep_alive
    cdef object streams
    cdef public int state
    cdef public double since
    cdef public Py_ssize_t last
    cdef public int after_last
    cdef public bytes trailing
    cdef public Py_ssize_t upgrade_seq
    cdef public bint draining
    cdef bytes url
    cdef list headers
    cdef public object fields
    cdef public int parsed_http10
    cdef public int parsed_keep_alive
    cdef public bytes parsed_method
    cdef list body
    cdef Py_ssize_t nheaders
    cdef Py_ssize_t head_size
    cdef Py_ssize_t body_size
    cdef Py_ssize_t unparsed_head
    cdef Py_ssize_t content_length
    cdef int hosts
    cdef bint chunked
    cdef bint has_connection_header
    cdef bint expect_continue
    cdef bint http10
    cdef bytes data
    cdef bint begun_here
    cdef int has10
    cdef public Py_ssize_t seq_in
    cdef public Py_ssize_t seq_out
    cdef bint head_started
    cdef dict held
    cdef public dict pending_since
    cdef public Py_ssize_t timed_out_seq
    cdef list events
    cdef public list out
    cdef Py_ssize_t spill_at
    cdef object spool
    cdef public object spools

    cpdef list receive_data(self, bytes data)
    # the parser's callbacks (C calls from eightys/protocols/llhttp.pyx)
    cpdef on_message_begin(self)
    cpdef on_url(self, bytes url)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    cpdef on_body(self, bytes body)
    @cython.locals(seq=Py_ssize_t, flags=int, method=bytes)
    cpdef on_message_complete(self)
    cpdef bint send(self, Py_ssize_t seq, bytes data, bint final, bint close=*)
    cpdef bytes data_to_send(self)
    @cython.locals(seq=Py_ssize_t)
    cdef void _finish_head(self)
    cdef void _end_after(self, Py_ssize_t seq, int action)
    cpdef bint switch_protocol(self, Py_ssize_t seq, bytes response)
    cpdef bint is_upgrade(self, Py_ssize_t seq)
    cpdef void mark_pending(self, Py_ssize_t seq)
    cpdef int check_timeout(self, double now)
    cdef void _refuse(self, int status, str reason)
    cdef void _stream_request(self, bytes data)
    cdef void _release_body(self, Py_ssize_t seq)
    cpdef void release_bodies(self)
    cdef bint _is_http10(self) except -1
