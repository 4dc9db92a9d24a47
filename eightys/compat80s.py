"""The parts of 80s's Lua surface that need the worker: ``net.sockname``,
``net.popen`` (``aio:popen``), stream routes (``aio:stream_http_*``), HTTP limits
set from Lua (``aio:set_max_http_body``/``_header``), name lookups and the HTTP
client. (The pure ``net.partscan`` and ``net.mkdir`` are in eightys.net80s.)

The worker builds one :class:`EightiesHost`; its :meth:`~EightiesHost.functions`
go into the private host table and ``eightys/lua/eightys/compat80s.lua`` installs
them under their 80s names.

Subprocesses (``net.popen``) run without a shell, with the arguments exactly as
given; stdout and stderr go to the read handle (as in 80s), the write handle is
the child's stdin. Children still running when the worker stops are killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from eightys.http_client import HttpClient
from eightys.protocols.flow import FlowControl
from eightys.protocols.raw import RawProtocol

if TYPE_CHECKING:
    from eightys.lua_runtime import LuaRuntime
    from eightys.protocols.host import ConnectionHost
    from eightys.protocols.http_core import HttpLimits


class CompatOwner(Protocol):
    """What this module needs from the worker (it never imports the worker)."""

    connections: dict[int, Any]
    http_limits: "HttpLimits"
    host: "ConnectionHost"
    runtime: "LuaRuntime"
    loop: asyncio.AbstractEventLoop


log = logging.getLogger("eightys.compat80s")


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Delivers a child's stdout+stderr to Lua as ``on_data`` of the read handle."""

    def __init__(self, host: "EightiesHost", read_fd: int, write_fd: int) -> None:
        self.host = host
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.transport: asyncio.SubprocessTransport | None = None
        self.open_pipes = 2  # stdout, stderr
        self.ended = False
        # stdin written (or closed) before the child was started
        self.pending: list[bytes] = []
        self.close_stdin = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stdin = transport.get_pipe_transport(0)  # type: ignore[attr-defined]
        if stdin is not None:
            for data in self.pending:
                stdin.write(data)
            if self.close_stdin:
                stdin.close()
        self.pending = []

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if not self.ended:
            self.host.worker.runtime.dispatch_data(self.read_fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (1, 2):
            self.open_pipes -= 1
            if self.open_pipes == 0:
                self._end()

    def process_exited(self) -> None:
        # output may still be in the pipes: the read handle ends when both are drained
        self.host.children.discard(self)
        if self.open_pipes <= 0:
            self._end()
        if self.ended and self.transport is not None:
            self.transport.close()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        worker = self.host.worker
        for fd in (self.read_fd, self.write_fd):
            if worker.connections.pop(fd, None) is not None:
                worker.runtime.dispatch_close(fd, None)
        if self.transport is not None and self.transport.get_returncode() is not None:
            self.transport.close()


class _PipeHandle:
    """One end of a child's pipes in ``worker.connections`` (so ``net.write`` and
    ``net.close`` work on it like on a socket)."""

    __slots__ = ("child", "writable", "transport")

    def __init__(self, child: _ChildProtocol, writable: bool) -> None:
        self.child = child
        self.writable = writable
        self.transport = None  # the worker's drain aborts handles with a transport

    def write(self, data: bytes) -> bool:
        child = self.child
        if not self.writable or child.ended or child.close_stdin:
            return False
        transport = child.transport
        if transport is None:  # not started yet
            child.pending.append(data)
            return True
        pipe = transport.get_pipe_transport(0)
        if pipe is None or pipe.is_closing():
            return False
        pipe.write(data)
        return True

    def close(self) -> None:
        transport = self.child.transport
        if transport is None:
            if self.writable:
                self.child.close_stdin = True
            return
        if self.writable:
            pipe = transport.get_pipe_transport(0)
            if pipe is not None:
                pipe.close()  # the child sees end of input
        else:
            self.child.host.kill(self.child)

    def check_timeout(self, now: float) -> None:
        """Pipes have no server-side timeouts."""

    def shutdown(self) -> None:
        """The worker is stopping: the child is killed (EightiesHost.stop)."""
        self.child.host.kill(self.child)


class _StreamProtocol(RawProtocol):
    """A connection that was HTTP until a stream route took it over: raw from now
    on, without the accept hook (it was accepted as HTTP)."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flow = FlowControl(transport)
        self.host.register(self.fd, self)


class EightiesHost:
    """The worker-side half of the 80s compatibility surface."""

    def __init__(self, worker: CompatOwner) -> None:
        self.worker = worker
        self.children: set[_ChildProtocol] = set()
        self._defaults = (worker.http_limits.max_header, worker.http_limits.max_body)
        self.http_client = HttpClient(worker)
        self._watches: dict[int, asyncio.Event] = {}
        self._watch_ids = 0

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {
            b"sockname": self.sockname, b"popen": self.popen,
            b"stream_route": self.stream_route, b"stream_switch": self.stream_switch,
            b"stream_ready": self.stream_ready,
            b"set_http_limit": self.set_http_limit, b"resolve": self.resolve,
            b"watch": self.watch, b"unwatch": self.unwatch,
            **self.http_client.functions(),
        }

    # -- aio.lib.dns ----------------------------------------------------------------

    def resolve(self, name: bytes, record_type: Any = b"A") -> Any:
        """A Lua promise of ``{ip = "..."}`` (the first address of the record type,
        A or AAAA) or ``{error = "..."}``, looked up by the loop's resolver
        (getaddrinfo in a thread: the worker never blocks)."""
        runtime = self.worker.runtime
        kind = (record_type or b"A").upper()

        async def lookup() -> dict[bytes, Any]:
            if kind not in (b"A", b"AAAA"):
                return {b"error": f"{kind.decode()} records are not supported (A, AAAA are)"}
            family = socket.AF_INET if kind == b"A" else socket.AF_INET6
            try:
                infos = await self.worker.loop.getaddrinfo(
                    name.decode("idna"), None, family=family, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                return {b"error": f"cannot resolve {name.decode('utf-8', 'replace')}: {exc}"}
            if not infos:
                return {b"error": f"no {kind.decode()} record for {name.decode()}"}
            return {b"ip": infos[0][4][0]}

        return runtime.promise_from(lookup(), lambda result: (runtime.to_lua(result),))

    # -- aio:watch --------------------------------------------------------------------

    def watch(self, paths: Any, callback: Any) -> Any:
        """``aio:watch``: call the Lua ``callback(events)`` with each batch of changes
        under ``paths`` (files or folders, watched recursively) until :meth:`unwatch`.
        Each event is ``{name, create, modify, delete, dir, clock}`` as in 80s.
        Returns the watch id, or nil, err."""
        from watchfiles import Change, awatch

        runtime = self.worker.runtime
        targets = [os.fsdecode(p) for p in runtime.to_python(paths).values()] \
            if paths is not None else []
        missing = [t for t in targets if not os.path.exists(t)]
        if not targets or missing:
            return None, f"cannot watch {', '.join(missing) or 'nothing'}".encode()
        self._watch_ids += 1
        watch_id = self._watch_ids
        stop = asyncio.Event()
        self._watches[watch_id] = stop

        async def run() -> None:
            try:
                async for changes in awatch(*targets, stop_event=stop, step=50,
                                            rust_timeout=1000, yield_on_timeout=False):
                    now = time.monotonic()
                    events = [{b"name": os.fsencode(path), b"create": change == Change.added,
                               b"modify": change == Change.modified,
                               b"delete": change == Change.deleted,
                               b"dir": os.path.isdir(path), b"clock": now}
                              for change, path in sorted(changes, key=lambda c: c[1])]
                    runtime.dispatch_call(callback, runtime.to_lua(events))
            except Exception as exc:  # noqa: BLE001 - a broken watch must not take the worker down
                log.error("aio:watch %s: %s", ", ".join(targets), exc)
            finally:
                self._watches.pop(watch_id, None)

        self.worker.host.spawn(run())
        return watch_id

    def unwatch(self, watch_id: Any) -> bool:
        """Stop a watch started by :meth:`watch`; False if it is not running."""
        stop = self._watches.pop(watch_id, None)
        if stop is None:
            return False
        stop.set()
        return True

    # -- net.sockname -------------------------------------------------------------

    def sockname(self, fd: Any) -> Any:
        """``net.sockname(fd)``: the peer's ``ip, port`` (80s names it so; it is
        getpeername), or nothing for a Unix socket or an unknown handle."""
        conn = self.worker.connections.get(fd)
        transport = getattr(conn, "transport", None)
        if transport is None:
            return None
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or len(peer) < 2:
            return None
        return peer[0].encode(), peer[1]

    # -- HTTP limits --------------------------------------------------------------

    def set_http_limit(self, which: bytes, size: Any) -> bool:
        """``aio:set_max_http_header/_body(size)``; nil restores the configured limit."""
        limits = self.worker.http_limits
        if which == b"header":
            limits.max_header = int(size) if size is not None else self._defaults[0]
        else:
            limits.max_body = int(size) if size is not None else self._defaults[1]
        return True

    # -- stream routes --------------------------------------------------------------

    def stream_route(self, method: bytes, path: bytes, on: Any) -> None:
        """Add (or, with ``on`` false, remove) a stream route: the HTTP core then
        treats such a request as a pending upgrade once its head is in."""
        routes = self.worker.http_limits.stream_routes
        if on:
            routes.setdefault(path, set()).add(method)
        elif path in routes:
            routes[path].discard(method)
            if not routes[path]:
                del routes[path]

    def stream_ready(self, fd: Any, seq: Any) -> bool:
        """Whether request ``seq`` on ``fd`` is a stream request waiting to switch."""
        conn = self.worker.connections.get(fd)
        return conn is not None and hasattr(conn, "upgrade_request") \
            and conn.upgrade_request(seq) is not None

    def stream_switch(self, fd: Any, seq: Any) -> bool:
        """Hand connection ``fd``, whose request ``seq`` is a stream route's, over to a
        raw stream (nothing more is answered as HTTP). Its handle stays; the bytes that
        followed the head are its first data. False if that is not possible (the
        connection is gone, or the request is not a pending stream request)."""
        conn = self.worker.connections.get(fd)
        if conn is None or not hasattr(conn, "upgrade_request") \
                or conn.upgrade_request(seq) is None:
            return False
        return bool(conn.switch_protocol(seq, b"", _StreamProtocol(self.worker.host, fd)))

    # -- net.popen ------------------------------------------------------------------

    def popen(self, elfd: Any, command: Any = None, *args: Any) -> Any:
        """``net.popen(elfd, cmd, args...)`` -> read_fd, write_fd, or nil, err.
        No shell: ``cmd`` is looked up on PATH and gets ``args`` as given."""
        if type(command) is not bytes or not command:
            return None, b"net.popen: command must be a non-empty string"
        argv = [a if type(a) is bytes else str(a).encode() for a in args]
        worker = self.worker
        read_fd, write_fd = worker.host.new_fd(), worker.host.new_fd()
        child = _ChildProtocol(self, read_fd, write_fd)
        worker.connections[read_fd] = _PipeHandle(child, writable=False)
        worker.connections[write_fd] = _PipeHandle(child, writable=True)
        self.children.add(child)
        worker.loop.create_task(self._spawn(child, command, argv))
        return read_fd, write_fd

    async def _spawn(self, child: _ChildProtocol, command: bytes, argv: list[bytes]) -> None:
        try:
            await self.worker.loop.subprocess_exec(
                lambda: child, command, *argv, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            log.error("popen %s: %s", command.decode("utf-8", "replace"), exc)
            self.children.discard(child)
            child.open_pipes = 0
            child._end()

    def kill(self, child: _ChildProtocol) -> None:
        """Kill a child (its read handle then ends with on_close)."""
        transport = child.transport
        if transport is not None and transport.get_returncode() is None:
            try:
                transport.kill()
            except ProcessLookupError:
                pass
