"""Tests for eightys.forms."""

from __future__ import annotations

import logging
import os

import pytest

from eightys.forms import Form, FormError, parse_form

URLENCODED = b"application/x-www-form-urlencoded"
BOUNDARY = b"----eightysBoundary7MA4YWxkTrZu0gW"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--not-the-boundary\r\n"


def part(name: bytes, data: bytes, filename: bytes | None = None,
         content_type: bytes | None = None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="%s"' % name
    if filename is not None:
        disposition += b'; filename="%s"' % filename
    head = disposition + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n" + data + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def ok(result: Form | FormError) -> Form:
    assert isinstance(result, Form), result
    return result


# -- urlencoded ------------------------------------------------------------------------


def test_urlencoded() -> None:
    form = ok(parse_form(URLENCODED, b"name=Ada+Lovelace&city=L%C3%B6nd%20on&empty=&flag",
                         max_file_size=10))
    assert form.fields == {b"name": b"Ada Lovelace", b"city": "Lönd on".encode(),
                           b"empty": b"", b"flag": b""}
    assert form.files == {}


def test_urlencoded_repeated_keys() -> None:
    form = ok(parse_form(URLENCODED, b"tag=a&x=1&tag=b&&tag=c&", max_file_size=10))
    assert form.fields[b"tag"] == b"a"
    assert form.multi[b"tag"] == [b"a", b"b", b"c"]
    assert form.multi[b"x"] == [b"1"]


def test_urlencoded_odd_escapes_and_charset_param() -> None:
    form = ok(parse_form(b"Application/X-WWW-Form-Urlencoded; charset=UTF-8",
                         b"a%2Bb=100%25&bad=%zz%4", max_file_size=10))
    assert form.fields == {b"a+b": b"100%", b"bad": b"%zz%4"}


def test_urlencoded_too_many_fields() -> None:
    body = b"&".join(b"k%d=v" % i for i in range(11))
    assert isinstance(parse_form(URLENCODED, body, max_file_size=1, max_parts=11), Form)
    error = parse_form(URLENCODED, body, max_file_size=1, max_parts=10)
    assert isinstance(error, FormError) and error.status == 413


# -- multipart -------------------------------------------------------------------------


def test_multipart_fields_and_binary_file() -> None:
    body = multipart(
        part(b"title", b"Hello\r\nworld"),
        part(b"avatar", PNG, filename=b"me.png", content_type=b"image/png"),
        part(b"title", b"second"),
    )
    form = ok(parse_form(MULTIPART, body, max_file_size=len(PNG)))
    assert form.fields == {b"title": b"Hello\r\nworld"}
    assert form.multi[b"title"] == [b"Hello\r\nworld", b"second"]
    assert form.files == {b"avatar": {"filename": b"me.png", "content_type": b"image/png",
                                      "data": PNG, "size": len(PNG)}}


def test_multipart_quoted_boundary_and_defaults() -> None:
    body = multipart(part(b"doc", b"plain", filename="résumé.txt".encode()))
    ctype = b'multipart/form-data; charset=utf-8; boundary="' + BOUNDARY + b'"'
    upload = ok(parse_form(ctype, body, max_file_size=100)).files[b"doc"]
    assert upload["filename"] == "résumé.txt".encode()
    assert upload["content_type"] == b"application/octet-stream"


def test_multipart_several_files_one_name_and_empty_input() -> None:
    body = multipart(
        part(b"pics", b"one", filename=b"1.txt"),
        part(b"pics", b"two", filename=b"2.txt"),
        part(b"other", b"", filename=b""),  # a file input left empty
    )
    form = ok(parse_form(MULTIPART, body, max_file_size=100))
    assert form.files[b"pics"]["data"] == b"one"
    assert [f["data"] for f in form.multi_files[b"pics"]] == [b"one", b"two"]
    assert b"other" not in form.files


def test_multipart_in_small_pieces_of_a_large_file() -> None:
    data = os.urandom(200_000)
    form = ok(parse_form(MULTIPART, multipart(part(b"f", data, filename=b"r.bin")),
                         max_file_size=200_000))
    assert form.files[b"f"]["data"] == data and form.files[b"f"]["size"] == 200_000


def test_file_too_large() -> None:
    body = multipart(part(b"f", b"x" * 101, filename=b"big.txt"))
    error = parse_form(MULTIPART, body, max_file_size=100)
    assert isinstance(error, FormError) and error.status == 413 and "big.txt" in error.reason
    assert isinstance(parse_form(MULTIPART, body, max_file_size=101), Form)


def test_fields_are_not_bound_by_max_file_size() -> None:
    form = ok(parse_form(MULTIPART, multipart(part(b"text", b"y" * 500)), max_file_size=10))
    assert form.fields[b"text"] == b"y" * 500


def test_too_many_parts() -> None:
    body = multipart(*(part(b"f%d" % i, b"v") for i in range(5)))
    assert isinstance(parse_form(MULTIPART, body, max_file_size=10, max_parts=5), Form)
    error = parse_form(MULTIPART, body, max_file_size=10, max_parts=4)
    assert isinstance(error, FormError) and error.status == 413


@pytest.mark.parametrize("ctype", [b"multipart/form-data", b"multipart/form-data; boundary=",
                                   b"multipart/form-data; charset=utf-8"])
def test_missing_boundary(ctype: bytes) -> None:
    error = parse_form(ctype, multipart(part(b"a", b"b")), max_file_size=10)
    assert isinstance(error, FormError) and error.status == 400 and "boundary" in error.reason


@pytest.mark.parametrize("body", [
    b"--" + BOUNDARY + b"X\r\n",                                        # bad boundary line
    part(b"a", b"b"),                                                   # never closed
    b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n",  # no name
    b"--" + BOUNDARY + b"\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n",
    b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--\r\n",
    b"just some text",
    b"",
])
def test_malformed_multipart(body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        error = parse_form(MULTIPART, body, max_file_size=10)
    assert isinstance(error, FormError) and error.status == 400, error
    assert not caplog.records  # clients choose these: no log line per bad request


def test_overlong_boundary() -> None:
    error = parse_form(b"multipart/form-data; boundary=" + b"b" * 300,
                       b"--" + b"b" * 300 + b"--\r\n", max_file_size=10)
    assert isinstance(error, FormError) and error.status == 400


@pytest.mark.parametrize("ctype", [b"application/json", b"text/plain", b"", b"multipart/mixed; boundary=x"])
def test_other_content_types_give_an_empty_form(ctype: bytes) -> None:
    form = ok(parse_form(ctype, b'{"a": 1}', max_file_size=10))
    assert (form.fields, form.multi, form.files) == ({}, {}, {})


def test_to_lua_data() -> None:
    body = multipart(part(b"t", b"1"), part(b"t", b"2"),
                     part(b"f", b"abc", filename=b"a.txt", content_type=b"text/plain"))
    data = ok(parse_form(MULTIPART, body, max_file_size=10)).to_lua_data()
    upload = {b"filename": b"a.txt", b"content_type": b"text/plain", b"data": b"abc", b"size": 3}
    assert data == {b"fields": {b"t": b"1"}, b"multi": {b"t": [b"1", b"2"]},
                    b"files": {b"f": upload}, b"multi_files": {b"f": [upload]}}
    assert all(isinstance(k, bytes) for k in data[b"files"][b"f"])


def test_to_lua_data_through_lua() -> None:
    lupa = pytest.importorskip("lupa.lua54")
    lua = lupa.LuaRuntime(encoding=None)
    data = ok(parse_form(URLENCODED, b"a=1&a=2&b=x", max_file_size=1)).to_lua_data()
    to_lua = _to_lua(lua)
    check = lua.eval(b"function(d) return d.fields.a .. d.multi.a[2] .. #d.multi.a .. d.fields.b end")
    assert check(to_lua(data)) == b"122x"


def _to_lua(lua):  # the same conversion LuaRuntime.to_lua does
    def convert(value):
        if isinstance(value, dict):
            table = lua.table()
            for k, v in value.items():
                table[k] = convert(v)
            return table
        if isinstance(value, list):
            return lua.table_from([convert(v) for v in value])
        return value
    return convert
