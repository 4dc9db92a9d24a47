"""The WAMP router across servers through Redis (eightys.wamp with eightys.wamp_redis):
two (or three) real eightys servers on their own ports with ``--redis``, sharing the
machine's Redis (DB 14, a channel/key prefix of each test's own), autobahn-python
sessions on each, and servers that go away for real (SIGKILL) or lose Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions, PublishOptions, RegisterOptions

from test_wamp import APP, eventually, readme_lua_blocks, run
from wamp_client import join, leave, worker_of

HEARTBEAT = 1.0  # seconds: a peer not heard for three of them is gone (a loaded machine stalls)


@pytest.fixture
def cluster(start_server, redis_url):
    """``cluster(n, url=None, workers=2)``: n servers of tests/apps/wamp_app.lua linked
    through Redis (DB 14 of the test Redis unless ``url``), with a prefix of this
    test's own so that nothing else on that Redis hears them."""
    prefix = f"eightys-test:wamp:{uuid.uuid4().hex[:10]}"
    env = {"WAMP_REDIS_PREFIX": prefix, "WAMP_HEARTBEAT": str(HEARTBEAT)}

    def make(n: int = 2, url: str | None = None, workers: int = 2, args: tuple[str, ...] = ()):
        url = url or redis_url.rsplit("/", 1)[0] + "/14"
        return [start_server(APP, "--redis", url, *args, workers=workers, env=env) for _ in range(n)]

    make.prefix = prefix
    yield make
    import redis

    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/14")
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def kill(server) -> None:
    """The server goes away as in a crash: SIGKILL its master and every worker."""
    pids = server.worker_pids()
    os.kill(server.pid, signal.SIGKILL)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    server.proc.wait(10)


async def on_worker(port: int, worker: int, serializer: str = "json", realm: str = "realm1"):
    """A session on worker ``worker`` of the server on ``port`` (the kernel spreads
    connections across the workers; the misplaced ones leave)."""
    extra = []
    try:
        for _ in range(60):
            s, d = await join(port, realm, serializer=serializer)
            if worker_of(d) == worker:
                return s, d
            extra.append(s)
        raise AssertionError(f"no connection landed on worker {worker}")
    finally:
        await leave(*extra)


