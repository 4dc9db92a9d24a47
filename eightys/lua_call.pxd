# The C side of eightys/lua_call.pyx (http.pxd cimports LuaDispatch: its `call` is a
# C call from the request loop).
ctypedef int (*gettop_f)(void *L) noexcept nogil
ctypedef void (*settop_f)(void *L, int idx) noexcept nogil
ctypedef int (*checkstack_f)(void *L, int extra) noexcept nogil
ctypedef void (*pushvalue_f)(void *L, int idx) noexcept nogil
ctypedef void (*pushinteger_f)(void *L, long long n) noexcept nogil
ctypedef void (*pushlstring_f)(void *L, const char *s, size_t size) noexcept nogil
ctypedef void (*pushnil_f)(void *L) noexcept nogil
ctypedef int (*pcall_f)(void *L, int nargs, int nresults, int errfunc) noexcept nogil
ctypedef int (*type_f)(void *L, int idx) noexcept nogil
ctypedef const char *(*tolstring_f)(void *L, int idx, size_t *size) noexcept nogil
ctypedef int (*toboolean_f)(void *L, int idx) noexcept nogil
ctypedef void (*getfield_f)(void *L, int idx, const char *k) noexcept nogil
ctypedef void (*xmove_f)(void *src, void *dst, int n) noexcept nogil
ctypedef int (*ref_f)(void *L, int t) noexcept nogil
ctypedef void (*rawgeti_f)(void *L, int idx, int n) noexcept nogil

cdef class LuaDispatch:
    cdef void *L
    cdef object runtime
    cdef object error
    cdef gettop_f gettop
    cdef settop_f settop
    cdef checkstack_f checkstack
    cdef pushvalue_f pushvalue
    cdef pushinteger_f pushinteger
    cdef pushlstring_f pushlstring
    cdef pushnil_f pushnil
    cdef pcall_f pcall
    cdef type_f type_
    cdef tolstring_f tolstring
    cdef toboolean_f toboolean
    cdef rawgeti_f rawgeti
    cdef int ref
    cdef int traceback_ref

    cpdef object call(self, object fd, object seq, bytes method, bytes url, object body,
                      object flags, bytes headers)
