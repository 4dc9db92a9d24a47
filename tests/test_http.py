"""HTTP/1.1 over real sockets against real eightys processes.

Most tests share one server (module scope) running tests/apps/http_app.lua (its
header lists the routes) with one worker and small limits, so every limit is
cheap to hit: MAX_HEADER bytes of head, MAX_BODY bytes of body, 1 s header and
keep-alive timeouts. tests/apps/http_on_http.lua (an aio:on_http override) runs
with its limits from the environment; the flow-control and 10,000-connection
tests start their own server. Every response is parsed by h11
(tests/http_helpers.py): a response h11 finds malformed fails the test with
h11.RemoteProtocolError, and "closed" means recv returned b"" with no stray bytes.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import time
from typing import Iterator

import pytest

from conftest import APPS, Server, line_of
from http_helpers import (
    HttpClient,
    Response,
    check_date_and_server,
    request_bytes,
    rss_kib,
    running_server,
)

APP = "tests/apps/http_app.lua"
APP_PATH = APPS / "http_app.lua"
OVERRIDE_APP = "tests/apps/http_on_http.lua"

MAX_HEADER = 4096
MAX_BODY = 1024
SERVER_ARGS = ("--max-header-size", str(MAX_HEADER), "--max-body-size", str(MAX_BODY),
               "--header-timeout", "1", "--keepalive-timeout", "1", "--handler-timeout", "2")
#: Latest a 1 s timeout may strike: the worker checks once a second, and `since`
#: comes from that coarse clock, so up to timeout + 2 s (plus scheduling slack).
TIMEOUT_LATEST = 3.6

TEXT = "text/plain; charset=utf-8"
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           417: "Expectation Failed", 431: "Request Header Fields Too Large",
           501: "Not Implemented"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("http"), APP, *SERVER_ARGS) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[HttpClient]:
    with HttpClient.connect(server) as c:
        yield c


def check_ok(response: Response, body: str, content_type: str = TEXT) -> None:
    """A 200 with exactly ``body``, its length, type, Date and Server, kept alive."""
    assert (response.status, response.reason, response.http_version) == (200, b"OK", b"1.1")
    assert response.text == body
    assert response.header("Content-Length") == str(len(response.body))
    assert response.header("Content-Type") == content_type
    assert response.header("Connection") is None  # HTTP/1.1 default: keep-alive
    check_date_and_server(response)


def check_refused(response: Response, status: int) -> None:
    """The server's own error response: status, reason, body, and a closing header."""
    assert (response.status, response.reason.decode()) == (status, REASONS[status])
    assert response.text == REASONS[status]
    assert response.header("Content-Length") == str(len(REASONS[status]))
    assert response.header("Connection") == "close"
    check_date_and_server(response)


# -- keep-alive defaults ---------------------------------------------------------------


def test_http11_keeps_the_connection_alive_by_default(client: HttpClient) -> None:
    check_ok(client.request("GET", "/hello"), "hello")
    check_ok(client.request("GET", "/fast?id=7"), "fast 7")  # same connection
    client.assert_open()


def test_http11_connection_close_is_honoured(client: HttpClient) -> None:
    response = client.request("GET", "/hello", [("Connection", "close")])
    assert (response.status, response.text) == (200, "hello")
    assert response.header("Connection") == "close"
    client.assert_closed()


def test_http10_closes_by_default(client: HttpClient) -> None:
    response = client.request("GET", "/hello", version="1.0")
    assert (response.status, response.text) == (200, "hello")
    assert response.header("Connection") == "close"
    client.assert_closed()


def test_http10_keep_alive_keeps_the_connection(client: HttpClient) -> None:
    for target, body in (("/hello", "hello"), ("/fast?id=3", "fast 3")):
        response = client.request("GET", target, [("Connection", "keep-alive")], version="1.0")
        assert (response.status, response.text) == (200, body)
        assert response.header("Connection") == "keep-alive"
    response = client.request("GET", "/hello", version="1.0")  # no keep-alive: last one
    assert response.header("Connection") == "close"
    client.assert_closed()


@pytest.mark.parametrize("closing", [
    request_bytes("GET", "/fast?id=1", [("Connection", "close")]),
    request_bytes("GET", "/fast?id=1", version="1.0"),
], ids=["http11-connection-close", "http10"])
def test_requests_pipelined_after_a_closing_one_are_not_served(client: HttpClient,
                                                               closing: bytes) -> None:
    client.send(closing + request_bytes("GET", "/fast?id=2"))
    response = client.read_response()
    assert (response.status, response.text) == (200, "fast 1")
    assert response.header("Connection") == "close"
    client.assert_closed()  # and nothing (no 400) for the request after it


