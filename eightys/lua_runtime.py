"""The bridge to Lua: the only module that imports lupa.

It builds one Lua state, installs the globals and the ``net``/``codec``/``crypto``
tables, runs ``lua/bootstrap.lua`` (which loads the aio library and returns the
dispatch functions Python calls on every event), and runs the entry script.

It knows nothing of sockets: the worker hands it a :class:`Host` whose methods
implement ``net.*``, and calls the ``dispatch_*`` attributes when events happen.

Hot-path rules (see ARCHITECTURE.md): the state uses ``encoding=None`` so Lua
strings cross as ``bytes`` without decoding; Lua only ever sees pre-bound Python
functions, never Python objects; each event is one Python->Lua call.
"""

from __future__ import annotations

import asyncio
import importlib
import errno
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from eightys import codec, crypto, net80s, wire

LUA_LIBRARY_DIR = Path(__file__).parent / "lua"

#: ``lupa`` module per ``--lua`` engine name.
ENGINES = {"luajit": "lupa.luajit21", "lua54": "lupa.lua54"}

#: Deepest table nesting converted to Python (mail payloads); deeper means a bug or a cycle.
MAX_CONVERT_DEPTH = 64


class LuaLoadError(Exception):
    """A Lua chunk failed to compile or to run; the message carries file:line."""


class Host(Protocol):
    """What the worker provides to Lua: the ``net.*`` functions, and the private ones
    the Lua library uses (timers, logging, HTTP responses, reload)."""

    def write(self, elfd: Any, fd: Any, data: Any = None, offset: Any = None, *rest: Any) -> Any: ...
    def close(self, elfd: Any, fd: Any, *rest: Any) -> Any: ...
    def connect(self, elfd: Any, host: Any, port: Any = None, *rest: Any) -> Any: ...
    def reload(self, *args: Any) -> Any: ...
    def quit(self, *args: Any) -> Any: ...
    def mail(self, target: Any, message: Any = None, receiver_fd: Any = None) -> Any: ...
    def reload_all(self) -> Any: ...
    def info(self) -> Any: ...
    def start_timer(self, delay: Any, callback: Any) -> int: ...
    def cancel_timer(self, timer_id: Any) -> bool: ...
    def log_error(self, text: bytes) -> None: ...
    def log_output(self, text: bytes) -> None: ...
    def http_send(self, fd: Any, seq: Any, data: bytes, final: Any, close: Any = None) -> Any: ...
    def http_drain(self, fd: Any, callback: Any) -> None: ...


def display_path(path: str) -> str:
    """A path as Lua error messages should show it: relative to the working
    directory when below it (Lua truncates long chunk names to ~60 bytes)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


#: OSError numbers -> how a Lua error message says it
_OS_ERRORS = {errno.ENOENT: b"no such file", errno.EACCES: b"permission denied",
              errno.ENOTDIR: b"not a directory", errno.EISDIR: b"is a directory",
              errno.ELOOP: b"too many symbolic links"}


def os_error(exc: OSError, path: bytes) -> bytes:
    """An OSError as a Lua error value: ``b"no such file: /x"``."""
    what = _OS_ERRORS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower().encode()
    return what + b": " + path


def _readfile(path: bytes, mode: Any = None) -> Any:
    """``net.readfile``: the whole file, or ``nil, err``."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        return None, os_error(exc, path)


