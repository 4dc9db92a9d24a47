"""eightys.acl: networks, precedence, the client behind proxies (pure logic)."""

from __future__ import annotations

import pytest

from eightys.acl import Acl, ProxyTrust, forwarded_for, parse_address, parse_networks


def test_parse_networks_lists_and_bare_addresses() -> None:
    nets = parse_networks(["10.1.2.3/8, ::1", "192.168.1.5"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "::1/128", "192.168.1.5/32"]
    # how a dual-stack socket writes IPv4 networks
    assert [str(n) for n in parse_networks(["::ffff:10.0.0.0/104"])] == ["10.0.0.0/8"]
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", "127.0.0.1"), ("::ffff:127.0.0.1", "127.0.0.1"), ("fe80::1%eth0", "fe80::1"),
    ("[::1]:8080", "::1"), ("1.2.3.4:80", "1.2.3.4"), (" 9.9.9.9 ", "9.9.9.9"),
    ("unknown", None), ("", None), ("[::1", None),
])
def test_parse_address(text: str, expected: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else str(address)) == expected


def test_deny_wins_and_allow_limits() -> None:
    acl = Acl(["10.0.0.0/8", "::/0"], ["10.9.0.0/16", "::1"])
    assert acl.permits("10.1.1.1")
    assert not acl.permits("10.9.1.1")  # in both: deny wins
    assert not acl.permits("11.0.0.1")  # not in allow
    assert not acl.permits("::1") and acl.permits("2001:db8::1")
    assert acl.permits("::ffff:10.1.1.1")  # IPv4 through a dual-stack socket
    assert Acl(None, ["10.0.0.0/8"]).permits("11.0.0.1")  # no allow list: all but denied
    assert not Acl([], []).permits("127.0.0.1")  # an empty allow list: nobody
    assert Acl(None, []).permits_address(None)  # a Unix socket peer
    assert not Acl(None, ()) and Acl([], ())


def test_decisions_are_cached_and_bounded() -> None:
    acl = Acl(["10.0.0.0/8"])
    for i in range(5000):
        acl.permits(f"10.0.{i // 256}.{i % 256}")
    assert len(acl._cache) <= 4096


def test_client_behind_trusted_proxies() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    assert trust.client("127.0.0.1", "1.1.1.1, 2.2.2.2") == "2.2.2.2"
    assert trust.client("127.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.7") == "2.2.2.2"
    assert trust.client("127.0.0.1", "10.0.0.8,10.0.0.7") == "10.0.0.8"  # all trusted: leftmost
    assert trust.client("127.0.0.1", "1.1.1.1, garbage") == "127.0.0.1"  # a bad hop ends the walk
    assert trust.client("127.0.0.1", "1.1.1.1, [2001:db8::5]:443") == "2001:db8::5"
    assert trust.client("8.8.8.8", "1.1.1.1") == "8.8.8.8"  # untrusted peer: header ignored
    assert trust.client("127.0.0.1", None) == "127.0.0.1"


def test_forwarded_for_from_raw_headers() -> None:
    raw = b"Host\0x\0X-Forwarded-For\0001.1.1.1\0Accept\0*/*\0x-forwarded-for\0002.2.2.2"
    assert forwarded_for(raw) == "1.1.1.1,2.2.2.2"
    assert forwarded_for(b"Host\0x") is None
    assert forwarded_for(b"") is None
