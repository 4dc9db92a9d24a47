"""The sans-IO HTTP/1.1 connection core, driven with bytes and a fake clock.

No sockets, no loop, no Lua: requests go in as bytes, responses are handed back with
``send`` and come out of ``data_to_send``. Every test runs three times: against the
module as installed (compiled by Cython when a compiler was there) with httptools'
parser, the same with the C-driven llhttp the compiled server uses, and against the
plain Python source, which is the fallback and must behave the same.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import eightys.protocols.http_core as installed_core
from eightys.wire import error_response

SOURCE = Path(installed_core.__file__).with_name("http_core.py")


def _pure_core() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eightys_http_core_pure", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _llhttp_core() -> ModuleType:
    """The installed core with the C-driven parser (eightys.protocols.llhttp), as the
    compiled server runs it."""
    if not installed_core.COMPILED:  # uncompiled, or EIGHTYS_PURE_PYTHON=1
        pytest.skip("the C-driven parser needs the compiled core")
    try:
        from eightys.protocols import llhttp
    except ImportError:
        pytest.skip("eightys.protocols.llhttp is not compiled")
    if not llhttp.available():
        pytest.skip("this httptools' llhttp is not the layout eightys.protocols.llhttp knows")
    module = ModuleType("eightys_http_core_llhttp")
    module.__dict__.update(installed_core.__dict__)

    def connection(limits: Any, clock: Any, flags: int = 0) -> Any:
        return installed_core.HttpConnection(limits, clock, flags, llhttp.RequestParser)

    module.HttpConnection = connection  # type: ignore[attr-defined]
    return module


@pytest.fixture(params=["installed", "llhttp", "python"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The core module: as installed with httptools' parser, as installed with the
    C-driven llhttp (what the compiled server uses), and as plain Python."""
    if request.param == "installed":
        return installed_core
    return _llhttp_core() if request.param == "llhttp" else _pure_core()


def new(core: ModuleType, **limits: Any) -> tuple[Any, Any]:
    clock = core.Clock(1000.0)  # a fake clock: the tests move it
    return core.HttpConnection(core.HttpLimits(**limits), clock), clock


