"""WebSocket connections (RFC 6455, RFC 7692): frames from ``websockets``' sans-IO
``ServerProtocol``, one Lua call per whole message.

An HTTP connection becomes a WebSocket when a handler calls ``fd:websocket``:
:func:`handshake` validates the upgrade request and builds the 101 response, the
HTTP protocol writes it and hands the transport to a :class:`WebSocketProtocol`
(``switch_protocol``), which keeps the connection's handle.

What the library does: frame parsing and validation, unmasking, control frames
(pongs are automatic), the closing handshake, permessage-deflate with the
negotiated context-takeover and window options, and the size bound on every
message *after* inflation (``max_size``: a small compressed frame cannot inflate
into gigabytes; it gets 1009). What this module adds: reassembling fragments
into one message, UTF-8 validation of text messages as they arrive (1007 at the
first bad fragment), the encoding of outgoing data frames on connections without
compression (a head and the data: cheaper than the library's Frame objects),
flow control, the idle/ping timeout, and the bound on what may wait for a slow
client.

Bounds:
* at most ``max_message`` bytes per message (after inflation) -> 1009;
* output: when the transport holds more than ``send_buffer`` bytes, reading stops
  (the client is not reading our answers) and :meth:`WebSocketProtocol.send`
  refuses new messages (``nil, "send buffer full"``): at most one message beyond
  the bound is ever queued; :meth:`WebSocketProtocol.publish` drops such a
  subscriber with 1013 (try again later);
* no data for ``idle_timeout`` seconds -> a ping; no data for another
  ``idle_timeout`` -> 1011; a closing handshake the client does not finish within
  ``CLOSE_TIMEOUT`` -> the TCP connection is cut. Checked by the worker's
  once-a-second sweep, like HTTP's timeouts.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import struct
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol

from eightys.protocols.flow import FlowControl

#: Output queued while handling one read goes to the transport early past this size,
#: so a handler that sends in a loop meets the send-buffer bound.
FLUSH_AT = 64 * 1024
#: How long a client may take to answer our close frame before the TCP connection is cut.
CLOSE_TIMEOUT = 5.0
#: How often ``host.now`` advances (the worker's sweep runs once a second).
CLOCK_STEP = 1.0
#: Close codes (RFC 6455 7.4.1).
NORMAL, GOING_AWAY, ABNORMAL, INTERNAL_ERROR, TRY_AGAIN_LATER = 1000, 1001, 1006, 1011, 1013
SERVICE_RESTART = 1012

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_CLOSED = State.CLOSED
_CLOSING = State.CLOSING

# The library logs each open/close at INFO and parser failures at ERROR; only the
# latter are news.
_frames_log = logging.getLogger("eightys.websocket.frames")
_frames_log.setLevel(logging.WARNING)


@dataclass(frozen=True)
class WsOptions:
    """The options of one ``aio:websocket`` route or ``fd:websocket`` call."""

    subprotocols: tuple[str, ...] = ()
    max_message: int = 1024 * 1024
    compress: bool = False
    idle_timeout: float = 0.0  # 0: never ping
    origins: tuple[str | None, ...] | None = None  # None: any Origin
    send_buffer: int = 1024 * 1024

    def extensions(self) -> list[ServerPerMessageDeflateFactory]:
        """The extension factories to negotiate (permessage-deflate if ``compress``)."""
        if not self.compress:
            return []
        # windows of 2^12 and memLevel 5: ~45 KiB of zlib state per connection (measured
        # with tracemalloc) instead of ~300 KiB with zlib's defaults
        return [ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12,
            compress_settings={"memLevel": 5})]


_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nServer: eightys\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n")


class _ServerProtocol(ServerProtocol):
    """The library's protocol, except that a close frame in the middle of a
    fragmented message ends it normally (RFC 6455 5.4 lets control frames come
    between fragments; Autobahn 7.1.5 expects the close to be echoed, not 1002)."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # the unfinished message is dropped
        super().recv_frame(frame)


