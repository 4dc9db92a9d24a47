"""The --redirect-http Location: built from the request's Host and target only when
both can be repeated safely (eightys/protocols/redirect.py)."""

from __future__ import annotations

import pytest

from eightys.protocols.redirect import location


@pytest.mark.parametrize("host, target, port, expected", [
    (b"example.com", b"/a?b=1", 443, b"https://example.com/a?b=1"),
    (b"example.com:80", b"/", 443, b"https://example.com/"),
    (b"example.com:8080", b"/x", 8443, b"https://example.com:8443/x"),
    (b"10.0.0.1", b"/p%20q", 443, b"https://10.0.0.1/p%20q"),
    (b"[::1]:8080", b"/", 8443, b"https://[::1]:8443/"),
    (b"[2001:db8::1]", b"/v6", 443, b"https://[2001:db8::1]/v6"),
    (b"ignored", b"http://other.org:81/abs?q", 443, b"https://other.org/abs?q"),
    (b"ignored", b"http://other.org", 443, b"https://other.org/"),
])
def test_location(host, target, port, expected):
    assert location(host, target, port) == expected


@pytest.mark.parametrize("host, target", [
    (b"", b"/"),                         # no Host (HTTP/1.0)
    (b"evil.com/x?", b"/"),              # would change the URL's path
    (b"a@b.com", b"/"),                  # userinfo
    (b"example.com:", b"/"),
    (b"-bad.com", b"/"),
    (b"[::1", b"/"),
    (b"example.com", b"*"),              # OPTIONS *
    (b"example.com", b"x/y"),
    (b"ignored", b"http://evil.com\\@x/"),
])
def test_refused(host, target):
    assert location(host, target, 443) is None
