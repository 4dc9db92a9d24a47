"""The bus's publisher and router (eightys/redis_bus.py) as pure logic: a fake
Redis connection that records what it is sent (the real paths are in
tests/test_redis_bus.py, against real servers)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eightys import redis_bus
from eightys.redis_bus import Backoff, Bus, Publisher


class FakeRedis:
    """Records PUBLISH commands; ``gate`` holds every send until it is set."""

    def __init__(self) -> None:
        self.sent: list[list[tuple[bytes, bytes]]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def execute_command(self, *args: Any) -> int:
        await self.gate.wait()
        if self.fail:
            raise self.fail
        self.sent.append([(args[1], args[2])])
        return 1

    def pipeline(self, transaction: bool) -> Any:
        redis = self

        class Pipe:
            def __init__(self) -> None:
                self.batch: list[tuple[bytes, bytes]] = []

            def execute_command(self, *args: Any) -> None:
                self.batch.append((args[1], args[2]))

            async def execute(self, raise_on_error: bool) -> list[int]:
                await redis.gate.wait()
                if redis.fail:
                    raise redis.fail
                redis.sent.append(self.batch)
                return [1] * len(self.batch)

        return Pipe()

    async def aclose(self, close_connection_pool: bool) -> None:
        pass


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_messages_leave_in_order_batched_while_one_is_on_its_way() -> None:
    async def main() -> list[list[tuple[bytes, bytes]]]:
        redis = FakeRedis()
        publisher = Publisher(redis, Backoff(asyncio.get_running_loop()))
        assert publisher.publish(b"c", b"1") is None
        await asyncio.sleep(0)  # the first goes alone and waits at the gate
        for i in range(2, 6):
            assert publisher.publish(b"c", str(i).encode()) is None
        redis.gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        return redis.sent

    assert run(main()) == [[(b"c", b"1")], [(b"c", b"2"), (b"c", b"3"), (b"c", b"4"), (b"c", b"5")]]


def test_the_queue_is_bounded_and_a_known_outage_fails_at_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(redis_bus, "MAX_QUEUE", 3)

    async def main() -> None:
        redis = FakeRedis()
        backoff = Backoff(asyncio.get_running_loop())
        publisher = Publisher(redis, backoff)
        assert [publisher.publish(b"c", b"x") for _ in range(3)] == [None] * 3
        full = publisher.publish(b"c", b"x")
        assert full is not None and "waiting for Redis already" in full
        backoff.failed(ConnectionError("refused"))
        down = publisher.publish(b"c", b"x")
        assert down is not None and down.startswith("redis: unavailable: refused")
        # the batch on its way fails: logged, and what waits is dropped too (still down)
        redis.fail = ConnectionError("refused")
        redis.gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert not publisher._queue and publisher._bytes == 0

    with caplog.at_level("WARNING", logger="redis bus"):
        run(main())
    assert "not published to the other servers" in caplog.text


def test_own_messages_are_dropped_and_others_routed() -> None:
    async def main() -> list[tuple[bytes, bytes, bytes]]:
        got: list[tuple[bytes, bytes, bytes]] = []
        bus = Bus("redis://127.0.0.1:1/3", "a" * 16, lambda *m: got.append(m))
        assert bus.prefix == b"eightys:3:"
        bus._received(b"eightys:3:ws:room", b"a" * 16 + b"tmine", None)
        bus._received(b"eightys:3:ws:room", b"b" * 16 + b"ttheirs", None)
        bus._received(b"eightys:3:ws:room", b"short", None)  # not ours to read
        bus._received(b"other:ws:room", b"b" * 16 + b"tx", None)
        await bus.close()
        return got

    assert run(main()) == [(b"ws:room", b"t", b"theirs")]
