"""The LAppS protocol (eightys.lapps; server/lapps.lua, tests/apps/lapps_app.lua):
a client written from ITpC/LAppS's LAppS_Protocol_Specification.md, CBOR through
cbor2, over real WebSockets to real eightys servers."""

from __future__ import annotations

import time
from contextlib import ExitStack

import cbor2
import pytest
from websockets.sync.client import connect

from conftest import REPO, line_of

EXAMPLE = "server/lapps.lua"
APP = "tests/apps/lapps_app.lua"


class LAppSClient:
    """Requests on the command channel (cid 0), notifications (cid > 0) kept apart."""

    def __init__(self, server, path: str = "/lapps") -> None:
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=5))
        self.notifications: list[dict] = []
        self.responses: list[dict] = []

    def send(self, method: str, *params, **extra) -> None:
        request = {"lapps": "1", "method": method, **extra}
        if params:
            request["params"] = list(params)
        self.ws.send(cbor2.dumps(request))

    def _read(self) -> dict:
        data = self.ws.recv(timeout=5)
        assert isinstance(data, bytes), "LAppS messages are binary"
        message = cbor2.loads(data)
        assert isinstance(message["cid"], int)
        if message["cid"] == 0:
            self.responses.append(message)
        else:
            assert set(message) == {"cid", "message"} and isinstance(message["message"], list)
            self.notifications.append(message)
        return message

    def response(self) -> dict:
        while not self.responses:
            self._read()
        return self.responses.pop(0)

    def notification(self) -> dict:
        while not self.notifications:
            self._read()
        return self.notifications.pop(0)

    def call(self, method: str, *params, **extra) -> dict:
        self.send(method, *params, **extra)
        return self.response()

    def result(self, method: str, *params) -> list:
        response = self.call(method, *params)
        assert response["status"] == 1 and "error" not in response, response
        return response["result"]

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def example(start_server):
    return start_server(EXAMPLE, workers=1)


def test_echo_keeps_every_cbor_type(example):
    client = LAppSClient(example)
    values = [0, -1, 2**53, -2**40, 1.25, True, False, None, "", "héllo", b"\x00\xff bytes",
              [1, [2, []]], {"a": {"b": [None]}, "empty": {}}, "x" * 100000]
    assert client.result("echo", *values) == values
    assert client.result("echo") == []  # no params: an empty result, never null
    client.close()


def test_responses_stay_in_request_order(example):
    client = LAppSClient(example)
    client.send("sleep", 0.3)
    client.send("echo", "after")
    first, second = client.response(), client.response()
    assert first["result"] == ["slept", 0] and second["result"] == ["after"]
    client.close()


def test_broadcast_channel_across_workers(start_server):
    server = start_server(EXAMPLE, workers=2)
    by_worker: dict[int, LAppSClient] = {}
    extra = []
    for _ in range(60):
        c = LAppSClient(server)
        worker = c.result("sleep", 0)[1]
        if worker in by_worker:
            extra.append(c)
        else:
            by_worker[worker] = c
        if len(by_worker) == 2:
            break
    assert set(by_worker) == {0, 1}
    for c in extra:
        c.close()
    a, b = by_worker[0], by_worker[1]
    outsider = LAppSClient(server)  # never subscribed: gets no notifications
    assert a.result("subscribe") == [True] and b.result("subscribe") == [True]
    assert a.result("broadcast", "from 0", 1) == [True]
    assert a.notification() == {"cid": 1, "message": ["from 0", 1]}
    assert b.notification() == {"cid": 1, "message": ["from 0", 1]}
    b.send("broadcast", {"k": "from 1"})
    assert a.notification() == {"cid": 1, "message": [{"k": "from 1"}]}
    assert b.notification()["message"] == [{"k": "from 1"}]
    assert b.response()["result"] == [True]
    assert outsider.result("echo", "ping") == ["ping"] and outsider.notifications == []
    for c in (a, b, outsider):
        c.close()


def test_errors_follow_json_rpc_codes(start_server):
    server = start_server(APP, workers=1)
    client = LAppSClient(server, "/svc")

    def error_of(response):
        assert response["status"] == 0 and response["cid"] == 0 and "result" not in response
        return response["error"]["code"]

    assert error_of(client.call("missing")) == -32601
    assert error_of(client.call("on_notification")) == -32601  # hooks are not methods
    assert error_of(client.call("a.b")) == -32600  # no periods in method names
    assert error_of(client.call("_internal")) == -32600  # reserved
    client.ws.send(cbor2.dumps({"lapps": "2", "method": "nothing"}))
    assert error_of(client.response()) == -32600
    client.ws.send(cbor2.dumps(["not", "a", "map"]))
    assert error_of(client.response()) == -32600
    client.ws.send(cbor2.dumps({"lapps": "1", "method": "nothing", "params": {"not": "an array"}}))
    assert error_of(client.response()) == -32602
    client.ws.send(b"\x9f\x01")  # truncated CBOR
    assert error_of(client.response()) == -32700
    client.ws.send("text frame")
    assert error_of(client.response()) == -32700
    response = client.call("refuse", "because")
    assert response["error"] == {"code": 42, "message": "refused", "data": {"why": "because"}}
    response = client.call("raise")
    assert response["error"] == {"code": -32603, "message": "internal error"}  # no internals leak
    line = line_of(REPO / APP, "MARK raise")
    deadline = time.monotonic() + 5
    while f"lapps_app.lua:{line}: kaput" not in server.stderr_text():
        assert time.monotonic() < deadline, server.stderr_text()
        time.sleep(0.05)
    # the connection still serves
    assert client.result("nothing") == []
    assert client.result("holes") == [1, None, 3]
    client.close()


def test_notifications_both_ways(start_server):
    server = start_server(APP, workers=1)
    client = LAppSClient(server, "/svc")
    assert client.result("nothing") == []  # the first exchange: OONs may follow
    # a server OON to this client on channel 7, around the response on channel 0
    assert client.result("poke", "hey") == ["poked"]
    assert client.notification() == {"cid": 7, "message": ["hey"]}
    # client notifications (a cid) are never answered; the service's hook gets them
    client.send("anything", cid=3, message=["note"])
    client.ws.send(cbor2.dumps({"lapps": "1", "cid": 5, "message": [1, 2]}))
    assert client.result("notes") == [[["on_open", "nil", "no request answered yet"], [3, ["note"]], [5, [1, 2]]]]
    # the version may be the number 1 too
    client.ws.send(cbor2.dumps({"lapps": 1, "method": "nothing"}))
    assert client.response() == {"status": 1, "cid": 0, "result": []}
    client.close()


def test_readme_lapps_example_runs(start_server, tmp_path):
    """The README's LAppS example, as written, with the README's client."""
    from test_wamp import readme_lua_blocks

    (lua,) = readme_lua_blocks("LAppS protocol")
    app = tmp_path / "app.lua"
    app.write_text(lua)
    server = start_server(str(app), workers=1)
    a, b = LAppSClient(server), LAppSClient(server)
    assert a.result("echo", 1, "two") == [1, "two"]
    assert b.result("subscribe") == [True]
    assert a.result("broadcast", "news") == [True]
    assert b.notification() == {"cid": 1, "message": ["news"]}
    assert a.notifications == []
    a.close()
    b.close()
