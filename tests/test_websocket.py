"""WebSocket: real eightys servers, real clients (the ``websockets`` library, raw
sockets for what a well-behaved client would never send, npm ``ws`` in
test_websocket_clients.py), tests/apps/ws_app.lua as the app."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from conftest import line_of, wait_until

APP = "tests/apps/ws_app.lua"


def url(server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def http_get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def closes(server) -> list[str]:
    return json.loads(http_get(server, "/closes")[1] or "[]") or []


def wait_close(server, needle: str, timeout: float = 5.0) -> str:
    return wait_until(lambda: next((c for c in closes(server) if needle in c), None), timeout,
                      message=lambda: f"a close record with {needle!r} in {closes(server)}")


class RawWs:
    """A hand-driven WebSocket client, for frames no library would send."""

    def __init__(self, server, path: str, extra: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                          b"Sec-WebSocket-Version: 13\r\n%s\r\n" % (path.encode(), key, extra))
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.head, self.buf = self.buf.split(b"\r\n\r\n", 1)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> None:
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | rsv << 4 | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
                at = 2
                if n == 126:
                    n, at = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127:
                    n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
                if len(self.buf) >= at + n:
                    payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
                    return opcode, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def close_code(self, timeout: float = 5.0) -> int:
        while True:
            opcode, payload = self.frame(timeout)
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0] if payload else 1005

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients():
    """An ExitStack for WebSocket clients a test opens outside ``with``."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def server(start_server):
    return start_server(APP, workers=1)


# -- the API ---------------------------------------------------------------------------------


def test_echo_text_binary_open_arguments_and_subprotocol(server):
    with connect(url(server, "/echo?a=1&b=2"), subprotocols=["chat.v2", "chat.v1"],
                 user_agent_header="pytest-ws") as ws:
        assert ws.recv() == "open worker=0 query=a=1&b=2 ua=pytest-ws protocol=chat.v1"
        assert ws.subprotocol == "chat.v1"
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send(b"\x00\xffbin")
        assert ws.recv() == b"\x00\xffbin"
        ws.send(["frag", "mented ", "message"])  # one message in three frames
        assert ws.recv() == "fragmented message"
        ws.send("table")
        assert json.loads(ws.recv()) == {"ok": True}
        ws.send("sleep")  # a handler may aio:await
        assert ws.recv() == "slept"
        ws.send("x" * 60000)
        assert ws.recv() == "x" * 60000


def test_permessage_deflate_is_negotiated_and_works(server):
    with connect(url(server, "/echo")) as ws:  # the websockets client offers deflate
        ws.recv()
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        text = "compressible " * 4000
        ws.send(text)
        assert ws.recv() == text
    with connect(url(server, "/echo"), compression=None) as ws:
        ws.recv()
        assert ws.protocol.extensions == []
        ws.send("plain")
        assert ws.recv() == "plain"


def test_non_upgrade_requests_on_a_websocket_path_get_426(server):
    status, body = http_get(server, "/echo")
    assert status == 426 and "WebSocket" in body
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/echo", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 426 and err.value.headers["Upgrade"] == "websocket"
    assert http_get(server, "/") == (200, "http on worker 0")  # and HTTP is still HTTP


