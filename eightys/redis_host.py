"""The Python half of the Redis client (eightys/lua/redis.lua): the only module that
touches redis-py (its asyncio client, with the hiredis parser when installed).

Lua sees a handful of host functions (``RedisHost.functions``, in the private host
table); each returns at once, with a promise (``LuaRuntime.promise_from``) for the
work done on the worker's loop. Clients are small integer ids: Lua never holds a
Python object.

Design:

* Every ``redis:new()`` client has, per worker, a pool of at most ``pool_size``
  connections (redis-py's BlockingConnectionPool): commands run concurrently up to
  that many, more wait for a connection. redis-py's reply callbacks are switched
  off: Lua gets the raw RESP2 reply (``"OK"``, integers, strings, flat arrays),
  like lua-resty-redis, whatever the command.
* Failing fast: redis-py retries nothing here (its default would retry three
  times with back-off, holding the caller). A pooled connection the server closed
  (``CLIENT KILL``, timeout) is replaced before it is used, by redis-py. When
  connecting fails (the connection class reports each attempt, so a busy pool or
  a connection lost mid-command does not count), the client is *down*: for a
  back-off that doubles from
  :data:`MIN_BACKOFF` to :data:`MAX_BACKOFF`, every call fails at once with
  ``nil, "redis: unavailable: ..."`` without touching the network; the first call
  after the back-off tries again. So a Redis that went away costs callers nothing
  but the error, and one connection attempt per back-off period.
* Commands issued in the same turn of the loop are pipelined automatically
  (:class:`Batcher`): one write, one read, one pooled connection for all of them.
* Pub/sub: one dedicated connection per client, supervised by one task
  (:class:`Subscriber`). It subscribes to the channels and patterns that have
  local callbacks; when the connection is lost it reconnects with the same
  back-off and subscribes again to all of them (redis-py would not), so a
  subscription made once lives until unsubscribed, across Redis restarts.
* Every failure reaches Lua as ``nil, "redis: message"``; no Python exception
  propagates into Lua.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from eightys.lua_runtime import LuaRuntime
    from eightys.mysql import HasRuntime

#: Connections per client and worker when ``opts.pool_size`` does not say.
DEFAULT_POOL_SIZE = 8
#: Seconds a connection attempt may take, and a command may wait for a pooled connection.
DEFAULT_CONNECT_TIMEOUT = 2.0
#: Back-off after a failed connection attempt: doubles from MIN to MAX seconds.
MIN_BACKOFF = 0.05
MAX_BACKOFF = 5.0
#: A quiet pub/sub connection is pinged after this many seconds, and given up (and
#: made again) when nothing came back for twice as long: a peer that vanished
#: without closing the TCP connection is noticed.
PUBSUB_HEALTH_INTERVAL = 15.0


def _connection_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    return (exceptions.ConnectionError, exceptions.TimeoutError, OSError,
            asyncio.TimeoutError, EOFError)


def describe(exc: BaseException) -> str:
    """An error message for Lua: ``redis: ...`` (server errors keep Redis' own text,
    e.g. ``redis: WRONGTYPE Operation against a key holding the wrong kind of value``)."""
    text = str(exc) or type(exc).__name__
    if text == "No connection available.":  # BlockingConnectionPool's wait timed out
        return "redis: every connection of the pool stayed busy (pool_size too small?)"
    return text if text.startswith("redis: ") else f"redis: {text}"


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "(bad URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


class Backoff:
    """Whether a server is usable now, from the outcome of the last attempts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.delay = 0.0
        self.retry_at = 0.0
        self.error = ""

    def down(self) -> str | None:
        """The reason to fail at once, or None when an attempt may be made."""
        if self.delay and self.loop.time() < self.retry_at:
            return f"redis: unavailable: {self.error} (next attempt in " \
                   f"{self.retry_at - self.loop.time():.2f} s)"
        return None

    def failed(self, exc: BaseException) -> float:
        """Record a failed connection; returns the back-off now in force."""
        self.delay = min(max(self.delay * 2, MIN_BACKOFF), MAX_BACKOFF)
        self.retry_at = self.loop.time() + self.delay
        self.error = describe(exc).removeprefix("redis: ")
        return self.delay

    def succeeded(self) -> None:
        """The server answered: no back-off."""
        self.delay = 0.0


