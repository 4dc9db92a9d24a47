"""Tests for eightys/lua/json.lua on LuaJIT 2.1 and Lua 5.4."""

from __future__ import annotations

import json as pyjson
from pathlib import Path

import lupa.lua54
import lupa.luajit21
import pytest

SOURCE = (Path(__file__).resolve().parents[2] / "eightys" / "lua" / "json.lua").read_bytes()

RUNTIMES = {"luajit": lupa.luajit21, "lua54": lupa.lua54}


class Lua:
    """A fresh runtime with the module loaded as the global ``json``."""

    def __init__(self, name: str):
        self.name = name
        self.rt = RUNTIMES[name].LuaRuntime(encoding=None, unpack_returned_tuples=True)
        self.rt.execute(b"json = assert(load(...))()", SOURCE)

    def __call__(self, code: str, *args):
        return self.rt.execute(code.encode(), *args)

    def decode(self, text: bytes):
        return self("local v, err = json.decode(...); return v, err", text)

    def roundtrip(self, text: bytes) -> bytes:
        return self(
            "local v, err = json.decode(...); assert(v ~= nil, err);"
            " return assert(json.encode(v))",
            text,
        )

    def decode_error(self, text: bytes) -> bytes:
        v, err = self("local v, err = json.decode(...); return v == nil, err", text)
        assert v is True, f"{text!r} decoded without error"
        assert isinstance(err, bytes) and err.startswith(b"json: "), err
        return err


@pytest.fixture(params=sorted(RUNTIMES))
def lua(request) -> Lua:
    return Lua(request.param)


@pytest.fixture
def luajit() -> Lua:
    return Lua("luajit")


# Round trips ---------------------------------------------------------------


def test_nested_roundtrip(lua):
    doc = {
        "name": "eightys",
        "tags": ["a", "b", {"deep": [1, 2.5, -3, True, False, None]}],
        "empty_a": [],
        "empty_o": {},
        "nested": {"x": {"y": {"z": [[[]]]}}},
        "unicode": "h\u00e9llo \u4e16\u754c \U0001f600",
    }
    text = pyjson.dumps(doc).encode()
    assert pyjson.loads(lua.roundtrip(text)) == doc


def test_empty_containers_roundtrip_exactly(lua):
    assert lua.roundtrip(b"[]") == b"[]"
    assert lua.roundtrip(b"{}") == b"{}"
    assert lua.roundtrip(b'{"a":[{},[],[{}]]}') == b'{"a":[{},[],[{}]]}'


def test_decoded_containers_carry_metatables(lua):
    assert lua(
        "local a = json.decode('[1]'); local o = json.decode('{\"k\":1}');"
        " return getmetatable(a) == json.array_mt and getmetatable(o) == json.object_mt"
    )


def test_primitives(lua):
    assert lua("return json.encode(true), json.encode(false), json.encode(nil)") == (
        b"true",
        b"false",
        b"null",
    )
    assert lua("return json.decode('true'), json.decode(' false ')") == (True, False)
    assert lua("return json.decode('null') == json.null")
    assert lua("return json.encode('hi'), json.decode('\"hi\"')") == (b'"hi"', b"hi")


# Arrays, objects and markers -----------------------------------------------


def test_array_marker(lua):
    assert lua("return json.encode(json.array())") == b"[]"
    assert lua("return json.encode(json.array({}))") == b"[]"
    assert lua("return json.encode(json.array({1, 2, 3}))") == b"[1,2,3]"
    assert lua("local t = {}; return json.array(t) == t")
    assert lua("return json.encode({})") == b"{}"
    assert lua("return json.encode(json.object())") == b"{}"
    # an object-marked sequence is still written as an object
    assert pyjson.loads(lua("return json.encode(json.object({'a', 'b'}))")) == {
        "1": "a",
        "2": "b",
    }


def test_marker_misuse_raises(lua):
    for fn in ("array", "object"):
        ok, err = lua(f"return pcall(json.{fn}, 'x')")
        assert ok is False
        assert b"table expected" in err


