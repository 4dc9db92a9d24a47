"""Lua-level tests of eightys/lua/aio.lua, on LuaJIT 2.1 and Lua 5.4.

Every test function in tests/lua/test_*.lua is one pytest case per engine; it
runs in a fresh Lua state on a real uvloop loop (see luahost.py), no sockets or
processes. The Lua test convention is described in tests/lua/harness.lua.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eightys.lua_runtime import ENGINES, display_path
from luahost import LuaHost

LUA_DIR = Path(__file__).parent / "lua"
HARNESS = display_path(str(LUA_DIR / "harness.lua")).encode()
#: How long one Lua test may take before it counts as hung.
TIMEOUT = 2.0


def load_harness(host: LuaHost) -> object:
    return host.runtime.lua.execute(b"return assert(loadfile(...))()", HARNESS)


def collect() -> list[tuple[bytes, str]]:
    """(path as Lua shows it, test name) for every Lua test, in file then definition order."""
    cases = []
    with LuaHost() as host:
        harness = load_harness(host)
        for file in sorted(LUA_DIR.glob("test_*.lua")):
            path = display_path(str(file)).encode()
            for name in harness.list(path).values():
                cases.append((path, name.decode()))
    return cases


CASES = collect()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize(
    ("path", "name"), CASES,
    ids=[f"{Path(p.decode()).stem.removeprefix('test_')}.{n}" for p, n in CASES])
def test_lua(path: bytes, name: str, engine: str) -> None:
    with LuaHost(engine) as host:
        harness = load_harness(host)
        state = host.call(harness.start, path, name.encode(), host.claim_error)
        host.run_until(lambda: state[b"finished"] or state[b"failure"], TIMEOUT,
                       what=f"{name} to finish (a t.wait() without t.done(), or a stuck await?)")
        failure = state[b"failure"]
        if failure is not None:
            text = failure.decode("utf-8", "replace")
            logged = "".join(f"\nlog_error: {line}" for line in host.errors if text not in line)
            pytest.fail(text + logged, pytrace=False)
        if host.errors:
            pytest.fail("unexpected log_error (claim expected ones with t.logged):\n"
                        + "\n".join(host.errors), pytrace=False)
