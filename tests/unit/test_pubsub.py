"""eightys.pubsub with stand-in connections (the real ones are in test_websocket.py)."""

from __future__ import annotations

from eightys.pubsub import PubSub


class Conn:
    def __init__(self, plain: bool = True, slow: bool = False) -> None:
        self.channels: set[bytes] = set()
        self.plain = plain
        self.slow = slow
        self.got: list[tuple[bytes | None, bytes, bool]] = []

    def publish(self, frame: bytes | None, data: bytes, binary: bool) -> bool:
        if self.slow:
            return False  # the real one closes itself with 1013
        self.got.append((frame, data, binary))
        return True


def test_publish_delivers_locally_and_forwards_once():
    forwarded = []
    hub = PubSub(lambda *message: forwarded.append(message))
    a, b, other = Conn(), Conn(plain=False), Conn()
    assert hub.subscribe(a, b"room") and hub.subscribe(b, b"room")
    assert not hub.subscribe(a, b"room")
    hub.subscribe(other, b"elsewhere")
    assert hub.publish(b"room", b"hi", False) == 2
    assert forwarded == [(b"room", b"hi", False)]
    assert a.got == b.got == [(b"\x81\x02hi", b"hi", False)]  # one frame encoded for all
    assert other.got == []


def test_a_channel_without_local_subscribers_costs_nothing():
    hub = PubSub(lambda *message: None)
    assert hub.deliver(b"nobody", b"x" * 1000, True) == 0
    assert hub.channels == {}


def test_unsubscribe_drop_and_slow_subscribers():
    hub = PubSub(lambda *message: None)
    a, slow = Conn(), Conn(slow=True)
    for conn in (a, slow):
        hub.subscribe(conn, b"c")
        hub.subscribe(conn, b"d")
    assert hub.deliver(b"c", b"m", True) == 1  # the slow one does not count
    assert a.got[0][0] == b"\x82\x01m"
    assert hub.unsubscribe(a, b"c") and not hub.unsubscribe(a, b"c")
    hub.drop(slow)
    assert slow.channels == set() and b"c" not in hub.channels
    assert list(hub.channels) == [b"d"]


def test_interest_is_reported_on_the_first_and_last_subscriber():
    changes = []
    hub = PubSub(lambda *message: None, lambda channel, on: changes.append((channel, on)))
    a, b = Conn(), Conn()
    hub.subscribe(a, b"c")
    hub.subscribe(b, b"c")
    hub.unsubscribe(a, b"c")
    assert changes == [(b"c", True)]
    hub.drop(b)
    assert changes == [(b"c", True), (b"c", False)]
