"""The worker's bus across servers (``--redis``): what ``aio:publish`` and
``aio.lib.nodes`` send to the other servers of a deployment, on Redis pub/sub.

One :class:`Bus` per worker, two Redis connections:

* **Subscribing:** one supervised pub/sub connection (:class:`~eightys.redis_host.Subscriber`:
  reconnects with back-off and subscribes again to everything) multiplexing every
  channel that has a local listener, and only those: a WebSocket channel is
  subscribed when its first subscriber in this worker arrives and dropped with
  its last (the same edges the master is told about), a ``nodes`` group while
  this worker has a socket named in it.
* **Publishing:** one connection, commands in order: what is published while a
  batch is on its way leaves in the next batch, one pipeline (one write) for all
  of it. The queue is bounded (:data:`MAX_QUEUE` messages, :data:`MAX_QUEUE_BYTES`);
  a publish never waits. When Redis is known to be down (a connection attempt
  failed and its back-off runs) a publish fails at once; failures are logged, at
  most one line per :data:`LOG_EVERY` seconds.

Exactly once: a message reaches this server's workers through the master, as
without Redis, and Redis carries it to the *other* servers only. Each message on
Redis starts with the publishing server's id (:data:`ID_SIZE` characters, random
per server run, the same in all its workers) and a kind byte; a worker drops
what carries its own server's id (the master delivered it already). So the
local copy is delivered once, and still delivered when Redis is down.

Redis channels are ``eightys:DB:ws:NAME`` (``aio:publish``) and
``eightys:DB:nodes:...`` (``aio.lib.nodes``), DB the URL's database number: pub/sub
ignores databases, so apps on different databases of one Redis stay apart.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
from typing import Any, Callable

from eightys.redis_host import DEFAULT_CONNECT_TIMEOUT, Backoff, Subscriber, connect, describe

#: Length of a server id (hex digits) at the start of every message on Redis.
ID_SIZE = 16
#: Kind bytes after the server id.
TEXT, BINARY, NODES = b"t", b"b", b"n"
#: Messages (and their bytes) that may wait for Redis; more are refused, not queued.
MAX_QUEUE = 10_000
MAX_QUEUE_BYTES = 16 * 1024 * 1024
#: Most messages in one pipeline.
MAX_BATCH = 512
#: Seconds between two log lines about failed publishes.
LOG_EVERY = 10.0

log = logging.getLogger("redis bus")


def channel_prefix(url: str) -> bytes:
    """``eightys:DB:`` for the database of ``url``."""
    from redis.asyncio.connection import parse_url

    try:
        db = int(parse_url(url).get("db") or 0)
    except (ValueError, TypeError):
        db = 0
    return b"eightys:%d:" % db


class Publisher:
    """PUBLISH commands in order on one connection, batched, bounded, never waiting."""

    def __init__(self, redis: Any, backoff: Backoff) -> None:
        self.redis = redis
        self.backoff = backoff
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._bytes = 0
        self._task: asyncio.Future[None] | None = None
        #: messages that did not reach Redis since the last log line
        self.lost = 0
        self.last_error = ""
        self._logged_at = -LOG_EVERY

    def publish(self, channel: bytes, payload: bytes) -> str | None:
        """Queue one message; the reason it cannot be sent (it is then dropped), or None."""
        reason = self.backoff.down()
        if reason is None and (len(self._queue) >= MAX_QUEUE
                               or self._bytes + len(payload) > MAX_QUEUE_BYTES):
            reason = (f"redis: {len(self._queue)} messages ({self._bytes} bytes) are "
                      f"waiting for Redis already")
        if reason is not None:
            self._lose(1, reason)
            return reason
        self._queue.append((channel, payload))
        self._bytes += len(payload)
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        return None

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                self._bytes -= sum(len(payload) for _, payload in batch)
                try:
                    if len(batch) == 1:
                        await self.redis.execute_command(b"PUBLISH", *batch[0])
                    else:
                        pipe = self.redis.pipeline(transaction=False)
                        for channel, payload in batch:
                            pipe.execute_command(b"PUBLISH", channel, payload)
                        await pipe.execute(raise_on_error=False)
                except Exception as exc:  # noqa: BLE001 - reported, the loop goes on
                    self._lose(len(batch), describe(exc))
                    if self.backoff.down() is not None:  # unreachable: drop what waits too
                        self._lose(len(queue), describe(exc))
                        queue.clear()
                        self._bytes = 0
        finally:
            self._task = None

    def _lose(self, count: int, reason: str) -> None:
        if not count:
            return
        self.lost += count
        self.last_error = reason
        now = self.backoff.loop.time()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning("%d message(s) not published to the other servers: %s",
                        self.lost, reason)
            self.lost = 0

    async def close(self) -> None:
        """Stop sending (what waits is dropped) and close the connection."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - cancelled, as asked
                pass
        await self.redis.aclose(close_connection_pool=True)


