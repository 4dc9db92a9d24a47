"""Tests for eightys.codec."""

from __future__ import annotations

import base64

import pytest

from eightys import codec

ALL_BYTES = bytes(range(256))
INVALID_HEX = (None, b"invalid hex")
INVALID_B64 = (None, b"invalid base64")


# url_encode / url_decode -------------------------------------------------------


def test_url_encode():
    assert codec.url_encode(b"") == b""
    assert codec.url_encode(b"AZaz09-._~") == b"AZaz09-._~"
    assert codec.url_encode(b"a b&c=d/e?f+g%") == b"a%20b%26c%3Dd%2Fe%3Ff%2Bg%25"
    assert codec.url_encode("\u00e9") == b"%C3%A9"
    assert codec.url_encode(b"\x00\xff") == b"%00%FF"


def test_url_encode_all_bytes():
    out = codec.url_encode(ALL_BYTES)
    unreserved = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    expected = b"".join(bytes([c]) if c in unreserved else b"%%%02X" % c for c in ALL_BYTES)
    assert out == expected
    assert codec.url_decode(out) == ALL_BYTES


def test_url_decode():
    assert codec.url_decode(b"") == b""
    assert codec.url_decode(b"a+b%20c") == b"a b c"
    assert codec.url_decode(b"%2B%2b") == b"++"
    assert codec.url_decode(b"%C3%A9") == "\u00e9".encode()
    assert codec.url_decode("x%41") == b"xA"


@pytest.mark.parametrize(
    "raw, decoded",
    [(b"%", b"%"), (b"%4", b"%4"), (b"%zz", b"%zz"), (b"100%", b"100%"), (b"%%41", b"%A"), (b"%4g%41", b"%4gA")],
)
def test_url_decode_keeps_malformed(raw, decoded):
    assert codec.url_decode(raw) == decoded


# html_escape -------------------------------------------------------------------


def test_html_escape():
    assert codec.html_escape(b"") == b""
    assert codec.html_escape(b"plain text") == b"plain text"
    assert codec.html_escape(b"<a href=\"x\" title='y'>&amp;</a>") == (
        b"&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
    )
    assert codec.html_escape("\u00e9<") == "\u00e9&lt;".encode()


# hex ---------------------------------------------------------------------------


def test_hex_roundtrip():
    assert codec.hex_encode(b"") == b""
    assert codec.hex_encode(b"\x00\x01\xab\xff") == b"0001abff"
    assert codec.hex_encode(ALL_BYTES) == ALL_BYTES.hex().encode()
    assert codec.hex_decode(codec.hex_encode(ALL_BYTES)) == ALL_BYTES
    assert codec.hex_decode(b"") == b""
    assert codec.hex_decode(b"ABff") == b"\xab\xff"
    assert codec.hex_decode("0a") == b"\n"


@pytest.mark.parametrize("bad", [b"a", b"abc", b"zz", b"0g", b"00 11", b"\xff\xff", "\u00e9\u00e9"])
def test_hex_decode_bad(bad):
    assert codec.hex_decode(bad) == INVALID_HEX


# base64 ------------------------------------------------------------------------


def test_base64_encode():
    assert codec.base64_encode(b"") == b""
    assert codec.base64_encode(b"f") == b"Zg=="
    assert codec.base64_encode(b"fo") == b"Zm8="
    assert codec.base64_encode(b"foo") == b"Zm9v"
    assert codec.base64_encode(b"\xfb\xff") == b"+/8="
    assert codec.base64_encode(ALL_BYTES) == base64.b64encode(ALL_BYTES)


@pytest.mark.parametrize(
    "encoded, decoded",
    [
        (b"", b""),
        (b"Zg==", b"f"),
        (b"Zg", b"f"),
        (b"Zm8=", b"fo"),
        (b"Zm8", b"fo"),
        (b"Zm9v", b"foo"),
        (b"+/8=", b"\xfb\xff"),
        (b"-_8=", b"\xfb\xff"),
        (b"-_8", b"\xfb\xff"),
        (b" Zm9v\r\nYmFy\n", b"foobar"),
        (b"Zm\t9v YmE=", b"fooba"),
        ("Zm9v", b"foo"),
    ],
)
def test_base64_decode(encoded, decoded):
    assert codec.base64_decode(encoded) == decoded


def test_base64_roundtrip_all_lengths():
    for n in range(0, 40):
        data = ALL_BYTES[n : n * 2 + 1]
        std = codec.base64_encode(data)
        assert codec.base64_decode(std) == data
        assert codec.base64_decode(std.rstrip(b"=")) == data
        assert codec.base64_decode(base64.urlsafe_b64encode(data)) == data


@pytest.mark.parametrize(
    "bad",
    [
        b"Z",  # one leftover character cannot hold a byte
        b"Zm9vY",
        b"Zg=",  # wrong amount of padding
        b"Zg===",
        b"Z===",
        b"=",
        b"====",
        b"Zg==Zg==",  # padding in the middle
        b"Zm9v!",
        b"Zm.v",
        b"\xffZm9v",
    ],
)
def test_base64_decode_bad(bad):
    assert codec.base64_decode(bad) == INVALID_B64


def test_rejects_non_bytes():
    with pytest.raises(TypeError):
        codec.url_encode(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.hex_decode(None)  # type: ignore[arg-type]


def test_accepts_bytearray_and_memoryview():
    assert codec.hex_encode(bytearray(b"\x01")) == b"01"
    assert codec.base64_encode(memoryview(b"foo")) == b"Zm9v"
