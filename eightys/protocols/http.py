"""HTTP/1.1 connections: httptools parses, Lua answers.

The hot path of one request, in order: ``data_received`` feeds httptools; its
callbacks collect the URL, the headers (a flat name/value list) and the body;
``on_message_complete`` makes ONE call into Lua (``http.dispatch``), which usually
returns the finished response bytes; responses produced while handling one read
are joined and written with ONE ``transport.write``.

Responses leave in request order even when handlers finish out of order
(pipelining with async handlers): each request gets a sequence number and
``send`` holds back what is not yet at the head of the line.

Bounds, so a client can only cost what the limits allow:
* head (request line + headers) > ``max_header`` -> 431, body > ``max_body`` -> 413;
* malformed requests, duplicate or invalid Content-Length, Content-Length together
  with Transfer-Encoding, bad chunk sizes -> 400; an upgrade request with a body
  -> 501; each answered, then the connection is closed;
* a request head (or body) that takes longer than ``header_timeout`` -> 408 and
  close (slowloris); an idle keep-alive connection is closed after
  ``keepalive_timeout``; both checked by the worker's once-a-second sweep, so
  no timer is armed per request;
* when the client does not read its responses, reading stops (``pause_writing``)
  until the kernel buffer drains; at most ``MAX_IN_FLIGHT`` requests are dispatched
  per read (the rest of a pipelined read waits, parsed) and at most that many wait for
  their responses before reading stops too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote_to_bytes

import httptools

from eightys.content import CONNECTION_HEADERS

if TYPE_CHECKING:
    from eightys.static import StaticFile
    from eightys.worker import Worker

#: Pause reading from a client once this much output is waiting for it.
WRITE_HIGH_WATER = 256 * 1024
#: Stop reading once this many requests on one connection await responses.
MAX_IN_FLIGHT = 64
#: When the worker stops, how long a connection that has sent nothing yet gets
#: for its first request.
FIRST_REQUEST_WAIT = 0.25
#: How often ``worker.now`` advances (Worker._sweep runs once a second).
CLOCK_STEP = 1.0

# Connection states, for the timeout sweep.
IDLE, HEAD, BODY, BUSY = 0, 1, 2, 3

_ERROR_REASONS = {
    400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int) -> bytes:
    """A complete, closing response for a request we refuse to handle."""
    reason = _ERROR_REASONS[status]
    # Date: RFC 9110 6.6.1 requires it on 4xx too (rare path: formatted on demand)
    return (b"HTTP/1.1 %d %s\r\nServer: eightys\r\nDate: %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, reason, formatdate(usegmt=True).encode(), len(reason), reason))


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with ``status``."""

    def __init__(self, status: int) -> None:
        self.status = status


class _Stop(Exception):
    """Raised inside a parser callback to ignore the rest of the input."""


