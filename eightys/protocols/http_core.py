"""A sans-IO HTTP/1.1 server connection: bytes in, requests and bytes out.

No socket, no event loop, no Lua: :class:`HttpConnection` is fed what the client
sent (:meth:`~HttpConnection.receive_data`) and returns the requests that became
complete; the responses are handed back to it (:meth:`~HttpConnection.send`) in
any order and leave, in request order, through :meth:`~HttpConnection.data_to_send`.
The asyncio adapter (``eightys/protocols/http.py``) owns the transport; tests drive
this class with bytes and a fake clock.

httptools (llhttp) parses; this class is its callback object. It owns every rule
about the connection's life:

* **State** (``state``), explicit and named:

  ========== ============================================================
  IDLE       nothing arriving, nothing pending: the keep-alive timeout runs
  HEAD       a request head is arriving: the header timeout runs
  BODY       a request body is arriving: the header timeout runs per piece
  WAITING    every request is complete; responses pending (handler timeout)
  CLOSING    no more requests are read; close once the last response is out
  SWITCHING  an upgrade request awaits its answer; no more HTTP is read: after
             response N the connection switches (if the handler accepted) or closes
  SWITCHED   response N is out: the transport belongs to another protocol
  CLOSED     everything is out: the adapter closes the transport
  ========== ============================================================

* **After response N** (``last``, ``after_last``): the one mechanism for
  "keep alive", "close" and "switch protocol". Setting it stops reading; once
  response N has left the state becomes CLOSED or SWITCHED, and for a switch
  :attr:`~HttpConnection.trailing` holds the bytes that followed the head.

* **Limits** (status, then close): a head larger than ``max_header`` or with more
  than ``max_headers`` fields -> 431; a body over ``max_body`` -> 413; a HTTP/1.1
  request without exactly one ``Host``, duplicate or invalid ``Content-Length``,
  ``Content-Length`` with ``Transfer-Encoding`` (RFC 9112 6.1, smuggling),
  malformed syntax -> 400; an upgrade request with a body -> 501; an unknown
  ``Expect`` -> 417; a head or body that stalls -> 408; a handler that never
  answers -> 504.

Memory: one read is parsed whole (the adapter reads at most 256 KiB at a time),
so what the client can make us hold is bounded by the read size and the limits;
the adapter stops reading while too many requests wait for their responses.
"""

from __future__ import annotations

import os
from typing import Any

import httptools


from eightys.protocols.spool import SpoolFile
from eightys.wire import FLAG_BODY_FILE, FLAG_HTTP10, FLAG_KEEP_ALIVE, error_response

try:
    import cython
    COMPILED = cython.compiled  # True in the module Cython built from this file
except ImportError:  # plain Python without Cython installed
    COMPILED = False

# -- states -------------------------------------------------------------------------
IDLE = 0
HEAD = 1
BODY = 2
WAITING = 3
CLOSING = 4
SWITCHING = 5
SWITCHED = 6
CLOSED = 7

STATE_NAMES = ("IDLE", "HEAD", "BODY", "WAITING", "CLOSING", "SWITCHING", "SWITCHED", "CLOSED")

# -- what happens after response `last` -----------------------------------------------
KEEP_ALIVE = 0
CLOSE = 1
SWITCH = 2

# Compiled, the constants above are C ints (declared in http_core.pxd: a comparison with
# a module global costs a dict lookup and an int object); these are their Python names.
globals().update(IDLE=IDLE, HEAD=HEAD, BODY=BODY, WAITING=WAITING, CLOSING=CLOSING,
                 SWITCHING=SWITCHING, SWITCHED=SWITCHED, CLOSED=CLOSED,
                 KEEP_ALIVE=KEEP_ALIVE, CLOSE=CLOSE, SWITCH=SWITCH)

