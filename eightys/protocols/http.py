"""HTTP/1.1 connections: the asyncio adapter around the sans-IO core.

The hot path of one request, in order:

1. uvloop calls :meth:`HttpProtocol.data_received` with what one read returned;
2. :meth:`HttpConnection.receive_data <eightys.protocols.http_core.HttpConnection.receive_data>`
   (httptools inside) returns the requests that became complete;
3. each goes to the static-file hook (content server) or to ONE Lua call,
   ``http.dispatch`` in ``eightys/lua/eightys/http.lua``, which usually returns the
   finished response bytes;
4. the core queues them in request order; everything one read produced leaves
   with ONE write: ``send(2)`` through :mod:`eightys.protocols.sockwrite` while uvloop
   has nothing buffered (compiled, plain TCP), else ``transport.write``.

This module owns the transport, flow control (:class:`~eightys.protocols.flow.FlowControl`),
the in-flight window (at most ``MAX_IN_FLIGHT`` requests dispatched ahead of the
output; the rest of a pipelined read waits, parsed, with reading paused), timeouts
(applied by the worker's once-a-second sweep through :meth:`HttpProtocol.check_timeout`)
and the protocol switch: after the answer to an upgrade request the transport is
handed to another protocol with the bytes that followed the head.
"""

from __future__ import annotations

from collections import deque
from typing import Any


from eightys.acl import ADMIT, DENY
from eightys.protocols.flow import PAUSE_BACKLOG, PAUSE_UPGRADE, FlowControl
from eightys.protocols.host import ConnectionHost
from eightys.protocols.http_core import (
    CLOSED, CLOSING, SWITCHED, SWITCHING, TIMEOUT_HANDLER, TIMEOUT_NONE, TIMEOUT_REQUEST,
    HttpConnection,
)
from eightys.protocols.http_core import COMPILED as CORE_COMPILED
from eightys.wire import error_response

#: The parser class of every connection's core: httptools' llhttp driven from C
#: when the core is compiled (eightys/protocols/llhttp.pyx), else None (httptools').
PARSER: Any = None
if CORE_COMPILED:
    try:
        from eightys.protocols.llhttp import RequestParser, available as _llhttp_available
        PARSER = RequestParser if _llhttp_available() else None
    except (ImportError, ValueError):  # not built, or built against another core
        pass

#: Makes the writer that sends responses to the socket directly when the transport is
#: uvloop's plain TCP one (eightys/protocols/sockwrite.pyx), else None: through
#: ``transport.write``. C only, like PARSER.
writer_for: Any = None
if CORE_COMPILED:
    try:
        from eightys.protocols.sockwrite import for_transport as writer_for
    except ImportError:
        pass

#: Stop dispatching (and reading) once this many requests on one connection await
#: their responses.
MAX_IN_FLIGHT = 64
#: When the worker stops, how long an idle connection (nothing sent yet, or between
#: two keep-alive requests) gets for its next request (clients keep connecting
#: through a rolling restart, and sending on their open connections).
FIRST_REQUEST_WAIT = 0.25


