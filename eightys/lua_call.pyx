# cython: language_level=3, boundscheck=False, wraparound=False
"""A direct call of one Lua function from C: the per-request ``http.dispatch``.

lupa's call of a Lua function costs about 3,300 instructions per request (its
runtime lock, a type test and conversion per argument, an error handler, the
tuple of results): as much as the whole HTTP parse. :class:`LuaDispatch` makes
the same call through Lua's C API, about 400 instructions: it pushes the seven
arguments of ``http.dispatch`` (integers and byte strings), calls it with
``lua_pcall`` and turns the one result into ``bytes``, ``False`` or ``None``.

The Lua C API functions are those of LuaJIT as lupa built it (exported by lupa's
``lupa.luajit21`` module), looked up once with ``dlsym``. The call runs on the
runtime's main Lua state, as lupa's calls do, with the stack restored after it;
Lua code that it runs calls back into Python through lupa as usual.

Two things are taken from outside an API, and both are checked when a
:class:`LuaDispatch` is made (any doubt means lupa's calls, never a crash later):
the main ``lua_State *`` is the first field of lupa's ``LuaRuntime`` (in every
lupa release so far), and it must share its LuaJIT global state with a thread
whose address Lua gave (``tostring(coroutine)`` in ``bootstrap.lua``, which also
hands over the function, at the bottom of that thread's stack).

Only built when Cython compiles eightys (``setup.py``); without it, and for any
other engine (Lua 5.4), :mod:`eightys.lua_runtime` calls through lupa.
"""

from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    int dlclose(void *handle)
    char *dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

cdef enum:
    # lua.h (Lua 5.1 API, LuaJIT's)
    T_NIL = 0
    T_BOOLEAN = 1
    T_STRING = 4
    T_TABLE = 5
    LUA_REGISTRYINDEX = -10000
    LUA_GLOBALSINDEX = -10002
    # layouts (see LuaDispatch.__init__)
    MAIN_STATE_OFFSET = sizeof(PyObject) + sizeof(void *)
    GCT_OFFSET = 9
    GLREF_OFFSET = 16


cdef void *_symbol(void *lib, bytes name) except NULL:
    cdef void *fn = dlsym(lib, name)
    if fn == NULL:
        raise ImportError(f"Lua C API function {name.decode()} not found in lupa's module")
    return fn