def test_idle_keep_alive_connection_is_closed_after_the_timeout(client: HttpClient) -> None:
    check_ok(client.request("GET", "/hello"), "hello")
    idle_since = time.monotonic()
    client.assert_closed(timeout=TIMEOUT_LATEST + 1)
    idle = time.monotonic() - idle_since
    assert 0.95 <= idle <= TIMEOUT_LATEST, f"closed after {idle:.2f} s idle, timeout is 1 s"


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_responses_keep_request_order(client: HttpClient) -> None:
    # The slow (async) handler finishes last but its response must go out first.
    started = time.monotonic()
    client.send(request_bytes("GET", "/slow?id=1") + request_bytes("GET", "/fast?id=2")
                + request_bytes("GET", "/fast?id=3"))
    bodies = [client.read_response().text for _ in range(3)]
    assert bodies == ["slow 1", "fast 2", "fast 3"]
    assert time.monotonic() - started >= 0.3
    check_ok(client.request("GET", "/hello"), "hello")


def test_many_pipelined_requests_in_one_write(client: HttpClient) -> None:
    # More than the server dispatches per read (64): the rest waits, parsed, and
    # still comes back in order; some of them async.
    count = 300
    targets = [f"/slow?id={i}" if i % 100 == 50 else f"/fast?id={i}" for i in range(count)]
    client.send(b"".join(request_bytes("GET", t) for t in targets))
    for i, target in enumerate(targets):
        response = client.read_response()
        assert (response.status, response.text) == (200, f"{target[1:5]} {i}")
    check_ok(client.request("GET", "/hello"), "hello")


# -- request bodies ------------------------------------------------------------------------


def test_content_length_body(client: HttpClient) -> None:
    check_ok(client.request("POST", "/echo", body=b"hello body"), "got 10 bytes: hello body")


def test_chunked_request_body(client: HttpClient) -> None:
    # chunk extension and a trailer, sent in pieces that split the framing
    head = request_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")])
    pieces = [head + b"3;ext=1\r\nab", b"c\r\n5\r\nde fg\r", b"\n0\r\nX-Trailer: t\r\n", b"\r\n"]
    for piece in pieces:
        client.send(piece)
        time.sleep(0.02)
    check_ok(client.read_response("POST"), "got 8 bytes: abcde fg")
    check_ok(client.request("POST", "/echo", [("Transfer-Encoding", "chunked")],
                            b"0\r\n\r\n"), "got 0 bytes: ")


def test_100_continue(client: HttpClient) -> None:
    client.send(request_bytes("POST", "/echo", [("Content-Length", "5"),
                                                 ("Expect", "100-continue")]))
    client.expect("POST")
    event = client.next_event()  # before the body was sent
    assert type(event).__name__ == "InformationalResponse" and event.status_code == 100
    client.send(b"hello")
    response = client.finish_response()
    check_ok(response, "got 5 bytes: hello")
    check_ok(client.request("GET", "/hello"), "hello")


def test_no_100_continue_for_http10(client: HttpClient) -> None:
    # RFC 9110 10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored
    response = client.request("POST", "/echo", [("Expect", "100-continue")], b"abc", version="1.0")
    assert response.informational == []
    assert (response.status, response.text) == (200, "got 3 bytes: abc")
    client.assert_closed()


def test_100_continue_with_too_large_body_gets_413_instead(client: HttpClient) -> None:
    client.send(request_bytes("POST", "/echo", [("Content-Length", str(MAX_BODY + 1)),
                                                 ("Expect", "100-continue")]))
    response = client.read_response("POST")
    assert response.informational == []
    check_refused(response, 413)
    client.assert_closed()


# -- routes ----------------------------------------------------------------------------------


def test_head_answers_like_get_without_a_body(client: HttpClient) -> None:
    response = client.request("HEAD", "/hello")
    assert (response.status, response.body) == (200, b"")
    assert response.header("Content-Length") == "5"  # the GET body's length
    assert response.header("Content-Type") == TEXT
    response = client.request("HEAD", "/stream?n=2")
    assert (response.status, response.body) == (200, b"")
    assert response.header("Transfer-Encoding") == "chunked"
    check_ok(client.request("GET", "/hello"), "hello")  # no stray body bytes before it


