"""HTTP over real sockets for tests/test_http.py: raw bytes out, strict parsing in.

Requests go out as raw bytes (so tests can send anything, malformed or
pipelined); every response is parsed by h11, an independent strict HTTP/1.1
implementation. h11 is a client-side state machine that only accepts a response
to a request it has "sent", so :meth:`HttpClient.read_response` first feeds it a
shadow request with the method that matters for framing (HEAD!) and discards
the bytes h11 would send; the wire carries what the test sent. Any framing
mistake in a response raises ``h11.RemoteProtocolError`` and fails the test.
"""

from __future__ import annotations

import email.utils
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h11

from conftest import Server, free_port


@dataclass
class Response:
    """One response as h11 saw it."""

    status: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: status codes of 1xx responses that came first (100 Continue)
    informational: list[int] = field(default_factory=list)
    #: (monotonic time, data) of each body piece as it arrived
    pieces: list[tuple[float, bytes]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        """Every value of header ``name`` (h11 lower-cases names)."""
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k == key]

    def header(self, name: str) -> str | None:
        """The value of header ``name``, None if absent; fails if it occurs twice."""
        values = self.all(name)
        assert len(values) <= 1, f"{name} occurs {len(values)} times: {values}"
        return values[0] if values else None

    @property
    def text(self) -> str:
        return self.body.decode()


class HttpClient:
    """One client connection: send raw bytes, read h11-parsed responses in order."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.conn = h11.Connection(h11.CLIENT)
        self.eof = False

    @classmethod
    def connect(cls, server: Server, timeout: float = 5.0) -> "HttpClient":
        return cls(server.connect(timeout), timeout)

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- sending ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                     body: bytes = b"", version: str = "1.1", host: bool = True) -> None:
        """Send one request; a Content-Length is added for a non-empty body unless
        ``headers`` frame it themselves."""
        self.send(request_bytes(method, target, headers, body, version, host))

    # -- receiving --------------------------------------------------------------------

    def expect(self, method: str = "GET") -> None:
        """Tell h11 a request went out (shadow: its bytes are dropped), so it
        accepts the next response; ``method`` decides the framing (HEAD)."""
        self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        self.conn.send(h11.EndOfMessage())

    def next_event(self) -> object:
        """The next h11 event, reading from the socket as needed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.eof:
                raise AssertionError("h11 needs more data after the server closed")
            data = self.sock.recv(1 << 16)
            if not data:
                self.eof = True
            self.conn.receive_data(data)

    def finish_response(self) -> Response:
        """Read the rest of a response whose request h11 has been told about."""
        informational: list[int] = []
        while True:
            event = self.next_event()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), f"expected a response, got {event!r}"
            break
        response = Response(event.status_code, event.reason, event.http_version,
                            list(event.headers), informational=informational)
        chunks = []
        while True:
            event = self.next_event()
            if isinstance(event, h11.Data):
                chunks.append(event.data)
                response.pieces.append((time.monotonic(), event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected h11 event in a body: {event!r}")
        response.body = b"".join(chunks)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()  # keep-alive: ready for the next response
        return response

    def read_response(self, method: str = "GET") -> Response:
        """The next response on this connection (for a request sent with ``method``)."""
        self.expect(method)
        return self.finish_response()

    def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", version: str = "1.1") -> Response:
        """Send one request and read its response."""
        self.send_request(method, target, headers, body, version)
        return self.read_response(method)

    def assert_closed(self, timeout: float = 3.0) -> None:
        """Nothing more came after the last response, and the server closed the
        connection (a FIN: recv returns b"", not a reset) within ``timeout``."""
        leftover, _ = self.conn.trailing_data
        assert leftover == b"", f"unexpected bytes after the response: {leftover!r}"
        if self.eof:
            return
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection within {timeout} s")
        assert data == b"", f"expected the connection to close, got {data!r}"
        self.eof = True

    def assert_open(self, wait: float = 0.2) -> None:
        """The server neither sent anything nor closed within ``wait`` seconds."""
        leftover, _ = self.conn.trailing_data
        assert leftover == b"", f"unexpected bytes after the response: {leftover!r}"
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"expected an open, quiet connection; recv gave {data!r}")


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes = b"", version: str = "1.1", host: bool = True) -> bytes:
    """A request as raw bytes (``Host: test`` first unless ``host`` is False)."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host:
        lines.append("Host: test")
    headers = list(headers or [])
    framed = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
    if body and not framed:
        headers.append(("Content-Length", str(len(body))))
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def check_date_and_server(response: Response) -> None:
    """``Server: eightys`` and a valid, current ``Date`` (RFC 9110 IMF-fixdate)."""
    assert response.header("Server") == "eightys"
    date = response.header("Date")
    assert date is not None, f"no Date header in {response.headers}"
    assert date.endswith(" GMT") and len(date) == 29, date
    sent = email.utils.parsedate_to_datetime(date).timestamp()
    assert abs(sent - time.time()) < 3, f"Date {date!r} is not now"


@contextmanager
def running_server(workdir: Path, entry: str | Path, *args: str,
                   env: dict[str, str] | None = None) -> Iterator[Server]:
    """One single-worker eightys serving ``entry``; stopped on exit, whatever happened."""
    port = free_port()
    server = Server([str(entry), "-p", str(port), "-c", "1", *args], workdir, port=port, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