def get(path: str = "/", extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


def requests_of(events: list) -> list[tuple]:
    return [e for e in events if type(e) is tuple]


def errors_of(events: list) -> list[int]:
    return [e.status for e in events if type(e) is not tuple]


def answer(conn: Any, seq: int, text: str = "ok", close: bool = False) -> None:
    body = text.encode()
    assert conn.send(seq, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
                     True, close)


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


# -- requests and responses ------------------------------------------------------------


def test_a_request_becomes_one_event_with_its_fields(core: ModuleType) -> None:
    conn, _ = new(core)
    events = conn.receive_data(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nX-One: 1\r\nx-one: 2\r\n\r\n")
    assert events == [(0, b"GET", b"/a?b=1", None, 1, b"Host\0h\0X-One\x001\0x-one\x002")]
    assert conn.state == core.WAITING
    answer(conn, 0)
    assert conn.data_to_send().endswith(b"\r\n\r\nok")
    assert conn.state == core.IDLE
    assert conn.data_to_send() == b""


def test_pipelined_responses_leave_in_request_order_whatever_order_they_finish(
        core: ModuleType) -> None:
    conn, _ = new(core)
    events = conn.receive_data(get("/0") + get("/1") + get("/2"))
    assert [e[0] for e in requests_of(events)] == [0, 1, 2]
    answer(conn, 2, "two")
    assert conn.data_to_send() == b""  # held behind 0 and 1
    assert conn.send(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False)
    assert conn.send(1, b"3\r\none\r\n", False)
    assert conn.data_to_send() == b""
    answer(conn, 0, "zero")
    out = conn.data_to_send()
    assert out.endswith(b"zero" + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
    assert conn.send(1, b"0\r\n\r\n", True)
    assert conn.data_to_send().startswith(b"0\r\n\r\nHTTP/1.1 200 OK")
    assert conn.state == core.IDLE
    assert not conn.send(1, b"late", True)  # already answered


def test_content_length_and_chunked_bodies(core: ModuleType) -> None:
    conn, _ = new(core)
    events = conn.receive_data(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
    assert events == [] and conn.state == core.BODY
    events = conn.receive_data(b"lo" + b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert [(e[1], e[3]) for e in events] == [(b"POST", b"hello"), (b"POST", b"abcde")]


def test_100_continue_only_when_nothing_is_pending_and_not_for_http10(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 2\r\n\r\n")
    assert conn.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn10, _ = new(core)
    conn10.receive_data(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert conn10.data_to_send() == b""


def test_connection_flags(core: ModuleType) -> None:
    cases = [(get(), 1), (get(extra="Connection: close\r\n"), 0),
             (b"GET / HTTP/1.0\r\n\r\n", 2), (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 3)]
    for data, flags in cases:
        conn, _ = new(core)
        (request,) = conn.receive_data(data)
        assert request[4] == flags, data
        # a TLS connection's flags carry its bit on every request
        tls = core.HttpConnection(core.HttpLimits(), core.Clock(1000.0), 4)
        (request,) = tls.receive_data(data)
        assert request[4] == flags | 4, data


def test_requests_after_a_closing_one_are_not_read(core: ModuleType) -> None:
    conn, _ = new(core)
    events = conn.receive_data(get("/a", "Connection: close\r\n") + get("/b"))
    assert [e[2] for e in requests_of(events)] == [b"/a"]
    assert conn.state == core.CLOSING
    assert conn.receive_data(get("/c")) == []
    answer(conn, 0)
    assert conn.state == core.CLOSED


def test_a_handler_asking_to_close_ends_the_connection_after_its_response(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(get("/a") + get("/b"))
    answer(conn, 1)
    answer(conn, 0, close=True)
    assert statuses(conn.data_to_send()) == [200]  # /b's response is dropped
    assert conn.state == core.CLOSED


# -- limits: the status, then close -----------------------------------------------------


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host (RFC 9112 3.2)
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two
    (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    (b"BLAH\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nab",
     501),
])
def test_refused_requests(core: ModuleType, data: bytes, status: int) -> None:
    conn, _ = new(core, max_body=1000)
    events = conn.receive_data(data)
    assert errors_of(events) == [status]
    assert statuses(conn.data_to_send()) == [status]
    assert conn.state == core.CLOSED


def test_http10_without_host_is_served(core: ModuleType) -> None:
    conn, _ = new(core)
    assert requests_of(conn.receive_data(b"GET / HTTP/1.0\r\n\r\n"))


def test_a_chunked_body_over_the_limit_gets_413(core: ModuleType) -> None:
    conn, _ = new(core, max_body=4)
    events = conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert errors_of(events) == [413]


def test_the_refusal_comes_after_the_responses_before_it(core: ModuleType) -> None:
    conn, _ = new(core)
    events = conn.receive_data(get("/a") + b"GET / HTTP/1.1\r\n\r\n")
    assert len(requests_of(events)) == 1 and errors_of(events) == [400]
    assert conn.data_to_send() == b""
    answer(conn, 0)
    assert statuses(conn.data_to_send()) == [200, 400]
    assert conn.state == core.CLOSED


@pytest.mark.parametrize("count", [101, 4000, 20000])
def test_any_number_of_tiny_headers_gets_431_at_once(core: ModuleType, count: int) -> None:
    conn, _ = new(core)
    events = conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * count + b"\r\n")
    assert errors_of(events) == [431]


def test_a_hundred_headers_are_fine(core: ModuleType) -> None:
    conn, _ = new(core)
    (request,) = conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * 99 + b"\r\n")
    assert request[5].count(b"\0") == 199


def test_an_endless_header_line_fed_in_pieces_gets_431(core: ModuleType) -> None:
    conn, _ = new(core, max_header=1000)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX: ")
    events: list = []
    for _ in range(50):
        events = conn.receive_data(b"a" * 100)
        if events:
            break
    assert errors_of(events) == [431]


def test_a_large_body_then_a_pipelined_head_in_pieces_is_not_431(core: ModuleType) -> None:
    # regression: the bytes of the earlier request's body were counted as head bytes
    conn, _ = new(core, max_header=32768)
    first = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n" + b"b" * 40000
    events = conn.receive_data(first + b"GET /next HT")
    events += conn.receive_data(b"TP/1.1\r\nHo")
    events += conn.receive_data(b"st: x\r\n\r\n")
    assert errors_of(events) == []
    assert [e[2] for e in requests_of(events)] == [b"/", b"/next"]


# -- timeouts (fake clock, no real seconds) ----------------------------------------------


def test_a_head_dripped_byte_by_byte_gets_408_after_the_header_timeout(core: ModuleType) -> None:
    conn, clock = new(core, header_timeout=10.0)
    head = get("/slow")
    expired_at = None
    for i in range(len(head)):
        clock.now += 2.0
        conn.receive_data(head[i:i + 1])
        if conn.check_timeout(clock.now) != core.TIMEOUT_NONE:
            expired_at = i
            break
    # the clock starts at the first byte and nothing restarts it: 408 after 10 s (+1 s slack)
    assert expired_at == 6
    assert statuses(conn.data_to_send()) == [408]
    assert conn.state == core.CLOSED


def test_a_stalled_body_gets_408(core: ModuleType) -> None:
    conn, clock = new(core, header_timeout=5.0)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    clock.now += 6.0
    assert conn.check_timeout(clock.now) == core.TIMEOUT_NONE  # within the 1 s clock slack
    clock.now += 0.5
    assert conn.check_timeout(clock.now) == core.TIMEOUT_REQUEST
    assert statuses(conn.data_to_send()) == [408]


def test_idle_keep_alive_and_silent_new_connections_time_out(core: ModuleType) -> None:
    conn, clock = new(core, header_timeout=3.0, keepalive_timeout=20.0)
    clock.now += 4.5  # a new connection that sends nothing gets the header timeout
    assert conn.check_timeout(clock.now) == core.TIMEOUT_IDLE
    assert conn.state == core.CLOSED and conn.data_to_send() == b""

    conn, clock = new(core, header_timeout=3.0, keepalive_timeout=20.0)
    conn.receive_data(get())
    answer(conn, 0)
    clock.now += 20.5
    assert conn.check_timeout(clock.now) == core.TIMEOUT_NONE
    clock.now += 1.0
    assert conn.check_timeout(clock.now) == core.TIMEOUT_IDLE


def test_a_handler_that_never_answers_gets_504(core: ModuleType) -> None:
    conn, clock = new(core, handler_timeout=30.0)
    conn.receive_data(get("/hang") + get("/next"))
    conn.mark_pending(0)
    answer(conn, 1)
    clock.now += 31.5
    assert conn.check_timeout(clock.now) == core.TIMEOUT_HANDLER
    assert conn.timed_out_seq == 0
    assert conn.send(0, error_response(504), True, True)  # what the adapter does
    assert statuses(conn.data_to_send()) == [504]
    assert conn.state == core.CLOSED
    assert not conn.send(0, b"too late", True)


def test_a_streaming_response_is_not_a_handler_timeout(core: ModuleType) -> None:
    conn, clock = new(core, handler_timeout=5.0)
    conn.receive_data(get("/events"))
    conn.send(0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False)
    conn.mark_pending(0)  # the dispatcher marks it after the handler went async
    clock.now += 100.0
    assert conn.check_timeout(clock.now) == core.TIMEOUT_NONE


# -- half-close, drain, upgrade -------------------------------------------------------------


def test_half_close_still_gets_the_pending_answer(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(get("/async"))
    assert conn.receive_eof() is True  # keep the transport open for the response
    answer(conn, 0)
    assert statuses(conn.data_to_send()) == [200]
    assert conn.state == core.CLOSED


def test_half_close_with_nothing_pending_closes(core: ModuleType) -> None:
    conn, _ = new(core)
    assert conn.receive_eof() is False
    assert conn.state == core.CLOSED


def test_draining_closes_after_what_is_in_progress(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(get("/a"))
    assert conn.start_draining() is False
    answer(conn, 0)
    assert conn.state == core.CLOSED

    conn, _ = new(core)
    conn.receive_data(b"GET / HT")  # a request is arriving: it is answered, with close
    assert conn.start_draining() is False
    (request,) = conn.receive_data(b"TP/1.1\r\nHost: x\r\n\r\n")
    assert request[4] == 0  # no keep-alive
    idle, _ = new(core)
    assert idle.start_draining() is True


def test_upgrade_hands_over_with_the_bytes_that_followed_the_head(core: ModuleType) -> None:
    conn, _ = new(core)
    head = (b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    events = conn.receive_data(head + b"\x81\x05hel")
    assert [e[2] for e in requests_of(events)] == [b"/chat"]
    assert conn.state == core.SWITCHING and conn.is_upgrade(0)
    assert conn.receive_data(b"lo") == []  # not HTTP: kept for the next protocol
    assert conn.switch_protocol(0, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert conn.data_to_send() == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    assert conn.state == core.SWITCHED
    assert conn.trailing == b"\x81\x05hello"
    assert not conn.send(0, b"x", True)


def test_an_upgrade_answered_as_plain_http_closes(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
    assert not conn.switch_protocol(1, b"HTTP/1.1 101 x\r\n\r\n")  # not that request
    answer(conn, 0)
    assert conn.state == core.CLOSED


def test_switch_is_only_for_a_pending_upgrade(core: ModuleType) -> None:
    conn, _ = new(core)
    conn.receive_data(get())
    assert not conn.is_upgrade(0)
    assert not conn.switch_protocol(0, b"HTTP/1.1 101 x\r\n\r\n")


# -- bodies off the heap (--body-buffer-size) ---------------------------------------------


def test_a_body_over_the_buffer_goes_to_a_file_until_its_response(core: ModuleType, tmp_path: Path) -> None:
    from eightys.wire import FLAG_BODY_FILE

    conn, _ = new(core, body_buffer_size=10, spool_dir=str(tmp_path))
    head = b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    assert conn.receive_data(head + b"a" * 40) == []
    (event,) = conn.receive_data(b"b" * 60 + b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nsmall")[:1]
    seq, method, _url, body, flags, _headers = event
    assert flags & FLAG_BODY_FILE
    path = Path(body.decode())
    assert path.parent == tmp_path and path.read_bytes() == b"a" * 40 + b"b" * 60
    conn.send(seq, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True)
    assert not path.exists()  # the response is out: the file went with it
    assert list(tmp_path.iterdir()) == []  # the small body stayed in memory


def test_a_cut_off_spilled_body_leaves_no_file(core: ModuleType, tmp_path: Path) -> None:
    conn, _ = new(core, body_buffer_size=10, spool_dir=str(tmp_path), max_body=50)
    conn.receive_data(b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"14\r\n" + b"c" * 20 + b"\r\n")
    assert len(list(tmp_path.iterdir())) == 1
    (error,) = conn.receive_data(b"28\r\n" + b"d" * 40 + b"\r\n")  # past max_body: 413
    assert error.status == 413
    assert list(tmp_path.iterdir()) == []
    conn2, _ = new(core, body_buffer_size=10, spool_dir=str(tmp_path))
    conn2.receive_data(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"e" * 50)
    conn2.release_bodies()  # the connection ended
    assert list(tmp_path.iterdir()) == []