def test_sequence_detection(lua):
    assert lua("return json.encode({1, 'two', {3}})") == b'[1,"two",[3]]'
    # holes make it an object with string keys
    assert pyjson.loads(lua("local t = {1, 2}; t[4] = 4; return json.encode(t)")) == {
        "1": 1,
        "2": 2,
        "4": 4,
    }
    assert pyjson.loads(lua("return json.encode({[1] = 'a', [3] = 'c', [5] = 'e'})")) == {
        "1": "a",
        "3": "c",
        "5": "e",
    }
    assert pyjson.loads(lua("return json.encode({[2] = 'b'})")) == {"2": "b"}


def test_mixed_keys_become_string_keys(lua):
    out = lua("return json.encode({10, 20, x = 'y', [1.5] = 'f'})")
    assert pyjson.loads(out) == {"1": 10, "2": 20, "x": "y", "1.5": "f"}


def test_invalid_key_types(lua):
    for key in ("true", "{}", "print"):
        v, err = lua(f"return json.encode({{[{key}] = 1}})")
        assert v is None
        assert b"key" in err


def test_null_in_arrays_and_objects(lua):
    assert lua.roundtrip(b"[1,null,3,null]") == b"[1,null,3,null]"
    assert lua.roundtrip(b'{"a":null}') == b'{"a":null}'
    assert lua("local a = json.decode('[null,2]'); return #a, a[1] == json.null, a[2]") == (
        2,
        True,
        2,
    )
    assert lua("local o = json.decode('{\"a\":null}'); return o.a == json.null")
    assert lua("return tostring(json.null)") == b"null"
    assert lua("return json.encode({json.null, 1})") == b"[null,1]"
    ok, _ = lua("return pcall(function() json.null.x = 1 end)")
    assert ok is False
    assert lua("return getmetatable(json.null)") is False


# Strings --------------------------------------------------------------------


def test_unicode_escapes(lua):
    assert lua.decode(b'"\\u00e9"')[0] == "\u00e9".encode()
    assert lua.decode(b'"\\u00E9\\u4e16"')[0] == "\u00e9\u4e16".encode()
    assert lua.decode(b'"\\ud83d\\ude00"')[0] == "\U0001f600".encode()
    assert lua.decode(b'"\\u0041\\u0000z"')[0] == b"A\x00z"


def test_lone_surrogates_become_replacement_char(lua):
    fffd = "\ufffd".encode()
    assert lua.decode(b'"\\ud800"')[0] == fffd
    assert lua.decode(b'"a\\udc00b"')[0] == b"a" + fffd + b"b"
    assert lua.decode(b'"\\ud83dx"')[0] == fffd + b"x"
    # high surrogate followed by a non-surrogate escape keeps the second one
    assert lua.decode(b'"\\ud83d\\u0041"')[0] == fffd + b"A"


def test_simple_escapes(lua):
    assert lua.decode(b'"\\"\\\\\\/\\b\\f\\n\\r\\t"')[0] == b'"\\/\b\f\n\r\t'


def test_raw_utf8_passes_through(lua):
    s = "caf\u00e9 \U0001f600".encode()
    assert lua("return json.encode(...)", s) == b'"' + s + b'"'
    assert lua.decode(b'"' + s + b'"')[0] == s


def test_control_character_escaping(lua):
    raw = bytes(range(32)) + b'"\\ \x7f'
    out = lua("return json.encode(...)", raw)
    assert out == (
        b'"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007'
        b"\\b\\t\\n\\u000b\\f\\r\\u000e\\u000f"
        b"\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017"
        b"\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"
        b'\\"\\\\ \x7f"'
    )
    assert pyjson.loads(out) == raw.decode()
    assert lua.decode(out)[0] == raw


def test_line_separators_are_escaped(lua):
    s = "a\u2028b\u2029c\u2027".encode()
    # U+2027 shares the lead bytes but must pass through unescaped
    assert lua("return json.encode(...)", s) == b'"a\\u2028b\\u2029c' + "\u2027".encode() + b'"'
    assert lua.roundtrip(b'"\\u2028"') == b'"\\u2028"'


# Numbers --------------------------------------------------------------------

INTEGERS = [
    b"0",
    b"-1",
    b"42",
    b"9007199254740991",
    b"9007199254740992",
    b"-9007199254740992",
    b"9007199254740993",
    b"-9007199254740993",
    b"1234567890123456789",
    b"9223372036854775807",
    b"-9223372036854775808",
]


@pytest.mark.parametrize("digits", INTEGERS)
def test_integers_roundtrip_exactly(lua, digits):
    assert lua.roundtrip(digits) == digits
    assert lua.roundtrip(b"[" + digits + b"]") == b"[" + digits + b"]"