def test_bad_handshake_gets_400_and_the_connection_closes(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")  # no key
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def test_origin_option(server):
    with pytest.raises(InvalidStatus) as err:
        connect(url(server, "/origin"), origin="https://evil.example")
    assert err.value.response.status_code == 403
    with connect(url(server, "/origin"), origin="https://good.example") as ws:
        assert ws.recv() == "welcome"


def test_handler_error_closes_with_1011_and_logs_file_line(server):
    with connect(url(server, "/echo")) as ws:
        ws.recv()
        ws.send("boom")
        with pytest.raises(ConnectionClosed) as err:
            ws.recv()
    assert err.value.rcvd.code == 1011
    log = server.wait_for_log("handler exploded")
    lines = [line for line in log.splitlines() if "handler exploded" in line]
    line = line_of(APP, 'error("handler exploded")')
    assert f"WebSocket message handler for /echo: {APP}:{line}: handler exploded" in lines[0]
    assert wait_close(server, "/echo").split()[2] == "1011"


def test_close_from_the_server_and_close_handler_once(server):
    with connect(url(server, "/echo")) as ws:
        ws.recv()
        ws.send("close")
        with pytest.raises(ConnectionClosed) as err:
            ws.recv()
    assert (err.value.rcvd.code, err.value.rcvd.reason) == (4000, "bye")
    record = wait_close(server, "/echo")
    assert record.split()[2:] == ["4000", "bye", "echo"]  # apps keep fields on ws
    time.sleep(0.3)
    assert len([c for c in closes(server) if c.startswith("/echo")]) == 1


def test_client_close_code_reaches_the_close_handler(server):
    with connect(url(server, "/echo")) as ws:
        ws.recv()
        ws.close(4321, "client says bye")
    assert wait_close(server, "/echo").split()[2:] == ["4321", "client", "says", "bye", "echo"]


def test_tcp_drop_gives_1006(server):
    raw = RawWs(server, "/echo")
    raw.frame()  # the open message
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST, no close frame
    assert wait_close(server, "/echo").split()[2] == "1006"


def test_message_too_big_1009_also_after_inflation(server):
    raw = RawWs(server, "/echo")
    raw.frame()
    raw.send_frame(1, b"x" * 70000)
    assert raw.close_code() == 1009
    raw.close()
    # a small compressed frame that inflates beyond max_message
    import zlib
    raw = RawWs(server, "/echo", b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    assert b"permessage-deflate" in raw.head
    raw.frame()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -12)
    bomb = compressor.compress(b"\0" * 10_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 20000
    raw.send_frame(2, bomb[:-4], rsv=4)  # RSV1: compressed
    assert raw.close_code() == 1009
    raw.close()


def test_protocol_errors_get_their_close_codes(server):
    cases = [
        (lambda r: r.send_frame(1, b"\xff\xfe"), 1007),  # invalid UTF-8
        (lambda r: r.send_frame(1, b"ok\xff", fin=False), 1007),  # in a first fragment: at once
        (lambda r: r.send_frame(0, b"orphan"), 1002),  # continuation without a start
        (lambda r: r.send_frame(1, b"x", rsv=2), 1002),  # reserved bit
        (lambda r: r.send_frame(9, b"p" * 126), 1002),  # control frame too long
        (lambda r: r.send_frame(3, b"x"), 1002),  # reserved opcode
    ]
    for send, code in cases:
        raw = RawWs(server, "/echo")
        raw.frame()
        send(raw)
        assert raw.close_code() == code
        raw.close()
    with connect(url(server, "/echo")) as ws:  # the worker is fine
        ws.recv()
        ws.send("still here")
        assert ws.recv() == "still here"


def test_send_buffer_bound_refuses_sends_to_a_client_that_does_not_read(server):
    raw = RawWs(server, "/echo")
    raw.frame()
    raw.send_frame(1, b"flood")
    text = wait_until(lambda: "flood " in server.stdout_text() and server.stdout_text(), 5.0,
                      message="the flood handler's result")
    line = next(line for line in text.splitlines() if line.startswith("flood "))
    stopped_at = int(line.split()[3].rstrip(":"))
    # 1 MiB may wait in the worker (plus what the kernel buffers): far from 1000 x 64 KiB
    assert line.endswith(": send buffer full") and stopped_at < 200, line
    raw.close()


def test_random_bytes_after_the_handshake_never_hurt_the_worker(server):
    import random

    rng = random.Random(6455)
    worker = server.wait_workers(1)[0]
    for i in range(60):
        raw = RawWs(server, "/echo", b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
                    if i % 2 else b"")
        raw.frame()
        garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4000)))
        try:
            raw.sock.sendall(garbage)
            raw.sock.shutdown(socket.SHUT_WR)
            while raw.sock.recv(65536):  # whatever it answers, it ends the connection
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        raw.close()
    assert server.worker_pids() == [worker]  # the same worker process
    with connect(url(server, "/echo")) as ws:
        ws.recv()
        ws.send("fine")
        assert ws.recv() == "fine"
    assert "Traceback" not in server.stderr_text()


