"""The master's metrics listener (``--metrics [HOST:]PORT``, 127.0.0.1 by default).

A small HTTP/1.1 server in the master's event loop, apart from the workers'
listeners, so a scrape never competes with the application:

* ``GET /metrics``: the Prometheus text format (:meth:`MetricsHub.render`);
* ``GET /_eightys/``: the live dashboard (``eightys/web/dashboard.html`` and
  ``dashboard.js``, charts drawn on a canvas by our own code: nothing from a CDN);
* ``GET /_eightys/events``: Server-Sent Events, one JSON state a second
  (:meth:`MetricsHub.tick`) for the page.

Requests are GET or HEAD with a head of at most 8 KiB; anything else is refused
with 4xx and the connection closed. The summary is computed once a second for all
event-stream clients together.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from eightys.metrics import MetricsHub
from eightys.wire import date_line, status_line

log = logging.getLogger("master")

WEB = Path(__file__).resolve().parent / "web"
MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
#: Event-stream clients at most (each costs a write a second).
MAX_STREAMS = 64
_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
_FILES = {b"/_eightys/": "dashboard.html", b"/_eightys/index.html": "dashboard.html",
          b"/_eightys/dashboard.js": "dashboard.js"}


class Dashboard:
    """The metrics listener of one master."""

    def __init__(self, hub: MetricsHub) -> None:
        self.hub = hub
        self.server: asyncio.AbstractServer | None = None
        self.streams: set[asyncio.StreamWriter] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._state = b""

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (``port`` 0 picks one)."""
        self.server = await asyncio.start_server(self._client, host, port, limit=MAX_HEAD)
        loop = asyncio.get_running_loop()
        self._tick(loop)
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening and end the event streams."""
        if self._timer is not None:
            self._timer.cancel()
        if self.server is not None:
            self.server.close()
        for writer in list(self.streams):
            writer.close()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._state = json.dumps(self.hub.tick()).encode()
        frame = b"data: " + self._state + b"\n\n"
        for writer in list(self.streams):
            if writer.is_closing():
                self.streams.discard(writer)
            elif writer.transport.get_write_buffer_size() > 1 << 20:
                writer.close()  # a reader that does not read: drop it, not buffer forever
                self.streams.discard(writer)
            else:
                writer.write(frame)
        self._timer = loop.call_later(1.0, self._tick, loop)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, b"request head too large\n", close=True))
                    break
                except asyncio.TimeoutError:
                    break
                keep = self._answer(head, writer)
                if keep is None:
                    return  # an event stream: the writer now belongs to the ticker
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, OSError):
            pass
        writer.close()

    def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> bool | None:
        """Answer one request; True to read the next one, False to close, None when
        the connection became an event stream."""
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            writer.write(_response(400, b"bad request\n", close=True))
            return False
        method, target, version = parts
        close = version == b"HTTP/1.0" or b"connection: close" in rest.lower()
        if method not in (b"GET", b"HEAD"):
            writer.write(_response(405, b"only GET and HEAD\n", close=True,
                                   extra=b"Allow: GET, HEAD\r\n"))
            return False
        path = target.partition(b"?")[0]
        body: bytes
        if path == b"/metrics":
            body = self.hub.render().encode()
            kind = b"text/plain; version=0.0.4; charset=utf-8"
        elif path == b"/_eightys/events":
            if len(self.streams) >= MAX_STREAMS:
                writer.write(_response(503, b"too many event streams\n", close=True))
                return False
            writer.write(status_line(200) + date_line()
                         + b"Content-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                           b"Connection: close\r\n\r\n")
            if method == b"HEAD":
                return False
            writer.write(b"retry: 1000\n\ndata: " + (self._state or b"{}") + b"\n\n")
            self.streams.add(writer)
            return None
        elif path in (b"/", b"/_eightys"):
            writer.write(_response(302, b"", close=close, extra=b"Location: /_eightys/\r\n"))
            return not close
        elif path in _FILES:
            name = _FILES[path]
            body = (WEB / name).read_bytes()
            kind = _TYPES[Path(name).suffix]
        else:
            writer.write(_response(404, b"not found\n", close=close))
            return not close
        writer.write(_response(200, body, close=close, kind=kind, head_only=method == b"HEAD"))
        return not close


def _response(status: int, body: bytes, *, close: bool, kind: bytes = b"text/plain; charset=utf-8",
              extra: bytes = b"", head_only: bool = False) -> bytes:
    return b"".join((
        status_line(status), date_line(), b"Content-Type: ", kind, b"\r\n",
        b"Content-Length: %d\r\n" % len(body), b"Cache-Control: no-store\r\n", extra,
        b"Connection: close\r\n" if close else b"", b"\r\n", b"" if head_only else body))


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); host 127.0.0.1 by
    default: metrics and the dashboard are not for the whole network unless asked."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics needs PORT or HOST:PORT, got {value!r}")
    return host, int(port)