def test_integer_types_lua54():
    lua = Lua("lua54")
    assert lua("return math.type(json.decode('9223372036854775807'))") == b"integer"
    assert lua("return json.decode('9223372036854775807') == math.maxinteger")
    assert lua("return json.decode('-9223372036854775808') == math.mininteger")
    assert lua("return math.type(json.decode('9223372036854775808'))") == b"float"
    assert lua("return math.type(json.decode('1.0'))") == b"float"
    assert lua("return json.encode(math.maxinteger), json.encode(3.0)") == (
        b"9223372036854775807",
        b"3",
    )


def test_big_integers_luajit(luajit):
    assert luajit("return type(json.decode('9007199254740992'))") == b"number"
    assert luajit("return type(json.decode('-9007199254740992'))") == b"number"
    assert luajit("return tostring(json.decode('9007199254740993'))") == b"9007199254740993LL"
    assert luajit("return tostring(json.decode('9223372036854775807'))") == (
        b"9223372036854775807LL"
    )
    assert luajit("return tostring(json.decode('-9223372036854775808'))") == (
        b"-9223372036854775808LL"
    )
    assert luajit("return tostring(json.decode('18446744073709551615'))") == (
        b"18446744073709551615ULL"
    )
    assert luajit.roundtrip(b"18446744073709551615") == b"18446744073709551615"
    assert luajit.roundtrip(b"[9223372036854775808]") == b"[9223372036854775808]"
    # beyond uint64 falls back to a double
    assert luajit("return type(json.decode('18446744073709551616'))") == b"number"
    assert luajit("return type(json.decode('-9223372036854775809'))") == b"number"
    # cdata written by application code
    assert luajit("local ffi = require 'ffi'; return json.encode(ffi.new('int64_t', -5))") == b"-5"
    v, err = luajit("local ffi = require 'ffi'; return json.encode(ffi.new('int[1]'))")
    assert v is None and b"cdata" in err


def test_beyond_int64_is_float_lua54():
    lua = Lua("lua54")
    assert lua("return json.decode('18446744073709551615') == 2^64")


FLOATS = [
    ("0.1", 0.1),
    ("1e300", 1e300),
    ("-2.5e-10", -2.5e-10),
    ("1/3", 1 / 3),
    ("2^60 + 2^8", 2.0**60 + 2**8),
    ("5e-324", 5e-324),
    ("-0.5", -0.5),
]


@pytest.mark.parametrize("expr, value", FLOATS)
def test_floats_roundtrip(lua, expr, value):
    same, text = lua(f"local x = {expr}; local s = assert(json.encode(x)); return json.decode(s) == x, s")
    assert same is True, text
    assert float(text) == value


def test_float_formatting(lua):
    assert lua("return json.encode(0.1), json.encode(3.0), json.encode(-2.5e-10)") == (
        b"0.1",
        b"3",
        b"-2.5e-10",
    )
    assert lua("return json.encode(2^53)") == b"9007199254740992"
    assert lua("return json.encode(1e300)") == b"1e+300"
    assert lua("return json.encode(0.1 + 0.2)") == b"0.30000000000000004"


def test_decode_number_grammar(lua):
    assert lua("return json.decode('1.5e3'), json.decode('-0.25'), json.decode('1E-2')") == (
        1500.0,
        -0.25,
        0.01,
    )
    assert lua("return json.decode('2e+2')") == 200


@pytest.mark.parametrize("expr", ["0/0", "1/0", "-1/0", "{1, 0/0}", "{x = 1/0}"])
def test_nan_and_inf_fail(lua, expr):
    v, err = lua(f"return json.encode({expr})")
    assert v is None
    assert b"cannot encode" in err and (b"nan" in err.lower() or b"inf" in err.lower())


# Malformed input ------------------------------------------------------------

