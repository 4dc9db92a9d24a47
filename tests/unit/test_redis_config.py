"""--redis / REDIS_URL validation (eightys.cli.redis_url), the password redaction and
the back-off of eightys.redis_host: pure logic, no server."""

from __future__ import annotations

from typing import Any

import pytest

from eightys.cli import redis_url
from eightys.config import UsageError
from eightys.redis_host import MAX_BACKOFF, MIN_BACKOFF, Backoff, redact


def test_option_wins_over_env_and_password_only_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@10.0.0.5:6379/2")
    assert redis_url(None) == "redis://:pw@10.0.0.5:6379/2"
    assert redis_url("redis://127.0.0.1:6380/1") == "redis://127.0.0.1:6380/1"
    with pytest.raises(UsageError, match="REDIS_URL"):
        redis_url("redis://user:pw@127.0.0.1/0")
    monkeypatch.delenv("REDIS_URL")
    assert redis_url(None) == ""


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:6379", "scheme 'http'"),
    ("redis://127.0.0.1:port/0", "bad URL"),
    ("127.0.0.1:6379", "redis://"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        redis_url(url)


def test_redact() -> None:
    assert redact("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://u:s3cret@h/0") == "redis://u:***@h/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    clock = Clock()
    backoff = Backoff(clock)  # type: ignore[arg-type]
    assert backoff.down() is None
    delays = [backoff.failed(ConnectionError("refused")) for _ in range(12)]
    assert delays[0] == MIN_BACKOFF and delays[1] == 2 * MIN_BACKOFF
    assert delays[-1] == MAX_BACKOFF and sorted(delays) == delays
    reason = backoff.down()
    assert reason is not None and "unavailable: refused" in reason
    clock.now += MAX_BACKOFF
    assert backoff.down() is None  # time for one attempt
    backoff.succeeded()
    assert backoff.down() is None and backoff.failed(OSError("x")) == MIN_BACKOFF


class FakePipeline:
    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.log.append(("pipeline", self.commands))
        return [ValueError("refused") if c[0] == b"BAD" else c[1] for c in self.commands]


class FakeRedis:
    """Records how the Batcher sends commands (pure logic: no server)."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    async def execute_command(self, *args: Any) -> Any:
        self.log.append(("single", args))
        return args[1]

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self.log)


def test_batcher_sends_one_turn_as_one_pipeline() -> None:
    import asyncio

    from eightys.redis_host import MAX_BATCH, Batcher

    async def main() -> tuple[list[Any], list[Any], Any]:
        redis = FakeRedis()
        batcher = Batcher(redis, asyncio.get_running_loop())
        futures = [batcher.submit([b"ECHO", i]) for i in range(3)]
        futures.append(batcher.submit([b"BAD", 0]))
        results = await asyncio.gather(*futures, return_exceptions=True)
        alone = await batcher.submit([b"ECHO", "x"])  # a turn of its own: no pipeline
        many = await asyncio.gather(*[batcher.submit([b"ECHO", i])
                                      for i in range(MAX_BATCH + 1)])
        return redis.log, results, (alone, many)

    log, results, (alone, many) = asyncio.run(main())
    assert log[0] == ("pipeline", [(b"ECHO", 0), (b"ECHO", 1), (b"ECHO", 2), (b"BAD", 0)])
    assert results[:3] == [0, 1, 2] and isinstance(results[3], ValueError)
    assert log[1] == ("single", (b"ECHO", "x")) and alone == "x"
    assert [entry[0] for entry in log[2:]] == ["pipeline", "single"]  # MAX_BATCH, then 1
    assert many == list(range(MAX_BATCH + 1))