class Bus:
    """One worker's Redis pub/sub: ``publish`` to the other servers, ``listen`` to
    what they publish on a channel. ``deliver(name, kind, data)`` gets every message
    of another server for a listened channel (``name`` without the prefix)."""

    def __init__(self, url: str, server_id: str,
                 deliver: Callable[[bytes, bytes, bytes], None],
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        if len(server_id) != ID_SIZE:
            raise ValueError(f"a server id has {ID_SIZE} characters, got {server_id!r}")
        self.server_id = server_id.encode()
        self.prefix = channel_prefix(url)
        self._deliver = deliver
        loop = asyncio.get_event_loop()
        backoff = Backoff(loop)  # the publishing connection's, apart from the subscriber's
        self.publisher = Publisher(connect(url, 1, connect_timeout, backoff), backoff)
        self.subscriber = Subscriber(connect(url, 1, connect_timeout, Backoff(loop)),
                                     self._received, connect_timeout)
        self._pending: set[asyncio.Future[Any]] = set()

    def publish(self, name: bytes, kind: bytes, data: bytes) -> str | None:
        """Send ``data`` to the other servers' listeners of ``name``: None, or why it
        could not be sent (Redis down, too much waiting), at once."""
        return self.publisher.publish(self.prefix + name, self.server_id + kind + data)

    def listen(self, name: bytes, on: bool) -> None:
        """Start (``on``) or stop receiving the other servers' messages on ``name``.
        Callers say it on the edges (first listener, last gone), not per listener."""
        channel = self.prefix + name
        work = self.subscriber.subscribe(channel, False) if on else \
            self.subscriber.unsubscribe(channel, False)
        # kept even if Redis is down: made when it is back (the Subscriber retries)
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _received(self, channel: bytes, data: bytes, pattern: bytes | None) -> None:
        if not channel.startswith(self.prefix) or len(data) <= ID_SIZE:
            return
        if data[:ID_SIZE] == self.server_id:  # ours: the master delivered it here
            return
        try:
            self._deliver(channel[len(self.prefix):], data[ID_SIZE:ID_SIZE + 1],
                          data[ID_SIZE + 1:])
        except Exception:  # noqa: BLE001 - one bad message must not stop the reader
            log.exception("delivering a message from Redis channel %r", channel)

    async def close(self) -> None:
        """Close both connections (the worker is stopping)."""
        await self.subscriber.close()
        await self.subscriber.redis.aclose(close_connection_pool=True)
        await self.publisher.close()


class BusHost:
    """The bus as the worker's Lua sees it (private host functions for
    ``aio.lib.nodes``) and the router of what arrives: WebSocket channels to the
    worker's pub/sub, ``nodes:`` channels to Lua."""

    def __init__(self, owner: Any, url: str, server_id: str,
                 ws_deliver: Callable[[bytes, bytes, bool], None]) -> None:
        self.owner = owner  # has .runtime (made after this host: looked up on use)
        self._ws_deliver = ws_deliver
        self._lua_deliver: Any = None
        # without a master (an embedded worker) the worker is a server of its own
        self.bus: Bus | None = Bus(url, server_id or secrets.token_hex(ID_SIZE // 2),
                                   self._route) if url else None

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {b"bus_enabled": self.bus is not None, b"bus_setup": self.setup,
                b"bus_listen": self.listen, b"bus_publish": self.publish}

    def setup(self, deliver: Any) -> None:
        """Lua's dispatcher for ``nodes:`` messages: ``deliver(name, data)``."""
        self._lua_deliver = deliver

    def listen(self, name: Any, on: Any) -> bool:
        """Start or stop receiving ``nodes:``-namespace channel ``name`` (Lua counts
        its listeners and says it on the edges); false without ``--redis``."""
        if self.bus is None:
            return False
        self.bus.listen(b"nodes:" + name, bool(on))
        return True

    def publish(self, name: Any, data: Any) -> Any:
        """Send ``data`` to the other servers on ``nodes:`` channel ``name``: true, or
        nil, err at once."""
        if self.bus is None:
            return None, b"redis: the server has no --redis"
        err = self.bus.publish(b"nodes:" + name, NODES, data)
        return True if err is None else (None, err.encode())

    def _route(self, name: bytes, kind: bytes, data: bytes) -> None:
        if kind == NODES:
            if self._lua_deliver is not None and name.startswith(b"nodes:"):
                self.owner.runtime.dispatch_call(self._lua_deliver, name[6:], data)
        elif name.startswith(b"ws:"):
            self._ws_deliver(name[3:], data, kind == BINARY)

    def idle_tasks(self) -> set["asyncio.Task[Any]"]:
        """The bus's pub/sub supervisor while no channel is subscribed: it waits for
        work rather than does any (a --cli script does not wait for it)."""
        bus = self.bus
        if bus is None:
            return set()
        subscriber = bus.subscriber
        if subscriber.task is None or subscriber.channels or subscriber.patterns:
            return set()
        return {subscriber.task}

    async def close(self) -> None:
        """Close the bus's connections."""
        if self.bus is not None:
            bus, self.bus = self.bus, None
            await bus.close()