MALFORMED = [
    # (input, expected substring of the error)
    (b"[1,2,]", b"unexpected character ']' at position 6"),
    (b'{"a":1,}', b"unexpected character '}' at position 8"),
    (b"01", b"leading zero at position 1"),
    (b"-01", b"leading zero at position 2"),
    (b"+1", b"unexpected character '+' at position 1"),
    (b".5", b"unexpected character '.' at position 1"),
    (b"1.", b"unexpected end of input at position 3"),
    (b"1.e5", b"unexpected character 'e' at position 3"),
    (b"1e", b"unexpected end of input at position 3"),
    (b"1e+", b"unexpected end of input at position 4"),
    (b"-", b"unexpected end of input at position 2"),
    (b"0x10", b"unexpected character 'x' at position 2"),
    (b"Infinity", b"unexpected character 'I' at position 1"),
    (b"NaN", b"unexpected character 'N' at position 1"),
    (b'"abc', b"unterminated string at position 1"),
    (b'["abc\\', b"unterminated string at position 2"),
    (b'"a\nb"', b"control character in string at position 3"),
    (b'"a\tb"', b"control character in string at position 3"),
    (b'"\\x"', b"invalid escape at position 2"),
    (b'"\\u12"', b"invalid unicode escape at position 2"),
    (b'"\\u12G4"', b"invalid unicode escape at position 2"),
    (b"[1] x", b"unexpected character 'x' at position 5"),
    (b"{} {}", b"unexpected character '{' at position 4"),
    (b"1 2", b"unexpected character '2' at position 3"),
    (b"", b"unexpected end of input at position 1"),
    (b"   ", b"unexpected end of input at position 4"),
    (b"[", b"unexpected end of input at position 2"),
    (b"[1", b"unexpected end of input at position 3"),
    (b'{"a"', b"unexpected end of input at position 5"),
    (b'{"a" 1}', b"unexpected character '1' at position 6"),
    (b"{1:2}", b"unexpected character '1' at position 2"),
    (b"{'a':1}", b"unexpected character ''' at position 2"),
    (b"tru", b"unexpected end of input at position 4"),
    (b"trux", b"unexpected character 'x' at position 4"),
    (b"nul", b"unexpected end of input at position 4"),
    (b"[1,,2]", b"unexpected character ',' at position 4"),
    (b"\x00", b"unexpected byte 0x00 at position 1"),
    (b"[1]\x00", b"unexpected byte 0x00 at position 4"),
]


@pytest.mark.parametrize("text, message", MALFORMED, ids=[repr(t) for t, _ in MALFORMED])
def test_malformed(lua, text, message):
    err = lua.decode_error(text)
    assert message in err
    assert b"position" in err


def test_nesting_limit(lua):
    assert lua.decode_error(b"[" * 2000 + b"]" * 2000) == b"json: nesting too deep"
    assert lua.decode_error(b'{"a":' * 1001 + b"1" + b"}" * 1001) == b"json: nesting too deep"
    ok = b"[" * 1000 + b"]" * 1000
    assert lua.roundtrip(ok) == ok
    assert lua.decode_error(b"[" * 1001 + b"]" * 1001) == b"json: nesting too deep"
    v, err = lua("local t = {}; local c = t; for i = 1, 2000 do c[1] = {}; c = c[1] end; return json.encode(t)")
    assert v is None and err == b"json: nesting too deep"


def test_decode_non_string_raises(lua):
    ok, err = lua("return pcall(json.decode, 42)")
    assert ok is False
    assert b"string expected" in err


# Encoding failures -----------------------------------------------------------


def test_cycles(lua):
    assert lua("local t = {}; t[1] = t; return json.encode(t)") == (None, b"json: cycle")
    assert lua("local t = {a = {}}; t.a.b = t; return json.encode(t)") == (None, b"json: cycle")
    # a table referenced twice without a cycle is fine
    assert lua("local s = {1}; return json.encode({s, s})") == b"[[1],[1]]"


@pytest.mark.parametrize(
    "expr, kind",
    [("print", b"function"), ("coroutine.create(print)", b"thread"), ("{f = print}", b"function")],
)
def test_unencodable_types(lua, expr, kind):
    v, err = lua(f"return json.encode({expr})")
    assert v is None
    assert err == b"json: cannot encode " + kind


def test_userdata_fails(lua):
    v, err = lua("return json.encode(...)", object())
    assert v is None
    assert err == b"json: cannot encode userdata"


def test_large_document(lua):
    doc = [{"id": i, "name": f"item {i}\n", "score": i / 7, "ok": i % 2 == 0} for i in range(2000)]
    text = pyjson.dumps(doc).encode()
    out = lua.roundtrip(text)
    back = pyjson.loads(out)
    assert back == doc  # floats compare exactly
