"""The Redis client (eightys/lua/redis.lua + eightys/redis_host.py) against real servers.

Most tests run Lua in-process (tests/luahost.py with the Redis host functions, a
real uvloop loop) against the machine's Redis (``redis_url``: skipped without one,
failing under CI); the tests that kill connections or the server itself use a
redis-server of their own (``private_redis``). One test runs a real ``eightys``
process with ``--redis``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import pytest

from conftest import PrivateRedis, wait_until
from eightys.lua_runtime import ENGINES
from eightys.redis_host import RedisHost
from http_helpers import HttpClient
from luahost import LuaHost

redis = pytest.importorskip("redis")

PRELUDE = b"""
redis = require("redis")
function must(promise)
    local value, err = aio:await(promise)
    if value == nil then error(err, 2) end
    return value
end
function is_array(t)
    return getmetatable(t) == getmetatable(codec.array())
end
"""


class Lua:
    """A Lua state with the Redis host functions; :meth:`run` runs async Lua code."""

    def __init__(self, engine: str, default_url: str = "") -> None:
        self.hosts: list[RedisHost] = []

        def private(host: LuaHost) -> dict[bytes, Any]:
            redis_host = RedisHost(host, default_url)
            self.hosts.append(redis_host)
            return redis_host.functions()

        self.host = LuaHost(engine, private=private)
        self.runtime = self.host.runtime
        self.host.call(self.runtime.lua.execute, PRELUDE)

    def run(self, body: str, *args: Any, timeout: float = 10.0,
            logs: bool = False) -> tuple[Any, ...]:
        """Run ``body`` (receiving ``...`` = args) in aio:async; its results as Python
        values (tables -> lists or dicts). A Lua error (any logged line, unless
        ``logs``) fails the test."""
        fn = self.runtime.execute(
            b"return function(done, ...) aio:async(function(...)\n" + body.encode()
            + b"\nend, nil, ...)(done) end")
        results: list[tuple[Any, ...]] = []
        args = tuple(a.encode() if isinstance(a, str) else a for a in args)
        self.host.call(fn, lambda *values: results.append(values), *args)
        self.host.run_until(lambda: results, timeout, what="the Lua code to finish")
        if self.host.errors and not logs:
            pytest.fail("Lua errors:\n" + "\n".join(self.host.errors), pytrace=False)
        return tuple(self.to_py(v) for v in results[0])

    def wait(self, condition: Any, timeout: float = 5.0, what: str = "the condition") -> None:
        """Run the loop until ``condition()`` holds (messages arrive meanwhile)."""
        self.host.run_until(condition, timeout, what=what)

    def globals(self) -> Any:
        return self.runtime.lua.globals()

    def to_py(self, value: Any) -> Any:
        if self.runtime.lupa.lua_type(value) != "table":
            return value
        items = dict(value.items())
        if not items:
            return []
        if all(isinstance(k, int) and k > 0 for k in items):
            return [self.to_py(items.get(i)) for i in range(1, max(items) + 1)]
        return {(k.decode() if isinstance(k, bytes) else k): self.to_py(v)
                for k, v in items.items()}

    def dispose(self) -> None:
        for redis_host in self.hosts:
            self.host.loop.run_until_complete(redis_host.close_all())
        self.host.dispose()


@pytest.fixture
def lua_factory() -> Iterator[Any]:
    made: list[Lua] = []

    def make(engine: str = "luajit", default_url: str = "") -> Lua:
        lua = Lua(engine, default_url)
        made.append(lua)
        return lua

    yield make
    for lua in made:
        lua.dispose()


@pytest.fixture(params=sorted(ENGINES))
def lua(request: pytest.FixtureRequest, lua_factory: Any, redis_url: str) -> Lua:
    """A :class:`Lua` on each engine whose default URL is the machine's Redis."""
    return lua_factory(request.param, redis_url)


