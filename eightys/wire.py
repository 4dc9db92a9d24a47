"""HTTP wire constants: the one source Python and Lua both read.

Reason phrases, status lines, the per-connection flag bits that travel with each
request into Lua, the ``Connection`` header those flags call for, and the
``Server``/``Date`` lines. ``eightys/lua/eightys/http.lua`` gets :func:`lua_table`
through the private host table, so a phrase or a flag is defined here only.

Flags are bits so that new connection properties (TLS, ...) can be added without
touching the tables that depend on them: every table here is derived from the bits.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

#: Request flag bits (``fd.flags`` in Lua).
FLAG_KEEP_ALIVE = 1  # the connection stays open after this response
FLAG_HTTP10 = 2  # the request was HTTP/1.0 (keep-alive must be announced)
FLAG_TLS = 4  # the connection is encrypted (https / wss)
#: the body was larger than --body-buffer-size: what Lua gets is its file's path
FLAG_BODY_FILE = 8
#: Every flag combination that can occur, for tables indexed by flags.
FLAG_LIMIT = 16

SERVER_NAME = b"eightys"
SERVER_LINE = b"Server: " + SERVER_NAME + b"\r\n"

#: RFC 9110 reason phrases (plus 101, 426 and friends a server sends).
REASONS: dict[int, bytes] = {
    100: b"Continue", 101: b"Switching Protocols",
    200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    409: b"Conflict", 410: b"Gone", 411: b"Length Required",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable", 417: b"Expectation Failed", 422: b"Unprocessable Content",
    426: b"Upgrade Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}

_status_lines: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``b"HTTP/1.1 200 OK\\r\\n"`` for ``status`` (cached)."""
    line = _status_lines.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))
        _status_lines[status] = line
    return line


def connection_header(flags: int) -> bytes:
    """The ``Connection`` line a response to a request with ``flags`` carries:
    ``close`` when the connection ends after it, ``keep-alive`` for an HTTP/1.0
    client that keeps it (1.0 closes by default), nothing for HTTP/1.1 keep-alive."""
    if not flags & FLAG_KEEP_ALIVE:
        return b"Connection: close\r\n"
    if flags & FLAG_HTTP10:
        return b"Connection: keep-alive\r\n"
    return b""


#: connection_header() for every flags value.
CONNECTION_HEADERS: tuple[bytes, ...] = tuple(connection_header(f) for f in range(FLAG_LIMIT))

_date_second = -1
_date_line = b""


def date_line(now: float | None = None) -> bytes:
    """``b"Date: <IMF-fixdate>\\r\\n"`` for now (or ``now``), formatted at most once a
    second: formatting a date costs more than the rest of a small response."""
    global _date_second, _date_line
    second = int(time.time() if now is None else now)
    if second != _date_second:
        _date_line = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
        _date_second = second
    return _date_line


def error_response(status: int, *, close: bool = True, body: bytes | None = None) -> bytes:
    """A complete plain-text response the server itself produces (400, 408, 431,
    504, ...). RFC 9110 6.6.1 requires ``Date`` on these too."""
    if body is None:
        body = REASONS.get(status, b"Error")
    return b"".join((
        status_line(status), SERVER_LINE, date_line(),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
        b"Connection: close\r\n" if close else b"", b"\r\n", body,
    ))


def lua_table() -> dict[bytes, Any]:
    """What http.lua reads: reasons by code, the flag bits, the Server line."""
    return {
        b"reasons": {code: phrase for code, phrase in REASONS.items()},
        b"flag_keep_alive": FLAG_KEEP_ALIVE,
        b"flag_http10": FLAG_HTTP10,
        b"flag_tls": FLAG_TLS,
        b"flag_body_file": FLAG_BODY_FILE,
        b"flag_limit": FLAG_LIMIT,
        b"server_line": SERVER_LINE,
    }