# -- what a timeout check did -----------------------------------------------------------
#: Nothing expired.
TIMEOUT_NONE = 0
#: An idle keep-alive connection (or a silent one) expired: close it, nothing to send.
TIMEOUT_IDLE = 1
#: A head or body stalled: 408 was queued, the connection closes after it.
TIMEOUT_REQUEST = 2
#: A handler did not answer in time: ``timed_out_seq`` is due its 504 (``send`` it
#: with ``close``; the caller renders it, e.g. with the app's error page).
TIMEOUT_HANDLER = 3

#: ``since`` is stamped from a coarse clock (advanced once a second), so it can be up
#: to one step older than the event; the checks add that step so a client is never
#: cut off before its full allowance.
CLOCK_STEP = 1.0

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Clock:
    """Where connections read the time: a coarse clock (``now``, in seconds), one per
    server, advanced by the worker's once-a-second sweep. A class of its own (a C
    struct when compiled) so that reading it costs a field load, not an attribute
    lookup (two per request)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


class HttpLimits:
    """Per-server HTTP limits (from the CLI/environment). Changing one applies to the
    open connections too (``aio:set_max_http_header``)."""

    # Attributes are declared (with their C types) in http_core.pxd: compiled, the
    # callbacks read them as C fields, not attribute lookups.

    def __init__(self, max_header: int = 32 * 1024, max_body: int = 16 * 1024 * 1024,
                 header_timeout: float = 10.0, keepalive_timeout: float = 15.0,
                 handler_timeout: float = 30.0, max_headers: int = 100,
                 body_buffer_size: int = 1024 * 1024, spool_dir: str | None = None) -> None:
        self.max_header = max_header
        self.max_headers = max_headers
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.handler_timeout = handler_timeout
        #: path -> methods of the stream routes (80s's aio:stream_http_*): such a
        #: request is a pending upgrade once its head is in (eightys.compat80s).
        self.stream_routes: dict[bytes, set[bytes]] = {}
        #: Where bodies larger than ``spill_at`` bytes are written (eightys.protocols.spool);
        #: None keeps every body in memory.
        self.spool_dir = spool_dir
        self.spill_at = body_buffer_size if spool_dir is not None else 1 << 62


class RemoteError:
    """A request the client got wrong; ``status`` was queued, then the connection closes."""

    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"RemoteError({self.status}, {self.reason!r})"


class _Reject(Exception):
    """Raised inside a parser callback to refuse the request with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Stop(Exception):
    """Raised inside a parser callback: the rest of the input is not read."""


class _Stream(Exception):
    """Raised in on_headers_complete for a stream route: what follows the head is
    the stream's, not HTTP."""


def _after_head(data: bytes, method: bytes, url: bytes) -> bytes:
    """What follows the head of request ``method url`` in ``data`` (the read that
    completed it). httptools does not say where a callback stopped it: find the blank
    line after the request line (or, if that came in an earlier read, the first one)."""
    start = data.find(method + b" " + url)
    start = 0 if start == -1 else start
    end = data.find(b"\r\n\r\n", start)
    if end != -1:
        return data[end + 4:]
    end = data.find(b"\n\n", start)
    if end != -1:
        return data[end + 2:]
    i = 0  # the blank line straddled two reads: only its last bytes are here
    while i < 3 and i < len(data) and data[i] in b"\r\n":
        i += 1
    return data[i:]


def _has_http10(data: bytes) -> bool:
    """Whether ``data`` contains ``HTTP/1.0`` (compiled: C's memmem, ~50 instructions
    for a small request against ~750 for ``bytes.find``)."""
    if COMPILED:
        return memmem(cython.cast(cython.p_char, data), len(data),  # noqa: F821 - from the .pxd
                      b"HTTP/1.0", 8) != cython.NULL
    return data.find(b"HTTP/1.0") != -1


#: A request, as receive_data returns it: (seq, method, url, body, flags, headers),
#: headers being the fields as received, joined as ``name\\0value\\0name\\0value``
#: (llhttp refuses NUL inside fields, so the split is unambiguous).
Request = tuple  # (int, bytes, bytes, bytes | None, int, bytes)