async def gone(caller, procedure: str, timeout: float = 5.0) -> str:
    """Wait until calling ``procedure`` fails with no_such_procedure; the errors seen on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            await caller.call(procedure)
        except ApplicationError as exc:
            if exc.error == "wamp.error.no_such_procedure":
                return seen
            seen.append(exc.error)
        assert time.monotonic() < deadline, f"{procedure} still served; errors seen: {seen}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_rpc_across_servers(cluster, serializer):
    a, b = cluster(2)

    async def body():
        callee, cd = await join(a.port, "disclosed", serializer=serializer)
        caller, rd = await join(b.port, "disclosed", serializer=serializer)
        assert cd.authextra["x_eightys_node"] == rd.authextra["x_eightys_node"]  # one machine

        async def where(x, details=None, n=0):
            for i in range(n):
                details.progress(i)
            return [f"server A got {x!r}", details.caller]

        await callee.register(where, "com.example.where", options=RegisterOptions(details_arg="details"))
        # the callee on server A serves the caller on server B, caller disclosed
        assert await eventually(lambda: caller.call("com.example.where", "hi")) == ["server A got 'hi'", rd.session]
        # progressive results cross in order
        seen: list = []
        assert await caller.call("com.example.where", 1, n=5, options=CallOptions(on_progress=seen.append)) == [
            "server A got 1", rd.session]
        assert seen == [0, 1, 2, 3, 4]
        # payloads survive Redis, bytes too
        await callee.register(lambda *a, **k: [list(a), k], "com.example.echo")
        payload = [b"\x00\xff raw", "é", None, 2**53, -1.5, {"nested": [[], {}]}, "x" * 100000]
        assert await eventually(lambda: caller.call("com.example.echo", *payload, k=b"\xfe")) == [
            payload, {"k": b"\xfe"}]
        # application errors come back with their args
        def fail():
            raise ApplicationError("com.example.nope", "not today", code=7)

        await callee.register(fail, "com.example.fail")
        with pytest.raises(ApplicationError) as err:
            await eventually(lambda: caller.call("com.example.fail"), timeout=5)
        assert err.value.error == "com.example.nope" and err.value.kwargs == {"code": 7}
        # patterns are routed across servers too
        await callee.register(lambda details: details.procedure, "com.cross.",
                              options=RegisterOptions(match="prefix", details_arg="details"))
        assert await eventually(lambda: caller.call("com.cross.deep.name")) == "com.cross.deep.name"
        # a procedure is registered once across the servers
        with pytest.raises(ApplicationError) as err:
            await caller.register(lambda: None, "com.example.where")
        assert err.value.error == "wamp.error.procedure_already_exists"
        # a Lua procedure of server B calls the client of server A
        await callee.register(lambda x: f"echo {x}", "client.echo")
        relayed = await eventually(lambda: caller.call("lua.relay", "x"))
        assert relayed.results[:2] == ("relayed", "echo x")

        # cancel and timeout across servers reach the callee as INTERRUPT
        interrupted = asyncio.Event()

        async def slow():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                interrupted.set()
                raise

        await callee.register(slow, "com.example.slow")
        await eventually(lambda: caller.call("com.example.where", 0))  # (the order of registrations)
        pending = asyncio.ensure_future(caller.call("com.example.slow"))
        await asyncio.sleep(0.3)
        pending.cancel()
        await asyncio.wait_for(interrupted.wait(), 5)
        interrupted.clear()
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.slow", options=CallOptions(timeout=300))
        assert err.value.error == "wamp.error.timeout"
        await asyncio.wait_for(interrupted.wait(), 5)

        # the callee leaving: its procedures disappear on the other server, and can be taken there
        await leave(callee)
        await gone(caller, "com.example.where")
        await caller.register(lambda: "B now", "com.example.where")
        assert await caller.call("com.example.where") == "B now"
        await leave(caller)

    run(body(), timeout=60)


def test_one_of_two_racing_registrations_wins(cluster):
    a, b = cluster(2)

    async def body():
        sa, _ = await join(a.port)
        sb, _ = await join(b.port)
        for i in range(5):
            outcomes = await asyncio.gather(sa.register(lambda: "a", f"com.race.{i}"),
                                            sb.register(lambda: "b", f"com.race.{i}"),
                                            return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, ApplicationError)]
            assert len(errors) == 1, outcomes
            assert errors[0].error == "wamp.error.procedure_already_exists"
        await leave(sa, sb)

    run(body())


def test_events_reach_every_subscriber_of_every_server_once(cluster):
    a, b = cluster(2)

    async def body():
        sessions = {}
        for name, server in (("a", a), ("b", b)):
            for w in (0, 1):
                sessions[f"{name}{w}"] = await on_worker(server.port, w, "msgpack" if w else "json")
        got: dict[str, list] = {k: [] for k in sessions}
        for name, (s, _) in sessions.items():
            await s.subscribe(lambda x, name=name: got[name].append(x), "com.example.news")
        publisher, _ = sessions["a0"]
        # the subscriptions are local to each worker: an event published at once is delivered
        await publisher.publish("com.example.news", "one", options=PublishOptions(acknowledge=True,
                                                                                   exclude_me=False))
        for i in range(20):
            publisher.publish("com.example.news", i, options=PublishOptions(exclude_me=False))
        await publisher.publish("com.example.news", "end", options=PublishOptions(acknowledge=True,
                                                                                   exclude_me=False))
        expected = ["one", *range(20), "end"]
        deadline = time.monotonic() + 5
        while any(len(v) < len(expected) for v in got.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for a duplicate to arrive, if there were one
        assert got == {k: expected for k in sessions}  # each once, in the order published
        # black/whitelisting by session id works across servers
        for v in got.values():
            v.clear()
        b1 = sessions["b1"][1].session
        publisher.publish("com.example.news", "not b1", options=PublishOptions(exclude=[b1]))
        publisher.publish("com.example.news", "only b1", options=PublishOptions(eligible=[b1]))
        await publisher.publish("com.example.news", "end", options=PublishOptions(acknowledge=True))
        deadline = time.monotonic() + 5
        while not all(v and v[-1] == "end" for k, v in got.items() if k != "a0") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert got == {"a0": [], "a1": ["not b1", "end"], "b0": ["not b1", "end"], "b1": ["only b1", "end"]}
        # Lua subscribers: one per worker on both servers, each republishing once
        out: list = []
        await publisher.subscribe(lambda *x: out.append(x), "lua.out")
        await sessions["b1"][0].publish("lua.in", "ping", options=PublishOptions(acknowledge=True))
        deadline = time.monotonic() + 5
        while len(out) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sorted(out) == [("ping", 0), ("ping", 0), ("ping", 1), ("ping", 1)]
        await leave(*(s for s, _ in sessions.values()))

    run(body(), timeout=60)


def test_session_meta_api_across_servers(cluster):
    a, b = cluster(2)

    async def body():
        sa, da = await join(a.port)
        sb, db = await join(b.port)

        async def both_listed():
            listed = set(await sa.call("wamp.session.list"))
            if not {da.session, db.session} <= listed:
                raise ApplicationError("not.yet")
            return listed

        await eventually(both_listed)
        assert await sa.call("wamp.session.count") == await sb.call("wamp.session.count") >= 2
        got = await sa.call("wamp.session.get", db.session)
        assert got["session"] == db.session and got["node"] == da.authextra["x_eightys_node"]
        joins: asyncio.Queue = asyncio.Queue()
        leaves: asyncio.Queue = asyncio.Queue()
        await sa.subscribe(lambda d: joins.put_nowait(d["session"]), "wamp.session.on_join")
        await sa.subscribe(lambda sid, *_: leaves.put_nowait(sid), "wamp.session.on_leave")
        late, dl = await join(b.port)
        assert await asyncio.wait_for(joins.get(), 5) == dl.session
        await leave(late)
        assert await asyncio.wait_for(leaves.get(), 5) == dl.session
        await leave(sa, sb)

    run(body())


def test_a_server_that_goes_away(cluster):
    a, b, c = cluster(3)

    async def body():
        callee, cd = await join(a.port)
        caller, _ = await join(b.port)
        watcher, _ = await join(c.port)
        started = asyncio.Event()

        async def hang():
            started.set()
            await asyncio.sleep(60)

        await callee.register(hang, "com.example.hang")
        await callee.register(lambda: "A", "com.example.a")
        await eventually(lambda: caller.call("com.example.a"))
        await eventually(lambda: watcher.call("com.example.a"))
        leaves: asyncio.Queue = asyncio.Queue()
        await watcher.subscribe(lambda sid, *_: leaves.put_nowait(sid), "wamp.session.on_leave")
        in_flight = asyncio.ensure_future(caller.call("com.example.hang"))
        await asyncio.wait_for(started.wait(), 5)
        begin = time.monotonic()
        kill(a)
        # the call in flight gets an error, not a hang
        with pytest.raises(ApplicationError) as err:
            await asyncio.wait_for(in_flight, 10)
        assert err.value.error in ("wamp.error.canceled", "wamp.error.unavailable")
        assert time.monotonic() - begin < 5 * HEARTBEAT + 2
        # the server's procedures and sessions disappear from the others
        await gone(caller, "com.example.a")
        await gone(watcher, "com.example.a")
        assert await asyncio.wait_for(leaves.get(), 5) == cd.session
        # and its registrations may be made again elsewhere (its claims expired)
        async def register_again():
            try:
                await watcher.register(lambda: "C", "com.example.a")
            except ApplicationError as exc:
                if exc.error != "wamp.error.procedure_already_exists":
                    raise
                raise ApplicationError("not.yet") from exc

        await eventually(register_again, timeout=5)
        assert await eventually(lambda: caller.call("com.example.a")) == "C"
        await leave(caller, watcher)

    run(body(), timeout=60)


def test_a_call_to_a_server_just_killed_fails_at_once(cluster):
    a, b = cluster(2, workers=1)

    async def body():
        callee, _ = await join(a.port)
        caller, _ = await join(b.port)
        await callee.register(lambda: "A", "com.example.a")
        await eventually(lambda: caller.call("com.example.a"))
        kill(a)
        begin = time.monotonic()
        # before any heartbeat is missed: nobody listens on its inbox any more
        errors = await gone(caller, "com.example.a")
        assert set(errors) <= {"wamp.error.unavailable", "wamp.error.canceled"}
        # the registration itself goes when three heartbeats are missed (timers of a
        # loaded machine fire late: a margin beyond them)
        assert time.monotonic() - begin < 3 * HEARTBEAT + 3
        await leave(caller)

    run(body())


def test_a_restarted_worker_is_forgotten_on_the_other_servers(cluster):
    a, b = cluster(2)

    async def body():
        callee, cd = await on_worker(a.port, 1)
        caller, _ = await join(b.port)
        await callee.register(lambda: "A1", "com.example.a1")
        await eventually(lambda: caller.call("com.example.a1"))
        os.kill(worker_pid(a, 1), signal.SIGKILL)
        await callee.left
        await gone(caller, "com.example.a1")
        assert cd.session not in await caller.call("wamp.session.list")
        await asyncio.get_running_loop().run_in_executor(None, a.wait_workers, 2)
        # the new worker 1 serves across servers again
        again, _ = await on_worker(a.port, 1)
        await again.register(lambda: "A1 again", "com.example.a1")
        assert await eventually(lambda: caller.call("com.example.a1")) == "A1 again"
        await leave(again, caller)

    run(body(), timeout=60)


def worker_pid(server, worker_id: int) -> int:
    from test_wamp import worker_pid as find

    return find(server, worker_id)


def test_redis_going_away_and_back(cluster, private_redis):
    a, b = cluster(2, url=private_redis.url, workers=1)

    async def body():
        callee, _ = await join(a.port)
        caller, _ = await join(b.port)
        local, _ = await join(a.port)
        await callee.register(lambda: "A", "com.example.a")
        await eventually(lambda: caller.call("com.example.a"))
        private_redis.stop()
        # each server still serves its own sessions, and registers without Redis
        assert await local.call("com.example.a") == "A"
        await callee.register(lambda: "A2", "com.example.a2")
        assert await local.call("com.example.a2") == "A2"
        # the other server's procedures are gone, with an error rather than a hang
        await gone(caller, "com.example.a", timeout=10)
        private_redis.start()
        # once Redis is back, the servers find each other again
        assert await eventually(lambda: caller.call("com.example.a2"), timeout=20) == "A2"
        assert await caller.call("com.example.a") == "A"
        got: asyncio.Queue = asyncio.Queue()
        await caller.subscribe(lambda x: got.put_nowait(x), "com.example.t")
        await callee.publish("com.example.t", "back", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(got.get(), 5) == "back"
        await leave(callee, caller, local)

    run(body(), timeout=90)


def test_readme_across_servers_example(start_server, redis_url, tmp_path):
    """The README's "Across servers" example, on two servers (its prefix made ours)."""
    lua = readme_lua_blocks("WAMP router")[1]
    prefix = f"eightys-test:wamp:{uuid.uuid4().hex[:10]}"
    assert '"myapp:wamp"' in lua
    app = tmp_path / "app.lua"
    app.write_text(lua.replace('"myapp:wamp"', f'"{prefix}"'))
    url = redis_url.rsplit("/", 1)[0] + "/14"
    a, b = (start_server(str(app), "--redis", url, "-n", node, workers=1) for node in ("alpha", "beta"))

    async def body():
        sa, _ = await join(a.port)
        sb, db = await join(b.port)
        assert (await sa.call("com.myapp.where")).results == ("alpha", 0)  # each server its own Lua procedure
        assert (await sb.call("com.myapp.where")).results == ("beta", 0)
        await sb.register(lambda: "from beta", "com.myapp.client")
        assert await eventually(lambda: sa.call("com.myapp.client")) == "from beta"
        got = await sa.call("wamp.session.get", db.session)
        assert got["node"] == "beta"
        await leave(sa, sb)

    run(body())
    for server in (a, b):
        assert " ERROR " not in server.stderr_text(), server.stderr_text()


def test_lua54_engine_across_servers(cluster):
    a, b = cluster(2, workers=1, args=("--lua", "lua54"))

    async def body():
        callee, _ = await join(a.port, serializer="msgpack")
        caller, _ = await join(b.port)
        await callee.register(lambda *a, **k: [list(a), k], "com.example.echo")
        payload = [2**53, -2**40, 1.5, "é", None, {"a": []}]
        assert await eventually(lambda: caller.call("com.example.echo", *payload, x=1)) == [payload, {"x": 1}]
        got: asyncio.Queue = asyncio.Queue()
        await caller.subscribe(lambda x: got.put_nowait(x), "com.example.t")
        await callee.publish("com.example.t", "hi", options=PublishOptions(acknowledge=True))
        assert await asyncio.wait_for(got.get(), 5) == "hi"
        await leave(callee, caller)

    run(body())
