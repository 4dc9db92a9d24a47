"""Outgoing HTTP/1.1 requests for Lua (``aio.lib.http_client``, eightys/lua/eightys/http_client.lua).

Each request runs as a task on the worker's loop and resolves a Lua promise with
``{status, status_line, headers, body}`` or ``{error = "..."}``: a failure is a
value, never a Lua error, as in 80s.

* Connections are kept alive and reused per (scheme, host, port): at most
  ``MAX_IDLE_PER_ORIGIN`` idle ones each, dropped after ``IDLE_TIMEOUT``.
* Bodies framed by Content-Length, chunked encoding, or the end of the
  connection are read (httptools parses); at most ``MAX_RESPONSE_BODY`` bytes.
* Redirects are not followed unless asked (``redirects = n``).
* The whole exchange has a timeout (default ``DEFAULT_TIMEOUT`` seconds).
* https checks the certificate (the system's CAs, or ``ca_file``) and the host name,
  and sends SNI; ``verify = false`` turns the checks off (eightys.tls.client_context).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

import httptools

from eightys import tls

if TYPE_CHECKING:
    from eightys.lua_runtime import LuaRuntime


class ClientOwner(Protocol):
    """What the client needs from the worker: its Lua runtime (for promises)."""

    runtime: "LuaRuntime"

DEFAULT_TIMEOUT = 30.0
MAX_IDLE_PER_ORIGIN = 8
IDLE_TIMEOUT = 30.0
MAX_RESPONSE_BODY = 64 * 1024 * 1024
MAX_RESPONSE_HEAD = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}

#: scheme, host, port, CA file ("": the system's; "-": no verification)
Origin = tuple[str, str, int, str]
NO_VERIFY = "-"


class HttpClientError(Exception):
    """A request that could not be completed; the message goes to Lua as {error=...}."""


class _Response:
    """httptools callbacks for one response."""

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.headers: dict[bytes, bytes] = {}
        self.status_line = b""
        self.body: list[bytes] = []
        self.size = 0
        self.head_size = 0
        self.head_done = False
        self.done = False
        self.framed = False  # Content-Length or chunked: the end is known

    def on_status(self, status: bytes) -> None:
        self.status_line += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_RESPONSE_HEAD:
            raise HttpClientError("response head too large")
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self.framed = True
        prev = self.headers.get(name)
        self.headers[name] = value if prev is None else prev + b", " + value

    def on_headers_complete(self) -> None:
        self.head_done = True
        if self.head_only:
            self.done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_RESPONSE_BODY:
            raise HttpClientError(f"response body over {MAX_RESPONSE_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def _reusable(parser: Any, result: _Response) -> bool:
    """Whether the connection may carry another request after this response."""
    if not result.framed or not result.done:
        return False  # the body ended with the connection
    connection = result.headers.get(b"connection", b"").lower()
    if parser.get_http_version() == "1.0":
        return b"keep-alive" in connection
    return b"close" not in connection


class _Connection:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() \
            and time.monotonic() - self.idle_since < IDLE_TIMEOUT

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """The worker's HTTP client: a keep-alive pool and the ``http_request`` host function."""

    def __init__(self, worker: ClientOwner) -> None:
        self.worker = worker
        self.idle: dict[Origin, list[_Connection]] = {}

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {b"http_request": self.request}

    def request(self, method: bytes, url: bytes, headers: Any, body: Any, timeout: Any,
                redirects: Any, keepalive: Any, ca_file: Any = None, verify: Any = True) -> Any:
        """Start a request; returns a Lua promise of the response table (or {error})."""
        runtime = self.worker.runtime
        header_list = [(bytes(k), v if type(v) is bytes else str(v).encode())
                       for k, v in runtime.to_python(headers).items()] if headers is not None else []
        coro = self._request(method.decode().upper(), url.decode("utf-8", "replace"), header_list,
                             body or b"", float(timeout or DEFAULT_TIMEOUT), int(redirects or 0),
                             keepalive is not False,
                             NO_VERIFY if verify is False else os.fsdecode(ca_file) if ca_file else "")
        return runtime.promise_from(coro, lambda result: (runtime.to_lua(result),))

    async def _request(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                       body: bytes, timeout: float, redirects: int, keepalive: bool,
                       ca_file: str = "") -> dict[bytes, Any]:
        try:
            return await asyncio.wait_for(
                self._follow(method, url, headers, body, redirects, keepalive, ca_file), timeout)
        except asyncio.TimeoutError:
            return {b"error": f"timed out after {timeout:g} s"}
        except ssl.SSLError as exc:
            return {b"error": tls.describe_error(exc)}
        except (HttpClientError, OSError, ssl.CertificateError,
                httptools.HttpParserError) as exc:
            return {b"error": str(exc) or type(exc).__name__}

    async def _follow(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                      body: bytes, redirects: int, keepalive: bool,
                      ca_file: str) -> dict[bytes, Any]:
        while True:
            response = await self._once(method, url, headers, body, keepalive, ca_file)
            location = response[b"headers"].get(b"location")
            status = response[b"status"]
            if redirects <= 0 or status not in _REDIRECTS or not location:
                return response
            redirects -= 1
            url = urljoin(url, location.decode("latin-1"))
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", b""

    def _tls_context(self, ca_file: str) -> ssl.SSLContext:
        if ca_file == NO_VERIFY:
            return tls.client_context("", verify=False)
        return tls.client_context(ca_file)

    async def _connect(self, origin: Origin) -> _Connection:
        pool = self.idle.get(origin)
        while pool:
            conn = pool.pop()
            if conn.usable():
                return conn
            conn.close()
        scheme, host, port, ca_file = origin
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._tls_context(ca_file) if scheme == "https" else None,
            limit=MAX_RESPONSE_HEAD)
        return _Connection(reader, writer)

    def _release(self, origin: Origin, conn: _Connection) -> None:
        pool = self.idle.setdefault(origin, [])
        if len(pool) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        pool.append(conn)

    async def _once(self, method: str, url: str, headers: list[tuple[bytes, bytes]],
                    body: bytes, keepalive: bool, ca_file: str) -> dict[bytes, Any]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpClientError(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin: Origin = (parts.scheme, parts.hostname, port,
                          ca_file if parts.scheme == "https" else "")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        names = {name.lower() for name, _ in headers}
        lines = [f"{method} {target} HTTP/1.1\r\n".encode()]
        if b"host" not in names:
            default = port == (443 if parts.scheme == "https" else 80)
            lines.append(b"Host: " + parts.netloc.encode() if not default
                         else b"Host: " + parts.hostname.encode())
            lines[-1] += b"\r\n"
        if b"content-length" not in names and (body or method not in ("GET", "HEAD")):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        if b"connection" not in names:
            lines.append(b"Connection: keep-alive\r\n" if keepalive else b"Connection: close\r\n")
        for name, value in headers:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise HttpClientError("header names and values must not contain CR or LF")
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"\r\n")
        request = b"".join(lines) + body

        for attempt in (1, 2):  # a pooled connection the server closed meanwhile: retry once
            reused = bool(self.idle.get(origin))
            conn = await self._connect(origin)
            try:
                conn.writer.write(request)
                response = await self._read(conn, method == "HEAD")
            except (ConnectionError, HttpClientError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and attempt == 1 and not isinstance(exc, HttpClientError):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            break
        parser, result = response
        if keepalive and _reusable(parser, result) and method != "HEAD":
            self._release(origin, conn)
        else:
            conn.close()
        status_line = result.status_line.decode("latin-1")
        return {b"status": parser.get_status_code(),
                b"status_line": f"{parser.get_status_code()} {status_line}".encode("latin-1"),
                b"headers": result.headers, b"body": b"".join(result.body)}

    async def _read(self, conn: _Connection, head_only: bool) -> tuple[Any, _Response]:
        result = _Response(head_only)
        parser = httptools.HttpResponseParser(result)
        while not result.done:
            data = await conn.reader.read(65536)
            if not data:
                if result.head_done and not result.framed:
                    break  # the body ends with the connection
                raise ConnectionError("connection closed before the response was complete")
            try:
                parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, HttpClientError):
                    raise exc.__context__ from None
                raise
        return parser, result

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()
