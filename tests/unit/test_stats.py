"""The HTTP accounting (eightys/protocols/stats.py) driven through the real HTTP
adapter with a fake transport and dispatcher: synchronous, asynchronous and
streamed responses, refusals, and responses cut off by the client (499)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eightys.access_log import _escape
from eightys.protocols.host import ConnectionHost
from eightys.protocols.http import HttpProtocol
from eightys.protocols.http_core import HttpLimits
from eightys.protocols.stats import HttpStats, head_size, status_of

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
GET = b"GET /%s HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 4000)

    def set_write_buffer_limits(self, **kw: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def setup(dispatch: Any) -> tuple[HttpProtocol, HttpStats, list[tuple]]:
    loop = asyncio.new_event_loop()
    host = ConnectionHost(loop, HttpLimits(), logging.getLogger("test"))
    host.dispatch_http = dispatch
    host.http_gone = lambda fd: None
    lines: list[tuple] = []
    stats = HttpStats(lambda *args: lines.append(args[1:]), lambda fd: None)
    host.stats = stats
    conn = HttpProtocol(host, 1)
    conn.connection_made(Transport())
    return conn, stats, lines


def route(fd: int, seq: int, method: bytes, url: bytes, *rest: Any) -> Any:
    if url == b"/ok":
        return OK
    if url == b"/missing":
        return NOT_FOUND
    return None  # async: answered later through conn.send


def test_sync_async_and_streamed_responses_are_counted_once_each() -> None:
    conn, stats, lines = setup(route)
    conn.data_received(GET % b"ok" + GET % b"missing" + GET % b"later")
    snap = stats.snapshot()
    assert snap["classes"][2] == 1 and snap["classes"][4] == 1
    assert sum(snap["buckets"]) == 2
    # the async one, streamed in two pieces
    head, body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"2\r\nhi\r\n0\r\n\r\n"
    conn.send(2, head, False)
    assert stats.snapshot()["classes"][2] == 1
    conn.send(2, body, True)
    snap = stats.snapshot()
    assert snap["classes"][2] == 2 and sum(snap["buckets"]) == 3
    assert snap["bytes_in"] == len(GET % b"ok" + GET % b"missing" + GET % b"later")
    assert snap["bytes_out"] == len(OK) + len(NOT_FOUND) + len(head) + len(body)
    statuses = [(line[0][2], line[1], line[2] - line[3]) for line in lines]
    assert statuses == [(b"/ok", 200, 2), (b"/missing", 404, 0), (b"/later", 200, len(body))]


def test_a_response_cut_off_by_the_client_is_499_and_a_refusal_is_counted() -> None:
    conn, stats, lines = setup(route)
    conn.data_received(GET % b"later")
    conn.connection_lost(None)
    assert stats.snapshot()["classes"][4] == 1
    assert lines[-1][1] == 499
    conn, stats, lines = setup(route)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert stats.snapshot()["classes"][4] == 1
    assert lines == [(None, 400, lines[0][2], 0, lines[0][4])]


def test_status_and_head_parsing_and_log_escaping() -> None:
    assert status_of(OK) == 200 and status_of(b"junk") == 0 and status_of(b"") == 0
    assert head_size(OK) == len(OK) - 2 and head_size(b"HTTP/1.1 200") == 12
    assert _escape(b'a"b\\c\x01\xff') == b"a\\x22b\\x5Cc\\x01\\xFF"
    assert _escape(b"/plain?x=1") == b"/plain?x=1"