class HttpConnection:
    """One HTTP/1.1 server connection's protocol state (see the module docstring)."""

    # Attributes are declared (with their C types) in http_core.pxd.

    def __init__(self, limits: HttpLimits, clock: Clock, flags: int = 0,
                 parser: Any = None) -> None:
        """``flags``: what every request carries (``wire.FLAG_TLS``); ``parser``:
        the parser class, called with this object (httptools' when None; the compiled
        adapter passes eightys.protocols.llhttp's)."""
        self.limits = limits
        self.clock = clock
        self.base_flags = flags  # connection properties every request carries (FLAG_TLS)
        parser = httptools.HttpRequestParser(self) if parser is None else parser(self)
        self.parser = parser
        self.feed = parser.feed_data  # bound once, as the two below
        # bound once: a method call on the parser would look its name up every time
        self.get_method = parser.get_method
        self.should_keep_alive = parser.should_keep_alive
        self.streams = limits.stream_routes
        self.state = IDLE
        self.since = clock.now  # when the current state's timeout started
        self.last = -1  # the last response before close/switch (-1: none)
        self.after_last = KEEP_ALIVE
        self.trailing = b""  # bytes after an upgrade request's head
        self.upgrade_seq = -1  # the request that asked to upgrade (-1: none)
        self.draining = False
        # the request being parsed
        self.url = b""
        self.headers = []  # [name, value, name, value, ...]
        # Filled by a parser that does this work in C (eightys.protocols.llhttp), which
        # then never calls on_header: the fields already joined, and whether the
        # request is HTTP/1.0 (-1: ask the parser).
        self.fields = None
        self.parsed_http10 = -1
        # what the C driver read off llhttp for the request being completed (-1 and
        # None: ask the parser), given before on_message_complete: no call back into it
        self.parsed_keep_alive = -1
        self.parsed_method = None
        self.body = []
        self.nheaders = 0
        self.head_size = 0
        self.body_size = 0
        self.unparsed_head = 0
        self.content_length = -1
        self.hosts = 0
        self.chunked = False
        self.has_connection_header = False
        self.expect_continue = False
        self.http10 = False  # known once the head is in (on_headers_complete)
        # The read being parsed, and whether the current request began in it: then its
        # whole head is in it, and a HTTP/1.0 request line would be found there. Asking
        # httptools for the version formats a str (~2,300 instructions per request).
        self.data = b""
        self.begun_here = False
        self.has10 = -1  # whether b"HTTP/1.0" occurs in `data` (-1: not looked yet)
        # responses
        self.seq_in = 0  # sequence number of the next request
        self.seq_out = 0  # the request whose response goes out next
        self.head_started = False  # part of response seq_out has gone out
        self.held = {}  # seq -> [chunks, finished]: responses waiting for earlier ones
        self.pending_since = {}  # seq -> when its handler went async (handler timeout)
        self.timed_out_seq = -1
        self.events = None  # the list receive_data returns, while it runs
        self.out = []
        # bodies off the heap (eightys.protocols.spool)
        self.spill_at = 0  # set per body from limits.spill_at
        self.spool = None  # the SpoolFile of the body being received
        self.spools = None  # seq -> SpoolFile of requests not answered yet

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list:
        """Feed bytes from the client; return what happened: the requests that became
        complete (tuples, see :data:`Request`) and at most one :class:`RemoteError`,
        in order. An error (or a closing request) stops reading: later input is ignored."""
        state = self.state
        if state >= CLOSING:
            if state == SWITCHING:
                # bytes for the next protocol, arriving before the switch; the adapter
                # stops reading while a switch is pending, so this stays small
                self.trailing += data
            return []
        events: list = []
        self.events = events
        self.data = data
        self.begun_here = False
        self.has10 = -1
        try:
            self.feed(data)
            if self.state == HEAD:
                # A head line grows inside httptools with no callback until it ends:
                # count the bytes of reads that made no visible progress (a callback
                # sets unparsed_head to -1), so one endless line fed in pieces gets
                # 431 too. Reads with progress are bounded by the read size.
                if self.unparsed_head < 0:
                    self.unparsed_head = 0
                else:
                    self.unparsed_head += len(data)
                    if self.unparsed_head > self.limits.max_header:
                        raise _Reject(431, "request head too large")
        except _Reject as exc:
            self._refuse(exc.status, exc.reason)
        except _Stream:  # eightys.protocols.llhttp raises a callback's exception as itself
            self._stream_request(data)
        except _Stop:
            pass
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps a callback's exception; ours is its __context__
            reason = exc.__context__
            if isinstance(reason, _Reject):
                self._refuse(reason.status, reason.reason)
            elif isinstance(reason, _Stream):
                self._stream_request(data)
            elif not isinstance(reason, _Stop):
                raise
        except httptools.HttpParserUpgrade as exc:
            # The upgrade request is complete (it is in `events`); what follows its
            # head belongs to the next protocol, if the handler switches to one.
            offset = exc.args[0] if exc.args else len(data)
            self.trailing = data[offset:]
            self.upgrade_seq = self.seq_in - 1
            # reading stops; unless the handler switches, the connection closes after
            # the answer (the bytes that follow are not HTTP)
            self._end_after(self.upgrade_seq, CLOSE)
            self.state = SWITCHING
        except httptools.HttpParserError as exc:
            if self.last == -1:  # after a closing request llhttp refuses what follows
                self._refuse(400, str(exc) or "malformed request")
        self.events = None
        self.data = b""
        return events

    def receive_eof(self) -> bool:
        """The client closed its sending side (half-close). Returns True if responses
        are still due (keep the transport open for them), False to close now."""
        if self.state >= CLOSING:
            return self.state <= SWITCHING and self.seq_out < self.seq_in
        if self.head_size or self.state == HEAD or self.state == BODY:
            self.state = CLOSED  # a request cut off half-way: nothing to answer
            return False
        if self.seq_out < self.seq_in:
            self._end_after(self.seq_in - 1, CLOSE)
            return True
        self.state = CLOSED
        return False

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        # the first byte of a request: its header timeout starts now, once
        if self.last != -1:
            raise _Stop()  # requests after a closing one are not served
        self.state = HEAD
        self.since = self.clock.now
        self.unparsed_head = -1
        self.begun_here = True

    def on_url(self, url: bytes) -> None:
        self.unparsed_head = -1
        if self.url:
            self.url += url
        else:
            self.url = url  # the whole URL in one piece (the usual case): no concatenation
        self.head_size += len(url)
        if self.head_size > self.limits.max_header:
            raise _Reject(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.unparsed_head = -1
        self.head_size += len(name) + len(value) + 4
        self.nheaders += 1
        if self.head_size > self.limits.max_header or self.nheaders > self.limits.max_headers:
            raise _Reject(431, "too many or too large header fields")
        headers = self.headers
        headers.append(name)
        headers.append(value)
        size = len(name)
        # cheap length test first: most fields are none of these; then the usual
        # spelling, which costs no lower-case copy (a method call, ~350 instructions)
        if size == 4:
            if name == b"Host" or name.lower() == b"host":
                self.hosts += 1
        elif size == 14:
            if name == b"Content-Length" or name.lower() == b"content-length":
                if self.content_length != -1 or not value.isdigit():
                    raise _Reject(400, "duplicate or invalid Content-Length")
                self.content_length = int(value)
        elif size == 17:
            if name == b"Transfer-Encoding" or name.lower() == b"transfer-encoding":
                self.chunked = True
        elif size == 10:
            if name == b"Connection" or name.lower() == b"connection":
                self.has_connection_header = True
        elif size == 6:
            if name == b"Expect" or name.lower() == b"expect":
                if value.lower() != b"100-continue":
                    raise _Reject(417, "unsupported Expect")
                self.expect_continue = True

    def _is_http10(self) -> bool:
        if self.parsed_http10 != -1:
            return self.parsed_http10 == 1
        # The exact answer costs a str format; a head that began in this read holds its
        # request line, so when the read has no "HTTP/1.0" the request is not one.
        if self.begun_here:
            if self.has10 == -1:
                if COMPILED:
                    self.has10 = 1 if _has_http10(self.data) else 0
                else:  # interpreted, a function call costs more than it saves
                    self.has10 = 0 if self.data.find(b"HTTP/1.0") == -1 else 1
            if self.has10 == 0:
                return False
        return self.parser.get_http_version() == "1.0"

    def on_headers_complete(self) -> None:
        if self.streams:
            url = self.url
            q = url.find(b"?")
            methods = self.streams.get(url if q == -1 else url[:q])
            if methods is not None and self.get_method() in methods:
                raise _Stream()
        if self.has_connection_header or self.hosts != 1 or self.expect_continue:
            self.http10 = self._is_http10()
        # RFC 9112 3.2: a HTTP/1.1 request has exactly one Host; more is never valid
        if self.hosts != 1 and (self.hosts > 1 or not self.http10):
            raise _Reject(400, "missing or repeated Host")
        if self.chunked and self.content_length != -1:
            raise _Reject(400, "Content-Length with Transfer-Encoding")  # RFC 9112 6.1
        if self.content_length > self.limits.max_body:
            raise _Reject(413, "request body too large")
        if self.content_length > 0 or self.chunked:
            if self.has_connection_header and self.parser.should_upgrade():
                # llhttp skips an upgrade request's body (the new protocol would
                # follow): refuse it rather than hand the handler an empty body
                raise _Reject(501, "upgrade request with a body")
            self.state = BODY
            self.since = self.clock.now
            self.spill_at = self.limits.spill_at
            # only when nothing is pending, or the 100 would jump the queue; never to
            # HTTP/1.0 clients (RFC 9110 10.1.1: they must be ignored)
            if self.expect_continue and self.seq_in == self.seq_out and not self.http10:
                self.out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.limits.max_body:
            raise _Reject(413, "request body too large")
        if self.body_size > self.spill_at:
            self._spill(body)
        else:
            self.body.append(body)
        self.since = self.clock.now

    def _spill(self, body: bytes) -> None:
        # Past --body-buffer-size: what was kept and the rest go to a file.
        try:
            spool = self.spool
            if spool is None:
                spool = SpoolFile(self.limits.spool_dir)
                self.spool = spool
                for piece in self.body:
                    spool.write(piece)
                self.body = []
            spool.write(body)
        except OSError:
            raise _Reject(500, "cannot store the request body") from None

    def on_message_complete(self) -> None:
        seq = self.seq_in
        self.seq_in = seq + 1
        self.state = WAITING
        if self.parsed_keep_alive == -1:
            keep_alive = self.should_keep_alive()
        else:
            keep_alive = self.parsed_keep_alive == 1
        if self.has_connection_header:
            http10 = self.http10
        else:
            http10 = not keep_alive  # without the header, 1.1 keeps alive and 1.0 closes
        if self.draining:
            keep_alive = False
        flags = (FLAG_KEEP_ALIVE if keep_alive else 0) | (FLAG_HTTP10 if http10 else 0) \
            | self.base_flags
        body = self.body
        if body:
            body_bytes = body[0] if len(body) == 1 else b"".join(body)
            self.body = []
            self.body_size = 0
        elif self.spool is not None:  # the body is in a file: Lua gets its path
            spool = self.spool
            self.spool = None
            self.body_size = 0
            spool.finish()
            if self.spools is None:
                self.spools = {}
            self.spools[seq] = spool
            body_bytes = os.fsencode(spool.path)
            flags |= FLAG_BODY_FILE
        else:
            body_bytes = None
        fields = self.fields
        if fields is None:
            fields = b"\0".join(self.headers)
        else:
            self.fields = None
        method = self.parsed_method
        if method is None:
            method = self.get_method()
        self.events.append((seq, method, self.url, body_bytes, flags, fields))
        # ready for the next request
        self.url = b""
        if self.headers:  # httptools' parser (the C driver joins the fields itself)
            self.headers = []
        self.nheaders = 0
        self.head_size = 0
        self.hosts = 0
        if self.content_length != -1 or self.chunked or self.has_connection_header \
                or self.expect_continue:
            self.content_length = -1
            self.chunked = self.has_connection_header = self.expect_continue = False
        if not keep_alive:
            self._end_after(seq, CLOSE)
            raise _Stop()

    def _stream_request(self, data: bytes) -> None:
        # A stream route's head is in: the request is dispatched now, with no body,
        # as a pending upgrade; the bytes after the head (its body included) are the
        # stream's first input once the handler switches (HttpProtocol.switch_protocol).
        seq = self.seq_in
        self.seq_in = seq + 1
        method = self.get_method()
        url = self.url
        fields = self.fields
        if fields is None:
            fields = b"\0".join(self.headers)
        self.events.append((seq, method, url, None, FLAG_KEEP_ALIVE | self.base_flags, fields))
        self.trailing = _after_head(data, method, url)
        self.upgrade_seq = seq
        self._end_after(seq, CLOSE)
        self.state = SWITCHING

    # -- output -----------------------------------------------------------------------

    def send(self, seq: int, data: bytes, final: bool,
             close: bool = False) -> bool:
        """Queue ``data`` of request ``seq``'s response; ``final`` ends it; ``close``
        ends the connection after it. Returns False once the response can no longer
        go out (the connection closed or switched, or it was already answered)."""
        if seq < self.seq_out or self.state >= SWITCHED:
            return False
        if self.pending_since:
            self.pending_since.pop(seq, None)  # it answered: no handler timeout
        if close and (self.last == -1 or seq < self.last):
            self._end_after(seq, CLOSE)
        if seq != self.seq_out:
            held = self.held.get(seq)
            if held is None:
                self.held[seq] = [[data], final]
            else:
                held[0].append(data)
                held[1] = final
            return True
        self.head_started = True
        if data:
            self.out.append(data)
        if final:
            self._finish_head()
        return True

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call, as one write."""
        out = self.out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()  # the list is kept: one allocation less per response
        return data

    def _finish_head(self) -> None:
        # The head-of-line response is complete: release the ones waiting behind it.
        held = self.held
        while True:
            seq = self.seq_out
            self.seq_out = seq + 1
            self.head_started = False
            if self.spools is not None:
                self._release_body(seq)
            if seq == self.last:
                held.clear()
                self.state = SWITCHED if self.after_last == SWITCH else CLOSED
                return
            entry = held.pop(seq + 1, None) if held else None
            if entry is None:
                break
            # the next response was waiting: out it goes; the rest of it, if it is not
            # finished, is sent directly (it is at the head of the line now)
            self.head_started = True
            for chunk in entry[0]:
                if chunk:
                    self.out.append(chunk)
            if not entry[1]:
                return
        if self.seq_out == self.seq_in and self.state == WAITING:
            self.state = IDLE
            self.since = self.clock.now

    # -- after response N -------------------------------------------------------------

    def _end_after(self, seq: int, action: int) -> None:
        """After response ``seq``: close (CLOSE) or hand over (SWITCH); reading stops."""
        if self.last != -1 and self.last < seq:
            return  # an earlier end already stands
        self.last = seq
        self.after_last = action
        if seq < self.seq_out:  # that response is already out
            self.state = SWITCHED if action == SWITCH else CLOSED
        else:
            self.state = SWITCHING if action == SWITCH else CLOSING

    def switch_protocol(self, seq: int, response: bytes) -> bool:
        """Answer upgrade request ``seq`` with ``response`` (e.g. a 101 head); once it
        is out the state is SWITCHED and :attr:`trailing` is the new protocol's first
        input. False unless ``seq`` is the pending upgrade request."""
        if seq != self.upgrade_seq or seq < self.seq_out or self.state != SWITCHING:
            return False
        self.after_last = SWITCH
        return self.send(seq, response, True)

    def is_upgrade(self, seq: int) -> bool:
        """Whether request ``seq`` asked to upgrade and still waits for its answer."""
        return seq == self.upgrade_seq and seq >= self.seq_out and self.state == SWITCHING

    def close_now(self) -> None:
        """Give up on the connection (e.g. ``net.close``): nothing more goes out."""
        self.state = CLOSED
        self.held.clear()
        self.out = []

    def _release_body(self, seq: int) -> None:
        # response `seq` is out: its body file goes
        spool = self.spools.pop(seq, None)
        if spool is not None:
            spool.discard()
        if not self.spools:
            self.spools = None

    def release_bodies(self) -> None:
        """The connection ended: remove every body file it still holds."""
        spool = self.spool
        self.spool = None
        if spool is not None:
            spool.discard()
        spools = self.spools
        self.spools = None
        if spools:
            for spool in spools.values():
                spool.discard()

    # -- timeouts and shutdown ----------------------------------------------------------

    def mark_pending(self, seq: int) -> None:
        """Request ``seq`` was handed to a handler that did not answer at once: its
        handler timeout starts now."""
        if seq > self.seq_out and seq not in self.held \
                or seq == self.seq_out and not self.head_started:
            self.pending_since[seq] = self.clock.now

    def check_timeout(self, now: float) -> int:
        """Apply the timeouts at time ``now``; returns a ``TIMEOUT_*`` code. For
        TIMEOUT_REQUEST the 408 is queued; for TIMEOUT_HANDLER the caller sends the 504."""
        state = self.state
        if state >= SWITCHED:
            return TIMEOUT_NONE
        limits = self.limits
        if state == HEAD or state == BODY:
            if now - self.since > limits.header_timeout + CLOCK_STEP:
                self._refuse(408, "request head or body too slow")
                return TIMEOUT_REQUEST
            return TIMEOUT_NONE
        if state == IDLE:
            # a new connection gets the header timeout for its first request
            limit = limits.keepalive_timeout if self.seq_in else limits.header_timeout
            if now - self.since > limit + CLOCK_STEP:
                self.state = CLOSED
                return TIMEOUT_IDLE
            return TIMEOUT_NONE
        if self.pending_since and limits.handler_timeout > 0:
            seq = self.seq_out
            started = self.pending_since.get(seq)
            if started is not None and now - started > limits.handler_timeout + CLOCK_STEP:
                del self.pending_since[seq]
                self.timed_out_seq = seq  # the caller answers it (504) and the connection closes
                return TIMEOUT_HANDLER
        return TIMEOUT_NONE

    def start_draining(self) -> bool:
        """The server is stopping: finish what is in progress with ``Connection:
        close``, read no new requests. Returns True if the connection can close now."""
        self.draining = True
        state = self.state
        if state >= CLOSING:
            return state == CLOSED
        if state == HEAD or state == BODY:
            return False  # a request is arriving: it is answered, then the connection closes
        if self.seq_out < self.seq_in:
            self._end_after(self.seq_in - 1, CLOSE)  # responses still going out
            return False
        self.state = CLOSED
        return True

    @property
    def in_flight(self) -> int:
        """Requests received whose responses have not gone out yet."""
        return self.seq_in - self.seq_out

    @property
    def has_partial_request(self) -> bool:
        """Whether part of a request (head or body) has arrived."""
        return self.state == HEAD or self.state == BODY

    def _refuse(self, status: int, reason: str) -> None:
        """Answer the request being parsed with ``status`` (after the responses before
        it) and close."""
        seq = self.seq_in
        self.seq_in = seq + 1
        if self.spool is not None:  # a body cut off (413, 408...): its file goes now
            self.spool.discard()
            self.spool = None
        if self.events is not None:  # else a timeout's: nobody reads the event
            self.events.append(RemoteError(status, reason))
        self.state = WAITING
        self.head_size = self.body_size = self.unparsed_head = 0
        self._end_after(seq, CLOSE)
        self.send(seq, error_response(status), True)
