"""The LuaLS type stubs: `eightys stubs DIR` writes them, each is valid Lua with
`---@meta`, and every public function of the Lua API (in the library's source, in
the README's tables, and in the net/codec/crypto tables a worker installs) has a
stub entry. (lua-language-server itself is not on npm or Debian here, so
`--check` cannot run in the suite.)"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO
from eightys.stubs import stub_files
from luahost import LuaHost

LUA = REPO / "eightys" / "lua"
# the library's global or module tables -> the names the stubs use for them
SOURCE_OWNERS = {"aio": "aio", "aiosocket": "aiosocket", "nodes": "nodes", "dns": "dns",
                 "http_client": "http_client", "httpd": "httpd", "mysql": "mysql",
                 "orm": "orm", "Client": "mysqlclient", "Repo": "ormrepo",
                 "Request": "httprequest", "Stream": "httpstream", "Timer": "aiotimer",
                 "Promise": "aiopromise", "WebSocket": "websocket"}
# internal helpers, not API
INTERNAL = {"aio:coroutine_pool", "Repo.delete_object", "Template:error_context",
            "Template:render"}
README_OWNERS = {"fd": "httprequest", "stream": "httpstream", "client": "mysqlclient",
                 "repo": "ormrepo", "ws": "websocket", "router": "wamprouter",
                 "service": "lappsservice"}


def stub_text() -> str:
    return "\n".join(path.read_text() for path in stub_files())


def stubbed() -> set[str]:
    found = set()
    for owner, sep, name in re.findall(r"^function (\w+)([:.])(\w+)\(", stub_text(), re.M):
        found.add(f"{owner}{sep}{name}")
        found.add(f"{owner}.{name}")
        found.add(f"{owner}:{name}")
    for name in re.findall(r"^function (\w+)\(", stub_text(), re.M):
        found.add(name)
    for name in re.findall(r"^(\w+(?:\.\w+)?) = ", stub_text(), re.M):
        found.add(name)
    return found


def test_the_command_writes_every_stub(run_eightys, tmp_path):
    target = tmp_path / "stubs"
    result = run_eightys("stubs", str(target))
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in target.iterdir())
    assert written == sorted(p.name for p in stub_files()) and len(written) >= 10
    assert "workspace.library" in result.stdout
    assert run_eightys("stubs").returncode == 2


def test_each_stub_is_valid_lua_with_meta():
    import lupa.luajit21

    lua = lupa.luajit21.LuaRuntime()
    load = lua.eval("function(s, name) local f, err = loadstring(s, name) return err end")
    for path in stub_files():
        text = path.read_text()
        assert text.startswith("---@meta"), path.name
        assert load(text, path.name) is None, path.name


def test_every_public_library_function_has_a_stub():
    sources = list(LUA.glob("*.lua")) + list((LUA / "eightys").glob("*.lua"))
    missing = []
    have = stubbed()
    for path in sources:
        for owner, sep, name in re.findall(r"^function (\w+)([:.])(\w+)\(", path.read_text(), re.M):
            key = f"{owner}{sep}{name}"
            if owner not in SOURCE_OWNERS or name.startswith("_") or key in INTERNAL:
                continue
            cls = "redisclient" if path.name == "redis.lua" and owner == "Client" \
                else SOURCE_OWNERS[owner]
            if f"{cls}{sep}{name}" not in have:
                missing.append(f"{path.name}: {key}")
    assert not missing, missing


def test_every_function_the_readme_documents_has_a_stub():
    readme = (REPO / "README.md").read_text()
    have = stubbed()
    missing = set()
    for owner, sep, name in re.findall(r"`(\w+)([:.])(\w+)\(", readme):
        owner = README_OWNERS.get(owner, owner)
        if owner in ("string", "table", "os", "ctx", "coroutine", "math", "example", "tx",
                     "sock", "templates", "p", "store"):
            continue  # Lua's own, or names in examples
        if owner == "mysqlclient" and (f"redisclient{sep}{name}" in have or name.isupper()
                                       or name in ("get", "hgetall", "multi")):
            continue  # `client:` is a Redis client there: every command is a method
        if f"{owner}{sep}{name}" not in have:
            missing.add(f"{owner}{sep}{name}")
    assert not missing, sorted(missing)


def test_every_installed_net_codec_crypto_entry_has_a_stub():
    have = stubbed()
    with LuaHost() as host:
        g = host.runtime.lua.globals()
        for table in (b"net", b"codec", b"crypto"):
            for name in g[table].keys():
                assert f"{table.decode()}.{name.decode()}" in have, (table, name)
        for name in (b"NODE_ID", b"NILFD", b"S80_FD_SOCKET", b"S80_FD_PIPE", b"S80_RELOAD",
                     b"WORKERID", b"WORKERS", b"PORT", b"NODE", b"ENTRYPOINT", b"ELFD"):
            assert g[name] is not None and name.decode() in have, name
    for hook in ("on_init", "on_accept", "on_data", "on_write", "on_close", "on_message"):
        assert hook in have


@pytest.mark.skipif(shutil.which("lua-language-server") is None,
                    reason="lua-language-server is not installed (not on npm or Debian here)")
def test_lua_language_server_checks_an_app_against_the_stubs(tmp_path):
    (tmp_path / "app.lua").write_text(
        'aio:http_get("/", function(fd) fd:http_response(200, "text/plain", "hi") end)\n')
    (tmp_path / ".luarc.json").write_text(
        '{"workspace.library": ["%s"], "runtime.version": "LuaJIT"}'
        % stub_files()[0].parent)
    result = subprocess.run(["lua-language-server", "--check", str(tmp_path),
                             "--checklevel=Warning"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
