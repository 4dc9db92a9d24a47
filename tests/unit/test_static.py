"""Tests for eightys.static: heads are parsed with h11, as a client would."""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import h11
import pytest

from eightys import static
from eightys.static import Response, StaticFile, TruncatedFile, accepts_gzip, iter_chunks

MTIME = 1_700_000_000  # a fixed mtime (whole seconds) so dates are predictable
MTIME_NS = MTIME * 1_000_000_000 + 123_456_789
LAST_MODIFIED = formatdate(MTIME, usegmt=True)
CSS = b"body { color: #333; margin: 0 auto; }\n" * 64  # compressible, > 1 KiB
HOST = [b"Host", b"example.test", b"User-Agent", b"test"]


def make(tmp_path: Path, name: str, data: bytes, mtime_ns: int = MTIME_NS) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return str(path)


def parse(resp: Response, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Read a response the way a client does; body from ``body`` or ``file_range``.
    Fails on duplicate headers, bad framing or bytes left over."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    data = resp.head + resp.body
    if resp.file_range is not None:
        assert resp.body == b""
        data += b"".join(iter_chunks(*resp.file_range))
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Response), event
    names = Counter(k for k, _ in event.headers)
    assert all(n == 1 for n in names.values()), names
    headers = {k.decode(): v.decode() for k, v in event.headers}
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"incomplete response: {ev!r}")
    assert conn.trailing_data == (b"", False)
    return event.status_code, headers, body