def test_405_lists_the_allowed_methods(client: HttpClient) -> None:
    for method, target, allow in (("DELETE", "/method", "GET, HEAD, POST"),
                                  ("POST", "/hello", "GET, HEAD"),
                                  ("PUT", "/users/1/posts/2", "GET, HEAD")):
        response = client.request(method, target)
        assert (response.status, response.reason, response.text) == \
            (405, b"Method Not Allowed", "Method Not Allowed")
        assert response.header("Allow") == allow
        assert response.header("Connection") is None
    check_ok(client.request("GET", "/method"), "method GET")
    check_ok(client.request("POST", "/method", body=b"x"), "method POST")


def test_unknown_path_is_404(client: HttpClient) -> None:
    response = client.request("GET", "/no/such/path")
    assert (response.status, response.reason, response.text) == (404, b"Not Found", "Not Found")
    check_ok(client.request("GET", "/hello"), "hello")


@pytest.mark.parametrize("target, status, body", [
    ("/users/42/posts/7", 200, "user 42 post 7"),
    ("/users/abc-1/posts/x.y?q=1", 200, "user abc-1 post x.y"),
    ("/files/readme.txt", 200, "file readme.txt"),
    ("/users/42/posts", 404, "Not Found"),
    ("/users/42/posts/7/more", 404, "Not Found"),
    ("/files/", 404, "Not Found"),
])
def test_path_parameters(client: HttpClient, target: str, status: int, body: str) -> None:
    response = client.request("GET", target)
    assert (response.status, response.text) == (status, body)


def test_aio_on_http_override_dispatches_and_falls_back_to_routes(
        override_server: Server) -> None:
    with HttpClient.connect(override_server) as c:
        check_ok(c.request("GET", "/dyn/abc"), "dyn GET abc 0")
        check_ok(c.request("POST", "/dyn/x", body=b"0123456789abcdef"), "dyn POST x 16")
        check_ok(c.request("GET", "/routed"), "routed")
        response = c.request("POST", "/routed")
        assert (response.status, response.header("Allow")) == (405, "GET, HEAD")
        response = c.request("GET", "/elsewhere")
        assert (response.status, response.text) == (404, "Not Found")


# -- responses -------------------------------------------------------------------------------


def test_streaming_response_is_chunked_and_arrives_in_pieces(client: HttpClient) -> None:
    response = client.request("GET", "/stream?n=5")
    assert response.status == 200
    assert response.header("Transfer-Encoding") == "chunked"
    assert response.header("Content-Length") is None
    assert response.header("Content-Type") == TEXT
    check_date_and_server(response)
    assert response.text == "".join(f"line {i}\n" for i in range(1, 6))
    first_at, last_at = response.pieces[0][0], response.pieces[-1][0]
    assert response.pieces[0][1] == b"line 1\n"
    assert last_at - first_at >= 0.05, "the body came all at once, not streamed"
    check_ok(client.request("GET", "/hello"), "hello")


def test_streaming_response_to_http10_is_close_delimited(client: HttpClient) -> None:
    response = client.request("GET", "/stream?n=3", version="1.0")
    assert response.status == 200
    assert response.header("Transfer-Encoding") is None
    assert response.header("Connection") == "close"
    assert response.text == "line 1\nline 2\nline 3\n"
    client.assert_closed()


def test_status_as_80s_string(client: HttpClient) -> None:
    response = client.request("GET", "/status80")
    assert (response.status, response.reason, response.text) == (201, b"Made Here", "x")
    assert response.header("Content-Type") == "text/x-80s"
    assert response.header("Content-Length") == "1"


def test_status_as_bare_80s_string_gets_the_standard_reason(client: HttpClient) -> None:
    response = client.request("GET", "/status80bare")
    assert (response.status, response.reason, response.text) == (202, b"Accepted", "bare")


def test_bad_status_is_a_handler_error_answered_with_500(server: Server, client: HttpClient) -> None:
    # "200OK" makes no valid status line: the error is the handler's (file:line of
    # its call), and nothing was sent yet, so the client gets a 500, not a cut.
    response = client.request("GET", "/status80bad")
    assert (response.status, response.text) == (500, "Internal Server Error")
    check_ok(client.request("GET", "/hello"), "hello")
    server.wait_for_log(f"tests/apps/http_app.lua:{line_of(APP_PATH, 'MARK:badstatus')}: "
                        "bad HTTP status 200OK")


