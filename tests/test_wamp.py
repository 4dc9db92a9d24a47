"""The WAMP v2 router (eightys.wamp, tests/apps/wamp_app.lua): real eightys
servers, autobahn-python (asyncio) sessions over real WebSockets, and a raw
`websockets` client for what autobahn would never send."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import shutil
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions, PublishOptions, RegisterOptions, SubscribeOptions
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import REPO, Server, free_port, line_of
from test_reload import _need
from wamp_client import JoinFailed, join, leave, worker_of

NODE = shutil.which("node")

APP = "tests/apps/wamp_app.lua"


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """One server for the single-worker tests (started once: they do not interfere)."""
    port = free_port()
    server = Server([APP, "-c", "1", "-p", str(port)], tmp_path_factory.mktemp("wamp"), port=port)
    server.wait_ready()
    yield server
    server.stop()


def run(coro, timeout: float = 30.0):
    """Run one test's asyncio body."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def eventually(fn, timeout: float = 5.0):
    """Await ``fn()`` until it stops raising (a registration made in another worker
    reaches this one after a relay through the master)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await fn()
        except ApplicationError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


# -- Basic Profile ------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
def test_rpc_between_two_connections(one_worker, serializer):
    async def body():
        callee, _ = await join(one_worker.port, serializer=serializer)
        caller, _ = await join(one_worker.port, serializer=serializer)

        def add(a, b, scale=1):
            return (a + b) * scale

        def fail():
            raise ApplicationError("com.example.nope", "not today", code=7)

        await callee.register(add, "com.example.add")
        await callee.register(fail, "com.example.fail")
        assert await caller.call("com.example.add", 2, 3) == 5
        assert await caller.call("com.example.add", 2, 3, scale=10) == 50
        # binary-safe text, nested values, floats and big integers survive both codecs
        await callee.register(lambda *a, **k: [list(a), k], "com.example.echo")
        value = {"list": [1, 2.5, None, True, "é"], "big": 2**53, "neg": -2**40, "empty": {}}
        echoed = await caller.call("com.example.echo", value, "x" * 70000, n=-1)
        assert echoed == [[value, "x" * 70000], {"n": -1}]

        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.fail")
        assert err.value.error == "com.example.nope"
        assert err.value.args == ("not today",) and err.value.kwargs == {"code": 7}
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.missing")
        assert err.value.error == "wamp.error.no_such_procedure"
        # a procedure is registered once
        with pytest.raises(ApplicationError) as err:
            await caller.register(add, "com.example.add")
        assert err.value.error == "wamp.error.procedure_already_exists"
        # the callee leaving removes its registrations
        await leave(callee)
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.add", 1, 1)
        assert err.value.error == "wamp.error.no_such_procedure"
        await leave(caller)

    run(body())


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
def test_pubsub_acknowledge_and_exclude_me(one_worker, serializer):
    async def body():
        pub, _ = await join(one_worker.port, serializer=serializer)
        sub, _ = await join(one_worker.port, serializer=serializer)
        got_sub: asyncio.Queue = asyncio.Queue()
        got_pub: asyncio.Queue = asyncio.Queue()
        subscription = await sub.subscribe(lambda *a, **k: got_sub.put_nowait((a, k)), "com.example.news")
        await pub.subscribe(lambda *a, **k: got_pub.put_nowait((a, k)), "com.example.news")

        publication = await pub.publish("com.example.news", 1, "two", three=3,
                                        options=PublishOptions(acknowledge=True))
        assert publication.id > 0
        assert await asyncio.wait_for(got_sub.get(), 5) == ((1, "two"), {"three": 3})
        # exclude_me is the default: the publisher did not get its own event...
        await pub.publish("com.example.news", "again", options=PublishOptions(exclude_me=False,
                                                                              acknowledge=True))
        assert await asyncio.wait_for(got_pub.get(), 5) == (("again",), {})
        assert got_pub.empty()
        assert await asyncio.wait_for(got_sub.get(), 5) == (("again",), {})

        await subscription.unsubscribe()
        await pub.publish("com.example.news", "gone", options=PublishOptions(exclude_me=False,
                                                                             acknowledge=True))
        assert await asyncio.wait_for(got_pub.get(), 5) == (("gone",), {})
        await asyncio.sleep(0.1)
        assert got_sub.empty()
        await leave(pub, sub)

    run(body())


@contextmanager
def raw_session(server, *messages: list, protocol: str = "wamp.2.json"):
    """A hand-driven JSON session: HELLO, WELCOME, then ``messages``; yields (ws, session id)."""
    with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=[protocol], open_timeout=5) as ws:
        ws.send(json.dumps([1, "realm1", {"roles": {"callee": {}, "caller": {}}}]))
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome[0] == 2
        for m in messages:
            ws.send(json.dumps(m))
        yield ws, welcome[1]


def test_protocol_violation_aborts_and_cleans_up(one_worker):
    # a session registers and subscribes, then sends nonsense
    with raw_session(one_worker, [64, 1, {}, "com.example.raw"], [32, 2, {}, "com.example.raw"]) as (ws, _):
        assert json.loads(ws.recv(timeout=5))[0] == 65
        assert json.loads(ws.recv(timeout=5))[0] == 33
        ws.send(json.dumps([99, "what"]))
        abort = json.loads(ws.recv(timeout=5))
        assert abort[0] == 3 and abort[2] == "wamp.error.protocol_violation"
        assert "99" in abort[1]["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)  # the router closed the transport
        assert ws.close_code == 1000

    async def body():
        caller, _ = await join(one_worker.port)
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.raw")
        assert err.value.error == "wamp.error.no_such_procedure"
        # its registration is gone: another session may take the name
        await caller.register(lambda: "mine", "com.example.raw")
        assert await caller.call("com.example.raw") == "mine"
        await leave(caller)

    run(body())

    # malformed messages of known types
    for bad in ([48, "x", {}, "p"], [16, 1, [], "t"], [32, 1, {}], "not a list", [70, 5, []],
                [1, "realm1", {}], [8, 48, 1, {}, "x"]):
        with raw_session(one_worker, bad) as (ws, _):
            abort = json.loads(ws.recv(timeout=5))
            assert abort[0] == 3 and abort[2] == "wamp.error.protocol_violation", bad
    # messages before HELLO, and a message the serializer cannot read
    for first in (json.dumps([48, 1, {}, "com.example.raw"]), "[1, \"realm1\"", "[]"):
        with connect(f"ws://127.0.0.1:{one_worker.port}/ws", subprotocols=["wamp.2.json"]) as ws:
            ws.send(first)
            assert json.loads(ws.recv(timeout=5))[2] == "wamp.error.protocol_violation", first
    with connect(f"ws://127.0.0.1:{one_worker.port}/ws", subprotocols=["wamp.2.json"]) as ws:
        ws.send(b"\x93\x01\xa6realm1\x80")  # a binary (msgpack) message on a JSON session
        assert json.loads(ws.recv(timeout=5))[2] == "wamp.error.protocol_violation"
    with connect(f"ws://127.0.0.1:{one_worker.port}/ws", subprotocols=["wamp.2.msgpack"]) as ws:
        ws.send(b"\xc1")  # a reserved msgpack byte
        assert msgpack.unpackb(ws.recv(timeout=5))[2] == "wamp.error.protocol_violation"
    # no WAMP subprotocol: the connection is refused with 1002
    with connect(f"ws://127.0.0.1:{one_worker.port}/ws") as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1002
    # unknown realm
    with connect(f"ws://127.0.0.1:{one_worker.port}/ws", subprotocols=["wamp.2.json"]) as ws:
        ws.send(json.dumps([1, "nowhere", {}]))
        assert json.loads(ws.recv(timeout=5))[2] == "wamp.error.no_such_realm"
    assert "Traceback" not in one_worker.stderr_text()


def test_invalid_uris_get_errors(one_worker):
    with raw_session(one_worker, [16, 1, {"acknowledge": True}, "com..bad"],
                     [16, 2, {}, "com. bad"], [48, 3, {}, "com..bad"],
                     [64, 4, {}, "wamp.session.count"], [32, 5, {"match": "fuzzy"}, "com.x"],
                     [48, 6, {}, "lua.add", [1, 2]]) as (ws, _):
        assert json.loads(ws.recv(timeout=5)) == [8, 16, 1, {}, "wamp.error.invalid_uri"]
        # (no answer to the unacknowledged publish)
        assert json.loads(ws.recv(timeout=5)) == [8, 48, 3, {}, "wamp.error.invalid_uri"]
        assert json.loads(ws.recv(timeout=5)) == [8, 64, 4, {}, "wamp.error.invalid_uri"]
        assert json.loads(ws.recv(timeout=5)) == [8, 32, 5, {}, "wamp.error.invalid_option"]
        assert json.loads(ws.recv(timeout=5)) == [50, 6, {}, [3]]


def test_goodbye_then_a_new_session_on_the_same_transport(one_worker):
    with raw_session(one_worker, [6, {}, "wamp.close.close_realm"]) as (ws, first):
        assert json.loads(ws.recv(timeout=5)) == [6, {}, "wamp.close.goodbye_and_out"]
        ws.send(json.dumps([1, "realm1", {"roles": {"caller": {}}}]))
        welcome = json.loads(ws.recv(timeout=5))
        assert welcome[0] == 2 and welcome[1] != first
        ws.send(json.dumps([48, 7, {}, "lua.add", [20, 22]]))
        assert json.loads(ws.recv(timeout=5)) == [50, 7, {}, [42]]


def test_per_session_limits(one_worker):
    with raw_session(one_worker, [64, 1, {}, "com.example.silent"]) as (ws, _):
        assert json.loads(ws.recv(timeout=5))[0] == 65
        for i in range(9):  # the session calls itself and never answers: 8 in flight at most
            ws.send(json.dumps([48, 100 + i, {}, "com.example.silent"]))
        for i in range(8):
            assert json.loads(ws.recv(timeout=5))[0] == 68
        error = json.loads(ws.recv(timeout=5))
        assert error[:5] == [8, 48, 108, {}, "wamp.error.too_many_calls"]
        for i in range(51):
            ws.send(json.dumps([32, 200 + i, {}, f"com.example.t{i}"]))
        for i in range(50):
            assert json.loads(ws.recv(timeout=5))[0] == 33
        assert json.loads(ws.recv(timeout=5)) == [8, 32, 250, {}, "wamp.error.too_many_subscriptions"]


def test_a_subscriber_that_does_not_read_is_closed_not_buffered(one_worker):
    # a raw subscriber that stops reading after its SUBSCRIBED
    sock = socket.create_connection(("127.0.0.1", one_worker.port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Protocol: wamp.2.json\r\n\r\n")
    for message in ([1, "realm1", {}], [32, 1, {}, "com.example.flood"]):
        payload = json.dumps(message).encode()
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
    time.sleep(0.3)

    async def body():
        watcher, _ = await join(one_worker.port)
        leaves: asyncio.Queue = asyncio.Queue()
        await watcher.subscribe(lambda *a: leaves.put_nowait(a), "wamp.session.on_leave")
        big = "x" * 65536
        for _ in range(160):  # 10 MB, beyond the send buffer and the socket buffers
            watcher.publish("com.example.flood", big)
            await asyncio.sleep(0)
        await asyncio.wait_for(leaves.get(), 10)  # its session ended: closed with 1013
        assert await watcher.call("lua.add", 1, 1) == 2  # the router and the publisher are fine
        await leave(watcher)

    run(body())
    sock.close()


# -- advanced features --------------------------------------------------------------------


def test_caller_and_publisher_identification(one_worker):
    async def body():
        for realm, disclosed in (("realm1", False), ("disclosed", True)):
            callee, cd = await join(one_worker.port, realm)
            caller, rd = await join(one_worker.port, realm, serializer="msgpack")
            await callee.register(lambda details: [details.caller, details.caller_authrole], "com.example.who",
                                  options=RegisterOptions(details_arg="details"))
            expected = [rd.session, "anonymous"] if disclosed else [None, None]
            assert await caller.call("com.example.who") == expected

            got: asyncio.Queue = asyncio.Queue()
            await callee.subscribe(lambda details: got.put_nowait(details.publisher), "com.example.id",
                                   options=SubscribeOptions(details_arg="details"))
            await caller.publish("com.example.id", options=PublishOptions(acknowledge=True))
            assert await asyncio.wait_for(got.get(), 5) == (rd.session if disclosed else None)
            await leave(callee, caller)

    run(body())
    # a caller may disclose itself where the realm does not (CALL/PUBLISH option disclose_me)
    with raw_session(one_worker, [64, 1, {}, "com.example.me"], [32, 2, {}, "com.example.me"]) as (ws, me):
        assert json.loads(ws.recv(timeout=5))[0] == 65
        assert json.loads(ws.recv(timeout=5))[0] == 33
        ws.send(json.dumps([48, 3, {"disclose_me": True}, "com.example.me"]))
        invocation = json.loads(ws.recv(timeout=5))
        assert invocation[0] == 68 and invocation[3]["caller"] == me
        ws.send(json.dumps([70, invocation[1], {}, ["ok"]]))
        assert json.loads(ws.recv(timeout=5)) == [50, 3, {}, ["ok"]]
        ws.send(json.dumps([16, 4, {"disclose_me": True, "exclude_me": False}, "com.example.me"]))
        event = json.loads(ws.recv(timeout=5))
        assert event[0] == 36 and event[3]["publisher"] == me


def test_progressive_results(one_worker):
    async def body():
        callee, _ = await join(one_worker.port)
        caller, _ = await join(one_worker.port, serializer="msgpack")

        async def count(n, details=None):
            for i in range(n):
                if details.progress:
                    details.progress(i)
                await asyncio.sleep(0.01)
            return "end"

        await callee.register(count, "com.example.count", options=RegisterOptions(details_arg="details"))
        seen: list = []
        result = await caller.call("com.example.count", 4, options=CallOptions(on_progress=seen.append))
        assert result == "end" and seen == [0, 1, 2, 3]
        # a caller that did not ask for progress gets only the final result
        assert await caller.call("com.example.count", 3) == "end"
        # progressive results from a procedure written in Lua
        seen.clear()
        assert await caller.call("lua.progress", 3, options=CallOptions(on_progress=seen.append)) == "done"
        assert seen == [1, 2, 3]
        await leave(callee, caller)

    run(body())


def test_cancel_interrupts_the_callee_and_timeout(one_worker):
    async def body():
        callee, _ = await join(one_worker.port)
        caller, _ = await join(one_worker.port)
        started = asyncio.Event()
        interrupted = asyncio.Event()

        async def slow():
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                interrupted.set()
                raise
            return "late"

        await callee.register(slow, "com.example.slow")
        call = asyncio.ensure_future(caller.call("com.example.slow"))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()  # autobahn sends CANCEL; the router sends INTERRUPT to the callee
        await asyncio.wait_for(interrupted.wait(), 5)
        with pytest.raises((asyncio.CancelledError, ApplicationError)):
            await call

        # a call timeout: the router gives up, tells the caller and interrupts the callee
        started.clear()
        interrupted.clear()
        begin = time.monotonic()
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.slow", options=CallOptions(timeout=300))
        assert err.value.error == "wamp.error.timeout"
        assert 0.25 < time.monotonic() - begin < 3
        await asyncio.wait_for(interrupted.wait(), 5)
        # the session is still fine
        assert await caller.call("lua.add", 1, 2) == 3
        await leave(callee, caller)

    run(body())


def test_pattern_registrations_and_subscriptions(one_worker):
    async def body():
        callee, _ = await join(one_worker.port)
        caller, _ = await join(one_worker.port)
        await callee.register(lambda details: ["prefix", details.procedure], "com.pat.",
                              options=RegisterOptions(match="prefix", details_arg="details"))
        await callee.register(lambda details: ["longer", details.procedure], "com.pat.long.",
                              options=RegisterOptions(match="prefix", details_arg="details"))
        await callee.register(lambda details: ["wildcard", details.procedure], "com..create",
                              options=RegisterOptions(match="wildcard", details_arg="details"))
        await callee.register(lambda: ["exact"], "com.pat.exact")
        assert await caller.call("com.pat.a.b") == ["prefix", "com.pat.a.b"]
        assert await caller.call("com.pat.long.x") == ["longer", "com.pat.long.x"]
        assert await caller.call("com.pat.exact") == ["exact"]
        assert await caller.call("com.user.create") == ["wildcard", "com.user.create"]
        with pytest.raises(ApplicationError):
            await caller.call("com.user.delete")

        got: asyncio.Queue = asyncio.Queue()
        await callee.subscribe(lambda *a, details=None: got.put_nowait(("prefix", details.topic, a)),
                               "com.ev.", options=SubscribeOptions(match="prefix", details_arg="details"))
        await callee.subscribe(lambda *a, details=None: got.put_nowait(("wild", details.topic, a)),
                               "com..ping", options=SubscribeOptions(match="wildcard", details_arg="details"))
        await caller.publish("com.ev.ping", 1, options=PublishOptions(acknowledge=True))
        seen = {await asyncio.wait_for(got.get(), 5), await asyncio.wait_for(got.get(), 5)}
        assert seen == {("prefix", "com.ev.ping", (1,)), ("wild", "com.ev.ping", (1,))}
        await caller.publish("com.x.ping", 2, options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(got.get(), 5) == ("wild", "com.x.ping", (2,))
        await leave(callee, caller)

    run(body())


def test_subscriber_black_and_whitelisting(one_worker):
    async def body():
        sessions = [await join(one_worker.port) for _ in range(3)]
        queues = [asyncio.Queue() for _ in sessions]
        for (s, _), q in zip(sessions, queues):
            await s.subscribe(lambda x, q=q: q.put_nowait(x), "com.example.bw")
        pub, _ = await join(one_worker.port)
        ids = [d.session for _, d in sessions]
        await pub.publish("com.example.bw", "not-1", options=PublishOptions(exclude=[ids[1]], acknowledge=True))
        await pub.publish("com.example.bw", "only-2", options=PublishOptions(eligible=[ids[2]], acknowledge=True))
        await pub.publish("com.example.bw", "anon-but-0", options=PublishOptions(
            eligible_authrole=["anonymous"], exclude=[ids[0]], acknowledge=True))
        await pub.publish("com.example.bw", "end", options=PublishOptions(acknowledge=True))
        received = []
        for q in queues:
            items = []
            while True:
                item = await asyncio.wait_for(q.get(), 5)
                items.append(item)
                if item == "end":
                    break
            received.append(items)
        assert received == [["not-1", "end"], ["anon-but-0", "end"], ["not-1", "only-2", "anon-but-0", "end"]]
        await leave(pub, *(s for s, _ in sessions))

    run(body())


def test_session_meta_api_and_events(one_worker):
    async def body():
        watcher, wd = await join(one_worker.port)
        joins: asyncio.Queue = asyncio.Queue()
        leaves: asyncio.Queue = asyncio.Queue()
        await watcher.subscribe(lambda details: joins.put_nowait(details), "wamp.session.on_join")
        await watcher.subscribe(lambda *args: leaves.put_nowait(args), "wamp.session.on_leave")
        before = await watcher.call("wamp.session.count")
        other, od = await join(one_worker.port, serializer="msgpack")
        joined = await asyncio.wait_for(joins.get(), 5)
        assert joined["session"] == od.session and joined["authrole"] == "anonymous"
        assert await watcher.call("wamp.session.count") == before + 1
        assert await watcher.call("wamp.session.count", ["nobody"]) == 0
        listed = await watcher.call("wamp.session.list")
        assert od.session in listed and wd.session in listed
        got = await watcher.call("wamp.session.get", od.session)
        assert got["session"] == od.session and got["transport"]["protocol"] == "msgpack"
        assert got["worker"] == 0
        with pytest.raises(ApplicationError) as err:
            await watcher.call("wamp.session.get", 12345)
        assert err.value.error == "wamp.error.no_such_session"
        await leave(other)
        left = await asyncio.wait_for(leaves.get(), 5)
        assert left[0] == od.session
        assert await watcher.call("wamp.session.count") == before
        await leave(watcher)

    run(body())


def test_wampcra_and_ticket(one_worker):
    async def body():
        s, d = await join(one_worker.port, "secure", authmethods=["wampcra"], authid="joe", secret="joe-secret")
        assert (d.authid, d.authrole, d.authmethod) == ("joe", "frontend", "wampcra")
        assert await s.call("wamp.session.count") >= 1
        await leave(s)
        with pytest.raises(JoinFailed) as err:
            await join(one_worker.port, "secure", authmethods=["wampcra"], authid="joe", secret="wrong")
        assert "authentication_failed" in str(err.value)
        s, d = await join(one_worker.port, "secure", serializer="msgpack", authmethods=["ticket"],
                          authid="bob", secret="bob-ticket")
        assert (d.authid, d.authrole, d.authmethod) == ("bob", "backend", "ticket")
        await leave(s)
        with pytest.raises(JoinFailed) as err:
            await join(one_worker.port, "secure", authmethods=["ticket"], authid="bob", secret="nope")
        assert "authentication_failed" in str(err.value)
        # the secure realm takes no anonymous sessions; unknown users get no method
        for kwargs in ({}, {"authmethods": ["wampcra"], "authid": "mallory", "secret": "x"}):
            with pytest.raises(JoinFailed) as err:
                await join(one_worker.port, "secure", **kwargs)
            assert "no_auth_method" in str(err.value)

    run(body())


def test_procedures_and_subscriptions_in_lua(one_worker):
    async def body():
        s, _ = await join(one_worker.port)
        assert await s.call("lua.add", 40, 2) == 42
        result = await s.call("lua.kw", name="ann")
        assert result.kwresults == {"name": "ann", "worker": 0}
        with pytest.raises(ApplicationError) as err:
            await s.call("lua.fail", 5)
        assert err.value.error == "com.example.oops" and err.value.args == ("no luck", 5)
        with pytest.raises(ApplicationError) as err:
            await s.call("lua.raise")
        assert err.value.error == "wamp.error.runtime_error"
        where = f"wamp_app.lua:{line_of(REPO / APP, 'MARK raise')}: boom"
        assert err.value.args[0].endswith(where) and "traceback" not in err.value.args[0]
        assert where in one_worker.stderr_text()  # the log has the traceback
        # Lua calls a client's procedure
        await s.register(lambda x: f"echo {x}", "client.echo")
        assert (await s.call("lua.relay", "hi")).results == ("relayed", "echo hi", 0)
        # Lua subscribes and publishes
        out: asyncio.Queue = asyncio.Queue()
        await s.subscribe(lambda *a: out.put_nowait(a), "lua.out")
        await s.publish("lua.in", "ping", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(out.get(), 5) == ("ping", 0)
        await leave(s)

    run(body())


# -- across workers -----------------------------------------------------------------------


async def sessions_on_both_workers(port: int, serializer: str = "json", realm: str = "realm1"):
    """Join until there is a session on worker 0 and one on worker 1 (the kernel
    spreads connections by hashing the client port); the others leave."""
    found: dict[int, tuple] = {}
    extra = []
    for _ in range(60):
        s, d = await join(port, realm, serializer=serializer)
        w = worker_of(d)
        if w in found:
            extra.append(s)
        else:
            found[w] = (s, d)
        if len(found) == 2:
            break
    await leave(*extra)
    assert set(found) == {0, 1}, "connections never landed on both workers"
    return found[0], found[1]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_across_workers(start_server, serializer):
    server = start_server(APP, workers=2)

    async def body():
        # the realm discloses callers and publishers
        (callee, cd), (caller, rd) = await sessions_on_both_workers(server.port, serializer, "disclosed")
        assert worker_of(cd) == 0 and worker_of(rd) == 1

        async def where(details=None, n=0):
            for i in range(n):
                details.progress(i)
            return ["worker 0", details.caller]

        await callee.register(where, "com.example.where", options=RegisterOptions(details_arg="details"))
        # RPC: the callee on worker 0 serves the caller on worker 1
        result = await eventually(lambda: caller.call("com.example.where"))
        assert result == ["worker 0", rd.session]
        seen: list = []
        assert await caller.call("com.example.where", n=3, options=CallOptions(on_progress=seen.append)) == [
            "worker 0", rd.session]
        assert seen == [0, 1, 2]
        # any payload crosses between the workers intact (bytes too; with msgpack, bytes that
        # happen to be valid UTF-8 come back as text: a Lua string does not say which it was)
        await callee.register(lambda *a, **k: [list(a), k], "com.example.echo")
        payload = [b"\x00\xff raw", "é", None, 2**53, -1.5, {"nested": [[], {}]}]
        assert await eventually(lambda: caller.call("com.example.echo", *payload, k=b"\xfe\x01")) == [
            payload, {"k": b"\xfe\x01"}]
        # pattern registrations work across the workers too
        await callee.register(lambda details: details.procedure, "com.cross.",
                              options=RegisterOptions(match="prefix", details_arg="details"))
        assert await eventually(lambda: caller.call("com.cross.deep.name")) == "com.cross.deep.name"
        # a procedure name is unique across the workers
        with pytest.raises(ApplicationError) as err:
            await caller.register(lambda: None, "com.example.where")
        assert err.value.error == "wamp.error.procedure_already_exists"

        # cancel and timeout across workers
        interrupted = asyncio.Event()

        async def slow():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                interrupted.set()
                raise

        await callee.register(slow, "com.example.slow")
        await eventually(lambda: _expect_timeout(caller))
        await asyncio.wait_for(interrupted.wait(), 5)

        # PubSub across workers, both directions, with exclusion by session id
        got0: asyncio.Queue = asyncio.Queue()
        got1: asyncio.Queue = asyncio.Queue()
        await callee.subscribe(lambda x: got0.put_nowait(x), "com.example.cross")
        await caller.subscribe(lambda x: got1.put_nowait(x), "com.example.cross")
        await caller.publish("com.example.cross", "from 1", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(got0.get(), 5) == "from 1"
        await callee.publish("com.example.cross", "from 0", options=PublishOptions(exclude_me=False,
                                                                                   acknowledge=True))
        assert await asyncio.wait_for(got0.get(), 5) == "from 0"
        assert await asyncio.wait_for(got1.get(), 5) == "from 0"
        callee.publish("com.example.cross", "not 1", options=PublishOptions(exclude=[rd.session],
                                                                            exclude_me=False))
        callee.publish("com.example.cross", "end", options=PublishOptions(exclude_me=False))
        assert await asyncio.wait_for(got1.get(), 5) == "end"

        # the meta API sees both workers' sessions
        got = await caller.call("wamp.session.get", cd.session)
        assert got["worker"] == 0 and got["session"] == cd.session
        assert {cd.session, rd.session} <= set(await caller.call("wamp.session.list"))
        # a Lua procedure calling a client on the other worker
        await callee.register(lambda x: f"echo {x}", "client.echo")
        relayed = await eventually(lambda: caller.call("lua.relay", "x"))
        assert relayed.results == ("relayed", "echo x", 1)
        # the callee leaving: its procedures disappear on the other worker too
        await leave(callee)

        async def gone():
            try:
                await caller.call("com.example.where")
            except ApplicationError as exc:
                assert exc.error == "wamp.error.no_such_procedure"
                return
            raise ApplicationError("still.there")

        await eventually(gone)
        await leave(caller)

    run(body(), timeout=60)


async def _expect_timeout(caller):
    try:
        await caller.call("com.example.slow", options=CallOptions(timeout=300))
    except ApplicationError as exc:
        if exc.error == "wamp.error.timeout":
            return
        raise
    raise AssertionError("the call did not time out")


# -- the README ---------------------------------------------------------------------------


def readme_blocks(section: str, language: str) -> list[str]:
    """The ```language blocks of README section ``section``, in order."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in body.split(f"```{language}")[1:]]