def get(f: StaticFile, *headers: bytes, method: bytes = b"GET", conn: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    return parse(f.respond(method, HOST + list(headers), conn), method.decode())


@pytest.fixture
def css(tmp_path: Path) -> StaticFile:
    return StaticFile.load(make(tmp_path, "site.css", CSS), cache_control="public, max-age=60")


# -- plain 200 ---------------------------------------------------------------------


def test_200_headers(tmp_path: Path) -> None:
    data = b"hello, world\n"
    f = StaticFile.load(make(tmp_path, "a.txt", data), cache_control="max-age=10")
    status, h, body = get(f)
    assert status == 200 and body == data
    assert h["server"] == "eightys"
    assert abs(parsedate_to_datetime(h["date"]).timestamp() - time.time()) < 5
    assert h["content-type"] == "text/plain; charset=utf-8"
    assert h["content-length"] == str(len(data))
    assert h["etag"] == '"%x-%x"' % (len(data), MTIME_NS)
    assert h["last-modified"] == LAST_MODIFIED
    assert h["accept-ranges"] == "bytes"
    assert h["cache-control"] == "max-age=10"
    assert "vary" not in h and "content-encoding" not in h  # small: no gzip variant


def test_no_cache_control_when_none(tmp_path: Path) -> None:
    f = StaticFile.load(make(tmp_path, "a.txt", b"x"), cache_control=None)
    assert "cache-control" not in get(f)[1]


def test_connection_header_is_included(tmp_path: Path) -> None:
    f = StaticFile.load(make(tmp_path, "a.txt", b"x"), cache_control=None)
    resp = f.respond(b"GET", HOST, b"Connection: close\r\n")
    assert resp.head.endswith(b"Connection: close\r\n\r\n")
    assert get(f, conn=b"Connection: close\r\n")[1]["connection"] == "close"
    assert b"Connection" not in f.respond(b"GET", HOST, b"").head


def test_etag_depends_on_size_and_mtime(tmp_path: Path) -> None:
    path = make(tmp_path, "a.txt", b"one")
    first = StaticFile.load(path, cache_control=None).etag
    assert StaticFile.load(path, cache_control=None).etag == first
    os.utime(path, ns=(MTIME_NS + 1, MTIME_NS + 1))
    touched = StaticFile.load(path, cache_control=None).etag
    make(tmp_path, "a.txt", b"three")
    resized = StaticFile.load(path, cache_control=None).etag
    assert len({first, touched, resized}) == 3
    assert first.startswith(b'"') and not first.startswith(b'W/')


def test_empty_file(tmp_path: Path) -> None:
    f = StaticFile.load(make(tmp_path, "empty.txt", b""), cache_control=None)
    status, h, body = get(f)
    assert (status, h["content-length"], body) == (200, "0", b"")
    assert get(f, b"Range", b"bytes=0-")[0] == 416


def test_method_not_allowed(css: StaticFile) -> None:
    status, h, body = get(css, method=b"POST")
    assert status == 405 and h["allow"] == "GET, HEAD" and body


def test_head_has_the_get_head_and_no_body(css: StaticFile, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fixed Date, so both heads are built within the same "second"
    monkeypatch.setattr(static, "date_header", lambda: b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n")
    for extra in ([], [b"Accept-Encoding", b"gzip"], [b"Range", b"bytes=0-9"]):
        got = css.respond(b"GET", HOST + extra, b"")
        head = css.respond(b"HEAD", HOST + extra, b"")
        assert head.head == got.head
        assert head.body == b"" and head.file_range is None and got.body
        status, h, body = parse(head, "HEAD")
        assert body == b"" and status in (200, 206)


def test_date_header_is_cached_per_second() -> None:
    a = static.date_header(1_000_000.1)
    assert static.date_header(1_000_000.9) is a
    b = static.date_header(1_000_001.0)
    assert b != a and b == b"Date: %s\r\n" % formatdate(1_000_001, usegmt=True).encode()


# -- conditional requests ------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "{etag}", 'W/{etag}', '"other", {etag}', '"a",W/{etag} , "b"', "*", " * ",
])
def test_if_none_match_304(css: StaticFile, value: str) -> None:
    inm = value.format(etag=css.etag.decode()).encode()
    status, h, body = get(css, b"If-None-Match", inm)
    assert status == 304 and body == b""
    assert h["etag"] == css.etag.decode()
    assert h["cache-control"] == "public, max-age=60"
    assert h["last-modified"] == LAST_MODIFIED
    assert h["vary"] == "Accept-Encoding"
    assert "content-length" not in h


@pytest.mark.parametrize("value", [b'"other"', b'W/"other"', b"", b"garbage"])
def test_if_none_match_mismatch_200(css: StaticFile, value: bytes) -> None:
    assert get(css, b"if-none-match", value)[0] == 200


def test_if_none_match_of_the_gzip_variant(css: StaticFile) -> None:
    gz_tag = get(css, b"Accept-Encoding", b"gzip")[1]["etag"].encode()
    assert gz_tag != css.etag and gz_tag.endswith(b'-gz"')
    status, h, _ = get(css, b"Accept-Encoding", b"gzip", b"If-None-Match", gz_tag)
    assert status == 304 and h["etag"] == gz_tag.decode()
    # the client no longer takes gzip: the identity file is another representation
    assert get(css, b"If-None-Match", gz_tag)[0] == 200


@pytest.mark.parametrize("since, status", [
    (LAST_MODIFIED, 304),
    (formatdate(MTIME + 3600, usegmt=True), 304),
    ("Tuesday, 14-Nov-23 22:13:20 GMT", 304),  # obsolete RFC 850 form of MTIME
    (formatdate(MTIME - 1, usegmt=True), 200),
    ("not a date", 200),
    ("", 200),
])
def test_if_modified_since(css: StaticFile, since: str, status: int) -> None:
    got, h, body = get(css, b"If-Modified-Since", since.encode())
    assert got == status
    assert (body == b"") == (status == 304)


def test_if_none_match_takes_precedence(css: StaticFile) -> None:
    later = formatdate(MTIME + 3600, usegmt=True).encode()
    assert get(css, b"If-None-Match", b'"nope"', b"If-Modified-Since", later)[0] == 200


# -- ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec, first, last", [
    ("bytes=0-9", 0, 9),
    ("bytes=10-", 10, len(CSS) - 1),
    ("bytes=-5", len(CSS) - 5, len(CSS) - 1),
    ("bytes=100-999999", 100, len(CSS) - 1),      # end clamped
    ("bytes=-999999", 0, len(CSS) - 1),           # suffix longer than the file
    ("BYTES = 7 - 7", 7, 7),
])
def test_range_206(css: StaticFile, spec: str, first: int, last: int) -> None:
    status, h, body = get(css, b"Range", spec.encode(), b"Accept-Encoding", b"gzip")
    assert status == 206
    assert h["content-range"] == f"bytes {first}-{last}/{len(CSS)}"
    assert body == CSS[first:last + 1] and h["content-length"] == str(last - first + 1)
    assert "content-encoding" not in h  # ranges address the identity representation
    assert h["etag"] == css.etag.decode() and h["content-type"].startswith("text/css")


