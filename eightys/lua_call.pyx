# cython: language_level=3, boundscheck=False, wraparound=False
"""One HTTP request into Lua from C: the per-request call of the compiled server.

Through lupa, a request costs two things beside the handler: lupa's call of
``http.dispatch`` (about 3,300 instructions: its runtime lock, a type test and a
conversion per argument, an error handler, the tuple of results) and, inside
Lua, a switch into a pooled coroutine and back (about 2,500: the handler may
``aio:await``, so it cannot run on the caller's stack). :class:`LuaDispatch` does
both in C, the way OpenResty runs a request: it keeps a few Lua threads, pushes
``http.serve`` and its eight arguments onto one (the URL split into path and
query; the method and a repeated header block from registry references, not
interned again), and starts it with
``lua_resume``.

* The handler returns: the thread's result (the response as ``bytes``, ``False``
  or ``None``) is returned and the thread goes back to the pool.
* The handler waits (the thread yields): the thread now belongs to what it waits
  on (aio resumes it; it is referenced from there and from the request's
  handler-timeout entry); ``http.suspended(thread)`` says what to return (``None``
  unless it answered before waiting).
* The handler raises (the thread is dead, its stack kept): ``http.failed(thread,
  error)`` logs it with the traceback, answers 500 and says what to return. Only
  if that fails too (a bug of eightys itself) is ``error`` raised, with Lua's
  message.

The Lua C API functions are LuaJIT's as lupa built it (exported by lupa's
``lupa.luajit21`` module), looked up once with ``dlsym``. Two things are taken
from outside an API, and both are checked when a :class:`LuaDispatch` is made
(any doubt means lupa's calls, never a crash later): the main ``lua_State *`` is
the first field of lupa's ``LuaRuntime`` (in every lupa release so far), and it
must share its LuaJIT global state with a thread whose address Lua gave
(``tostring(coroutine)`` in ``bootstrap.lua``). The entry points are found in the
Lua registry (``eightys.http.serve``, ``.suspended``, ``.failed``).

Only built when Cython compiles eightys (``setup.py``); without it, and for Lua
5.4, :mod:`eightys.lua_runtime` calls ``http.dispatch`` through lupa.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.string cimport memchr

from eightys.dlfcn cimport RTLD_NOLOAD, RTLD_NOW, dlclose, dlopen, dlsym

cdef enum:
    # lua.h (Lua 5.1 API, LuaJIT's)
    LUA_YIELD = 1
    T_NIL = 0
    T_BOOLEAN = 1
    T_STRING = 4
    T_TABLE = 5
    T_FUNCTION = 6
    LUA_REGISTRYINDEX = -10000
    LUA_GLOBALSINDEX = -10002
    LUA_NOREF = -2
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
    """``http.serve(fd, seq, method, path, query, body, flags, headers)`` on a Lua thread
    resumed from C (see the module docstring): what ``http.dispatch`` returns,
    without lupa and without a coroutine switch in Lua."""

    def __init__(self, module_file: str, runtime: object, thread: object,
                 thread_address: int, error: type) -> None:
        """``module_file``: lupa's LuaJIT module; ``runtime``: its ``LuaRuntime``;
        ``thread``/``thread_address``: lupa's object for a Lua thread and its
        ``lua_State *`` (the check of the main state); ``error``: the exception class
        for a failed call. Raises ``ImportError`` if any of it does not hold up."""
        cdef void *lib = dlopen(module_file.encode(), RTLD_NOW | RTLD_NOLOAD)
        if lib == NULL:
            raise ImportError(f"lupa's module is not loaded: {module_file}")
        try:
            self.gettop = <gettop_f>_symbol(lib, b"lua_gettop")
            self.settop = <settop_f>_symbol(lib, b"lua_settop")
            self.checkstack = <checkstack_f>_symbol(lib, b"lua_checkstack")
            self.pushinteger = <pushinteger_f>_symbol(lib, b"lua_pushinteger")
            self.pushlstring = <pushlstring_f>_symbol(lib, b"lua_pushlstring")
            self.pushnil = <pushnil_f>_symbol(lib, b"lua_pushnil")
            self.type_ = <type_f>_symbol(lib, b"lua_type")
            self.tolstring = <tolstring_f>_symbol(lib, b"lua_tolstring")
            self.toboolean = <toboolean_f>_symbol(lib, b"lua_toboolean")
            self.pcall = <pcall_f>_symbol(lib, b"lua_pcall")
            self.rawgeti = <rawgeti_f>_symbol(lib, b"lua_rawgeti")
            self.resume = <resume_f>_symbol(lib, b"lua_resume")
            self.newthread = <newthread_f>_symbol(lib, b"lua_newthread")
            self.ref = <ref_f>_symbol(lib, b"luaL_ref")
            self.unref = <unref_f>_symbol(lib, b"luaL_unref")
            self.xmove = <xmove_f>_symbol(lib, b"lua_xmove")
            self.pushvalue = <pushvalue_f>_symbol(lib, b"lua_pushvalue")
            getfield = <getfield_f>_symbol(lib, b"lua_getfield")
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
        self.L = main
        self.thread = thread
        self.runtime = runtime  # the state lives as long as this object
        cdef int top = self.gettop(main)
        getfield(main, LUA_REGISTRYINDEX, b"eightys.http.serve")
        getfield(main, LUA_REGISTRYINDEX, b"eightys.http.suspended")
        getfield(main, LUA_REGISTRYINDEX, b"eightys.http.failed")
        if self.type_(main, -1) != T_FUNCTION or self.type_(main, -2) != T_FUNCTION \
                or self.type_(main, -3) != T_FUNCTION:
            self.settop(main, top)
            raise ImportError("eightys.http.serve/suspended/failed are not in the Lua registry")
        self.failed_ref = self.ref(main, LUA_REGISTRYINDEX)
        self.suspended_ref = self.ref(main, LUA_REGISTRYINDEX)
        self.serve_ref = self.ref(main, LUA_REGISTRYINDEX)
        self.settop(main, top)
        self.pooled = 0
        self.method_objects = []
        self.methods = 0
        self.headers_ref = LUA_NOREF

    cdef object _result(self, void *L):
        # the value at the top of L's stack, as dispatch returns it
        cdef size_t size
        cdef const char *text
        cdef int kind = self.type_(L, -1)
        if kind == T_STRING:
            text = self.tolstring(L, -1, &size)
            return PyBytes_FromStringAndSize(text, size)
        if kind == T_BOOLEAN:
            return True if self.toboolean(L, -1) else False
        return None

    cpdef object call(self, object fd, object seq, bytes method, bytes url, object body,
                      object flags, bytes headers):
        """One request: the complete response (bytes), False (answered through
        http_send) or None (the handler is still working)."""
        cdef void *main = self.L
        cdef void *co
        cdef int ref
        cdef int status
        cdef int top
        cdef const char *url_text
        cdef const char *mark
        cdef Py_ssize_t url_size
        if self.pooled:
            self.pooled -= 1
            co = self.threads[self.pooled]
            ref = self.thread_refs[self.pooled]
        else:
            co = self.newthread(main)  # pushed on main: the reference below holds it
            ref = self.ref(main, LUA_REGISTRYINDEX)
        if not self.checkstack(co, 12):
            raise MemoryError("Lua stack")
        self.rawgeti(co, LUA_REGISTRYINDEX, self.serve_ref)
        self.pushinteger(co, <long long>fd)
        self.pushinteger(co, <long long>seq)
        self._push_method(co, method)
        # path and query apart (split at the first "?"): Lua gets both without
        # making the whole URL a string too
        url_text = PyBytes_AS_STRING(url)
        url_size = PyBytes_GET_SIZE(url)
        mark = <const char *>memchr(url_text, 63, url_size)  # "?"
        if mark == NULL:
            self.pushlstring(co, url_text, url_size)
            self.pushlstring(co, "", 0)
        else:
            self.pushlstring(co, url_text, mark - url_text)
            self.pushlstring(co, mark + 1, url_size - (mark - url_text) - 1)
        if body is None:
            self.pushnil(co)
        else:
            self.pushlstring(co, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self.pushinteger(co, <long long>flags)
        self._push_headers(co, headers)
        status = self.resume(co, 8)
        if status == 0:  # it returned: the usual case
            result = self._result(co) if self.gettop(co) else None
            self.settop(co, 0)
            if self.pooled < POOL_SIZE:
                self.threads[self.pooled] = co
                self.thread_refs[self.pooled] = ref
                self.pooled += 1
            else:
                self.unref(main, LUA_REGISTRYINDEX, ref)
            return result
        # The thread is Lua's from now on: it waits (what it waits on resumes it) or
        # it is dead (a handler raised; its stack stays for the traceback).
        top = self.gettop(main)
        if status == LUA_YIELD:
            self.settop(co, 0)
            self.rawgeti(main, LUA_REGISTRYINDEX, self.suspended_ref)
            self.rawgeti(main, LUA_REGISTRYINDEX, ref)  # the thread
            status = self.pcall(main, 1, 1, 0)
        else:
            self.rawgeti(main, LUA_REGISTRYINDEX, self.failed_ref)
            self.rawgeti(main, LUA_REGISTRYINDEX, ref)
            self.xmove(co, main, 1)  # the error value, whatever it is (error(table))
            status = self.pcall(main, 2, 1, 0)
        self.unref(main, LUA_REGISTRYINDEX, ref)
        if status == 0:
            result = self._result(main)
            self.settop(main, top)
            return result
        message = self._message(main)
        self.settop(main, top)
        raise self.error(message)

    cdef int _keep(self, void *co) noexcept:
        # a registry reference to the value on top of co's stack (left there)
        self.pushvalue(co, -1)
        return self.ref(co, LUA_REGISTRYINDEX)

    cdef void _push_method(self, void *co, bytes method) noexcept:
        cdef int i
        cdef void *key = <void *>method
        for i in range(self.methods):
            if self.method_keys[i] == key:
                self.rawgeti(co, LUA_REGISTRYINDEX, self.method_refs[i])
                return
        self.pushlstring(co, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method))
        # kept from its second time on: the llhttp driver's method objects are
        # constants, httptools' parser makes new ones (never seen twice)
        if method is self.method_seen and self.methods < METHOD_CACHE:
            self.method_objects.append(method)
            self.method_keys[self.methods] = key
            self.method_refs[self.methods] = self._keep(co)
            self.methods += 1
            self.method_seen = None
        else:
            self.method_seen = method

    cdef void _push_headers(self, void *co, bytes headers) noexcept:
        if headers is self.headers_cached:
            self.rawgeti(co, LUA_REGISTRYINDEX, self.headers_ref)
            return
        self.pushlstring(co, PyBytes_AS_STRING(headers), PyBytes_GET_SIZE(headers))
        if headers is self.headers_seen:  # the same object twice: keep it as a string
            if self.headers_ref != LUA_NOREF:
                self.unref(self.L, LUA_REGISTRYINDEX, self.headers_ref)
            self.headers_ref = self._keep(co)
            self.headers_cached = headers
            self.headers_seen = None
        else:
            self.headers_seen = headers

    cdef str _message(self, void *L):
        # the error at the top of L
        cdef size_t size
        cdef const char *text = self.tolstring(L, -1, &size) \
            if self.type_(L, -1) == T_STRING else NULL
        if text == NULL:
            return "error object is not a string"
        return PyBytes_FromStringAndSize(text, size).decode("utf-8", "replace")

    def __call__(self, fd: int, seq: int, method: bytes, url: bytes, body: bytes | None,
                 flags: int, headers: bytes) -> object:
        """The same as :meth:`call`, for callers that hold it as a plain callable."""
        return self.call(fd, seq, method, url, body, flags, headers)
