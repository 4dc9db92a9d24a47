# The C side of eightys/lua_call.pyx (http.pxd cimports LuaDispatch: its `call` is a
# C call from the request loop).

ctypedef int (*gettop_f)(void *L) noexcept nogil
ctypedef void (*settop_f)(void *L, int idx) noexcept nogil
ctypedef int (*checkstack_f)(void *L, int extra) noexcept nogil
ctypedef void (*pushinteger_f)(void *L, long long n) noexcept nogil
ctypedef void (*pushlstring_f)(void *L, const char *s, size_t size) noexcept nogil
ctypedef void (*pushnil_f)(void *L) noexcept nogil
ctypedef int (*pcall_f)(void *L, int nargs, int nresults, int errfunc) noexcept nogil
ctypedef int (*type_f)(void *L, int idx) noexcept nogil
ctypedef const char *(*tolstring_f)(void *L, int idx, size_t *size) noexcept nogil
ctypedef int (*toboolean_f)(void *L, int idx) noexcept nogil
ctypedef void (*getfield_f)(void *L, int idx, const char *k) noexcept nogil
ctypedef void (*rawgeti_f)(void *L, int idx, int n) noexcept nogil
ctypedef int (*resume_f)(void *L, int nargs) noexcept nogil
ctypedef void *(*newthread_f)(void *L) noexcept nogil
ctypedef int (*ref_f)(void *L, int t) noexcept nogil
ctypedef void (*unref_f)(void *L, int t, int ref) noexcept nogil
ctypedef void (*xmove_f)(void *src, void *dst, int n) noexcept nogil
ctypedef void (*pushvalue_f)(void *L, int idx) noexcept nogil

cdef enum:
    # Lua threads kept for reuse (a thread whose handler waits is not returned)
    POOL_SIZE = 16
    # methods kept as Lua strings (GET, POST...: pushed without interning them again)
    METHOD_CACHE = 8

cdef class LuaDispatch:
    cdef void *L
    cdef object error
    cdef object runtime
    cdef object thread
    cdef int serve_ref
    cdef int suspended_ref
    cdef int failed_ref
    cdef void *threads[POOL_SIZE]
    cdef int thread_refs[POOL_SIZE]
    cdef int pooled
    # strings pushed from a registry reference instead of lua_pushlstring (which
    # hashes and interns them again): the methods, and the last header block (the
    # llhttp driver hands the same bytes object for the same block again)
    cdef object method_objects  # a list: keeps the cached method objects alive
    cdef void *method_keys[METHOD_CACHE]
    cdef int method_refs[METHOD_CACHE]
    cdef int methods
    cdef object method_seen  # a method seen once: cached when it comes again
    cdef object headers_cached
    cdef int headers_ref
    cdef object headers_seen
    cdef gettop_f gettop
    cdef settop_f settop
    cdef checkstack_f checkstack
    cdef pushinteger_f pushinteger
    cdef pushlstring_f pushlstring
    cdef pushnil_f pushnil
    cdef pcall_f pcall
    cdef type_f type_
    cdef tolstring_f tolstring
    cdef toboolean_f toboolean
    cdef rawgeti_f rawgeti
    cdef resume_f resume
    cdef newthread_f newthread
    cdef ref_f ref
    cdef unref_f unref
    cdef xmove_f xmove
    cdef pushvalue_f pushvalue

    cdef object _result(self, void *L)
    cdef void _push_method(self, void *co, bytes method) noexcept
    cdef void _push_headers(self, void *co, bytes headers) noexcept
    cdef int _keep(self, void *co) noexcept
    cdef str _message(self, void *L)
    cpdef object call(self, object fd, object seq, bytes method, bytes url, object body,
                      object flags, bytes headers)
