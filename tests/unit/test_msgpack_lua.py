"""eightys/lua/eightys/msgpack.lua on LuaJIT 2.1 and Lua 5.4, checked against the
`msgpack` Python package both ways."""

from __future__ import annotations

import math
from pathlib import Path

import lupa.lua54
import lupa.luajit21
import msgpack
import pytest

LUA = Path(__file__).resolve().parents[2] / "eightys" / "lua"
RUNTIMES = {"luajit": lupa.luajit21, "lua54": lupa.lua54}

VALUES = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53,
    -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**40, -2**53,
    1.5, -0.25, 1e300, True, False, None,
    "", "a", "x" * 31, "x" * 32, "é" * 200, "y" * 70000, b"\xff", b"\x00\xfe" * 200, b"\xc0" * 70000,
    [], [1, [2, [3]]], list(range(20)), list(range(70000)),
    {}, {"a": 1, "b": [None, True]}, {f"k{i}": i for i in range(20)},
]


@pytest.fixture(params=sorted(RUNTIMES))
def lua(request):
    rt = RUNTIMES[request.param].LuaRuntime(encoding=None, unpack_returned_tuples=True)
    rt.execute(b"package.path = ...", f"{LUA}/?.lua".encode())
    rt.execute(b"unpack = unpack or table.unpack; mp = require('eightys.msgpack'); json = require('json')")
    return rt


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:30])
def test_roundtrip_against_python(lua, value):
    packed = msgpack.packb(value)
    # Python -> Lua -> Python: decoding and re-encoding keeps the value
    again = lua.execute(b"local v, err = mp.decode(...); assert(err == nil, err); return assert(mp.encode(v))",
                        packed)
    decoded = msgpack.unpackb(again, strict_map_key=False)
    if isinstance(value, float):
        assert math.isclose(decoded, value)
    else:
        assert decoded == value


def test_python_encodings_of_other_widths_decode(lua):
    # float32, bin, and non-minimal integer widths come from other encoders
    for packed, expected in ((b"\xca\x3f\xc0\x00\x00", 1.5), (b"\xc4\x03abc", b"abc"),
                             (b"\xcd\x00\x01", 1), (b"\xd1\xff\xff", -1), (b"\xdc\x00\x01\x05", None)):
        got = lua.execute(b"local v = assert(mp.decode(...)); if type(v) == 'table' then return v[1] end; return v",
                          packed)
        assert got == (expected if expected is not None else 5)


def test_empty_tables_keep_their_kind(lua):
    out = lua.execute(b"return mp.encode({ json.array(), json.object(), {} })")
    assert msgpack.unpackb(out) == [[], {}, {}]
    # decoded empty arrays and maps re-encode as what they were
    assert lua.execute(b"return mp.encode(mp.decode(...))", b"\x92\x90\x80") == b"\x92\x90\x80"


@pytest.mark.parametrize("bad", [b"", b"\xc1", b"\x92\x01", b"\xda\x00\x05ab", b"\x01\x02",
                                 b"\x91" * 2000 + b"\x01", b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, b"\x81\xc0\x01"])
def test_bad_input_is_an_error_not_a_crash(lua, bad):
    ok, err = lua.execute(b"local v, err = mp.decode(...); return v == nil, err", bad)
    assert ok is True and err.startswith(b"msgpack: ")


def test_unencodable_values(lua):
    for expr in (b"function() end", b"0/0", b"math.huge"):
        ok, err = lua.execute(b"local v, err = mp.encode({" + expr + b"}); return v == nil, err")
        assert ok is True and err.startswith(b"msgpack: ")