def connect(url: str, pool_size: int = DEFAULT_POOL_SIZE,
            connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
            backoff: "Backoff | None" = None) -> Any:
    """A redis-py asyncio client for ``url`` set up as eightys uses it: at most
    ``pool_size`` connections (a command waits up to ``connect_timeout`` for one),
    no retries (failures are reported at once), raw RESP2 replies (no reply
    callbacks), hiredis parsing when installed. ``backoff`` learns the outcome of
    every connection attempt (and of nothing else: a lost connection or a busy
    pool says nothing about whether the server can be reached)."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {}
    if backoff is not None:
        options["connection_class"] = _tracked(parse_url(url).get("connection_class"), backoff)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=pool_size, timeout=connect_timeout,
        socket_connect_timeout=connect_timeout, socket_keepalive=True, protocol=2,
        retry=Retry(NoBackoff(), 0), **options)
    client = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
    client.response_callbacks.clear()  # raw replies, whatever the command
    return client


def _tracked(base: type | None, backoff: "Backoff") -> type:
    """``base`` (redis-py's connection class for the URL's scheme) telling
    ``backoff`` whether each attempt to connect succeeded."""
    if base is None:
        from redis.asyncio.connection import Connection

        base = Connection

    class TrackedConnection(base):  # type: ignore[misc, valid-type]
        # _connect opens the socket (TCP, TLS or Unix) in every redis-py since 4.2
        async def _connect(self) -> None:
            try:
                await super()._connect()
            except BaseException as exc:
                backoff.failed(exc)
                raise
            backoff.succeeded()

    return TrackedConnection


class Subscriber:
    """One supervised pub/sub connection: the channels and patterns that have local
    listeners, subscribed again whenever the connection is made again.

    ``deliver(channel, data, pattern)`` is called for every message (pattern None
    for a plain channel). Usable on its own by anything in a worker that needs
    Redis pub/sub (one ``Subscriber`` multiplexes any number of channels)::

        subscriber = Subscriber(connect(url), on_message)
        await subscriber.subscribe(b"room:1", pattern=False)
    """

    def __init__(self, redis: Any, deliver: Callable[[bytes, bytes, bytes | None], None],
                 timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 health_interval: float = PUBSUB_HEALTH_INTERVAL) -> None:
        self.redis = redis
        self.loop = asyncio.get_event_loop()
        self.timeout = timeout
        self.health_interval = health_interval
        self.deliver = deliver
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.pubsub: Any = None  # the live redis-py PubSub, or None while (re)connecting
        self.backoff = Backoff(self.loop)
        self.closed = False
        #: (kind, name) -> futures waiting for Redis to confirm that subscription
        self._waiting: dict[tuple[str, bytes], list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._supervise())

    def _names(self, pattern: bool) -> set[bytes]:
        return self.patterns if pattern else self.channels

    async def subscribe(self, name: bytes, pattern: bool) -> tuple[Any, ...]:
        """Add a channel (or pattern); resolves once Redis confirmed it. If Redis is
        unreachable the subscription stays and is made on reconnect."""
        names = self._names(pattern)
        kind = "psubscribe" if pattern else "subscribe"
        if name in names and self.pubsub is not None:
            return (True,)
        names.add(name)
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiting.setdefault((kind, name), []).append(waiter)
        if self.pubsub is not None:
            try:
                await (self.pubsub.psubscribe(name) if pattern else self.pubsub.subscribe(name))
            except Exception:  # noqa: BLE001 - the supervisor sees the lost connection too
                pass
        else:
            self._wake.set()
        reason = self.backoff.down()
        if reason is not None and self.pubsub is None:
            return None, (reason + "; subscribed when it is back").encode()
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except asyncio.TimeoutError:
            return None, b"redis: subscription not confirmed in time (it is kept and retried)"
        except Exception as exc:  # noqa: BLE001 - lost connection: reported, kept for later
            return None, (describe(exc) + "; subscribed again when it is back").encode()
        return (True,)

    async def unsubscribe(self, name: bytes, pattern: bool) -> tuple[Any, ...]:
        """Drop a channel (or pattern); nothing is delivered for it any more."""
        names = self._names(pattern)
        if name not in names:
            return (True,)
        names.discard(name)
        if self.pubsub is not None:
            try:
                await (self.pubsub.punsubscribe(name) if pattern
                       else self.pubsub.unsubscribe(name))
            except Exception:  # noqa: BLE001 - gone is as good as unsubscribed
                pass
        return (True,)

    def _confirm(self, kind: str, name: bytes, error: BaseException | None = None) -> None:
        for waiter in self._waiting.pop((kind, name), ()):
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def _fail_waiters(self, error: BaseException) -> None:
        for kind, name in list(self._waiting):
            self._confirm(kind, name, error)

    async def _supervise(self) -> None:
        errors = _connection_errors()
        loop = self.loop
        while not self.closed:
            if not self.channels and not self.patterns:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self.backoff.retry_at - loop.time()
            if self.backoff.delay and wait > 0:
                await asyncio.sleep(wait)
            pubsub = self.redis.pubsub()
            try:
                channels, patterns = set(self.channels), set(self.patterns)
                if channels:
                    await pubsub.subscribe(*channels)
                if patterns:
                    await pubsub.psubscribe(*patterns)
                self.pubsub = pubsub
                # names added or dropped while those were on their way
                await self._catch_up(pubsub, channels, patterns)
                self.backoff.succeeded()
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except errors as exc:
                self.backoff.failed(exc)
                self._fail_waiters(exc)
            except Exception as exc:  # noqa: BLE001 - keep supervising whatever happened
                self.backoff.failed(exc)
                self._fail_waiters(exc)
            finally:
                self.pubsub = None
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass

    async def _catch_up(self, pubsub: Any, channels: set[bytes], patterns: set[bytes]) -> None:
        if self.channels - channels:
            await pubsub.subscribe(*(self.channels - channels))
        if channels - self.channels:
            await pubsub.unsubscribe(*(channels - self.channels))
        if self.patterns - patterns:
            await pubsub.psubscribe(*(self.patterns - patterns))
        if patterns - self.patterns:
            await pubsub.punsubscribe(*(patterns - self.patterns))

    async def _read(self, pubsub: Any) -> None:
        """Deliver messages until no channel is left; ping a quiet connection and
        give up on one that stopped answering."""
        loop = self.loop
        heard = loop.time()
        pinged = False
        while not self.closed and (self.channels or self.patterns):
            message = await pubsub.get_message(timeout=self.health_interval)
            if message is None:
                if loop.time() - heard >= 2 * self.health_interval:
                    raise ConnectionError("the pub/sub connection stopped answering")
                if not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            heard = loop.time()
            pinged = False
            kind = message["type"]
            if kind == "message":
                self.deliver(message["channel"], message["data"], None)
            elif kind == "pmessage":
                self.deliver(message["channel"], message["data"], message["pattern"])
            elif kind in ("subscribe", "psubscribe"):
                self._confirm(kind, message["channel"])

    async def close(self) -> None:
        """Stop supervising and close the connection."""
        self.closed = True
        self.channels.clear()
        self.patterns.clear()
        self.task.cancel()
        try:
            await self.task
        except BaseException:  # noqa: BLE001 - cancelled, as asked
            pass


#: Commands that may block their connection: never batched with others.
BLOCKING_COMMANDS = frozenset({
    b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP", b"BZPOPMIN", b"BZPOPMAX",
    b"BZMPOP", b"XREAD", b"XREADGROUP", b"WAIT", b"WAITAOF", b"MONITOR", b"SUBSCRIBE",
    b"PSUBSCRIBE", b"SSUBSCRIBE",
})
#: Most commands sent in one automatic pipeline (bounds one write's size).
MAX_BATCH = 512


class Batcher:
    """Automatic pipelining: the commands a worker issues in one turn of its loop
    (the typical case: many requests' handlers, each waiting on one command) leave
    in one write on one connection and come back in one read, instead of one
    round trip, one pooled connection and one system call each. Replies are in
    order, each to its own caller, a refused command failing only itself."""

    def __init__(self, redis: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.redis = redis
        self.loop = loop
        self._queue: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Future[Any]] = set()

    def submit(self, values: list[Any]) -> "asyncio.Future[Any]":
        """A future of the reply to one command, sent with the others of this turn."""
        future = self.loop.create_future()
        self._queue.append((values, future))
        if len(self._queue) == 1:
            self.loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = asyncio.ensure_future(self._send(queue[start:start + MAX_BATCH]))
            self._sending.add(task)  # strong reference (the loop holds tasks weakly)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[list[Any], "asyncio.Future[Any]"]]) -> None:
        try:
            if len(batch) == 1:
                replies: list[Any] = [await self.redis.execute_command(*batch[0][0])]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for values, _ in batch:
                    pipe.execute_command(*values)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: each caller learns why
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies):
            if future.done():
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class Client:
    """One ``redis:new()`` client of one worker."""

    def __init__(self, url: str, pool_size: int, connect_timeout: float) -> None:
        self.loop = asyncio.get_event_loop()
        self.url = url
        self.connect_timeout = connect_timeout
        #: the outcome of the last connection attempts (see _guarded)
        self.backoff = Backoff(self.loop)
        self.redis = connect(url, pool_size, connect_timeout, self.backoff)
        self.batcher = Batcher(self.redis, self.loop)
        self.subscriber: Subscriber | None = None

    async def close(self) -> None:
        """Close the subscriber and every pooled connection."""
        if self.subscriber is not None:
            await self.subscriber.close()
            await self.subscriber.redis.aclose(close_connection_pool=True)
        await self.redis.aclose(close_connection_pool=True)


# -- the host functions ----------------------------------------------------------------------


class RedisHost:
    """The host functions redis.lua calls (through the private host table)."""

    def __init__(self, owner: "HasRuntime", default_url: str = "") -> None:
        self.owner = owner
        self.default_url = default_url
        self._clients: dict[int, Client] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        self._ids = itertools.count(1)
        self._deliver: Any = None
        self._null: Any = None
        self._array_mt: Any = None
        self._setmetatable: Any = None

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {
            b"redis_setup": self.setup, b"redis_new": self.new, b"redis_call": self.call,
            b"redis_pipeline": self.pipeline, b"redis_subscribe": self.subscribe,
            b"redis_unsubscribe": self.unsubscribe, b"redis_close": self.close,
            b"redis_url": self.default_url.encode(),
        }

    @property
    def runtime(self) -> "LuaRuntime":
        """The owner's Lua runtime (made after this host, so looked up on use)."""
        return self.owner.runtime

    # -- called by Lua ----------------------------------------------------------------------

    def setup(self, deliver: Any, null: Any, array_mt: Any) -> None:
        """Learn the message dispatcher, the null sentinel and the array metatable
        (once, when redis.lua loads)."""
        self._deliver = deliver
        self._null = null
        self._array_mt = array_mt
        self._setmetatable = self.runtime.lua.globals()[b"setmetatable"]

    def new(self, url: bytes | None, pool_size: Any = None, connect_timeout: Any = None) -> Any:
        """A new client for ``url`` (default: the server's --redis); its id, or
        ``nil, err`` for a URL that is missing or malformed. Connects lazily."""
        text = (url or b"").decode("utf-8", "replace") or self.default_url
        if not text:
            return None, b"redis: no URL given and the server has no --redis (or REDIS_URL)"
        if not text.startswith(("redis://", "rediss://", "unix://")):
            return None, f"redis: not a redis:// URL: {redact(text)}".encode()
        size = int(pool_size) if isinstance(pool_size, (int, float)) and pool_size >= 1 \
            else DEFAULT_POOL_SIZE
        timeout = float(connect_timeout) if isinstance(connect_timeout, (int, float)) \
            and connect_timeout > 0 else DEFAULT_CONNECT_TIMEOUT
        try:
            client = Client(text, size, timeout)
        except Exception as exc:  # noqa: BLE001 - a bad URL is a value for Lua
            return None, f"redis: bad URL {redact(text)}: {exc}".encode()
        client_id = next(self._ids)
        self._clients[client_id] = client
        return client_id

    def call(self, client_id: int, args: Any, count: int) -> Any:
        """Run one command (``args[1..count]``, strings): promise of its reply."""
        client = self._clients.get(client_id)
        if client is None:
            return self._failed("redis: the client is closed")
        values = [args[i] for i in range(1, count + 1)]
        return self._guarded(client, self._call(client, values))

    def pipeline(self, client_id: int, commands: Any, count: int, transaction: bool) -> Any:
        """Send ``commands[1..count]`` (each an array of strings with ``n``) in one
        round trip (in MULTI/EXEC if ``transaction``): promise of the replies, a
        failed command's reply being ``{error = message}``."""
        client = self._clients.get(client_id)
        if client is None:
            return self._failed("redis: the client is closed")
        batch = []
        for i in range(1, count + 1):
            command = commands[i]
            batch.append([command[j] for j in range(1, command[b"n"] + 1)])
        return self._guarded(client, self._pipeline(client, batch, bool(transaction)))

    def subscribe(self, client_id: int, name: bytes, pattern: bool) -> Any:
        """Subscribe the client's pub/sub connection to a channel (or pattern)."""
        client = self._clients.get(client_id)
        if client is None:
            return self._failed("redis: the client is closed")
        if client.subscriber is None:
            deliver = self._deliver
            dispatch = self.runtime.dispatch_call

            def on_message(channel: bytes, data: bytes, pattern: bytes | None) -> None:
                dispatch(deliver, client_id, channel, data, pattern)

            # a pool of its own: the pub/sub connection never takes a command's place
            client.subscriber = Subscriber(
                connect(client.url, 1, client.connect_timeout, client.backoff), on_message,
                client.connect_timeout)
        return self._promise(client.subscriber.subscribe(name, bool(pattern)))

    def unsubscribe(self, client_id: int, name: bytes, pattern: bool) -> Any:
        """Drop a channel (or pattern) from the client's pub/sub connection."""
        client = self._clients.get(client_id)
        if client is None or client.subscriber is None:
            return self._failed(None)
        return self._promise(client.subscriber.unsubscribe(name, bool(pattern)))

    def close(self, client_id: int) -> Any:
        """Close the client (its pub/sub connection and pool): promise of ``true``."""
        client = self._clients.pop(client_id, None)
        if client is None:
            return self._failed(None)

        async def closing() -> tuple[Any, ...]:
            await client.close()
            return (True,)

        return self._promise(closing())

    def idle_tasks(self) -> set["asyncio.Task[Any]"]:
        """Tasks that wait for work rather than do any: the pub/sub supervisors of
        clients with nothing subscribed (a --cli script does not wait for them)."""
        return {client.subscriber.task for client in self._clients.values()
                if client.subscriber is not None and not client.subscriber.channels
                and not client.subscriber.patterns}

    async def close_all(self) -> None:
        """Close every client (the worker is stopping)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass

    # -- the work ---------------------------------------------------------------------------

    async def _call(self, client: Client, values: list[Any]) -> tuple[Any, ...]:
        if values[0].upper() in BLOCKING_COMMANDS:
            reply = await client.redis.execute_command(*values)
        else:
            reply = await client.batcher.submit(values)
        return (self._lua(reply, True),)

    async def _pipeline(self, client: Client, batch: list[list[Any]],
                        transaction: bool) -> tuple[Any, ...]:
        pipe = client.redis.pipeline(transaction=transaction)
        for values in batch:
            pipe.execute_command(*values)
        replies = await pipe.execute(raise_on_error=False)
        return (self._lua(list(replies), False),)

    def _guarded(self, client: Client, work: Awaitable[tuple[Any, ...]]) -> Any:
        reason = client.backoff.down()
        if reason is not None:
            work.close()  # type: ignore[attr-defined]  # a coroutine never started
            return self._failed(reason)

        return self._promise(work)

    # -- values -----------------------------------------------------------------------------

    def _lua(self, reply: Any, top: bool) -> Any:
        """A RESP reply as a Lua value: nil at the top, redis.null inside arrays;
        arrays as codec.array tables; an error reply inside an array as {error=...}."""
        if reply is None:
            return None if top else self._null
        if isinstance(reply, (bytes, int, float)):
            return reply
        if isinstance(reply, (list, tuple)):
            table = self.runtime.table([self._lua(item, False) for item in reply])
            self._setmetatable(table, self._array_mt)
            return table
        if isinstance(reply, BaseException):
            return self.runtime.table({b"error": describe(reply).encode()})
        if isinstance(reply, str):
            return reply.encode()
        if isinstance(reply, bool):
            return reply
        return str(reply).encode()

    # -- helpers ----------------------------------------------------------------------------

    def _promise(self, work: Awaitable[tuple[Any, ...]]) -> Any:
        # a strong reference: the loop holds tasks only weakly (see mysql.py)
        task = asyncio.ensure_future(_reported(work))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return self.runtime.promise_from(task, _values)

    def _failed(self, message: str | None) -> Any:
        promise, resolve = self.runtime.new_promise()
        if message is None:
            resolve(True)
        else:
            resolve(None, message.encode())
        return promise


async def _reported(work: Awaitable[tuple[Any, ...]]) -> tuple[Any, ...]:
    """``work``'s values, or ``(nil, message)`` if it raised."""
    try:
        return await work
    except Exception as exc:  # noqa: BLE001 - every failure is a value for Lua
        return None, describe(exc).encode()


def _values(result: tuple[Any, ...]) -> tuple[Any, ...]:
    return result