cdef class LuaDispatch:
    """``http.dispatch(fd, seq, method, url, body, flags, headers)`` called through
    Lua's C API (see the module docstring). ``error`` is raised (with Lua's message)
    if the function itself fails; handlers' errors are caught inside it."""

    def __init__(self, module_file: str, runtime: object, thread: object,
                 thread_address: int, error: type) -> None:
        """``module_file``: lupa's LuaJIT module; ``runtime``: its ``LuaRuntime``;
        ``thread``/``thread_address``: lupa's object for a Lua thread whose stack slot
        1 holds the function, and its ``lua_State *``; ``error``: the exception class
        for a failed call. Raises ``ImportError`` if any of it does not hold up."""
        cdef void *lib = dlopen(module_file.encode(), RTLD_NOW | RTLD_NOLOAD)
        if lib == NULL:
            raise ImportError(f"lupa's module is not loaded: {module_file}")
        try:
            self.gettop = <gettop_f>_symbol(lib, b"lua_gettop")
            self.settop = <settop_f>_symbol(lib, b"lua_settop")
            self.checkstack = <checkstack_f>_symbol(lib, b"lua_checkstack")
            self.pushvalue = <pushvalue_f>_symbol(lib, b"lua_pushvalue")
            self.pushinteger = <pushinteger_f>_symbol(lib, b"lua_pushinteger")
            self.pushlstring = <pushlstring_f>_symbol(lib, b"lua_pushlstring")
            self.pushnil = <pushnil_f>_symbol(lib, b"lua_pushnil")
            self.type_ = <type_f>_symbol(lib, b"lua_type")
            self.tolstring = <tolstring_f>_symbol(lib, b"lua_tolstring")
            self.toboolean = <toboolean_f>_symbol(lib, b"lua_toboolean")
            self.pcall = <pcall_f>_symbol(lib, b"lua_pcall")
            self.rawgeti = <rawgeti_f>_symbol(lib, b"lua_rawgeti")
            getfield = <getfield_f>_symbol(lib, b"lua_getfield")
            xmove = <xmove_f>_symbol(lib, b"lua_xmove")
            luaL_ref = <ref_f>_symbol(lib, b"luaL_ref")
        finally:
            dlclose(lib)  # the module stays loaded: Python holds it
        self.error = error
        cdef char *L1 = <char *><size_t>thread_address
        # lupa's LuaRuntime starts with its lua_State * (after the object head and the
        # vtable): true of every lupa release, and checked here against the thread,
        # which must belong to the same LuaJIT global state (lua_State.glref, GC64)
        cdef char *main = (<char **>(<char *><PyObject *>runtime + MAIN_STATE_OFFSET))[0]
        if main == NULL or main == L1 \
                or (<void **>(main + GLREF_OFFSET))[0] != (<void **>(L1 + GLREF_OFFSET))[0] \
                or main[GCT_OFFSET] != L1[GCT_OFFSET]:
            raise ImportError("lupa's LuaRuntime layout is not the one expected")
        if self.gettop(L1) < 1:
            raise ImportError("the dispatch thread has no function in its stack slot 1")
        # The call runs on the main thread: LuaJIT's compiled traces crash when a
        # function called with lua_pcall on another thread resumes coroutines.
        self.L = main
        self.pushvalue(L1, 1)
        xmove(L1, main, 1)
        self.ref = luaL_ref(main, LUA_REGISTRYINDEX)
        # debug.traceback as the error handler: a failure of dispatch itself (not of a
        # handler: those are caught inside it) is reported with its stack, as by lupa
        getfield(main, LUA_GLOBALSINDEX, b"debug")
        if self.type_(main, -1) == T_TABLE:
            getfield(main, -1, b"traceback")
            self.traceback_ref = luaL_ref(main, LUA_REGISTRYINDEX)
        self.settop(main, -2)
        self.runtime = runtime  # the state lives as long as this object

    cpdef object call(self, object fd, object seq, bytes method, bytes url, object body,
                      object flags, bytes headers):
        """One request: the complete response (bytes), False (answered through
        http_send) or None (the handler is still working)."""
        cdef void *L = self.L
        cdef int top = self.gettop(L)
        cdef int status
        cdef size_t size
        cdef const char *text
        cdef int kind
        cdef int handler = 0
        if not self.checkstack(L, 10):
            raise MemoryError("Lua stack")
        if self.traceback_ref:
            self.rawgeti(L, LUA_REGISTRYINDEX, self.traceback_ref)
            handler = top + 1
        self.rawgeti(L, LUA_REGISTRYINDEX, self.ref)
        self.pushinteger(L, <long long>fd)
        self.pushinteger(L, <long long>seq)
        self.pushlstring(L, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method))
        self.pushlstring(L, PyBytes_AS_STRING(url), PyBytes_GET_SIZE(url))
        if body is None:
            self.pushnil(L)
        else:
            self.pushlstring(L, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self.pushinteger(L, <long long>flags)
        self.pushlstring(L, PyBytes_AS_STRING(headers), PyBytes_GET_SIZE(headers))
        status = self.pcall(L, 7, 1, handler)
        kind = self.type_(L, -1)
        if status != 0:
            text = self.tolstring(L, -1, &size) if kind == T_STRING else NULL
            message = PyBytes_FromStringAndSize(text, size).decode("utf-8", "replace") \
                if text != NULL else "error object is not a string"
            self.settop(L, top)
            raise self.error(message)
        if kind == T_STRING:
            text = self.tolstring(L, -1, &size)
            result = PyBytes_FromStringAndSize(text, size)
        elif kind == T_BOOLEAN:
            result = True if self.toboolean(L, -1) else False
        else:
            result = None
        self.settop(L, top)
        return result

    def __call__(self, fd: int, seq: int, method: bytes, url: bytes, body: bytes | None,
                 flags: int, headers: bytes) -> object:
        """The same as :meth:`call`, for callers that hold it as a plain callable."""
        return self.call(fd, seq, method, url, body, flags, headers)
