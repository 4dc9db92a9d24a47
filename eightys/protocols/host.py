"""The narrow interface a connection protocol sees of its worker.

A protocol never imports the worker: the worker builds one :class:`ConnectionHost`
and hands it to every protocol it creates. What is here is all a protocol may use:
the coarse clock, the registry of open connections (``net.*`` finds them by their
handle), the limits, a logger, task spawning, and the dispatchers into Lua. The
static-file fast path, the reload-mode script injection and the metrics/access-log
accounting are optional hooks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable, Coroutine

from eightys.protocols.http_core import Clock, HttpLimits

#: Lua dispatcher for one HTTP request:
#: ``dispatch(fd, seq, method, url, body, flags, headers) -> bytes | False | None``
#: (the complete response, False if the handler answered through ``send``, None if
#: it is still working).
HttpDispatch = Callable[..., Any]
#: ``static(conn, request) -> bool``: answer a GET/HEAD before Lua runs (True if it did).
StaticHook = Callable[[Any, tuple], bool]
#: ``inject(response) -> response``: rewrite a complete HTML response (reload mode).
InjectHook = Callable[[bytes], bytes]


class ConnectionHost:
    """What protocols get from the worker (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: HttpLimits,
                 log: logging.Logger) -> None:
        self.loop = loop
        self.limits = limits
        self.log = log
        #: The coarse clock (loop time, advanced once a second by the worker's sweep),
        #: shared with every HTTP connection's core; ``now`` reads it.
        self.clock = Clock(loop.time())
        #: Open connections by handle (accepted and outgoing, every protocol).
        self.connections: dict[int, Any] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Lua dispatchers and hooks, filled in by the worker once Lua is loaded
        self.dispatch_http: HttpDispatch = _not_ready
        #: The same dispatcher as an eightys.lua_call.LuaDispatch (a C call from the
        #: compiled request loop), None where that module is not built.
        self.direct_dispatch_http: Any = None
        self.dispatch_call: Callable[..., Any] = _not_ready
        self.http_timeout: Callable[[int, int], Any] = _not_ready
        self.http_gone: Callable[[int], Any] = _not_ready
        self.raw_accept: Callable[[int], Any] = _not_ready
        self.raw_data: Callable[[int, bytes], Any] = _not_ready
        self.raw_write: Callable[[int], Any] = _not_ready
        self.raw_close: Callable[[int, Any], Any] = _not_ready
        #: [static, inject] (see the properties): one list every protocol holds, so a
        #: hook set later (a reload) reaches the open connections, read by index.
        self.hooks: list[Any] = [None, None]
        #: The server-wide network ACL (eightys.acl.Gate), None when there is none:
        #: ``gate.admit(transport)`` in connection_made, before any Lua runs.
        self.gate: Any = None
        #: Per-response accounting for metrics and the access log (an
        #: eightys.protocols.stats.HttpStats), None when both are off.
        self.stats: Any = None

    @property
    def now(self) -> float:
        """The coarse clock's time (loop time, at most a second old)."""
        return self.clock.now

    @now.setter
    def now(self, now: float) -> None:
        self.clock.now = now

    @property
    def static(self) -> StaticHook | None:
        """The static-file fast path, or None."""
        return self.hooks[0]

    @static.setter
    def static(self, hook: StaticHook | None) -> None:
        self.hooks[0] = hook

    @property
    def inject(self) -> InjectHook | None:
        """The reload-mode script injection, or None."""
        return self.hooks[1]

    @inject.setter
    def inject(self, hook: InjectHook | None) -> None:
        self.hooks[1] = hook

    def new_fd(self) -> int:
        """A fresh connection handle (never reused, unlike OS file descriptors)."""
        return next(self._ids)

    def register(self, fd: int, conn: Any) -> None:
        """Connection ``fd`` is open: ``net.*`` calls reach it from now on."""
        self.connections[fd] = conn

    def forget(self, fd: int) -> None:
        """Connection ``fd`` ended (or was handed to another protocol)."""
        self.connections.pop(fd, None)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held until it finishes (the loop holds tasks only
        weakly: an unreferenced task can be collected mid-flight)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _not_ready(*_args: Any) -> Any:
    raise RuntimeError("the Lua runtime is not loaded yet")