@pytest.mark.parametrize("spec", ["bytes=%d-" % len(CSS), "bytes=99999-100000", "bytes=-0"])
def test_range_416(css: StaticFile, spec: str) -> None:
    status, h, body = get(css, b"Range", spec.encode())
    assert status == 416 and body == b""
    assert h["content-range"] == f"bytes */{len(CSS)}"


@pytest.mark.parametrize("spec", [
    "bytes=0-1,5-6", "bytes=0-1, -3", "bytes=abc", "bytes=5-2", "items=0-1", "bytes 0-1",
    "bytes=-", "bytes=1-2-3", "bytes=0x1-2", "bytes=" + "9" * 40 + "-",
])
def test_range_ignored(css: StaticFile, spec: str) -> None:
    status, h, body = get(css, b"Range", spec.encode())
    assert status == 200 and body == CSS and "content-range" not in h


def test_two_range_fields_are_ignored(css: StaticFile) -> None:
    assert get(css, b"Range", b"bytes=0-1", b"Range", b"bytes=3-4")[0] == 200


@pytest.mark.parametrize("if_range, status", [
    ("{etag}", 206),
    ('"other"', 200),
    ("W/{etag}", 200),  # If-Range needs a strong match
    (LAST_MODIFIED, 206),
    (formatdate(MTIME - 10, usegmt=True), 200),
    ("garbage", 200),
])
def test_if_range(css: StaticFile, if_range: str, status: int) -> None:
    value = if_range.format(etag=css.etag.decode()).encode()
    got, h, body = get(css, b"Range", b"bytes=0-3", b"If-Range", value)
    assert got == status
    assert body == (CSS[:4] if status == 206 else CSS)


def test_range_with_gzip_accepted_validates_the_identity_etag(css: StaticFile) -> None:
    # the range is served from the identity representation, so its ETag is the one
    # If-None-Match is compared with (not the gzip variant's)
    status, h, _ = get(css, b"Range", b"bytes=0-3", b"Accept-Encoding", b"gzip",
                       b"If-None-Match", css.etag)
    assert status == 304 and h["etag"] == css.etag.decode()
    assert css.gz_data is None  # and nothing was compressed for it


def test_if_range_mismatch_serves_gzip(css: StaticFile) -> None:
    _, h, body = get(css, b"Range", b"bytes=0-3", b"If-Range", b'"old"', b"Accept-Encoding", b"gzip")
    assert h["content-encoding"] == "gzip" and gzip.decompress(body) == CSS


# -- gzip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value, ok", [
    (b"gzip", True), (b"GZIP", True), (b"x-gzip", True), (b"gzip, deflate, br", True),
    (b"br;q=1.0, gzip;q=0.5", True), (b"*", True), (b"deflate, *;q=0.1", True),
    (b"gzip;q=0", False), (b"gzip; q=0.000", False), (b"gzip;q=0, *", False),
    (b"*;q=0", False), (b"deflate, br", False), (b"identity", False), (b"", False),
    (b"gzip;q=abc", False), (b"gzip;q=2", False), (b"gzipper", False),
])
def test_accepts_gzip(value: bytes, ok: bool) -> None:
    assert accepts_gzip(value) is ok
    assert accepts_gzip(value) is ok  # the cached answer too