def test_idle_connection_gets_a_ping_then_1011(server):
    raw = RawWs(server, "/idle")
    started = time.monotonic()
    opcode, _ = raw.frame(timeout=5)
    assert opcode == 9  # ping
    assert raw.close_code(timeout=5) == 1011  # never answered
    assert 2.0 < time.monotonic() - started < 8.0
    raw.close()
    # a client that answers pings stays connected
    with connect(url(server, "/idle"), ping_interval=None) as ws:
        time.sleep(3.5)  # the library answers the server's pings
        ws.ping()
        assert ws.protocol.state.name == "OPEN"


def test_upgrade_from_inside_an_http_route(server):
    with pytest.raises(InvalidStatus) as err:
        connect(url(server, "/guarded"))
    assert err.value.response.status_code == 403
    with connect(url(server, "/guarded"), additional_headers={"X-Token": "secret"}) as ws:
        ws.send("hi")
        assert ws.recv() == "guarded:hi"
    assert http_get(server, "/guarded", {"X-Token": "secret"})[0] == 426


def test_upgrade_decided_after_an_await_keeps_early_frames(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    mask = b"\1\2\3\4"
    frame = b"\x81\x85" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
    sock.sendall(b"GET /later HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + frame)
    data = b""
    while b"later:early" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.index(b"late open") < data.index(b"later:early")
    sock.close()


def test_client_gone_before_a_queued_switch_leaves_nothing_behind(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"  # answered after 0.5 s
                 b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    wait_until(lambda: http_get(server, "/pending")[1] == "1", 2.0, message="the accepted upgrade")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset, before the slow response (and so the 101) could go out
    # (reading is paused while the upgrade waits, so the server learns of the reset only
    # when it writes: the WebSocket may open, and then closes with 1006, once)
    wait_until(lambda: http_get(server, "/pending")[1] == "0", 5.0, message="pending cleared")
    time.sleep(0.3)
    assert [c.split()[2] for c in closes(server) if c.startswith("/echo")] in ([], ["1006"])


def test_pipelined_bytes_after_the_handshake_reach_the_websocket(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    mask = b"\1\2\3\4"
    frame = b"\x81\x85" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + frame)
    data = b""
    while data.count(b"early") < 1:
        data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.index(b"open worker") < data.index(b"early")  # open runs first
    sock.close()


def test_hooks_form_and_http_next_to_it(server):
    with connect(url(server, "/hooks")) as ws:
        ws.send("abc")
        assert ws.recv() == "hook:abc:3"
        ws.send("quit")
        with pytest.raises(ConnectionClosed) as err:
            ws.recv()
        assert err.value.rcvd.code == 1000
    wait_close(server, "hooks ")
    # defining on_data did not make HTTP connections raw
    assert http_get(server, "/") == (200, "http on worker 0")


# -- pub/sub ---------------------------------------------------------------------------------


def open_on_worker(clients, server, path: str, worker: int, tries: int = 200):
    for _ in range(tries):
        ws = connect(url(server, path)).__enter__()
        if ws.recv().endswith(f"worker={worker}"):
            clients.push(lambda *exc: ws.__exit__(*exc))
            return ws
        ws.close()
    raise AssertionError(f"no connection landed on worker {worker}")


def test_publish_reaches_subscribers_in_every_worker(start_server, clients):
    server = start_server(APP, workers=2)
    a = open_on_worker(clients, server, "/rooms/lobby", 0)
    b = open_on_worker(clients, server, "/rooms/lobby", 1)
    other = open_on_worker(clients, server, "/rooms/elsewhere", 1)
    a.send("from a")
    assert a.recv() == "from a" and b.recv() == "from a"
    b.send("from b")
    assert a.recv() == "from b" and b.recv() == "from b"
    a.send("count")
    assert {a.recv(), a.recv()} == {"count", "local=1"}
    assert b.recv() == "count"
    assert http_get(server, "/publish?channel=lobby&data=http")[1] in ("0", "1")
    assert a.recv() == "http" and b.recv() == "http"
    with pytest.raises(TimeoutError):
        other.recv(timeout=0.3)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_subscriber_is_dropped_with_bounded_memory(start_server, clients):
    server = start_server(APP, workers=1)
    worker = server.wait_workers(1)[0]
    slow = RawWs(server, "/rooms/news")
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast = clients.enter_context(connect(url(server, "/rooms/news"), max_size=None))
    publisher = clients.enter_context(connect(url(server, "/publish/news")))
    fast.recv()
    before = _rss_kib(worker)
    chunk = "n" * 60000
    received = 0
    try:
        for i in range(400):  # 24 MB published; the slow one reads nothing
            publisher.send(f"{i}:{chunk}")
            assert publisher.recv() in ("1", "2")  # queued for both, or the fast one only
            message = fast.recv(timeout=5)
            assert message.startswith(f"{i}:")
            received += 1
        record = wait_close(server, "/rooms/news", timeout=10)
        assert record.split()[2] == "1013"
        growth = _rss_kib(worker) - before
        assert growth < 20_000, f"worker grew by {growth} KiB"
    finally:
        slow.close()
    assert received == 400


# -- life cycle ------------------------------------------------------------------------------


def test_reload_keeps_connections_and_switches_handlers(start_server, tmp_path):
    app = tmp_path / "app.lua"
    app.write_text(Path(APP).read_text())
    server = start_server(str(app), workers=1)
    with connect(url(server, "/echo")) as ws:
        ws.recv()
        ws.send("version")
        assert ws.recv() == "v1"
        app.write_text(Path(APP).read_text().replace('VERSION = VERSION or "v1"', 'VERSION = "v2"')
                       .replace('"open worker="', '"reopened worker="'))
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded")
        ws.send("version")
        assert ws.recv() == "v2"
        ws.send("same connection")
        assert ws.recv() == "same connection"


def test_sigterm_closes_websockets_with_1001(start_server, clients):
    server = start_server(APP, workers=1)
    ws = clients.enter_context(connect(url(server, "/echo")))
    ws.recv()
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as err:
        ws.recv(timeout=5)
    assert err.value.rcvd.code == 1001
    assert time.monotonic() - started < 3
    assert server.wait_exit() == 0


# -- the README ------------------------------------------------------------------------------


def readme_lua_blocks(section: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in body.split("```lua")[1:]]


def test_readme_websocket_examples_run(start_server, tmp_path):
    main, hooks = readme_lua_blocks("WebSocket")
    app = tmp_path / "app.lua"
    app.write_text(main)
    server = start_server(str(app), workers=2)
    with connect(url(server, "/rooms/lobby?name=ann"), subprotocols=["chat.v1"]) as ann, \
            connect(url(server, "/rooms/lobby?name=bob")) as bob:
        assert ann.recv() == "welcome to lobby, ann" and bob.recv() == "welcome to lobby, bob"
        assert ann.subprotocol == "chat.v1"
        ann.send("hi")
        assert ann.recv() == "ann: hi" and bob.recv() == "ann: hi"
    wait_until(lambda: server.stdout_text().count(" left (1000)") == 2, 5.0,
               message=lambda: f"two close lines in {server.stdout_text()!r}")
    with pytest.raises(InvalidStatus):
        connect(url(server, "/live"))
    with connect(url(server, "/live"), additional_headers={"X-Token": "secret"}) as ws:
        ws.send("echo me")
        assert ws.recv() == "echo me"
    server.stop()
    app.write_text(hooks)
    server = start_server(str(app), workers=1)
    with connect(url(server, "/shout")) as ws:
        ws.send("hey")
        assert ws.recv() == "HEY"
    assert http_get(server, "/")[0] == 200