def test_table_body_becomes_json(client: HttpClient) -> None:
    response = client.request("GET", "/json")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json; charset=utf-8"
    assert json.loads(response.body) == {"name": "eightys", "n": 3}
    assert response.header("Content-Length") == str(len(response.body))


def test_header_table(client: HttpClient) -> None:
    response = client.request("GET", "/headers")
    assert (response.status, response.text) == (200, "custom")
    assert response.header("Content-Type") == "text/x-custom"
    assert response.header("X-Custom") == "yes"
    assert response.all("Set-Cookie") == ["a=1", "b=2"]
    assert response.header("Content-Length") == "6"  # the handler's 999 was dropped
    check_date_and_server(response)


@pytest.mark.parametrize("value", [b"a\tb c", b"caf\xc3\xa9 \xff", b"!~", b""])
def test_header_values_with_tab_and_non_ascii_bytes_are_sent(client: HttpClient,
                                                              value: bytes) -> None:
    response = client.request("GET", f"/xecho?v={value.hex()}")
    assert (response.status, response.text) == (200, "echoed")
    # h11 strips the whitespace around a value, as every client does
    assert response.all("X-Echo") == [value.strip(b" \t").decode("latin-1")]


@pytest.mark.parametrize("value", [b"a\x00b\x0bc", b"a\r\nX-Injected: 1", b"a\nb", b"a\rb",
                                   b"\x01", b"a\x1fb", b"a\x7fb"])
def test_header_values_with_control_bytes_are_refused(server: Server, client: HttpClient,
                                                      value: bytes) -> None:
    where = f"tests/apps/http_app.lua:{line_of(APP_PATH, 'MARK:xecho')}: bad header \"X-Echo\""
    seen = server.stderr_text().count(where)
    response = client.request("GET", f"/xecho?v={value.hex()}")
    assert (response.status, response.text) == (500, "Internal Server Error")
    assert response.header("X-Echo") is None and response.header("X-Injected") is None
    check_ok(client.request("GET", "/hello"), "hello")  # the same connection
    server.wait_for_log(where, seen + 1)


def test_204_has_no_body_and_no_length(client: HttpClient) -> None:
    response = client.request("GET", "/nocontent")
    assert (response.status, response.body) == (204, b"")
    assert response.header("Content-Length") is None
    check_ok(client.request("GET", "/hello"), "hello")


def test_async_handler(client: HttpClient) -> None:
    check_ok(client.request("GET", "/async"), "async done")


def test_handler_closing_the_connection(client: HttpClient) -> None:
    response = client.request("GET", "/bye")
    assert (response.status, response.text) == (200, "bye")
    assert response.header("Connection") == "close"
    client.assert_closed()


@pytest.mark.parametrize("target, marker, message", [
    ("/boom", "MARK:boom", "boom from the handler"),
    ("/asyncboom", "MARK:asyncboom", "async boom after a sleep"),
])
def test_lua_error_is_a_500_and_the_connection_stays_usable(
        server: Server, client: HttpClient, target: str, marker: str, message: str) -> None:
    response = client.request("GET", target)
    assert (response.status, response.reason, response.text) == \
        (500, b"Internal Server Error", "Internal Server Error")
    assert response.header("Connection") is None
    check_date_and_server(response)
    check_ok(client.request("GET", "/hello"), "hello")  # the same connection
    where = f"tests/apps/http_app.lua:{line_of(APP_PATH, marker)}: {message}"
    log = server.wait_for_log(where)
    assert f"HTTP handler for GET {target}: {where}" in log


# -- limits and malformed requests -------------------------------------------------------


def _chunked(*sizes: int) -> bytes:
    head = request_bytes("POST", "/echo", [("Transfer-Encoding", "chunked")])
    return head + b"".join(b"%x\r\n%s\r\n" % (n, b"a" * n) for n in sizes) + b"0\r\n\r\n"


def _post(headers: list[tuple[str, str]], body: bytes = b"abc") -> bytes:
    return request_bytes("POST", "/echo", headers, body)