class HttpProtocol:
    """One HTTP/1.1 connection. Its handle in Lua is ``self.fd``.

    An asyncio protocol by duck typing (uvloop needs no base class)."""

    # Attributes are declared (with their C types) in http.pxd.

    def __init__(self, host: ConnectionHost, fd: int, flags: int = 0) -> None:
        self.host = host
        self.fd = fd
        # flags: what every request on the connection carries (wire.FLAG_TLS)
        self.core = HttpConnection(host.limits, host.clock, flags, PARSER)
        self.dispatch = host.dispatch_http
        self.direct = host.direct_dispatch_http  # the same, as a C call (None: not built)
        self.hooks = host.hooks  # [static, inject], shared with the host
        #: Metrics/access-log accounting (eightys/protocols/stats.py); None when both are off.
        self.stats = host.stats
        self.transport = None
        #: sends what _flush writes straight to the socket (None: transport.write)
        self.writer = None
        self.flow = None  # type: ignore[assignment]  # set by connection_made
        self.parked = None  # deque of parsed requests beyond the in-flight window
        self.backlog = False  # reading is paused: too many requests in flight (PAUSE_BACKLOG)
        self.closed = False
        self.in_batch = False  # inside data_received: output waits for its one write
        self.switch_to = None  # the protocol to hand the transport to
        self.upgrade = None  # the request that asked to upgrade
        self._progress = []  # futures woken when output moves on
        self._run_scheduled = False
        #: ``screen(conn, request) -> bool`` for a connection from a trusted proxy
        #: under server-wide ACLs (eightys.acl.Gate.screen): True if it answered 403.
        self.screen = None

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        gate = self.host.gate
        if gate is not None:  # server-wide ACL: refused before anything else runs
            verdict = gate.admit(transport)
            if verdict != ADMIT:
                if verdict == DENY:
                    self.closed = True
                    transport.close()
                    return
                self.screen = gate.screen
        self.flow = FlowControl(transport)
        if writer_for is not None:
            self.writer = writer_for(transport)
        self.host.register(self.fd, self)

    def data_received(self, data: bytes) -> None:
        if self.stats is not None:
            self.stats.bytes_in += len(data)
        core = self.core
        events = core.receive_data(data)
        if events:
            self.in_batch = True
            try:
                if self.parked is None:
                    self._dispatch_events(events, 0)
                else:
                    self.parked.extend(events)
            finally:
                self.in_batch = False
        self._flush()

    def eof_received(self) -> bool:
        # A client that half-closes (`printf 'GET / ...' | nc`) still gets its answers.
        keep_open = self.core.receive_eof()
        self._flush()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        core = self.core
        core.release_bodies()  # body files of requests it still held
        if core.state != SWITCHED:
            self.host.forget(self.fd)
            if core.pending_since:
                self.host.http_gone(self.fd)  # Lua drops what it kept for those handlers
        if self.stats is not None:
            self.stats.lost(self)
        if self.flow is not None:
            self.flow.wake(False)
        self._wake_progress()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        self._wake_progress()
        if self.parked:
            self._schedule_parked()

    # -- requests -----------------------------------------------------------------------

    def _dispatch_events(self, events: list, start: int) -> None:
        core = self.core
        window = MAX_IN_FLIGHT  # a C integer when compiled (http.pxd)
        limit = core.seq_out + window
        hooks = self.hooks
        static = hooks[0]
        inject = hooks[1]
        dispatch = self.dispatch
        direct = self.direct
        screen = self.screen
        fd = self.fd
        stats = self.stats
        for i in range(start, len(events)):
            event = events[i]
            if type(event) is not tuple:
                if stats is not None:
                    stats.refused(self, event.status)
                continue  # a RemoteError: its answer is queued, the connection closes after it
            request = event  # a tuple (compiled: its items are read without checks)
            seq = request[0]
            if seq >= limit:  # beyond the window: park the rest until responses go out
                self.parked = deque(events[i:])
                self._pause_backlog()
                return
            if core.state == SWITCHING and seq == core.upgrade_seq:
                self.upgrade = request
                self.flow.pause(PAUSE_UPGRADE)  # what follows waits for the handler's decision
            if screen is not None and screen(self, request):
                continue  # a proxied client the server-wide ACL refuses: 403
            method = request[1]
            if stats is not None:
                stats.begin(self, request)
            if static is not None and (method == b"GET" or method == b"HEAD") \
                    and static(self, request):
                if stats is not None:
                    stats.end()
                continue
            if direct is not None:
                # request[0], not seq: the Python integer as it is (compiled, seq is C)
                out = direct.call(fd, request[0], method, request[2], request[3], request[4],
                                  request[5])
            else:
                out = dispatch(fd, request[0], method, request[2], request[3], request[4],
                               request[5])
            if out:
                if inject is not None:
                    out = inject(out)
                core.send(seq, out, True)
                if stats is not None:
                    stats.sent(self, seq, out, True)
            elif out is None:
                core.mark_pending(seq)  # the handler is still working: handler timeout
            if stats is not None:
                stats.end()
        if core.seq_in - core.seq_out >= window:
            self._pause_backlog()

    def _schedule_parked(self) -> None:
        if not self._run_scheduled:
            self._run_scheduled = True
            self.host.loop.call_soon(self._run_parked)

    def _run_parked(self) -> None:
        """Dispatch parked requests (at most MAX_IN_FLIGHT ahead of the output), with
        one write for their responses, as data_received does."""
        self._run_scheduled = False
        parked = self.parked
        if self.closed or not parked or self.flow.write_paused:
            return  # resume_writing comes back here
        if parked[0][0] >= self.core.seq_out + MAX_IN_FLIGHT:
            return  # still too many in flight: _flush comes back when responses leave
        events = list(parked)
        self.parked = None
        self.in_batch = True
        try:
            self._dispatch_events(events, 0)
        finally:
            self.in_batch = False
        self._flush()

    # -- output -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the core queued, then act on its state (close, switch, resume)."""
        core = self.core
        out = core.data_to_send()
        transport = self.transport
        if out and not self.closed:
            if self.writer is not None:
                self.writer.write(out)
            else:
                transport.write(out)
            if self._progress:
                self._wake_progress()
        state = core.state
        if state >= CLOSING:
            if state == CLOSED:
                if not self.closed:
                    transport.close()
            elif state == SWITCHED:
                self._hand_over()
            return
        if self.backlog:
            parked = self.parked
            if parked:
                if parked[0][0] < core.seq_out + MAX_IN_FLIGHT:
                    self._schedule_parked()  # the window moved: dispatch more
            elif core.seq_in - core.seq_out < MAX_IN_FLIGHT:
                self.backlog = False
                self.flow.resume(PAUSE_BACKLOG)

    def _pause_backlog(self) -> None:
        # kept here too: _flush reads it on every response (the FlowControl's
        # attribute is a Python lookup)
        self.backlog = True
        self.flow.pause(PAUSE_BACKLOG)

    def send(self, seq: int, data: bytes, final: bool, close: Any = None) -> bool:
        """Part (or, with ``final``, the end) of the response to request ``seq``, from
        code that answers later (async handlers, streams, files). Returns False once
        the client can no longer get it."""
        if self.closed:
            return False
        if final and self.host.inject is not None and data.startswith(b"HTTP/"):
            data = self.host.inject(data)  # a complete page from an async handler
        ok = self.core.send(seq, data, final, bool(close))
        if ok and self.stats is not None:
            self.stats.sent(self, seq, data, final)
        if ok and not self.in_batch:
            self._flush()
        return ok

    def write(self, data: bytes) -> bool:
        """``net.write`` on an HTTP connection: raw bytes, outside the response order."""
        if self.closed or self.core.state >= SWITCHED:
            return False
        if self.in_batch:
            self.core.out.append(data)
        else:
            self.transport.write(data)
        return True

    def close(self) -> None:
        """``net.close`` on an HTTP connection: close once queued output is sent."""
        if self.transport is not None and not self.closed:
            self.core.close_now()
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed)."""
        if self.transport is not None:
            self.transport.abort()

    def drain(self, callback: Any) -> None:
        """Resolve the Lua ``callback`` with true once the output buffer has room (at
        once if it has), or with false if the connection closes first."""
        dispatch_call = self.host.dispatch_call
        if self.closed:
            dispatch_call(callback, False)
        else:
            self.flow.when_writable(lambda ok: dispatch_call(callback, ok))

    async def wait_turn(self, seq: int) -> bool:
        """Wait until request ``seq``'s response is at the head of the line and the
        client reads (streamed files go no faster than that). False once closed."""
        while not self.closed and (self.core.seq_out != seq or self.flow.write_paused):
            waiter = self.host.loop.create_future()
            self._progress.append(waiter)
            await waiter
        return not self.closed

    def _wake_progress(self) -> None:
        waiters, self._progress = self._progress, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- protocol switch ----------------------------------------------------------------

    def upgrade_request(self, seq: int) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
        """(method, url, [(name, value), ...] as received) of request ``seq`` if it
        asked to upgrade and still waits for its answer, else None."""
        request = self.upgrade
        if request is None or request[0] != seq or not self.core.is_upgrade(seq):
            return None
        fields = request[5].split(b"\0") if request[5] else []
        return request[1], request[2], list(zip(fields[::2], fields[1::2]))

    def switch_protocol(self, seq: int, response: bytes, protocol: Any) -> bool:
        """Answer upgrade request ``seq`` with ``response`` (a 101 head), then hand the
        transport to ``protocol``: ``connection_made(transport)``, then
        ``data_received(trailing)`` if bytes followed the head. The handle (``fd``)
        stays the same; the new protocol registers itself. False if the connection is
        gone or ``seq`` is not a pending upgrade request."""
        if self.closed or not self.core.switch_protocol(seq, response):
            return False
        if self.stats is not None:
            self.stats.sent(self, seq, response, True)
        self.switch_to = protocol
        if not self.in_batch:
            self._flush()
        return True

    def _hand_over(self) -> None:
        protocol, self.switch_to = self.switch_to, None
        if protocol is None or self.closed:
            return
        transport = self.transport
        trailing = self.core.trailing
        self.host.forget(self.fd)
        if self.stats is not None:
            self.stats.lost(self)  # its HTTP part ended (the next protocol counts on)
        self.backlog = False
        self.flow.resume(self.flow.reasons)  # the new protocol starts with reading on
        self.flow.wake(False)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if trailing:
            protocol.data_received(trailing)

    # -- called by the worker -----------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        """The once-a-second sweep: slow heads/bodies (408), idle keep-alives, handlers
        that never answer (504, reported to Lua for the log line)."""
        core = self.core
        result = core.check_timeout(now)
        if result != TIMEOUT_NONE:
            if result == TIMEOUT_HANDLER:
                # Lua logs where the handler waits and renders the 504 (the app's
                # error page, if it has one)
                seq = core.timed_out_seq
                response = self.host.http_timeout(self.fd, seq)
                response = response if response else error_response(504)
                if core.send(seq, response, True, True) and self.stats is not None:
                    self.stats.sent(self, seq, response, True)
            elif result == TIMEOUT_REQUEST and self.stats is not None:
                self.stats.refused(self, 408)
            self._flush()

    def shutdown(self) -> None:
        """The worker is stopping: finish what is in progress (with ``Connection:
        close``), then close."""
        core = self.core
        if core.seq_in == core.seq_out and not core.has_partial_request:
            # Idle: accepted just before the listener closed, or a keep-alive client
            # between two requests. Its next request may be on the way already (a
            # client under load sends it the moment it has read the last response):
            # closing now would lose it, so it gets a moment, and is answered with
            # Connection: close.
            core.draining = True
            self.host.loop.call_later(FIRST_REQUEST_WAIT, self._drain_now)
            return
        self._drain_now()

    def _drain_now(self) -> None:
        if not self.closed:
            self.core.start_draining()
            self._flush()