@pytest.fixture
def key() -> str:
    """A key prefix no other test (or engineer) uses."""
    return f"eightys-test:{uuid.uuid4().hex}:"


@pytest.fixture
def direct(redis_url: str) -> Iterator[Any]:
    """A blocking redis-py client of the machine's Redis (test database)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# -- commands ---------------------------------------------------------------------------


def test_commands_by_name_and_call(lua: Lua, key: str, direct: Any) -> None:
    ok, value, missing, hset, hgetall, incr, typed = lua.run("""
        local k = ...
        local c = redis:new()
        local ok = must(c:set(k .. "a", "h\\0llo", "EX", 60))
        local value = must(c:get(k .. "a"))
        local missing, err = aio:await(c:get(k .. "nothing"))
        assert(missing == nil and err == nil, err)
        local hset = must(c:call("HSET", k .. "h", "name", "Ada", "age", 36))
        local all = must(c:hgetall(k .. "h"))
        assert(is_array(all))
        local incr = must(c:Incr(k .. "n"))
        local typed = must(c:TYPE(k .. "h"))
        return ok, value, missing, hset, all, incr, typed
    """, key)
    assert (ok, value, missing, hset, incr, typed) == (b"OK", b"h\0llo", None, 2, 1, b"hash")
    assert hgetall == [b"name", b"Ada", b"age", b"36"]
    assert direct.get(key + "a") == b"h\0llo" and 0 < direct.ttl(key + "a") <= 60
    direct.delete(key + "a", key + "h", key + "n")


def test_numbers_and_nested_replies(lua: Lua, key: str, direct: Any) -> None:
    direct.rpush(key + "l", "x")
    got, mget = lua.run("""
        local k = ...
        local c = redis:new()
        must(c:set(k .. "f", 1.5))
        must(c:set(k .. "i", 2 ^ 40))
        local mget = must(c:mget(k .. "f", k .. "none", k .. "i"))
        assert(rawequal(mget[2], redis.null))
        mget[2] = "NULL"
        return { must(c:get(k .. "f")), must(c:get(k .. "i")) }, mget
    """, key)
    assert got == [b"1.5", b"1099511627776"]
    assert mget == [b"1.5", b"NULL", b"1099511627776"]
    direct.delete(key + "f", key + "i", key + "l")


def test_server_errors_are_values_and_misuse_raises(lua: Lua, key: str, direct: Any) -> None:
    direct.set(key + "s", "text")
    wrongtype, unknown, misuse = lua.run("""
        local k = ...
        local c = redis:new()
        local misuse = select(2, pcall(c.set, c, k, {}))
        return { aio:await(c:lpush(k .. "s", "x")) }, { aio:await(c:call("NOSUCHCOMMAND")) },
               misuse
    """, key)
    assert wrongtype[0] is None and wrongtype[1].startswith(b"redis: WRONGTYPE"), wrongtype
    assert unknown[0] is None and b"unknown command" in unknown[1], unknown
    assert b"an argument must be a string or a number, got table" in misuse
    direct.delete(key + "s")


def test_pipeline_and_transaction(lua: Lua, key: str, direct: Any) -> None:
    replies, tx, empty = lua.run("""
        local k = ...
        local c = redis:new()
        local p = c:pipeline()
        p:set(k .. "a", "1"):incr(k .. "a")
        p:call("LPUSH", k .. "a", "x")   -- WRONGTYPE: an error in its slot, the rest run
        p:get(k .. "a")
        local replies = must(p:execute())
        local t = c:pipeline({ transaction = true })
        t:incr(k .. "b"); t:incr(k .. "b"); t:get(k .. "b")
        local tx = must(t:execute())
        return replies, tx, must(p:execute())
    """, key)
    assert replies[:2] == [b"OK", 2] and replies[3] == b"2"
    assert replies[2]["error"].startswith(b"redis: WRONGTYPE")
    assert tx == [1, 2, b"2"] and empty == []
    direct.delete(key + "a", key + "b")


def test_explicit_url_and_bad_urls(lua_factory: Any, redis_url: str, key: str) -> None:
    lua = lua_factory("luajit")  # no default URL
    none, bad, good = lua.run("""
        local url, k = ...
        local none = { redis:new() }
        local bad = { redis:new("http://example.com/") }
        local c = assert(redis:new(url, { pool_size = 2 }))
        return none, bad, must(c:ping())
    """, redis_url, key)
    assert none[0] is None and b"no URL given" in none[1]
    assert bad[0] is None and b"not a redis:// URL" in bad[1]
    assert good == b"PONG"


def test_concurrent_commands_share_a_bounded_pool(lua: Lua, key: str, direct: Any) -> None:
    (replies, total) = lua.run("""
        local k = ...
        local c = redis:new(nil, { pool_size = 3 })
        local promises = {}
        for i = 1, 50 do
            promises[i] = aio:async(function() return { aio:await(c:incr(k .. "n")) } end)
        end
        local replies = { aio:await(aio:gather((unpack or table.unpack)(promises))) }
        return replies, must(c:get(k .. "n"))
    """, key)
    assert sorted(r[0] for r in replies) == list(range(1, 51)), replies
    assert total == b"50"
    direct.delete(key + "n")


# -- pub/sub ----------------------------------------------------------------------------


def test_subscribe_receives_messages_until_unsubscribed(lua: Lua, key: str, direct: Any) -> None:
    channel = key + "news"
    (ok,) = lua.run("""
        local channel = ...
        received = {}
        client = redis:new()
        local function on(message, ch) received[#received + 1] = ch .. "=" .. message end
        second = function(message) received[#received + 1] = "2nd:" .. message end
        assert(must(client:subscribe(channel, on)))
        assert(must(client:subscribe(channel, second)))
        return true
    """, channel)
    assert ok is True
    direct.publish(channel, b"one")
    lua.wait(lambda: len(lua.globals()[b"received"]) == 2, what="the message")
    assert lua.to_py(lua.globals()[b"received"]) == [channel.encode() + b"=one", b"2nd:one"]
    lua.run("""
        local channel = ...
        must(client:unsubscribe(channel, second))
        must(client:ping())
    """, channel)
    direct.publish(channel, b"two")
    lua.wait(lambda: len(lua.globals()[b"received"]) == 3, what="the second message")
    lua.run("must(client:unsubscribe(...))", channel)
    time.sleep(0.05)
    assert direct.publish(channel, b"three") == 0  # nobody subscribed any more
    lua.run("return must(client:ping())")
    assert len(lua.globals()[b"received"]) == 3


def test_psubscribe_and_a_failing_callback(lua: Lua, key: str, direct: Any) -> None:
    lua.run("""
        local pattern = ...
        got = {}
        local c = redis:new()
        must(c:psubscribe(pattern, function() error("boom") end))
        must(c:psubscribe(pattern, function(m, ch, p) got[#got + 1] = ch .. " " .. p .. " " .. m end))
    """, key + "*")
    direct.publish(key + "x", b"hi")
    lua.wait(lambda: len(lua.globals()[b"got"]) == 1, what="the pattern message")
    assert lua.to_py(lua.globals()[b"got"]) == [f"{key}x {key}* hi".encode()]
    assert lua.host.claim_error(b"boom")  # logged; the other callback still ran
    lua.host.errors.clear()


# -- failures and recovery ----------------------------------------------------------------


def test_killed_connections_come_back(lua_factory: Any, private_redis: PrivateRedis) -> None:
    lua = lua_factory("luajit", private_redis.url)
    lua.run("""
        got = {}
        client = redis:new()
        must(client:set("k", "v"))
        must(client:subscribe("ch", function(m) got[#got + 1] = m end))
    """)
    admin = private_redis.client()
    assert admin.publish("ch", "before") == 1
    lua.wait(lambda: len(lua.globals()[b"got"]) == 1)
    killed = admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    killed += admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    assert killed >= 2
    (value,) = lua.run("return must(client:get('k'))")  # a fresh connection, at once
    assert value == b"v"
    # the supervisor notices, reconnects and subscribes again
    wait_for_subscriber(lua, admin, "ch")
    admin.publish("ch", "after")
    lua.wait(lambda: len(lua.globals()[b"got"]) == 2, what="the message after CLIENT KILL")
    assert lua.to_py(lua.globals()[b"got"]) == [b"before", b"after"]


def wait_for_subscriber(lua: Lua, admin: Any, channel: str, timeout: float = 10.0) -> None:
    """Run the Lua loop until Redis counts a subscriber of ``channel``."""
    def subscribed() -> bool:
        return admin.pubsub_numsub(channel)[0][1] >= 1
    lua.wait(subscribed, timeout, what=f"a subscriber of {channel}")


def test_redis_down_fails_fast_and_recovers(lua_factory: Any,
                                            private_redis: PrivateRedis) -> None:
    lua = lua_factory("luajit", private_redis.url)
    lua.run("""
        got = {}
        client = redis:new()
        must(client:set("k", "v"))
        must(client:subscribe("ch", function(m) got[#got + 1] = m end))
    """)
    private_redis.stop()
    first, again, elapsed = lua.run("""
        local t = net.clock()
        local first = { aio:await(client:get("k")) }
        local again = { aio:await(client:get("k")) }
        return first, again, net.clock() - t
    """)
    assert first[0] is None and first[1].startswith(b"redis: "), first
    assert again[0] is None and b"unavailable" in again[1], again  # no new attempt
    assert elapsed < 1.0
    # the loop stays free meanwhile: a timer fires on time
    (late,) = lua.run("""
        local t = net.clock()
        aio:await(aio:sleep(0.05))
        return net.clock() - t
    """)
    assert late < 0.5
    private_redis.start()  # same port, empty
    admin = private_redis.client()
    wait_for_subscriber(lua, admin, "ch")

    (works,) = lua.run("""
        for _ = 1, 200 do  -- the back-off is at most 5 s
            if aio:await(client:set("k", "again")) == "OK" then return true end
            aio:await(aio:sleep(0.05))
        end
        return false
    """, timeout=15)
    assert works
    admin.publish("ch", "back")
    lua.wait(lambda: len(lua.globals()[b"got"]) == 1, what="the message after the restart")


def test_subscribe_while_down_is_kept(lua_factory: Any, private_redis: PrivateRedis) -> None:
    lua = lua_factory("luajit", private_redis.url)
    private_redis.stop()
    (result,) = lua.run("""
        got = {}
        client = redis:new()
        return { aio:await(client:subscribe("ch", function(m) got[#got + 1] = m end)) }
    """)
    assert result[0] is None and b"subscribed" in result[1], result
    private_redis.start()
    admin = private_redis.client()
    wait_for_subscriber(lua, admin, "ch")
    admin.publish("ch", "late")
    lua.wait(lambda: len(lua.globals()[b"got"]) == 1)


# -- a real server ----------------------------------------------------------------------

APP = """
local redis = require("redis")
local client = assert(redis:new())
aio:http_get("/incr", function(fd, query)
    local n, err = aio:await(client:incr(aio:parse_query(query).key))
    fd:http_response(n and 200 or 500, "text/plain", tostring(n or err))
end)
"""


def test_server_default_url_from_option_and_env(start_server: Any, tmp_path: Any, key: str,
                                                redis_url: str, direct: Any) -> None:
    entry = tmp_path / "app.lua"
    entry.write_text(APP)
    by_option = start_server(entry, "--redis", redis_url, workers=1)
    by_env = start_server(entry, workers=1, env={"REDIS_URL": redis_url})
    for server, expected in ((by_option, b"1"), (by_env, b"2")):
        with HttpClient.connect(server) as http:
            response = http.request("GET", f"/incr?key={key}n")
            assert response.status == 200 and response.body == expected, response
    direct.delete(key + "n")


def test_password_on_the_command_line_is_refused(run_eightys: Any) -> None:
    result = run_eightys("--redis", "redis://:secret@127.0.0.1:6379/0", "server/simple_http.lua")
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "secret" not in result.stderr


# -- aio:cached(..., { shared = true }) ---------------------------------------------------

CACHE_PRELUDE = """
local name = ...
calls = calls or 0
function produce(value, delay)
    return function()
        calls = calls + 1
        if delay then aio:await(aio:sleep(delay)) end
        return value
    end
end
"""


def test_shared_cache_spans_workers_with_one_fill_per_key(lua_factory: Any, redis_url: str,
                                                          key: str, direct: Any) -> None:
    first, second = lua_factory("luajit", redis_url), lua_factory("lua54", redis_url)
    (values, calls) = first.run(CACHE_PRELUDE + """
        local promises = {}
        for i = 1, 10 do  -- concurrent callers of one worker share one fill
            promises[i] = aio:cached(name, "k", produce({ n = 42, s = "x" }, 0.05),
                                     { shared = true, ttl = 30 })
        end
        local values = {}
        for i = 1, 10 do values[i] = aio:await(promises[i]).n end
        return values, calls
    """, key)
    assert values == [42] * 10 and calls == 1
    assert 0 < direct.pttl(f"eightys:cache:{key}:k") <= 30000
    # another worker (another Lua state, here another engine) finds it in Redis
    (value, calls) = second.run(CACHE_PRELUDE + """
        local value = aio:await(aio:cached(name, "k", produce({ n = 0 }), { shared = true }))
        return value.s, calls
    """, key)
    assert (value, calls) == (b"x", 0)
    direct.delete(f"eightys:cache:{key}:k")


def test_shared_cache_expires_and_keeps_no_failure(lua: Lua, key: str, direct: Any) -> None:
    calls, failed, after_failure = lua.run(CACHE_PRELUDE + """
        local opts = { shared = true, ttl = 0.1 }
        aio:await(aio:cached(name, "t", produce("v"), opts))
        aio:await(aio:cached(name, "t", produce("v"), opts))
        assert(calls == 1)
        aio:await(aio:sleep(0.2))
        aio:await(aio:cached(name, "t", produce("v"), opts))
        local failed = { aio:await(aio:cached(name, "f", function() return nil, "no" end, opts)) }
        local after = aio:await(aio:cached(name, "f", produce("ok"), opts))
        return calls, failed, after
    """, key)
    assert calls == 3 and failed == [None, b"no"] and after_failure == b"ok"
    direct.delete(f"eightys:cache:{key}:t", f"eightys:cache:{key}:f")


def test_shared_cache_without_redis(lua_factory: Any, private_redis: PrivateRedis) -> None:
    lua = lua_factory("luajit", private_redis.url)
    private_redis.stop()
    (value,) = lua.run(CACHE_PRELUDE + """
        return aio:await(aio:cached("c", "k", produce("computed"), { shared = true }))
    """)
    assert value == b"computed"  # Redis down: computed, not cached, no error
    none = lua_factory("luajit")  # no --redis at all: misuse
    (message,) = none.run("""
        return select(2, pcall(aio.cached, aio, "c", "k", function() end, { shared = true }))
    """)
    assert b"needs the server's --redis" in message


# -- the Redis session store (eightys.redis_sessions) -----------------------------------------


def test_session_store_in_process(lua: Lua, key: str, direct: Any) -> None:
    got, missing, after_delete = lua.run("""
        local prefix = ...
        local store = require("eightys.redis_sessions"):new({ ttl = 60, prefix = prefix })
        assert(store:set("abc", { user = "ada", n = 2, tags = { "x" } }) == true)
        local got = store:get("abc")
        local missing = { store:get("nope") }
        assert(store:delete("abc") == true)
        return got, missing, { store:get("abc") }
    """, key)
    assert got == {"user": b"ada", "n": 2, "tags": [b"x"]}
    assert missing == [] and after_delete == []
    (misuse,) = lua.run("""
        return select(2, pcall(function()
            require("eightys.redis_sessions"):new({ ttl = 0 }) end))
    """)
    assert b"ttl must be at least 1 second" in misuse


def test_session_store_down_is_an_empty_session(lua_factory: Any,
                                                 private_redis: PrivateRedis) -> None:
    lua = lua_factory("luajit", private_redis.url)
    private_redis.stop()
    got, saved = lua.run("""
        local store = require("eightys.redis_sessions"):new()
        return { store:get("abc") }, { store:set("abc", { n = 1 }) }
    """, logs=True)
    assert got[0] is None and got[1].startswith(b"redis: ")
    assert saved[0] is None
    assert lua.host.claim_error(b"session not saved: redis: ")
    lua.host.errors.clear()
    # with a fallback store the outage's sessions live there
    saved, got, deleted = lua.run("""
        local memory = { data = {} }
        function memory:get(id) return self.data[id] end
        function memory:set(id, data) self.data[id] = data end
        function memory:delete(id) self.data[id] = nil end
        local store = require("eightys.redis_sessions"):new({ fallback = memory })
        local saved = store:set("abc", { n = 7 })
        local got = store:get("abc")
        store:delete("abc")
        return saved, got, memory.data.abc == nil
    """)
    assert saved is True and got == {"n": 7} and deleted is True
    assert not lua.host.errors


SESSION_MAIN = """
httpd.session_store = require("eightys.redis_sessions"):new({ ttl = 60, prefix = %r })
"""


def test_session_made_on_one_server_is_seen_on_another(start_server: Any, tmp_path: Any,
                                                       redis_url: str, key: str,
                                                       direct: Any) -> None:
    (tmp_path / "main.lua").write_text(SESSION_MAIN % key)
    root = tmp_path / "public_html"
    root.mkdir()
    (root / "counter.dyn.html").write_text(
        '<?lu session.n = (session.n or 0) + 1 write("n=%d", session.n) ?>')
    env = {"PUBLIC_HTML": str(root), "MASTER_KEY": "test-master-key-0123456789",
           "SECRET_KEY": "test-secret-key-0123456789", "REDIS_URL": redis_url}
    a = start_server("server/http.lua", workers=1, env=env)
    b = start_server("server/http.lua", workers=1, env=env)
    with HttpClient.connect(a) as http:
        first = http.request("GET", "/counter")
    assert first.body == b"n=1", first
    cookie = first.header("Set-Cookie").split(";", 1)[0]
    session_id = cookie.split("=", 1)[1].split(".")[0]
    assert direct.ttl(key + session_id) > 0
    with HttpClient.connect(b) as http:
        second = http.request("GET", "/counter", headers=[("Cookie", cookie)])
    assert second.body == b"n=2", second
    direct.delete(key + session_id)  # revoked (what store:delete(id) does)
    with HttpClient.connect(a) as http:
        third = http.request("GET", "/counter", headers=[("Cookie", cookie)])
    assert third.body == b"n=1", third
    direct.delete(*direct.keys(key + "*"))


PUBSUB_APP = """
local redis = require("redis")
CLIENT = CLIENT or assert(redis:new())
RECEIVED = RECEIVED or {}
CHANNEL = os.getenv("TEST_CHANNEL")
if not SUBSCRIBED then
    SUBSCRIBED = true
    CLIENT:subscribe(CHANNEL, function(message) RECEIVED[#RECEIVED + 1] = message end)
end
aio:http_get("/publish", function(fd, query)
    local n, err = aio:await(CLIENT:publish(CHANNEL, aio:parse_query(query).m))
    fd:http_response(n and 200 or 500, "text/plain", tostring(n or err))
end)
aio:http_get("/received", function(fd)
    fd:http_response(200, "text/plain", table.concat(RECEIVED, ","))
end)
"""


def test_pubsub_between_two_servers(start_server: Any, tmp_path: Any, redis_url: str,
                                    key: str) -> None:
    entry = tmp_path / "pubsub.lua"
    entry.write_text(PUBSUB_APP)
    env = {"REDIS_URL": redis_url, "TEST_CHANNEL": key + "ch"}
    a = start_server(entry, workers=1, env=env)
    b = start_server(entry, workers=1, env=env)
    direct = redis.Redis.from_url(redis_url)
    wait_until(lambda: direct.pubsub_numsub(key + "ch")[0][1] == 2, 10.0,
               message="both servers to subscribe")
    with HttpClient.connect(b) as http:
        published = http.request("GET", "/publish?m=hello")
    assert published.status == 200 and published.body == b"2"  # two subscribers got it

    def received(server: Any) -> bytes:
        with HttpClient.connect(server) as http:
            return http.request("GET", "/received").body

    wait_until(lambda: received(a) == b"hello" and received(b) == b"hello", 5.0,
               message="the message on both servers")
    direct.close()


def test_hiredis_parser_is_used(lua: Lua) -> None:
    from redis.asyncio import connection

    # hiredis is a dependency: redis-py's connections must parse replies with it
    assert "Hiredis" in connection.DefaultParser.__name__
    lua.run("must(redis:new():ping())")
    client = next(iter(lua.hosts[0]._clients.values()))
    pool = client.redis.connection_pool
    conn = pool.connection_class(**pool.connection_kwargs)
    assert "Hiredis" in type(conn._parser).__name__


def test_subscriber_notices_a_server_that_stops_answering(private_redis: PrivateRedis) -> None:
    """The Python Subscriber (what other worker code can use for pub/sub): a Redis
    that stops answering without closing the connection (SIGSTOP) is given up after
    two health intervals and subscribed to again once it answers."""
    import asyncio
    import os
    import signal

    import uvloop

    from eightys.redis_host import Subscriber, connect

    async def main() -> list[bytes]:
        got: list[bytes] = []
        client = connect(private_redis.url)
        subscriber = Subscriber(client, lambda channel, data, pattern: got.append(data),
                                timeout=2.0, health_interval=0.2)
        assert await subscriber.subscribe(b"ch", False) == (True,)
        admin = connect(private_redis.url)
        assert await admin.execute_command("PUBLISH", "ch", "one") == 1
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            deadline = asyncio.get_running_loop().time() + 3.0
            while subscriber.backoff.delay == 0:
                assert asyncio.get_running_loop().time() < deadline, "silence not noticed"
                await asyncio.sleep(0.05)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        # until the new connection has it: the server may count the old, dead one
        # as a subscriber for a moment after SIGCONT
        for _ in range(200):
            await admin.execute_command("PUBLISH", "ch", "two")
            await asyncio.sleep(0.05)
            if b"two" in got:
                break
        await subscriber.close()
        await client.aclose()
        await admin.aclose()
        return got

    got = uvloop.run(main())
    assert got[0] == b"one" and b"two" in got


def test_a_callback_that_unsubscribes_itself(lua: Lua, key: str, direct: Any) -> None:
    lua.run("""
        local channel = ...
        calls = {}
        client = redis:new()
        local first
        first = function(m)
            calls[#calls + 1] = "first:" .. m
            client:unsubscribe(channel, first)
        end
        must(client:subscribe(channel, first))
        must(client:subscribe(channel, function(m) calls[#calls + 1] = "second:" .. m end))
    """, key + "ch")
    direct.publish(key + "ch", b"a")
    lua.wait(lambda: len(lua.globals()[b"calls"]) == 2, what="both callbacks")
    direct.publish(key + "ch", b"b")
    lua.wait(lambda: len(lua.globals()[b"calls"]) == 3, what="the remaining callback")
    assert lua.to_py(lua.globals()[b"calls"]) == [b"first:a", b"second:a", b"second:b"]


def test_a_busy_pool_is_not_an_outage(lua: Lua, key: str) -> None:
    busy, after = lua.run("""
        local k = ...
        local c = redis:new(nil, { pool_size = 1, connect_timeout = 0.2 })
        must(c:subscribe(k .. "ch", function() end))  -- on a connection of its own
        local blocking = c:blpop(k .. "nothing", 0.6)  -- holds the only connection
        local busy = { aio:await(c:get(k)) }
        aio:await(blocking)
        return busy, { aio:await(c:set(k, "v", "EX", 10)) }
    """, key)
    assert busy[0] is None and b"pool stayed busy" in busy[1], busy
    assert after == [b"OK"]  # not "unavailable": the server was never unreachable


def test_commands_of_one_turn_share_a_pipeline_and_fail_alone(lua: Lua, key: str,
                                                              direct: Any) -> None:
    direct.set(key + "s", "text")
    replies = lua.run("""
        local k = ...
        local c = redis:new(nil, { pool_size = 1 })
        -- issued in one turn: sent as one pipeline on the one connection
        local a, b, d = c:incr(k .. "n"), c:lpush(k .. "s", "x"), c:get(k .. "s")
        local blocking = c:blpop(k .. "none", 0.05)  -- never batched
        return { aio:await(a) }, { aio:await(b) }, { aio:await(d) }, { aio:await(blocking) }
    """, key)
    incr, lpush, get, blpop = replies
    assert incr == [1] and get == [b"text"] and blpop == []
    assert lpush[0] is None and lpush[1].startswith(b"redis: WRONGTYPE")
    direct.delete(key + "s", key + "n")


def test_servers_survive_a_redis_restart(start_server: Any, tmp_path: Any,
                                         private_redis: PrivateRedis, key: str) -> None:
    """Two servers subscribed through a Redis that is killed and restarted: while it
    is down their handlers answer at once (503 with the error, no worker blocks);
    once it is back both are subscribed again and a publish reaches both."""
    entry = tmp_path / "pubsub.lua"
    entry.write_text(PUBSUB_APP)
    env = {"REDIS_URL": private_redis.url, "TEST_CHANNEL": "ch"}
    a = start_server(entry, workers=1, env=env)
    b = start_server(entry, workers=1, env=env)
    admin = private_redis.client()
    wait_until(lambda: admin.pubsub_numsub("ch")[0][1] == 2, 10.0,
               message="both servers to subscribe")
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    wait_until(lambda: admin.pubsub_numsub("ch")[0][1] == 2, 10.0,
               message="both servers to subscribe again after CLIENT KILL")
    private_redis.stop()
    started = time.monotonic()
    with HttpClient.connect(a) as http:
        down = http.request("GET", "/publish?m=lost")
    assert down.status == 500 and down.body.startswith(b"redis: "), down
    assert time.monotonic() - started < 1.0
    private_redis.start()
    admin = private_redis.client()
    wait_until(lambda: admin.pubsub_numsub("ch")[0][1] == 2, 15.0,
               message="both servers to subscribe again after the restart")

    def publish() -> bool:
        with HttpClient.connect(b) as http:
            return http.request("GET", "/publish?m=back").body == b"2"
    wait_until(publish, 10.0, message="a publish that reaches both servers")

    def received(server: Any) -> bytes:
        with HttpClient.connect(server) as http:
            return http.request("GET", "/received").body

    wait_until(lambda: received(a).endswith(b"back") and received(b).endswith(b"back"), 5.0,
               message="the message on both servers")