def readme_lua_blocks(section: str) -> list[str]:
    """The ```lua blocks of a README section (tests/test_readme.py counts them as run here)."""
    return readme_blocks(section, "lua")


def test_readme_wamp_example_runs(start_server, tmp_path):
    lua = readme_lua_blocks("WAMP router")[0]  # the second one: tests/test_wamp_redis.py
    app = tmp_path / "app.lua"
    app.write_text(lua)
    server = start_server(str(app), workers=2)

    async def body():
        s, _ = await join(server.port)
        assert await s.call("com.example.add", 2, 40) == 42
        seen: list = []
        assert await s.call("com.example.slow_count", 2, options=CallOptions(on_progress=seen.append)) == "done"
        assert seen == [1, 2]
        with pytest.raises(ApplicationError) as err:
            await s.call("com.example.check", "x")
        assert err.value.error == "com.example.not_a_number"
        log: asyncio.Queue = asyncio.Queue()
        await s.subscribe(lambda text: log.put_nowait(text), "com.example.log")
        await s.publish("com.example.chat", "hello", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(log.get(), 5) == "someone said hello"  # from each worker's subscriber
        assert await asyncio.wait_for(log.get(), 5) == "someone said hello"
        await leave(s)
        s, d = await join(server.port, "office", authmethods=["wampcra"], authid="joe", secret="s3cret")
        assert d.authrole == "staff"
        await leave(s)
        s, d = await join(server.port, "office", serializer="msgpack", authmethods=["ticket"],
                          authid="bot", secret="t0ken")
        assert d.authrole == "bot"
        await leave(s)

    run(body())
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/sum?a=2&b=40", timeout=5) as r:
        assert r.read() == b"42"


def test_server_wamp_lua_serves(start_server):
    server = start_server("server/wamp.lua", workers=1)

    async def body():
        callee, _ = await join(server.port, serializer="msgpack")
        caller, _ = await join(server.port)
        await callee.register(lambda a, b: a + b, "com.example.add")
        assert await caller.call("com.example.add", 2, 3) == 5
        assert await caller.call("eightys.worker") == 0
        await leave(callee, caller)

    run(body())


# -- life cycle ---------------------------------------------------------------------------


def test_reload_keeps_sessions_and_switches_lua_code(start_server, tmp_path):
    app = tmp_path / "app.lua"
    source = (REPO / APP).read_text()
    app.write_text(source)
    server = start_server(str(app), workers=1)

    async def body():
        s, _ = await join(server.port)
        await s.register(lambda: "client", "client.proc")
        out: asyncio.Queue = asyncio.Queue()
        await s.subscribe(lambda *a: out.put_nowait(a), "lua.out")
        assert await s.call("lua.add", 1, 2) == 3
        app.write_text(source.replace("return { args[1] + args[2] }", "return { args[1] * args[2] }")
                       .replace("{ args[1], WORKERID }", '{ "v2", args[1] }'))
        server.send_signal(signal.SIGHUP)
        await asyncio.get_running_loop().run_in_executor(None, server.wait_for_log, "reloaded")
        assert await s.call("lua.add", 3, 4) == 12  # the new code, the same session
        assert await s.call("client.proc") == "client"  # its registration survived
        await s.publish("lua.in", "x", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(out.get(), 5) == ("v2", "x")  # one (new) Lua subscriber
        await asyncio.sleep(0.2)
        assert out.empty()
        await leave(s)

    run(body())


def worker_pid(server, worker_id: int) -> int:
    """The pid of worker ``worker_id`` (``python -m eightys.worker FD ID ...``)."""
    for pid in server.worker_pids():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"eightys.worker" in argv and argv[argv.index(b"eightys.worker") + 2] == str(worker_id).encode():
            return pid
    raise AssertionError(f"no worker {worker_id}")


def test_a_restarted_worker_learns_the_others_registrations(start_server):
    server = start_server(APP, workers=2)

    async def body():
        (callee, cd), (other, od) = await sessions_on_both_workers(server.port)
        await callee.register(lambda: "still here", "com.example.survivor")
        await eventually(lambda: other.call("com.example.survivor"))
        os.kill(worker_pid(server, 1), signal.SIGKILL)
        await other.left  # its connection went with the worker
        await asyncio.get_running_loop().run_in_executor(None, server.wait_workers, 2)
        for _ in range(60):  # a new session on the new worker 1
            s, d = await join(server.port)
            if worker_of(d) == 1:
                break
            await leave(s)
        assert worker_of(d) == 1
        assert await eventually(lambda: s.call("com.example.survivor")) == "still here"
        # worker 0 forgot the sessions of the old worker 1
        listed = await callee.call("wamp.session.list")
        assert od.session not in listed and d.session in listed
        await leave(s, callee)

    run(body(), timeout=60)


def test_npm_wampy_round_trip(start_server):
    _need(NODE, "node is not installed")
    _need((REPO / "tests" / "node" / "node_modules" / "wampy").is_dir() or None,
          "npm wampy is not installed (./scripts/80.sh test installs it into tests/node/)")
    server = start_server(APP, workers=1)
    result = subprocess.run([NODE, str(REPO / "tests" / "node" / "wampy_client.mjs"),
                             f"ws://127.0.0.1:{server.port}/ws", "json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report == {"product": [42], "lua": [42], "event": {"argsList": ["hi"], "argsDict": {"n": 1}},
                      "missing": "wamp.error.no_such_procedure"}


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
def test_lua54_engine(start_server, serializer):
    server = start_server(APP, "--lua", "lua54", workers=2)

    async def body():
        (callee, _), (caller, _) = await sessions_on_both_workers(server.port, serializer)
        await callee.register(lambda *a, **k: [list(a), k], "com.example.echo")
        payload = [2**53, -2**40, 1.5, "é", None, {"a": []}]
        assert await eventually(lambda: caller.call("com.example.echo", *payload, x=1)) == [payload, {"x": 1}]
        seen: list = []
        assert await caller.call("lua.progress", 2, options=CallOptions(on_progress=seen.append)) == "done"
        assert seen == [1, 2]
        got: asyncio.Queue = asyncio.Queue()
        await callee.subscribe(lambda x: got.put_nowait(x), "com.example.t")
        await caller.publish("com.example.t", "hi", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(got.get(), 5) == "hi"
        await leave(callee, caller)

    run(body())
