"""A minimal in-process :class:`~eightys.lua_runtime.Host` for Lua tests.

It gives a real :class:`~eightys.lua_runtime.LuaRuntime` a real uvloop loop and
timers that work exactly like the worker's, keeps ``log_error`` and ``print``
output in lists tests can assert on, and has no sockets, mail or reload (those
``net.*`` functions, and any other Host method, fail with
``nil, "not available in tests"``)::

    with LuaHost("lua54") as host:
        host.runtime.execute("aio:set_timeout(function() fired = true end, 0.01)")
        host.run_until(lambda: host.runtime.lua.globals()[b"fired"], timeout=1)

``private`` adds entries to the private host table, as the worker does for its
host-function modules: a function of the host returning them, e.g.
``LuaHost(private=lambda host: MySQLHost(host).functions())``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any, Callable

import pytest
import uvloop

from eightys.lua_runtime import Host, LuaRuntime
from eightys.timers import Timers

NOT_AVAILABLE = b"not available in tests"


def _not_available(*args: Any) -> Any:
    return None, NOT_AVAILABLE


class LuaHost:
    """One Lua state on its own uvloop loop; dispose() of it (or use ``with``) when done.
    (``close`` is ``net.close``, as the Host protocol requires.)"""

    def __init__(self, engine: str = "luajit", entry_source: str = "",
                 private: Callable[[LuaHost], dict[bytes, Any]] | None = None) -> None:
        self.loop = uvloop.new_event_loop()
        self.errors: list[str] = []   # log_error lines, decoded
        self.output: list[str] = []   # print() lines, decoded
        self.timers = Timers(self.loop, lambda callback: self.runtime.dispatch_call(callback))
        fd, self.entry = tempfile.mkstemp(prefix="eightys-test-", suffix=".lua")
        with os.fdopen(fd, "w") as f:
            f.write(entry_source)
        self.runtime = LuaRuntime(self, engine=engine, entry=self.entry,
                                  private=private(self) if private is not None else None)

    def dispose(self) -> None:
        """Cancel pending timers, close the loop and remove the entry file."""
        self.timers.cancel_all()
        self.loop.close()
        os.unlink(self.entry)

    def __enter__(self) -> LuaHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # -- driving the loop ------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call fn(*args) from inside the running loop (as the worker calls Lua) and
        return its result."""
        async def inside() -> Any:
            return fn(*args)
        return self.loop.run_until_complete(inside())

    def run_until(self, condition: Callable[[], Any], timeout: float = 2.0,
                  what: str = "the condition") -> None:
        """Run the loop until condition() is true; fail the test after timeout seconds."""
        async def wait() -> bool:
            deadline = self.loop.time() + timeout
            while not condition():
                if self.loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.001)
            return True

        if not self.loop.run_until_complete(wait()):
            pytest.fail(f"timed out after {timeout} s waiting for {what}", pytrace=False)

    # -- log_error as tests see it -----------------------------------------------------

    def claim_error(self, text: bytes) -> Any:
        """Remove and return the first log_error line containing text; if none does,
        return nil and every line logged so far (for the failure message)."""
        needle = text.decode("utf-8", "replace")
        for i, line in enumerate(self.errors):
            if needle in line:
                del self.errors[i]
                return line.encode()
        return None, "\n".join(self.errors).encode()

    # -- the Host protocol ----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Host methods this class does not define (the protocol keeps growing: HTTP,
        # ...) are "not available" too; anything else is a real AttributeError.
        if not name.startswith("_") and callable(getattr(Host, name, None)):
            return _not_available
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def write(self, elfd: Any, fd: Any, data: Any = None, offset: Any = None, *rest: Any) -> Any:
        return False, NOT_AVAILABLE

    def close(self, elfd: Any, fd: Any, *rest: Any) -> Any:
        return False

    def connect(self, elfd: Any, host: Any, port: Any = None, *rest: Any) -> Any:
        return None, NOT_AVAILABLE

    def reload(self, *args: Any) -> Any:
        return False, NOT_AVAILABLE

    def quit(self, *args: Any) -> Any:
        return False, NOT_AVAILABLE

    def mail(self, target: Any, message: Any = None, receiver_fd: Any = None) -> Any:
        return None, NOT_AVAILABLE

    def reload_all(self) -> Any:
        return False, NOT_AVAILABLE

    def info(self) -> bytes:
        return b"eightys test host"

    def start_timer(self, delay: Any, callback: Any) -> int:
        return self.timers.start(delay, callback)

    def cancel_timer(self, timer_id: Any) -> bool:
        return self.timers.cancel(timer_id)

    def log_error(self, text: bytes) -> None:
        self.errors.append(text.decode("utf-8", "replace"))

    def log_output(self, text: bytes) -> None:
        self.output.append(text.decode("utf-8", "replace"))
