"""eightys/lua/eightys/cbor.lua on LuaJIT 2.1 and Lua 5.4, checked against cbor2."""

from __future__ import annotations

import math
from pathlib import Path

import cbor2
import lupa.lua54
import lupa.luajit21
import pytest

LUA = Path(__file__).resolve().parents[2] / "eightys" / "lua"
RUNTIMES = {"luajit": lupa.luajit21, "lua54": lupa.lua54}

VALUES = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32, 2**53, -1, -24, -25, -256, -257, -2**32, -2**53,
    1.5, -0.1, 1e300, True, False, None, "", "a", "é€😀", "x" * 70000, b"\x00\xff",  # (b"" comes back as "": a Lua string is text when it can be)
    [], [1, [2, [3]]], list(range(30)), {}, {"a": 1, "b": [None, {"c": "d"}]},
]


@pytest.fixture(params=sorted(RUNTIMES))
def lua(request):
    rt = RUNTIMES[request.param].LuaRuntime(encoding=None, unpack_returned_tuples=True)
    rt.execute(b"package.path = ...", f"{LUA}/?.lua".encode())
    rt.execute(b"unpack = unpack or table.unpack; cbor = require('eightys.cbor'); json = require('json')")
    return rt


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:30])
def test_roundtrip_against_cbor2(lua, value):
    again = lua.execute(b"local v, err = cbor.decode(...); assert(err == nil, err); return assert(cbor.encode(v))",
                        cbor2.dumps(value))
    decoded = cbor2.loads(again)
    if isinstance(value, float):
        assert math.isclose(decoded, value)
    else:
        assert decoded == value


def test_other_encodings_decode(lua):
    cases = [
        (bytes.fromhex("f93e00"), 1.5),                 # half float
        (bytes.fromhex("fa3fc00000"), 1.5),             # single float
        (bytes.fromhex("5f42010243030405ff"), b"\x01\x02\x03\x04\x05"),  # indefinite bytes
        (bytes.fromhex("7f657374726561646d696e67ff"), b"streaming"),     # indefinite text
        (bytes.fromhex("c11a514b67b0"), 1363896240),    # a tag: its content
        (bytes.fromhex("f7"), None),                    # undefined -> null
    ]
    for data, expected in cases:
        got = lua.execute(b"local v = cbor.decode(...); if v == json.null then return nil end; return v", data)
        assert got == expected, data.hex()
    # indefinite arrays and maps
    out = lua.execute(b"return assert(cbor.encode(assert(cbor.decode(...))))", bytes.fromhex("9f018202039f0405ffff"))
    assert cbor2.loads(out) == [1, [2, 3], [4, 5]]
    out = lua.execute(b"return assert(cbor.encode(assert(cbor.decode(...))))", bytes.fromhex("bf61610161629f0203ffff"))
    assert cbor2.loads(out) == {"a": 1, "b": [2, 3]}


def test_strings_are_text_when_utf8(lua):
    assert cbor2.loads(lua.execute(b"return cbor.encode('h\\195\\169')")) == "hé"
    assert cbor2.loads(lua.execute(b"return cbor.encode('\\237\\160\\128')")) == b"\xed\xa0\x80"  # a surrogate
    assert cbor2.loads(lua.execute(b"return cbor.encode('\\192\\128')")) == b"\xc0\x80"  # overlong


@pytest.mark.parametrize("bad", [b"", b"\x1c", b"\x82\x01", b"\x5a\xff\xff\xff\xff", b"\x01\x02", b"\xff",
                                 b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x1b\x00\x40\x00\x00\x00\x00\x00\x00", b"\x81" * 2000 + b"\x01",
                                 b"\xbf\x01\xff", b"\x5f\x01\xff"])
def test_bad_input_is_an_error(lua, bad):
    ok, err = lua.execute(b"local v, err = cbor.decode(...); return v == nil, err", bad)
    assert ok is True and err.startswith(b"cbor: "), bad