class LuaRuntime:
    """One Lua state with eightys' globals and library loaded.

    After construction the ``dispatch_*`` attributes are the Lua functions the
    worker calls on events; each returns quickly and never raises for errors in
    user code (those are logged by Lua through ``Host.log_error``).
    """

    def __init__(
        self,
        host: Host,
        *,
        engine: str = "luajit",
        entry: str,
        worker_id: int = 0,
        workers: int = 1,
        port: int = 0,
        node: str = "localhost",
        extra_path: tuple[str, ...] = (),
        dev: bool = False,
        private: dict[bytes, Any] | None = None,
    ) -> None:
        lupa_module = importlib.import_module(ENGINES[engine])
        self.engine = engine
        self.lupa = lupa_module
        self.lua = lupa_module.LuaRuntime(
            encoding=None, unpack_returned_tuples=True, register_eval=False,
            register_builtins=False,
        )
        self.host = host
        self.entry = entry
        self._table = self.lua.table_from
        self._tasks: set[asyncio.Future[Any]] = set()  # running promise_from tasks

        g = self.lua.globals()
        g[b"WORKERID"] = worker_id
        g[b"WORKERS"] = workers
        g[b"PORT"] = port
        g[b"NODE"] = node.encode()
        g[b"ENTRYPOINT"] = display_path(entry).encode()
        g[b"DEV"] = dev
        # Opaque handles kept for 80s API compatibility: functions that take them ignore them.
        g[b"ELFD"] = 0
        g[b"PARENTFD"] = 0
        g[b"net"] = self._table({
            b"write": host.write, b"close": host.close, b"connect": host.connect,
            b"reload": host.reload, b"quit": host.quit, b"mail": host.mail,
            b"info": host.info, b"listdir": self._listdir, b"readfile": _readfile,
            b"clock": time.monotonic,
            b"partscan": net80s.partscan, b"mkdir": net80s.mkdir,
        })
        g[b"codec"] = self._table({
            b"url_encode": codec.url_encode, b"url_decode": codec.url_decode,
            b"html_encode": codec.html_escape, b"html_escape": codec.html_escape,
            b"hex_encode": codec.hex_encode, b"hex_decode": codec.hex_decode,
            b"base64_encode": codec.base64_encode, b"base64_decode": codec.base64_decode,
            b"mysql_encode": codec.mysql_encode,
        })
        g[b"crypto"] = self._table({
            b"sha1": crypto.sha1, b"sha256": crypto.sha256,
            b"hmac_sha256": crypto.hmac_sha256, b"random": crypto.random_bytes,
            b"encrypt": crypto.encrypt, b"decrypt": crypto.decrypt,
            b"to64": codec.base64_encode, b"from64": codec.base64_decode,
            b"cipher": crypto.cipher,
        })

        # misuse of codec.*/crypto.* raises a Lua error at the caller's file:line
        self._load_file(str(LUA_LIBRARY_DIR / "eightys" / "checked.lua"))()(g[b"codec"], g[b"crypto"])

        search = [str(LUA_LIBRARY_DIR / "?.lua"), str(LUA_LIBRARY_DIR / "?" / "init.lua")]
        entry_dir = os.path.dirname(os.path.abspath(entry))
        for directory in (entry_dir, *extra_path, os.getcwd()):
            search.append(os.path.join(directory, "?.lua"))
        private = self._table({
            b"lua_path": ";".join(search).encode(),
            b"start_timer": host.start_timer,
            b"cancel_timer": host.cancel_timer,
            b"reload_all": host.reload_all,
            b"log_error": host.log_error,
            b"log_output": host.log_output,
            b"http_send": host.http_send,
            b"http_drain": host.http_drain,
            b"engine": engine.encode(),
            b"wire": self.to_lua(wire.lua_table()),
            b"date_line": wire.date_line,
            **(private or {}),
        })
        bootstrap = self._load_file(str(LUA_LIBRARY_DIR / "bootstrap.lua"))
        dispatch = bootstrap(private)
        self.dispatch_accept: Callable[..., Any] = dispatch[b"accept"]
        self.dispatch_data: Callable[..., Any] = dispatch[b"data"]
        self.dispatch_write: Callable[..., Any] = dispatch[b"write"]
        self.dispatch_close: Callable[..., Any] = dispatch[b"close"]
        self.dispatch_message: Callable[..., Any] = dispatch[b"message"]
        self.dispatch_call: Callable[..., Any] = dispatch[b"call"]
        self.dispatch_http: Callable[..., Any] = dispatch[b"http"]
        #: The same dispatcher called through Lua's C API (eightys/lua_call.pyx),
        #: None where that module is not compiled: the protocols use it when set.
        self.direct_dispatch_http: Any = _direct_dispatch(
            engine, lupa_module, self.lua, dispatch[b"http_thread"],
            dispatch[b"http_thread_address"])
        self.dispatch_http_timeout: Callable[..., Any] = dispatch[b"http_timeout"]
        self.dispatch_http_gone: Callable[..., Any] = dispatch[b"http_gone"]
        self.set_draining: Callable[..., Any] = dispatch[b"http_draining"]
        self.set_date: Callable[..., Any] = dispatch[b"http_date"]
        self._run_file: Callable[..., Any] = dispatch[b"run_file"]
        self._call_hook: Callable[..., Any] = dispatch[b"hook"]
        self._new_promise: Callable[..., Any] = dispatch[b"new_promise"]
        self._has_global_function: Callable[..., Any] = dispatch[b"has_function"]

    def _listdir(self, path: bytes) -> Any:
        """``net.listdir``: a table of sorted entry names, directories with a trailing ``/``."""
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            return None, os_error(exc, path)
        return self._table([e.name + b"/" if e.is_dir() else e.name for e in entries])

    # -- loading code -------------------------------------------------------------

    def _load_file(self, path: str) -> Any:
        loader = self.lua.globals()[b"loadfile"]
        chunk, err = _pair(loader(display_path(path).encode()))
        if chunk is None:
            raise LuaLoadError(_text(err))
        return chunk

    def run_file(self, path: str) -> None:
        """Run a Lua file in this state (globals persist); raise LuaLoadError with
        file:line and traceback if it fails to compile or raises."""
        ok, err = _pair(self._run_file(display_path(path).encode()))
        if not ok:
            raise LuaLoadError(_text(err))

    def run_entry(self) -> None:
        """Run (or re-run, on reload) the entry script; see :meth:`run_file`."""
        self.run_file(self.entry)

    def call_hook(self, name: str, *args: Any) -> None:
        """Call global hook ``name`` if the script defined it; errors raise LuaLoadError."""
        ok, err = _pair(self._call_hook(name.encode(), *args))
        if not ok:
            raise LuaLoadError(_text(err))

    def defines(self, name: str) -> bool:
        """Whether the Lua global ``name`` is a function."""
        return bool(self._has_global_function(name.encode()))

    def has_http_routes(self) -> bool:
        """Whether the scripts registered HTTP routes (or took over aio:on_http)."""
        return bool(self.execute(b'return require("eightys.http").has_routes()'))

    def execute(self, source: str | bytes) -> Any:
        """Run a snippet of Lua source (tests and tools)."""
        return self.lua.execute(source if isinstance(source, bytes) else source.encode())

    def register_function(self, name: str, function: Callable[..., Any]) -> None:
        """Expose a Python function to Lua as global ``name``; a dotted name
        (``example.upper``) creates or extends the global table ``example``."""
        parts = [p.encode() for p in name.split(".")]
        table = self.lua.globals()
        for part in parts[:-1]:
            nxt = table[part]
            if nxt is None:
                nxt = self.lua.table()
                table[part] = nxt
            table = nxt
        table[parts[-1]] = function

    # -- values ----------------------------------------------------------------------

    def to_python(self, value: Any, _depth: int = 0) -> Any:
        """Copy a Lua value into plain Python data: tables become dicts keyed exactly as
        in Lua (so arrays stay ``{1: .., 2: ..}`` and round-trip). Functions, threads
        and userdata raise TypeError; so do cycles and nesting beyond MAX_CONVERT_DEPTH."""
        kind = self.lupa.lua_type(value)
        if kind is None:
            return value
        if kind != "table":
            raise TypeError(f"a Lua {kind} cannot leave its worker")
        if _depth >= MAX_CONVERT_DEPTH:
            raise TypeError("table nested too deeply (or it contains a cycle)")
        return {k: self.to_python(v, _depth + 1) for k, v in value.items()}

    def to_lua(self, value: Any) -> Any:
        """Inverse of :meth:`to_python`: dicts and lists become Lua tables."""
        if isinstance(value, dict):
            table = self.lua.table()
            for k, v in value.items():
                table[k] = self.to_lua(v)
            return table
        if isinstance(value, (list, tuple)):
            return self._table([self.to_lua(v) for v in value])
        if isinstance(value, str):
            return value.encode()
        return value

    def table(self, *args: Any, **kwargs: Any) -> Any:
        """A new Lua table from Python sequences/dicts (lupa's ``table_from``)."""
        return self._table(*args, **kwargs)

    # -- promises ------------------------------------------------------------------

    def new_promise(self) -> tuple[Any, Callable[..., Any]]:
        """A fresh aio promise and a Python callable that resolves it (safely: errors
        in Lua callbacks are logged, never raised into Python)."""
        promise, resolve = _pair(self._new_promise())
        dispatch_call = self.dispatch_call
        return promise, lambda *values: dispatch_call(resolve, *values)

    def promise_from(self, awaitable: Awaitable[Any],
                     convert: Callable[[Any], tuple[Any, ...]] | None = None) -> Any:
        """Run a Python awaitable on the worker's loop and return a Lua promise for it.

        The promise resolves with ``convert(result)`` (default: the result itself), or
        with ``nil, "error text"`` if the awaitable raises: Python exceptions never
        reach Lua as errors, so a failing database or lookup cannot kill a handler.
        """
        promise, resolve = self.new_promise()
        task = asyncio.ensure_future(awaitable)
        # The loop holds tasks only weakly: without this reference a task waiting on
        # a socket can be collected mid-flight and its promise never resolves.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def done(t: asyncio.Future[Any]) -> None:
            if t.cancelled():
                resolve(None, b"cancelled")
                return
            exc = t.exception()
            if exc is not None:
                resolve(None, (str(exc) or type(exc).__name__).encode())
                return
            result = t.result()
            if convert is not None:
                resolve(*convert(result))
            else:
                resolve(self.to_lua(result))

        task.add_done_callback(done)
        return promise


def _direct_dispatch(engine: str, lupa_module: Any, lua: Any, thread: Any,
                     thread_address: int | None) -> Any:
    """An :class:`eightys.lua_call.LuaDispatch` for http.dispatch, or None: eightys
    runs uncompiled (or as if, ``EIGHTYS_PURE_PYTHON=1``), the engine is not LuaJIT,
    lupa's layout is not the expected one, or ``EIGHTYS_LUPA_CALLS=1`` asks for
    lupa's calls."""
    if engine != "luajit" or thread_address is None or os.environ.get("EIGHTYS_LUPA_CALLS") \
            or os.environ.get("EIGHTYS_PURE_PYTHON"):
        return None
    try:
        from eightys.lua_call import LuaDispatch
        return LuaDispatch(lupa_module.__file__, lua, thread, int(thread_address),
                           lupa_module.LuaError)
    except ImportError:
        return None


def _pair(result: Any) -> tuple[Any, Any]:
    """lupa returns multiple Lua values as a tuple and one value as itself."""
    if isinstance(result, tuple):
        return (result + (None, None))[:2]
    return result, None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
