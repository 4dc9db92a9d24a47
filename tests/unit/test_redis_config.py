"""--redis / REDIS_URL validation (eightys.cli.redis_url), the password redaction and
the back-off of eightys.redis_host: pure logic, no server."""

from __future__ import annotations

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