@pytest.mark.parametrize("value, ok", [(b"gzip", True), (b"gzip;q=0", False), (b"*", True)])
def test_gzip_negotiation(css: StaticFile, value: bytes, ok: bool) -> None:
    status, h, body = get(css, b"Accept-Encoding", value)
    assert status == 200 and h["vary"] == "Accept-Encoding"
    if ok:
        assert h["content-encoding"] == "gzip" and gzip.decompress(body) == CSS
        assert h["content-length"] == str(len(body)) and len(body) < len(CSS)
        assert h["etag"] == css.etag.decode()[:-1] + '-gz"'
    else:
        assert "content-encoding" not in h and body == CSS and h["etag"] == css.etag.decode()


def test_no_accept_encoding_no_gzip(css: StaticFile) -> None:
    status, h, body = get(css)
    assert body == CSS and "content-encoding" not in h and h["vary"] == "Accept-Encoding"


def test_repeated_accept_encoding_fields(css: StaticFile) -> None:
    h = get(css, b"accept-encoding", b"br", b"ACCEPT-ENCODING", b"gzip")[1]
    assert h["content-encoding"] == "gzip"


def test_on_the_fly_gzip_is_compressed_once(css: StaticFile) -> None:
    assert css.gz_data is None  # lazily, on first use
    first = css.respond(b"GET", HOST + [b"Accept-Encoding", b"gzip"], b"")
    second = css.respond(b"GET", HOST + [b"Accept-Encoding", b"gzip"], b"")
    assert css.gz_data is not None and first.body is css.gz_data and second.body is css.gz_data


@pytest.mark.parametrize("name, data", [
    ("small.css", b"a{}" * 10),        # under GZIP_MIN_SIZE
    ("logo.png", b"\x89PNG" + b"\0" * 4000),  # not a compressible type
])
def test_no_gzip_variant(tmp_path: Path, name: str, data: bytes) -> None:
    f = StaticFile.load(make(tmp_path, name, data), cache_control=None)
    _, h, body = get(f, b"Accept-Encoding", b"gzip")
    assert body == data and "content-encoding" not in h and "vary" not in h


def test_incompressible_text_is_sent_as_is(tmp_path: Path) -> None:
    data = os.urandom(4096)  # gzip cannot shrink random bytes
    f = StaticFile.load(make(tmp_path, "noise.txt", data), cache_control=None)
    for _ in range(2):
        _, h, body = get(f, b"Accept-Encoding", b"gzip")
        assert body == data and "content-encoding" not in h
    assert f.gz_on_the_fly is False


def test_gz_sibling_when_accepted(tmp_path: Path) -> None:
    path = make(tmp_path, "app.js", b"console.log(1)\n")
    sibling = gzip.compress(b"console.log(1)\n", mtime=0) + b""  # any bytes: sent verbatim
    make(tmp_path, "app.js.gz", sibling, mtime_ns=MTIME_NS + 5)
    f = StaticFile.load(path, cache_control=None)
    status, h, body = get(f, b"Accept-Encoding", b"gzip, br")
    assert status == 200 and body == sibling and h["content-encoding"] == "gzip"
    assert h["content-type"] == "text/javascript; charset=utf-8"
    assert h["etag"] not in (f.etag.decode(), "") and h["etag"].endswith('-gz"')
    assert h["vary"] == "Accept-Encoding"
    # not accepted: the identity file, never the .gz
    for extra in ([], [b"Accept-Encoding", b"gzip;q=0"], [b"Accept-Encoding", b"br"]):
        _, h, body = get(f, *extra)
        assert body == b"console.log(1)\n" and "content-encoding" not in h
        assert h["vary"] == "Accept-Encoding"


# -- large files ---------------------------------------------------------------------