def _select_subprotocol(protocol: ServerProtocol, offered: Sequence[str]) -> str | None:
    # the first of the server's protocols that the client offers; none in common
    # (or none offered) -> no subprotocol: the client decides whether that will do
    for name in protocol.available_subprotocols or ():
        if name in offered:
            return name  # type: ignore[return-value]
    return None


def handshake(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
              options: WsOptions) -> tuple[ServerProtocol, bytes, bool]:
    """Check an upgrade request; returns the sans-IO protocol, the response to send
    (101, or the 4xx that refuses it: 400 bad handshake, 403 Origin not allowed,
    426 not a WebSocket upgrade) and whether it was accepted."""
    protocol = _ServerProtocol(
        origins=list(options.origins) if options.origins is not None else None,  # type: ignore[arg-type]
        extensions=options.extensions(),
        subprotocols=list(options.subprotocols) or None,  # type: ignore[arg-type]
        select_subprotocol=_select_subprotocol,
        max_size=options.max_message,
        logger=_frames_log,
    )
    # The request was parsed already (httptools), but the sans-IO protocol reads its
    # handshake from the wire: hand it the head as received, so its parser then
    # continues with frames.
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, url, b"".join(
        b"%s: %s\r\n" % pair for pair in headers))
    protocol.receive_data(head)
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request):  # the library refused the head
        return protocol, b"".join(protocol.data_to_send()) or _BAD_REQUEST, False
    request = events[0]
    response = protocol.accept(request)
    response.headers["Server"] = "eightys"
    if response.status_code != 101:
        response.headers["Connection"] = "close"
    protocol.send_response(response)
    return protocol, b"".join(protocol.data_to_send()), response.status_code == 101


class WsHost(Protocol):
    """What a WebSocket connection needs from its worker."""

    now: float
    close_code: int  # sent when the worker stops: 1001, or 1012 in a rolling restart

    def register(self, fd: int, conn: "WebSocketProtocol") -> None: ...
    def forget(self, fd: int) -> None: ...
    def on_open(self, fd: int, query: bytes, subprotocol: bytes) -> None: ...
    def on_message(self, fd: int, data: bytes, binary: bool) -> None: ...
    def on_close(self, conn: "WebSocketProtocol", code: int, reason: bytes) -> None: ...