class HttpLimits:
    """Per-worker HTTP limits (from the CLI/environment)."""

    __slots__ = ("max_header", "max_body", "header_timeout", "keepalive_timeout")

    def __init__(self, max_header: int, max_body: int, header_timeout: float,
                 keepalive_timeout: float) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection. Its handle in Lua is ``self.fd``."""

    __slots__ = (
        "worker",
        "fd",
        "statics",
        "progress_waiters",
        "limits",
        "dispatch",
        "parser",
        "transport",
        "url",
        "headers",
        "body",
        "head_size",
        "body_size",
        "content_length",
        "chunked",
        "has_connection_header",
        "expect_continue",
        "unparsed_head",
        "seq_in",
        "seq_out",
        "held",
        "seq_limit",
        "deferred",
        "deferred_scheduled",
        "close_after",
        "batch",
        "closed",
        "stopped",
        "draining",
        "drain_waiters",
        "read_paused",
        "write_paused",
        "state",
        "since",
    )

    def __init__(self, worker: "Worker", fd: int) -> None:
        self.worker = worker
        self.fd = fd
        self.limits: HttpLimits = worker.http_limits
        self.dispatch: Callable[..., Any] = worker.runtime.dispatch_http
        if worker.live is not None:  # reload mode: HTML pages get the live-reload script
            dispatch, inject = self.dispatch, worker.live.inject
            self.dispatch = lambda *args: inject(dispatch(*args))
        self.statics: dict[bytes, StaticFile] = worker.content.static_routes
        self.progress_waiters: list[asyncio.Future[None]] = []
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # the request being parsed
        self.url = b""
        self.headers: list[bytes] = []
        self.body: list[bytes] = []
        self.head_size = 0
        self.body_size = 0
        self.content_length = -1
        self.chunked = False
        self.has_connection_header = False
        self.expect_continue = False
        self.unparsed_head = 0  # bytes fed while the current head is incomplete
        # responses
        self.seq_in = 0  # sequence number of the next request
        self.seq_out = 0  # the request whose response goes out next
        self.held: dict[int, list[Any]] = {}  # seq -> [chunks, finished]
        self.seq_limit = MAX_IN_FLIGHT  # requests from here on wait in `deferred`
        self.deferred: deque[tuple[Any, ...]] | None = None  # parsed, not yet dispatched
        self.deferred_scheduled = False
        self.close_after = -1  # close once this request's response is out (-1: no)
        self.batch: list[bytes] | None = None
        self.closed = False
        self.stopped = False  # no more requests are read
        self.draining = False
        self.drain_waiters: list[Any] = []
        self.read_paused = False
        self.write_paused = False
        # timeouts
        self.state = HEAD
        self.since = worker.now

    # -- connection ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self.worker.connections[self.fd] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.worker.forget(self.fd)
        self._wake_drain_waiters(False)
        if self.progress_waiters:
            self._wake_progress()

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        batch: list[bytes] = []
        self.batch = batch
        # One read may hold thousands of pipelined requests: dispatch at most
        # MAX_IN_FLIGHT of them before their output has gone to the transport.
        self.seq_limit = self.seq_out + MAX_IN_FLIGHT
        try:
            self.parser.feed_data(data)
            if self.state == HEAD:
                self.unparsed_head += len(data)
                if self.unparsed_head > self.limits.max_header + len(data):
                    raise _Reject(431)  # one endless header line, fed in pieces
        except _Reject as exc:
            self._refuse(exc.status)
        except httptools.HttpParserCallbackError as exc:
            # httptools does not let a callback's exception through: it raises
            # HttpParserCallbackError with ours as __context__.
            reason = exc.__context__
            if isinstance(reason, _Reject):
                self._refuse(reason.status)
            elif not isinstance(reason, _Stop):
                raise
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket) are not served yet: the request was answered
            # as plain HTTP; what follows is not HTTP, so close after it.
            self._close_after_current()
        except httptools.HttpParserError:
            # After a closing request llhttp rejects whatever follows ("data after
            # Connection: close"): that is not a bad request, it is not served.
            if self.close_after == -1:
                self._refuse(400)
        self.batch = None
        if batch:
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))  # type: ignore[union-attr]
        if self.close_after != -1 and self.seq_out > self.close_after:
            self.transport.close()  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        self._wake_drain_waiters(True)
        if self.progress_waiters:
            self._wake_progress()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        deferred = self.deferred
        if deferred and not self.write_paused and not self.deferred_scheduled:
            self.deferred_scheduled = True
            self.worker.loop.call_soon(self._run_deferred)
        should_pause = self.write_paused or self.seq_in - self.seq_out >= MAX_IN_FLIGHT \
            or bool(deferred)
        if should_pause and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not should_pause and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # The first callback of every request (the URL cannot be empty), so it also
        # starts the request: one Python call less than on_message_begin.
        if not self.url:
            if self.close_after != -1:
                raise _Stop()  # requests after a closing one are not served
            self.state = HEAD
            self.since = self.worker.now
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.limits.max_header:
            raise _Reject(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.limits.max_header:
            raise _Reject(431)
        self.headers += (name, value)
        size = len(name)
        # Cheap length test first: most headers are none of these.
        if size == 14 and name.lower() == b"content-length":
            if self.content_length != -1 or not value.isdigit():
                raise _Reject(400)  # duplicate or invalid: request smuggling territory
            self.content_length = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            self.chunked = True
        elif size == 10 and name.lower() == b"connection":
            self.has_connection_header = True
        elif size == 6 and name.lower() == b"expect":
            if value.lower() != b"100-continue":
                raise _Reject(417)
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        self.unparsed_head = 0
        if self.chunked and self.content_length != -1:
            raise _Reject(400)
        if self.content_length > self.limits.max_body:
            raise _Reject(413)
        if self.content_length > 0 or self.chunked:
            if self.has_connection_header and self.parser.should_upgrade():
                # httptools skips the body of an upgrade request (the new protocol
                # would follow): refuse it rather than hand the handler an empty
                # body. Upgrades without a body are answered as plain HTTP.
                raise _Reject(501)
            self.state = BODY
            self.since = self.worker.now
            # Only when nothing else is pending, or the 100 would jump the queue;
            # never to HTTP/1.0 clients (RFC 9110 10.1.1: they must be ignored).
            if self.expect_continue and self.seq_in == self.seq_out \
                    and self.parser.get_http_version() != "1.0":
                self._emit(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body:
            raise _Reject(413)
        self.body.append(body)
        self.since = self.worker.now

    def on_message_complete(self) -> None:
        seq = self.seq_in
        self.seq_in = seq + 1
        self.state = BUSY
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        if self.has_connection_header:
            http10 = parser.get_http_version() == "1.0"
        else:
            http10 = not keep_alive  # without the header, 1.1 keeps alive and 1.0 closes
        if self.draining:
            keep_alive = False
        if not keep_alive:
            self.close_after = seq
        flags = (1 if keep_alive else 0) | (2 if http10 else 0)
        method = parser.get_method()
        url = self.url
        headers = self.headers
        body = self.body
        # ready for the next request (what on_message_begin would do)
        self.url = b""
        self.headers = []
        self.head_size = 0
        if body:
            self.body = []
            self.body_size = 0
        if self.content_length != -1 or self.chunked or self.has_connection_header \
                or self.expect_continue:
            self.content_length = -1
            self.chunked = self.has_connection_header = self.expect_continue = False

        if seq >= self.seq_limit:
            self._defer((self.fd, seq, method, url, b"".join(body) if body else None,
                         flags, *headers))
            return
        statics = self.statics
        if statics and (method == b"GET" or method == b"HEAD"):
            # Static files of the content server: answered here, without Lua.
            query_at = url.find(b"?")
            path = url if query_at == -1 else url[:query_at]
            if b"%" in path:
                path = unquote_to_bytes(path)
            static = statics.get(path)
            if static is not None:
                static = self.worker.content.fresh(path, static)
                if static is not None:  # None: it left the site root; Lua answers 404
                    self.send_static(seq, static, method, headers, CONNECTION_HEADERS[flags])
                    return
        out = self.dispatch(
            self.fd, seq, method, url,
            (body[0] if len(body) == 1 else b"".join(body)) if body else None,
            flags, *headers,
        )
        if out is not None:
            if seq == self.seq_out and self.batch is not None and self.close_after == -1 \
                    and not self.held:
                # the common case, inlined: a finished response at the head of the line
                self.batch.append(out)
                self.seq_out = seq + 1
                self.state = IDLE
                self.since = self.worker.now
                return
            self.send(seq, out, True)
        if self.seq_in - self.seq_out >= MAX_IN_FLIGHT:
            self._update_reading()

    def send_static(self, seq: int, static: "StaticFile", method: bytes, headers: list[bytes],
                    connection: bytes) -> None:
        """Answer request ``seq`` with a static file: from memory at once, or, for a
        large file, streamed in chunks no faster than the client reads."""
        response = static.respond(method, headers, connection)
        if response.file_range is None:
            data = response.head + response.body if response.body else response.head
            if self.worker.live is not None:
                data = self.worker.live.inject(data)  # type: ignore[assignment]
            self.send(seq, data, True)
        else:
            self.send(seq, response.head, False)
            self.worker.loop.create_task(self._stream_file(seq, response.file_range))
        if self.seq_in - self.seq_out >= MAX_IN_FLIGHT:
            self._update_reading()

    async def _stream_file(self, seq: int, file_range: tuple[str, int, int]) -> None:
        # uvloop has no sendfile: read chunks and write them, waiting while the
        # client is behind (and while earlier responses are still going out, so a
        # pipelined file is never held in memory whole).
        from eightys.static import iter_chunks

        try:
            for chunk in iter_chunks(*file_range):
                while not self.closed and (seq != self.seq_out or self.write_paused):
                    waiter = self.worker.loop.create_future()
                    self.progress_waiters.append(waiter)
                    await waiter
                if self.closed:
                    return
                self.send(seq, chunk, False)
            self.send(seq, b"", True)
        except OSError as exc:  # the file went away mid-way: the response cannot be completed
            self.worker.log.error("static file %s: %s", file_range[0], exc)
            if self.transport is not None:
                self.transport.abort()

    def _wake_progress(self) -> None:
        waiters, self.progress_waiters = self.progress_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _defer(self, args: tuple[Any, ...]) -> None:
        deferred = self.deferred
        if deferred is None:
            deferred = self.deferred = deque()
        deferred.append(args)
        if not self.read_paused:
            self._update_reading()  # pauses reading, schedules _run_deferred

    def _run_deferred(self) -> None:
        """Dispatch parked requests, at most MAX_IN_FLIGHT ahead of the output, with
        one write for their responses (as data_received does)."""
        self.deferred_scheduled = False
        deferred = self.deferred
        if self.closed or self.write_paused or not deferred:
            return  # resume_writing calls _update_reading, which comes back here
        batch: list[bytes] = []
        self.batch = batch
        limit = self.seq_out + MAX_IN_FLIGHT
        while deferred and deferred[0][1] < limit:
            args = deferred.popleft()
            out = self.dispatch(*args)
            if out is not None:
                self.send(args[1], out, True)
        self.batch = None
        if batch:
            self.transport.write(b"".join(batch))  # type: ignore[union-attr]
        if self.close_after != -1 and self.seq_out > self.close_after:
            self.transport.close()  # type: ignore[union-attr]
        else:
            self._update_reading()  # more to run, or reading resumes

    # -- responses ------------------------------------------------------------------

    def send(self, seq: int, data: bytes, finished: bool, close: Any = None) -> bool:
        """Queue ``data`` of request ``seq``'s response; ``finished`` ends it.
        Returns False once the connection is gone."""
        if self.closed:
            return False
        if close and (self.close_after == -1 or seq < self.close_after):
            self.close_after = seq
        if seq != self.seq_out:
            held = self.held.get(seq)
            if held is None:
                self.held[seq] = [[data], finished]
            else:
                held[0].append(data)
                held[1] = finished
            return True
        if data:
            self._emit(data)
        if finished:
            self._finish_head()
        return True

    def _finish_head(self) -> None:
        # The head-of-line response is complete: release the ones waiting behind it.
        while True:
            seq = self.seq_out
            if seq == self.close_after:
                self.seq_out = seq + 1
                self.stopped = True
                self.held.clear()
                if self.batch is None:
                    self.transport.close()  # type: ignore[union-attr]
                return
            seq += 1
            self.seq_out = seq
            held = self.held.get(seq)
            if held is None:
                break
            chunks, finished = held
            for chunk in chunks:
                if chunk:
                    self._emit(chunk)
            if not finished:
                held[0] = []
                if self.progress_waiters:  # a file streaming behind us may go on
                    self._wake_progress()
                return
            del self.held[seq]
        if seq == self.seq_in and self.state == BUSY:
            self.state = IDLE
            self.since = self.worker.now
            if self.draining:
                self._close_after_current()
        if self.read_paused:
            self._update_reading()
        if self.progress_waiters:
            self._wake_progress()

    def _emit(self, data: bytes) -> None:
        batch = self.batch
        if batch is not None:
            batch.append(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def _refuse(self, status: int) -> None:
        """Answer the request being parsed with ``status`` (after the responses
        before it) and close."""
        seq = self.seq_in
        self.seq_in = seq + 1
        self.state = BUSY
        self.stopped = True
        self.send(seq, error_response(status), True, True)

    def _close_after_current(self) -> None:
        last = self.seq_in - 1
        if last < self.seq_out:  # nothing pending: close now
            self.stopped = True
            self.close_after = last
            if self.batch is None and self.transport is not None:
                self.transport.close()
        elif self.close_after == -1 or last < self.close_after:
            self.close_after = last

    def drain(self, callback: Any) -> None:
        """Resolve the Lua ``callback`` with true once the output buffer has room
        (at once if it has), or with false if the connection closes first."""
        if self.closed:
            self.worker.runtime.dispatch_call(callback, False)
        elif not self.write_paused:
            self.worker.runtime.dispatch_call(callback, True)
        else:
            self.drain_waiters.append(callback)

    def _wake_drain_waiters(self, ok: bool) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for callback in waiters:
            self.worker.runtime.dispatch_call(callback, ok)

    # -- called by the worker -------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        """The once-a-second sweep: cut slow heads/bodies and idle keep-alives."""
        state = self.state
        if state == BUSY or self.closed:
            return
        limits = self.limits
        # `since` is stamped from the coarse clock, so it is up to CLOCK_STEP older
        # than the event: without the step a client could be cut off right after
        # it began (with a 1 s timeout, at the very next sweep).
        if state == IDLE:
            if now - self.since > limits.keepalive_timeout + CLOCK_STEP:
                self.transport.close()  # type: ignore[union-attr]
        elif now - self.since > limits.header_timeout + CLOCK_STEP:
            if self.head_size or self.body_size or state == BODY:
                self._refuse(408)
            else:
                self.stopped = True
                self.transport.close()  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """The worker is stopping: finish what is in progress, then close."""
        self.draining = True
        if self.head_size or self.state == BODY:
            return  # a request is arriving: answered with Connection: close, then closed
        if self.seq_out < self.seq_in:
            self._close_after_current()  # responses still going out
        elif self.seq_in == 0:
            # accepted just before the listener closed (clients keep connecting through
            # a rolling restart): its first request may be on the way
            self.worker.loop.call_later(FIRST_REQUEST_WAIT, self._close_if_silent)
        else:
            self.stopped = True  # an idle keep-alive connection
            self.transport.close()  # type: ignore[union-attr]

    def _close_if_silent(self) -> None:
        if not self.closed and self.seq_in == 0 and not self.head_size and self.state != BODY:
            self.stopped = True
            self.transport.close()  # type: ignore[union-attr]

    def close(self) -> None:
        """``net.close`` on an HTTP connection."""
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> bool:
        """``net.write`` on an HTTP connection: raw bytes, outside the response order."""
        if self.closed:
            return False
        self._emit(data)
        return True