def test_large_file_range_and_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    path = make(tmp_path, "big.bin", data)
    f = StaticFile.load(path, cache_control=None, memory_limit=4096)
    assert f.data is None
    resp = f.respond(b"GET", HOST, b"")
    assert resp.body == b"" and resp.file_range == (path, 0, len(data))
    assert parse(resp)[2] == data
    resp = f.respond(b"GET", HOST + [b"Range", b"bytes=1000-1999"], b"")
    assert resp.status == 206 and resp.file_range == (path, 1000, 1000)
    assert parse(resp)[2] == data[1000:2000]
    assert f.respond(b"HEAD", HOST, b"").file_range is None
    chunks = list(iter_chunks(path, 10, 9000, chunk=4000))
    assert [len(c) for c in chunks] == [4000, 4000, 1000] and b"".join(chunks) == data[10:9010]


def test_large_gz_sibling_is_streamed(tmp_path: Path) -> None:
    data = b"let x = 1;\n" * 2000
    path = make(tmp_path, "big.js", data)
    sibling = gzip.compress(data) + os.urandom(8000)  # make it bigger than the limit
    make(tmp_path, "big.js.gz", sibling)
    f = StaticFile.load(path, cache_control=None, memory_limit=4096)
    resp = f.respond(b"GET", HOST + [b"Accept-Encoding", b"gzip"], b"")
    assert resp.file_range == (path + ".gz", 0, len(sibling))
    assert parse(resp)[2] == sibling


def test_iter_chunks_truncated_file(tmp_path: Path) -> None:
    path = make(tmp_path, "short.bin", b"x" * 100)
    with pytest.raises(TruncatedFile):
        list(iter_chunks(path, 50, 100))
    assert issubclass(TruncatedFile, OSError)


# -- loading and staleness --------------------------------------------------------------


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        StaticFile.load(str(tmp_path / "missing.txt"), cache_control=None)
    with pytest.raises(OSError):
        StaticFile.load(str(tmp_path), cache_control=None)
    with pytest.raises(ValueError):
        StaticFile.load(make(tmp_path, "a.txt", b"x"), cache_control="a\r\nSet-Cookie: x")


def test_is_stale(tmp_path: Path) -> None:
    path = make(tmp_path, "a.css", CSS)
    f = StaticFile.load(path, cache_control=None)
    assert not f.is_stale()
    os.utime(path, ns=(MTIME_NS + 1, MTIME_NS + 1))
    assert f.is_stale()
    f = StaticFile.load(path, cache_control=None)
    make(tmp_path, "a.css", CSS + b"x", mtime_ns=MTIME_NS + 1)  # same mtime, new size
    assert f.is_stale()
    f = StaticFile.load(path, cache_control=None)
    make(tmp_path, "a.css.gz", gzip.compress(CSS))  # a sibling appears
    assert f.is_stale()
    f = StaticFile.load(path, cache_control=None)
    assert not f.is_stale()
    os.unlink(path + ".gz")  # ...and goes
    assert f.is_stale()
    f = StaticFile.load(path, cache_control=None)
    os.unlink(path)
    assert f.is_stale()


@pytest.mark.parametrize("name, ctype", [
    ("index.html", "text/html; charset=utf-8"),
    ("site.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("mod.mjs", "text/javascript; charset=utf-8"),
    ("data.json", "application/json; charset=utf-8"),
    ("logo.svg", "image/svg+xml; charset=utf-8"),
    ("notes.txt", "text/plain; charset=utf-8"),
    ("feed.xml", "application/xml; charset=utf-8"),
    ("feed.atom", "application/atom+xml; charset=utf-8"),
    ("linked.jsonld", "application/ld+json; charset=utf-8"),
    ("photo.JPG", "image/jpeg"),
    ("icon.png", "image/png"),
    ("font.woff2", "font/woff2"),
    ("doc.pdf", "application/pdf"),
    ("backup.tar.gz", "application/gzip"),
    ("blob.unknownext", "application/octet-stream"),
])
def test_content_types(tmp_path: Path, name: str, ctype: str) -> None:
    f = StaticFile.load(make(tmp_path, name, b"x"), cache_control=None)
    assert get(f)[1]["content-type"] == ctype
