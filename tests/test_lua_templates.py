"""Lua-level tests of eightys/lua/eightys/templates.lua (the `.dyn.` template
engine), on LuaJIT 2.1 and Lua 5.4.

Each test function of tests/lua/test_templates.lua is one pytest case per
engine, run by the in-process harness of test_lua_aio.py (tests/lua/harness.lua,
luahost.py). Fixture templates are under tests/templates/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eightys.lua_runtime import ENGINES, display_path
from luahost import LuaHost

LUA_DIR = Path(__file__).parent / "lua"
HARNESS = display_path(str(LUA_DIR / "harness.lua")).encode()
TEST_FILE = display_path(str(LUA_DIR / "test_templates.lua")).encode()
#: How long one Lua test may take before it counts as hung.
TIMEOUT = 5.0


def load_harness(host: LuaHost) -> object:
    return host.runtime.lua.execute(b"return assert(loadfile(...))()", HARNESS)


def collect() -> list[str]:
    """Test names of test_templates.lua, in definition order."""
    with LuaHost() as host:
        return [name.decode() for name in load_harness(host).list(TEST_FILE).values()]


NAMES = collect()


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("name", NAMES)
def test_templates(name: str, engine: str) -> None:
    with LuaHost(engine) as host:
        harness = load_harness(host)
        state = host.call(harness.start, TEST_FILE, name.encode(), host.claim_error)
        host.run_until(lambda: state[b"finished"] or state[b"failure"], TIMEOUT,
                       what=f"{name} to finish (a render waiting for a done() that never comes?)")
        failure = state[b"failure"]
        if failure is not None:
            text = failure.decode("utf-8", "replace")
            logged = "".join(f"\nlog_error: {line}" for line in host.errors if text not in line)
            pytest.fail(text + logged, pytrace=False)
        if host.errors:
            pytest.fail("unexpected log_error (claim expected ones with t.logged):\n"
                        + "\n".join(host.errors), pytrace=False)
