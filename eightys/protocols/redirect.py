"""The ``--redirect-http`` listener: plain HTTP answered with ``308`` to https.

Every request gets ``308 Permanent Redirect`` to the same host, path and query over
https (the TLS port added unless it is 443), then the connection closes; 308 keeps
the method and body, so a POST is repeated over TLS. No Lua runs. A Host that is
not a host name or address literal gets 400 (it goes into the Location header); a
head larger than ``--max-header-size``, or one not complete within
``--header-timeout``, ends the connection.
"""

from __future__ import annotations

import re
from typing import Any

import httptools

from eightys.protocols.host import ConnectionHost
from eightys.wire import SERVER_LINE, date_line, error_response, status_line

#: A Host header we repeat in Location: a name or IPv4 address, or an IPv6 literal,
#: with an optional port.
_HOST = re.compile(rb"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


class _Done(Exception):
    """The head is in: stop parsing."""


def location(host_header: bytes, target: bytes, https_port: int) -> bytes | None:
    """The https URL for ``target`` requested with ``Host: host_header``, or None
    when either cannot be repeated safely."""
    if target.startswith((b"http://", b"https://")):  # absolute-form (RFC 9112 3.2.2)
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        host_header, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    if not target.startswith(b"/") or not _HOST.fullmatch(host_header):
        return None
    name = host_header
    if name.startswith(b"["):
        name = name[:name.index(b"]") + 1]
    elif b":" in name:
        name = name.split(b":", 1)[0]
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + name + port + target


class RedirectProtocol:
    """One plain connection on the redirect listener (an asyncio protocol)."""

    __slots__ = ("host", "fd", "https_port", "transport", "parser", "target", "host_header",
                 "size", "since", "done")

    def __init__(self, host: ConnectionHost, fd: int, https_port: int) -> None:
        self.host = host
        self.fd = fd
        self.https_port = https_port
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.target = b""
        self.host_header = b""
        self.size = 0
        self.since = host.now
        self.done = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.host.register(self.fd, self)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Done):
                self._answer()
                return
            self._refuse(400)
            return
        except httptools.HttpParserError:
            self._refuse(400)
            return
        if self.size > self.host.limits.max_header:
            self._refuse(431)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.forget(self.fd)

    # -- httptools callbacks ----------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self.host_header = value

    def on_headers_complete(self) -> None:
        raise _Done()

    # -- answers ----------------------------------------------------------------------

    def _answer(self) -> None:
        url = location(self.host_header, self.target, self.https_port)
        if url is None:
            self._refuse(400)
            return
        body = b"Moved to " + url + b"\n"
        self.done = True
        self.transport.write(b"".join((
            status_line(308), SERVER_LINE, date_line(), b"Location: ", url, b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n", body)))
        self.transport.close()

    def _refuse(self, status: int) -> None:
        self.done = True
        self.transport.write(error_response(status))
        self.transport.close()

    # -- called by the worker ---------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        """The once-a-second sweep: a head not complete in time ends the connection."""
        if not self.done and now - self.since > self.host.limits.header_timeout:
            self.done = True
            self.transport.abort()

    def shutdown(self) -> None:
        """The worker is stopping: nothing here is worth waiting for."""
        if self.transport is not None:
            self.transport.close()

    def write(self, data: bytes) -> bool:
        """``net.write``: not for these connections."""
        return False

    def close(self) -> None:
        """``net.close``."""
        if self.transport is not None:
            self.transport.close()
