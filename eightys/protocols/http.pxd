# C types for http.py when Cython compiles it (pure-Python mode: the .py is the
# source; interpreted, this file is not used). See setup.py.

cimport cython
from eightys.protocols.http_core cimport HttpConnection
from eightys.protocols.stats cimport HttpStats
from eightys.lua_call cimport LuaDispatch
from eightys.protocols.sockwrite cimport ByteWriter

cdef class HttpProtocol:
    cdef readonly object host
    cdef readonly object fd
    cdef readonly HttpConnection core
    cdef public object transport
    cdef ByteWriter writer
    cdef readonly object flow
    cdef readonly bint closed
    cdef object dispatch
    cdef LuaDispatch direct
    cdef list hooks
    cdef HttpStats stats
    cdef object parked
    cdef bint backlog
    cdef bint in_batch
    cdef object switch_to
    cdef public object upgrade
    cdef list _progress
    cdef bint _run_scheduled
    cdef object screen

    @cython.locals(request=tuple, seq=Py_ssize_t, limit=Py_ssize_t, window=Py_ssize_t,
                   i=Py_ssize_t)
    cdef void _dispatch_events(self, list events, Py_ssize_t start)
    cdef void _schedule_parked(self)
    cdef void _flush(self)
    cdef void _pause_backlog(self)
    cdef void _wake_progress(self)
    cdef void _hand_over(self)