REFUSED = [
    ("header-too-large", request_bytes("GET", "/hello", [("X-Big", "a" * (MAX_HEADER + 10))]), 431),
    ("too-many-headers", request_bytes("GET", "/hello", [(f"X-H{i}", "v" * 50) for i in range(80)]), 431),
    ("url-too-long", request_bytes("GET", "/hello?q=" + "q" * (MAX_HEADER + 10)), 431),
    ("content-length-too-large", _post([("Content-Length", str(MAX_BODY + 1))], b""), 413),
    ("chunked-body-too-large", _chunked(400, 400, 400), 413),
    ("garbage-request-line", b"GARBAGE\r\n\r\n", 400),
    # RFC 9112 3.2: a HTTP/1.1 request carries exactly one Host
    ("http11-without-host", b"GET /hello HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad-version", b"GET /hello HTTX/1.1\r\nHost: test\r\n\r\n", 400),
    ("unknown-version", b"GET /hello HTTP/9.9\r\nHost: test\r\n\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    ("no-target", b"GET\r\nHost: test\r\n\r\n", 400),
    ("bare-lf", b"GET /hello HTTP/1.1\nHost: test\n\n", 400),
    ("space-before-colon", b"GET /hello HTTP/1.1\r\nHost : test\r\n\r\n", 400),
    ("header-without-colon", b"GET /hello HTTP/1.1\r\nHost: test\r\nNoColon\r\n\r\n", 400),
    ("content-length-with-chunked",
     _post([("Content-Length", "3"), ("Transfer-Encoding", "chunked")], b"3\r\nabc\r\n0\r\n\r\n"), 400),
    ("duplicate-content-length", _post([("Content-Length", "3"), ("Content-Length", "3")]), 400),
    ("conflicting-content-length", _post([("Content-Length", "3"), ("Content-Length", "4")]), 400),
    ("content-length-list", _post([("Content-Length", "3, 3")]), 400),
    ("content-length-not-a-number", _post([("Content-Length", "abc")]), 400),
    ("content-length-negative", _post([("Content-Length", "-3")]), 400),
    ("content-length-signed", _post([("Content-Length", "+3")]), 400),
    ("unknown-transfer-encoding", _post([("Transfer-Encoding", "gzip")]), 400),
    ("bad-chunk-size", _post([("Transfer-Encoding", "chunked")], b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow",
     _post([("Transfer-Encoding", "chunked")], b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk-longer-than-its-size",
     _post([("Transfer-Encoding", "chunked")], b"3\r\nabcd\r\n0\r\n\r\n"), 400),
    ("unknown-expectation", _post([("Expect", "202-accepted")]), 417),
    # httptools would skip the body of an upgrade request: refused, not served empty
    ("upgrade-with-body", _post([("Connection", "Upgrade"), ("Upgrade", "h2c")]), 501),
]


@pytest.mark.parametrize("data, status", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_limits_and_malformed_requests_get_their_status_and_a_closed_connection(
        client: HttpClient, data: bytes, status: int) -> None:
    client.send(data)
    check_refused(client.read_response(), status)
    client.assert_closed()


def test_refusal_comes_after_the_responses_before_it(client: HttpClient) -> None:
    client.send(request_bytes("GET", "/slow?id=1") + request_bytes("GET", "/fast?id=2")
                + b"GARBAGE\r\n\r\n" + request_bytes("GET", "/fast?id=3"))
    assert client.read_response().text == "slow 1"
    assert client.read_response().text == "fast 2"
    check_refused(client.read_response(), 400)
    client.assert_closed()


def test_upgrade_without_a_body_is_answered_as_plain_http_then_closed(client: HttpClient) -> None:
    client.send(request_bytes("GET", "/hello", [("Connection", "Upgrade"), ("Upgrade", "websocket")])
                + b"\x81\x05not http")  # what follows an upgrade is not HTTP
    response = client.read_response()
    assert (response.status, response.text) == (200, "hello")
    client.assert_closed(timeout=0.5)  # at once, not by the keep-alive timeout


def test_endless_header_line_sent_in_pieces_gets_431(client: HttpClient) -> None:
    client.send(b"GET /hello HTTP/1.1\r\nHost: test\r\nX-Endless: ")
    sel = selectors.DefaultSelector()
    sel.register(client.sock, selectors.EVENT_READ)
    sent = 0
    while not sel.select(timeout=0.05):  # never ends the line; each piece a separate read
        assert sent < 3 * MAX_HEADER, f"{sent} bytes of one header line and still no answer"
        client.send(b"a" * 1500)
        sent += 1500
    sel.close()
    check_refused(client.read_response(), 431)
    client.assert_closed()


# -- timeouts -------------------------------------------------------------------------------


def test_slowloris_is_cut_off(client: HttpClient) -> None:
    started = time.monotonic()
    client.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n")
    sel = selectors.DefaultSelector()
    sel.register(client.sock, selectors.EVENT_READ)
    n = 0
    while not sel.select(timeout=0.2):  # one more header line every 0.2 s until cut off
        assert time.monotonic() - started < TIMEOUT_LATEST + 1, "the slow client was never cut off"
        client.send(b"X-Slow-%d: v\r\n" % n)
        n += 1
    sel.close()
    check_refused(client.read_response(), 408)
    client.assert_closed()
    took = time.monotonic() - started
    assert 0.95 <= took <= TIMEOUT_LATEST, f"cut off after {took:.2f} s, timeout is 1 s"


def test_stalled_body_is_cut_off(client: HttpClient) -> None:
    started = time.monotonic()
    client.send(request_bytes("POST", "/echo", [("Content-Length", "10")], b"abc"))
    check_refused(client.read_response(), 408)
    client.assert_closed()
    took = time.monotonic() - started
    assert 0.95 <= took <= TIMEOUT_LATEST, f"cut off after {took:.2f} s, timeout is 1 s"


def test_idle_connections_do_not_stop_new_clients(server: Server) -> None:
    idle = [server.connect() for _ in range(300)]
    try:
        started = time.monotonic()
        with HttpClient.connect(server) as c:
            check_ok(c.request("GET", "/hello"), "hello")
        assert time.monotonic() - started < 1.0
        # Connections that never send a byte are closed silently after the header timeout.
        sel = selectors.DefaultSelector()
        for sock in idle:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        open_ = set(idle)
        deadline = time.monotonic() + TIMEOUT_LATEST + 1
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                assert key.fileobj.recv(100) == b""  # type: ignore[union-attr]
                sel.unregister(key.fileobj)
                open_.discard(key.fileobj)  # type: ignore[arg-type]
        sel.close()
        assert not open_, f"{len(open_)} of {len(idle)} idle connections are still open"
    finally:
        for sock in idle:
            sock.close()


def test_ten_thousand_idle_keep_alive_connections(start_server) -> None:  # type: ignore[no-untyped-def]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 10_500:  # this process holds the client ends; the server inherits the limit
        if hard != resource.RLIM_INFINITY and hard < 10_500:
            pytest.skip(f"needs 10,500 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (10_500, hard))
    server = start_server(APP, "--keepalive-timeout", "60", workers=1)
    worker = server.wait_workers(1)[0]
    idle: list[HttpClient] = []
    try:
        for _ in range(10_000):
            c = HttpClient.connect(server)
            idle.append(c)
            assert c.request("GET", "/hello").text == "hello"  # then left idle, kept alive
        started = time.monotonic()
        with HttpClient.connect(server) as c:
            check_ok(c.request("GET", "/hello"), "hello")
        assert time.monotonic() - started < 1.0
        assert idle[0].request("GET", "/fast?id=1").text == "fast 1"  # the oldest still works
        rss_mib = rss_kib(worker) / 1024
        assert rss_mib < 200, f"worker RSS is {rss_mib:.0f} MiB with 10,000 idle connections"
    finally:
        for c in idle:
            c.close()


# -- flow control -----------------------------------------------------------------------------


def test_client_that_never_reads_cannot_grow_the_worker(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(APP, workers=1)
    worker = server.wait_workers(1)[0]
    kb, count = 256, 600  # 150 MiB of responses if they were all built at once
    with HttpClient.connect(server) as warm:  # let the worker reach its working size
        for _ in range(3):
            assert len(warm.request("GET", f"/big?kb={kb}").body) == kb * 1024
    baseline = rss_kib(worker)

    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    stalled.settimeout(5)
    with HttpClient(stalled) as slow:
        slow.send(b"".join(request_bytes("GET", f"/big?kb={kb}") for _ in range(count)))
        peak = baseline
        for _ in range(10):
            time.sleep(0.1)
            peak = max(peak, rss_kib(worker))
        # the worker is not busy building responses nobody reads: others get served
        started = time.monotonic()
        with HttpClient.connect(server) as other:
            check_ok(other.request("GET", "/hello"), "hello")
        assert time.monotonic() - started < 0.5
        for _ in range(5):
            time.sleep(0.1)
            peak = max(peak, rss_kib(worker))
        grown_mib = (peak - baseline) / 1024
        assert grown_mib < 64, f"worker RSS grew by {grown_mib:.0f} MiB for a client that never reads"
        # once the client reads, every response arrives, in full and in order
        for _ in range(count):
            response = slow.read_response()
            assert (response.status, len(response.body)) == (200, kb * 1024)
        check_ok(slow.request("GET", "/hello"), "hello")


# -- limits from the environment ----------------------------------------------------------


@pytest.fixture(scope="module")
def override_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"HTTP_MAX_HEADER_SIZE": "1024", "HTTP_MAX_BODY_SIZE": "16",
           "HTTP_HEADER_TIMEOUT": "5", "HTTP_KEEPALIVE_TIMEOUT": "5"}
    with running_server(tmp_path_factory.mktemp("http-env"), OVERRIDE_APP, env=env) as srv:
        yield srv


@pytest.mark.parametrize("data, status", [
    (request_bytes("POST", "/dyn/x", body=b"0123456789abcdefg"), 413),  # 17 > 16
    (request_bytes("GET", "/dyn/x", [("X-Big", "a" * 1100)]), 431),  # > 1024, < 32 KiB default
], ids=["HTTP_MAX_BODY_SIZE", "HTTP_MAX_HEADER_SIZE"])
def test_limits_from_the_environment(override_server: Server, data: bytes, status: int) -> None:
    with HttpClient.connect(override_server) as c:
        c.send(data)
        check_refused(c.read_response(), status)
        c.assert_closed()


# -- found by probing the running server (issue 9) ------------------------------------------


@pytest.mark.parametrize("count", [150, 4000, 8000])
def test_any_number_of_tiny_headers_gets_431_fast_with_at_most_one_log_line(
        server: Server, count: int) -> None:
    before = server.stderr_text()
    with HttpClient.connect(server) as client:
        started = time.monotonic()
        client.send(b"GET /hello HTTP/1.1\r\nHost: test\r\n" + b"a:b\r\n" * count + b"\r\n")
        response = client.read_response()
        assert time.monotonic() - started < 0.5  # 50 ms on a quiet machine; CI shares its CPUs
        check_refused(response, 431)
    with HttpClient.connect(server) as client:
        check_ok(client.request("GET", "/hello"), "hello")  # the worker serves the next one
    new_log = server.stderr_text()[len(before):]
    assert new_log.count("\n") <= 1 and "Traceback" not in new_log


def test_path_parameters_come_from_the_route_that_matched_the_method(client: HttpClient) -> None:
    check_ok(client.request("GET", "/u/7"), "get id=7 name=nil")
    check_ok(client.request("POST", "/u/ann", body=b""), "post id=nil name=ann")
    response = client.request("HEAD", "/u/7")  # HEAD takes GET's route and its parameters
    assert (response.status, response.header("Content-Length")) == (200, "17")


def test_a_half_closed_client_still_gets_an_async_answer(server: Server) -> None:
    # `printf 'GET /async ...' | nc`: the request, then FIN, then wait for the answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_bytes("GET", "/async"))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"async done")


def test_http_send_on_a_raw_connection_is_a_lua_error(client: HttpClient) -> None:
    response = client.request("GET", "/http_send_on_raw")
    assert response.status == 200
    assert "not an HTTP connection" in response.text


def test_a_handler_that_never_answers_gets_504_and_a_log_line_saying_where(
        server: Server, client: HttpClient) -> None:
    started = time.monotonic()
    response = client.request("GET", "/hang")
    waited = time.monotonic() - started
    assert response.status == 504 and response.text == "Gateway Timeout"
    assert response.header("Connection") == "close"
    assert 2 <= waited < 2 + TIMEOUT_LATEST
    handler = f"tests/apps/http_app.lua:{line_of(APP_PATH, 'MARK:hang-handler')}"
    waits = f"tests/apps/http_app.lua:{line_of(APP_PATH, 'MARK:hang-wait')}"
    log = server.wait_for_log("handler timeout after 2 s: GET /hang")
    line = next(l for l in log.splitlines() if "handler timeout" in l)
    assert f"(handler at {handler})" in line and f"waiting on: {waits}" in line
