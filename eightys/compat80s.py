"""The parts of 80s's Lua surface that need the worker: ``net.sockname``,
``net.popen`` (``aio:popen``), stream routes (``aio:stream_http_*``), HTTP limits
set from Lua (``aio:set_max_http_body``/``_header``), and the pure helpers
``net.partscan`` and ``net.mkdir``.

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
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from eightys.protocols.http import HttpProtocol
    from eightys.worker import Worker

log = logging.getLogger("eightys.compat80s")

#: Longest needle net.partscan takes (80s's limit).
MAX_NEEDLE = 256
#: Stop reading a child's output once this much waits for Lua (it never stalls the loop).
PIPE_HIGH_WATER = 256 * 1024


def partscan(haystack: bytes, needle: bytes, offset: Any = 1) -> tuple[int, int]:
    """``net.partscan(haystack, needle, offset)``: the first occurrence of ``needle``
    at or after 1-based ``offset``, as ``(position, len(needle))``; failing that,
    the longest prefix of ``needle`` that ends the haystack (a delimiter split
    across reads), as ``(position, matched_length)``; failing that
    ``(len(haystack) + 1, 0)``. Positions are 1-based. A needle over 256 bytes
    gives ``(0, 0)`` (80s's limit); an offset below 1 counts as 1."""
    size = len(haystack)
    if not haystack or not needle:
        return size + 1, 0
    if len(needle) > MAX_NEEDLE:
        return 0, 0
    start = int(offset) - 1 if isinstance(offset, (int, float)) else 0
    start = min(max(start, 0), size)
    found = haystack.find(needle, start)
    if found != -1:
        return found + 1, len(needle)
    for k in range(min(len(needle) - 1, size - start), 0, -1):
        if haystack.endswith(needle[:k]):
            return size - k + 1, k
    return size + 1, 0


def mkdir(path: bytes, permissions: Any = 0o777) -> bool:
    """``net.mkdir(path[, permissions])``: true if the directory exists afterwards."""
    try:
        os.mkdir(path, int(permissions) if isinstance(permissions, (int, float)) else 0o777)
    except FileExistsError:
        return True
    except (OSError, ValueError):
        return os.path.isdir(path)
    return True


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


class EightiesHost:
    """The worker-side half of the 80s compatibility surface."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        #: (METHOD, path) of every aio:stream_http_* route; HttpProtocol hands such
        #: a request's connection over to a raw stream after its head.
        self.stream_routes: set[tuple[bytes, bytes]] = set()
        self.stream_dispatch: Callable[..., Any] | None = None
        self.children: set[_ChildProtocol] = set()
        self._defaults = (worker.http_limits.max_header, worker.http_limits.max_body)
        from eightys.http_client import HttpClient

        self.http_client = HttpClient(worker)

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {
            b"sockname": self.sockname, b"popen": self.popen,
            b"stream_route": self.stream_route,
            b"set_stream_dispatch": self.set_stream_dispatch,
            b"set_http_limit": self.set_http_limit, b"resolve": self.resolve,
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
        """Add (or, with ``on`` false, remove) a stream route."""
        key = (method, path)
        if on:
            self.stream_routes.add(key)
        else:
            self.stream_routes.discard(key)

    def set_stream_dispatch(self, fn: Any) -> None:
        """The Lua function that starts a stream handler: fn(fd, method, url, headers...)."""
        self.stream_dispatch = fn

    def switch_to_stream(self, conn: "HttpProtocol", method: bytes, url: bytes,
                         headers: list[bytes], trailing: bytes) -> None:
        """Hand the HTTP connection ``conn`` over to a raw stream: its handle stays,
        its events go to the aiosocket the stream handler reads from, and the bytes
        that followed the request head are its first data."""
        from eightys.protocols.raw import RawProtocol

        worker = self.worker
        transport = conn.transport
        if transport is None or self.stream_dispatch is None:
            return
        raw = RawProtocol(worker, conn.fd)
        raw.transport = transport
        worker.connections[conn.fd] = raw
        transport.set_protocol(raw)
        if conn.read_paused:
            transport.resume_reading()
        worker.runtime.dispatch_call(self.stream_dispatch, conn.fd, method, url, *headers)
        if trailing and not raw.closing:
            raw.data_received(trailing)

    # -- net.popen ------------------------------------------------------------------

    def popen(self, elfd: Any, command: Any = None, *args: Any) -> Any:
        """``net.popen(elfd, cmd, args...)`` -> read_fd, write_fd, or nil, err.
        No shell: ``cmd`` is looked up on PATH and gets ``args`` as given."""
        if type(command) is not bytes or not command:
            return None, b"net.popen: command must be a non-empty string"
        argv = [a if type(a) is bytes else str(a).encode() for a in args]
        worker = self.worker
        read_fd, write_fd = worker.new_fd(), worker.new_fd()
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

    def stop(self) -> None:
        """The worker stops: kill every child still running."""
        for child in list(self.children):
            self.kill(child)