class WebSocketProtocol(asyncio.Protocol):
    """One open WebSocket connection. Its handle in Lua is ``self.fd`` (``ws.id``)."""

    __slots__ = ("host", "fd", "ws", "options", "query", "transport", "plain", "batching",
                 "parts", "binary", "decoder", "since", "ping_at", "closing_at",
                 "flow", "lost", "channels", "on_message", "queued", "out")

    def __init__(self, host: WsHost, fd: int, ws: ServerProtocol, url: bytes,
                 options: WsOptions) -> None:
        self.host = host
        self.fd = fd
        self.ws = ws
        self.options = options
        at = url.find(b"?")
        self.query = url[at + 1:] if at != -1 else b""
        self.transport: asyncio.Transport | None = None
        #: no extension negotiated: a frame encoded once can go to every such subscriber
        self.plain = not ws.extensions
        self.batching = False  # inside data_received: output is written once at the end
        self.parts: list[bytes] | None = None  # fragments of the message being received
        self.binary = False
        self.decoder: Any = None  # incremental UTF-8 check of a fragmented text message
        self.since = host.now  # last data from the client
        self.ping_at = 0.0  # when our unanswered keepalive ping went out (0: none)
        self.closing_at = 0.0  # when we began the closing handshake (0: not yet)
        self.flow: FlowControl | None = None
        self.queued = 0  # bytes queued since the last write
        self.out: list[bytes] = []  # our data frames (plain connections) since the last write
        self.lost = False
        self.channels: set[bytes] = set()  # pub/sub channels (kept by eightys.pubsub)
        self.on_message: Callable[[int, bytes, bool], None] = host.on_message

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.flow = FlowControl(transport)
        # one bound for the output: reading stops above it, and sends are refused
        transport.set_write_buffer_limits(high=self.options.send_buffer)  # type: ignore[attr-defined]
        self.host.register(self.fd, self)
        self.batching = True
        try:
            self.host.on_open(self.fd, self.query, (self.ws.subprotocol or "").encode())
        finally:
            self.batching = False
        self._flush()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        self.since = self.host.now
        self.ping_at = 0.0
        ws.receive_data(data)
        events = ws.events_received()
        if events:
            self.batching = True
            try:
                for frame in events:
                    opcode = frame.opcode
                    if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                        self._on_data_frame(frame)
                        if ws.state is not OPEN:
                            break  # failed (bad UTF-8) or closed by a handler: ignore the rest
            finally:
                self.batching = False
        self._flush()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush()
        return False

    def pause_writing(self) -> None:
        self.flow.pause_writing()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if not self.lost:
            self.flow.resume_writing()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        if self.flow is not None:
            self.flow.wake(False)
        ws = self.ws
        ws.receive_eof()
        received, sent = ws.close_rcvd, ws.close_sent
        if received is not None:
            code, reason = received.code, received.reason
        elif sent is not None:
            code, reason = sent.code, sent.reason  # we closed; the client left without answering
        else:
            code, reason = ABNORMAL, ""
        self.host.forget(self.fd)
        self.host.on_close(self, code, reason.encode())

    # -- frames in -------------------------------------------------------------------

    def _on_data_frame(self, frame: Frame) -> None:
        data = frame.data
        if type(data) is not bytes:
            data = bytes(data)
        if frame.opcode is not _CONT:
            binary = frame.opcode is _BINARY
            if frame.fin:
                if not binary:
                    try:
                        data.decode()
                    except UnicodeDecodeError as exc:
                        self._invalid_utf8(exc)
                        return
                self.on_message(self.fd, data, binary)
                return
            self.parts = [data]
            self.binary = binary
            if not binary:
                self.decoder = codecs.getincrementaldecoder("utf-8")()
                if not self._check_text(data, False):
                    return
            return
        parts = self.parts
        assert parts is not None  # the library rejects a continuation without a start
        parts.append(data)
        if self.decoder is not None and not self._check_text(data, frame.fin):
            return
        if frame.fin:
            self.parts = None
            self.decoder = None
            self.on_message(self.fd, b"".join(parts), self.binary)

    def _check_text(self, data: bytes, final: bool) -> bool:
        try:
            self.decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            self._invalid_utf8(exc)
            return False
        return True

    def _invalid_utf8(self, exc: UnicodeDecodeError) -> None:
        self.parts = self.decoder = None
        self.ws.fail(1007, f"invalid UTF-8: {exc.reason}")

    # -- frames out ------------------------------------------------------------------

    def _flush(self) -> None:
        # Our data frames (with the library's frames queued before each), then what the
        # library queued since (pongs, close, EOF): no message is ever queued after a
        # close, as the state is no longer OPEN then.
        self.queued = 0
        out = self.out
        library = self.ws.data_to_send()
        eof = bool(library) and library[-1] == b""  # SEND_EOF: the library's alone
        if out:
            self.out = []
            if library:
                out += library
        elif library:
            out = library
        else:
            return
        transport = self.transport
        if transport is None or self.lost:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if data:
            transport.write(data)
        if eof:
            transport.close()  # after the closing handshake (or a failure): server closes first

    def _queue(self, data: bytes, binary: bool, frame: bytes | None = None) -> None:
        if self.plain:
            # No extension: an unmasked frame is a 2-10 byte head and the data, so it
            # is built here rather than through the library's Frame objects. What the
            # library queued before (pongs) goes first: peers expect the order kept.
            earlier = self.ws.data_to_send()
            if earlier:
                self.out += earlier
            if frame is not None:
                self.out.append(frame)
            else:
                n = len(data)
                first = 0x82 if binary else 0x81
                if n < 126:
                    self.out.append(bytes((first, n)))
                elif n < 65536:
                    self.out.append(_HEAD16.pack(first, 126, n))
                else:
                    self.out.append(_HEAD64.pack(first, 127, n))
                if n:
                    self.out.append(data)
        elif binary:
            self.ws.send_binary(data)
        else:
            self.ws.send_text(data)
        if self.batching:
            self.queued += len(data)
            if self.queued > FLUSH_AT:
                self._flush()
        else:
            self._flush()

    def send(self, data: bytes, binary: bool) -> str | None:
        """Queue one message; returns None, or why it was not sent."""
        if self.ws.state is not OPEN or self.lost:
            return "closed"
        if self.transport.get_write_buffer_size() > self.options.send_buffer:  # type: ignore[union-attr]
            return "send buffer full"
        self._queue(data, binary)
        return None

    def publish(self, frame: bytes | None, data: bytes, binary: bool) -> bool:
        """A pub/sub message: ``frame`` is it pre-encoded for connections without
        extensions. A subscriber over its send-buffer bound is dropped (1013).
        Returns whether the message was queued."""
        if self.ws.state is not OPEN or self.lost:
            return False
        transport = self.transport
        if transport.get_write_buffer_size() > self.options.send_buffer:  # type: ignore[union-attr]
            self.close(TRY_AGAIN_LATER, "subscriber too slow")
            return False
        if frame is not None and self.plain and not self.batching:
            transport.write(frame)  # type: ignore[union-attr]
            return True
        self._queue(data, binary, frame)
        return True

    def ping(self, data: bytes) -> bool:
        """Send a ping (the pong is not reported: any data from the client counts)."""
        if self.ws.state is not OPEN or self.lost:
            return False
        self.ws.send_ping(data)
        if not self.ping_at:
            self.ping_at = self.host.now
        if not self.batching:
            self._flush()
        return True

    def close(self, code: int = NORMAL, reason: str = "") -> bool:
        """Start the closing handshake (the TCP connection closes when the client
        answers, or after CLOSE_TIMEOUT). False if already closing."""
        ws = self.ws
        if ws.state is not OPEN or self.lost:
            return False
        try:
            ws.send_close(code, reason)
        except (InvalidState, ValueError):
            return False
        self.closing_at = self.host.now or 1.0
        if not self.batching:
            self._flush()
        return True

    def fail(self, code: int, reason: str = "") -> None:
        """Close without waiting for the client (handler errors: 1011)."""
        if self.lost or self.ws.state is _CLOSED:
            return
        self.ws.fail(code, reason)
        if not self.batching:
            self._flush()

    # -- net.* on a WebSocket (the 80s hooks form) --------------------------------------

    def write(self, data: bytes) -> bool:
        """``net.write`` on a WebSocket: one text message."""
        return self.send(data, False) is None

    # -- called by the worker -------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        """The once-a-second sweep: keepalive pings, idle and closing-handshake timeouts."""
        if self.lost:
            return
        state = self.ws.state
        if state is _CLOSING or state is _CLOSED:
            if self.closing_at and now - self.closing_at > CLOSE_TIMEOUT + CLOCK_STEP:
                self.transport.abort()  # type: ignore[union-attr]
            elif not self.closing_at:
                self.closing_at = now
            return
        idle = self.options.idle_timeout
        if not idle:
            return
        if self.ping_at:
            if now - self.ping_at > idle + CLOCK_STEP:
                self.fail(INTERNAL_ERROR, "keepalive ping timeout")
        elif now - self.since > idle + CLOCK_STEP:
            self.ping(b"")

    def shutdown(self) -> None:
        """The worker is stopping: close with 1001 (1012 in a rolling restart)."""
        self.close(self.host.close_code, "server restart" if self.host.close_code
                   == SERVICE_RESTART else "server shutting down")
