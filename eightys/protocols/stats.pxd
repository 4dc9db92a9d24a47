# C types for stats.py when Cython compiles it (pure-Python mode: the .py is the
# source; interpreted, this file is not used). See setup.py.

cimport cython

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC

@cython.locals(ts=timespec)
cdef long long now_us()
cpdef int status_of(bytes data)
cpdef Py_ssize_t head_size(bytes data)

# final: the adapter's calls go straight to the C functions (no override check)
@cython.final
cdef class HttpStats:
    cdef long long classes[6]
    cdef long long buckets[17]
    cdef long long bounds[16]
    cdef public long long latency_us
    cdef public long long bytes_in
    cdef public long long bytes_out
    cdef public object log
    cdef public object forget
    cdef object cur_conn
    cdef object cur_request
    cdef Py_ssize_t cur_seq
    cdef long long cur_t0
    cdef int cur_status
    cdef long long cur_bytes
    cdef long long cur_head
    cdef dict pending

    cpdef void begin(self, object conn, tuple request)
    @cython.locals(record=list, records=dict)
    cpdef void sent(self, object conn, Py_ssize_t seq, bytes data, bint final)
    cpdef void end(self)
    cpdef void refused(self, object conn, int status)
    cpdef void lost(self, object conn)
    @cython.locals(elapsed=cython.longlong, cls=cython.int, i=cython.int)
    cdef void _count(self, object conn, object request, int status, long long nbytes,
                     long long head, long long t0)
    cpdef dict snapshot(self)
