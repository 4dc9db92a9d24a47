"""The two C shortcuts of the compiled request path, against what they replace.

* ``eightys.protocols.llhttp.RequestParser``: httptools' llhttp driven from C must
  give the core exactly what ``httptools.HttpRequestParser`` gives it, however the
  bytes are split (a differential test on a corpus of valid, pipelined, chunked,
  upgrading and malformed input).
* ``eightys.lua_call.LuaDispatch``: http.dispatch called through Lua's C API must
  return what lupa's call returns, raise Lua's errors, keep the Lua stack balanced,
  survive LuaJIT's compiled traces resuming coroutines, and allow a nested call.

A compiled install must actually use both (a silent fallback would be a 10-20%
slower server that every other test still passes on).
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

import eightys.protocols.http as http_adapter
import eightys.protocols.http_core as http_core
from eightys.lua_runtime import LuaRuntime

compiled = pytest.mark.skipif(not http_core.COMPILED, reason="eightys runs as plain Python here")


@compiled
def test_a_compiled_install_uses_both_shortcuts(tmp_path: Any) -> None:
    from eightys.lua_call import LuaDispatch
    from eightys.protocols.llhttp import RequestParser

    assert http_adapter.PARSER is RequestParser
    entry = tmp_path / "app.lua"
    entry.write_text("")
    runtime = LuaRuntime(_Host(), entry=str(entry))
    assert isinstance(runtime.direct_dispatch_http, LuaDispatch)
    assert LuaRuntime(_Host(), engine="lua54", entry=str(entry)).direct_dispatch_http is None


# -- the parser ------------------------------------------------------------------------------

CORPUS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: t\r\n\r\n",
    b"GET /old HTTP/1.0\r\nX: y\r\n\r\n",
    b"GET /ka HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"DELETE /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /e HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Space: \r\nX-Last:\r\n\r\n",
    b"POST /m HTTP/1.1\r\nhOsT: x\r\ncOnTeNt-LeNgTh: 3\r\nEXPECT: 100-Continue\r\n\r\nabc",
    b"GET /c HTTP/1.1\r\nHost: x\r\nCONNECTION: keep-alive\r\nX-Host: no\r\nHosts: no\r\n\r\n",
]
ENDINGS = [
    b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"a:b\r\n" * 200 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 33000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n",
    b"",
]


#: The Date line of error responses: the two runs of a stream may straddle a second.
_DATE_LINE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _outcome(parser: Any, data: bytes, cuts: list[int]) -> list:
    conn = http_core.HttpConnection(http_core.HttpLimits(), http_core.Clock(1000.0), 0, parser)
    seen: list = []
    start = 0
    for cut in [*cuts, len(data)]:
        for event in conn.receive_data(data[start:cut]):
            seen.append(event if type(event) is tuple else (event.status, event.reason))
        out = conn.data_to_send()
        seen.append(_DATE_LINE.sub(b"\r\nDate: -\r\n", out))
        for seq in range(conn.seq_out, conn.seq_in):  # answer what came, in order
            if conn.send(seq, b"R%d;" % seq, True):
                seen.append(_DATE_LINE.sub(b"\r\nDate: -\r\n", conn.data_to_send()))
        start = cut
    return seen + [http_core.STATE_NAMES[conn.state], conn.trailing]


@compiled
def test_the_c_driven_parser_gives_the_core_what_httptools_gives_it() -> None:
    from eightys.protocols import llhttp

    assert llhttp.available()
    rng = random.Random(80)
    for _ in range(400):
        stream = b"".join(rng.choice(CORPUS) for _ in range(rng.randint(1, 5))) \
            + rng.choice(ENDINGS)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        ours = _outcome(llhttp.RequestParser, stream, cuts)
        assert ours == _outcome(None, stream, cuts), (stream[:200], cuts)


# -- the Lua call ----------------------------------------------------------------------------


class _Host:
    """What LuaRuntime needs of its host for these calls (nothing reaches the network)."""

    def __init__(self) -> None:
        self.errors: list[bytes] = []
        self.sent: list[tuple] = []
        self.runtime: LuaRuntime | None = None

    def log_error(self, text: bytes) -> None:
        self.errors.append(text)

    def http_send(self, fd: int, seq: int, data: bytes, final: Any, close: Any = None) -> bool:
        self.sent.append((fd, seq, data, bool(final)))
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: None


APP = r"""
aio:http_get("/echo", function(fd, query)
    fd:http_response(200, "text/plain", "Hi, " .. (aio:parse_query(query).name or "?") .. "!")
end)
aio:http_get("/later", function(fd)
    aio:run(function() end)
    fd:http_response(201, "text/plain", "later")
end)
aio:http_get("/close", function(fd)
    fd:http_response(200, { ["Connection"] = "close", ["Content-Type"] = "text/plain" }, "bye")
end)
aio:http_get("/fail", function(fd) error("handler failed") end)
for _, method in ipairs({ "GET", "POST", "PUT", "DELETE", "PATCH" }) do
    aio:http_any(method, "/seen", function(fd, query, headers)
        local names = {}
        for name in pairs(headers) do names[#names + 1] = name .. "=" .. headers[name] end
        table.sort(names)
        fd:http_response(200, "text/plain", fd.method .. " " .. fd.path .. " ?" .. query
            .. " " .. table.concat(names, ","))
    end)
end
aio:http_get("/wait", function(fd)
    aio:await(function(resolve) WAITING[#WAITING + 1] = resolve end)
    fd:http_response(200, "text/plain", "waited")
end)
aio:http_get("/wait-fail", function(fd)
    aio:await(function(resolve) WAITING[#WAITING + 1] = resolve end)
    error("failed after waiting")
end)
aio:http_get("/forever", function(fd)
    aio:await(function(resolve) end) -- nothing will ever resolve it
end)
aio:http_get("/answer-then-wait", function(fd)
    fd:http_response(200, "text/plain", "early")
    aio:await(function(resolve) WAITING[#WAITING + 1] = resolve end)
end)
WAITING = {}
function WAKE_ALL()
    local all = WAITING
    WAITING = {}
    for i = 1, #all do all[i]() end
    return #all
end
"""


@pytest.fixture
def runtime(tmp_path: Any) -> LuaRuntime:
    entry = tmp_path / "app.lua"
    entry.write_text(APP)
    host = _Host()
    rt = LuaRuntime(host, entry=str(entry))
    host.runtime = rt
    rt.run_entry()
    if rt.direct_dispatch_http is None:
        pytest.skip("eightys.lua_call is not compiled (or the engine is not LuaJIT)")
    return rt


def _both(runtime: LuaRuntime, *args: Any) -> tuple[Any, Any]:
    return runtime.direct_dispatch_http(*args), runtime.dispatch_http(*args)


def _plain(out: Any) -> Any:
    # the Date line may change between the two calls
    return out.split(b"\r\n", 3)[::2] if isinstance(out, bytes) else out


def test_the_direct_call_returns_what_lupas_call_returns(runtime: LuaRuntime) -> None:
    host: _Host = runtime.host  # type: ignore[assignment]
    headers = b"Host\0x"
    direct, lupa = _both(runtime, 1, 0, b"GET", b"/echo?name=Abc", None, 1, headers)
    assert direct.endswith(b"\r\n\r\nHi, Abc!") and _plain(direct) == _plain(lupa)
    direct, lupa = _both(runtime, 1, 1, b"GET", b"/nowhere", b"", 1, headers)
    assert direct.startswith(b"HTTP/1.1 404") and _plain(direct) == _plain(lupa)
    # answered through http_send (Connection: close): False
    assert _both(runtime, 1, 2, b"GET", b"/close", None, 1, headers) == (False, False)
    assert [s[2].startswith(b"HTTP/1.1 200") for s in host.sent] == [True, True]
    # still working: None, and the handler finishes later through http_send
    assert _both(runtime, 2, 0, b"GET", b"/wait", None, 1, headers) == (None, None)
    # a handler's error is the handler's 500 (caught inside dispatch), logged with file:line
    direct, lupa = _both(runtime, 1, 3, b"GET", b"/fail", None, 1, headers)
    assert direct.startswith(b"HTTP/1.1 500") and lupa.startswith(b"HTTP/1.1 500")
    assert b"app.lua:" in host.errors[0] and b"handler failed" in host.errors[0]


def test_methods_urls_and_header_blocks_reach_lua_as_sent(runtime: LuaRuntime) -> None:
    # The C call pushes methods and a repeated header block from registry references
    # (kept from their second time on, by object) and splits the URL at its first
    # "?": whatever the order, Lua must see what each request carried.
    call = runtime.direct_dispatch_http
    methods = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]
    blocks = [b"host\0a", b"host\0b\0x-k\0v", b""]
    urls = [(b"/seen", b"/seen ?"), (b"/seen?", b"/seen ?"), (b"/seen?a=1?b", b"/seen ?a=1?b")]
    for i in range(600):
        method = methods[(i * 7) % 5] if i % 11 else bytes(methods[i % 5])  # new objects too
        block = blocks[i % 3] if i % 13 else bytes(bytearray(blocks[(i + 1) % 3]))
        url, seen = urls[(i // 3) % 3]
        out = call(1, i, method, url, b"" if method != b"GET" else None, 1, block)
        fields = sorted(
            f"{k.decode().lower()}={v.decode()}"
            for k, v in zip(block.split(b"\0")[::2], block.split(b"\0")[1::2]))
        assert out.endswith(b"\r\n\r\n" + method + b" " + seen + b" " + ",".join(fields).encode()), \
            (i, method, url, block, out)


def test_an_error_of_dispatch_itself_is_raised_with_luas_message(runtime: LuaRuntime) -> None:
    # a header block the core never makes ("\0\0": no value after a name)
    with pytest.raises(runtime.lupa.LuaError, match=r"(?s)http.lua:\d+: attempt .*stack traceback"):
        runtime.direct_dispatch_http(1, 0, b"GET", b"/echo", b"", 1, b"\0\0")
    # the stack is balanced after the error: the next call is served
    assert runtime.direct_dispatch_http(1, 1, b"GET", b"/echo?name=z", None, 1, b"").endswith(b"Hi, z!")


def test_compiled_traces_and_coroutines_survive_many_calls(runtime: LuaRuntime) -> None:
    # LuaJIT compiles the hot path after a few dozen calls; handlers run in pooled
    # coroutines (and /later starts another task): what crashed on a non-main thread
    call = runtime.direct_dispatch_http
    before = runtime.execute(b"collectgarbage() return collectgarbage('count')")
    for i in range(30000):
        out = call(1, i, b"GET", b"/later" if i % 3 else b"/echo?name=n", None, 1, b"Host\0x")
        assert out[-5:] in (b"later", b"i, n!")
    after = runtime.execute(b"collectgarbage() return collectgarbage('count')")
    assert after < before + 512  # KiB: no stack or registry growth per call


def test_a_handler_that_waits_is_answered_later_through_http_send(runtime: LuaRuntime) -> None:
    host: _Host = runtime.host  # type: ignore[assignment]
    call = runtime.direct_dispatch_http
    assert call(3, 0, b"GET", b"/wait", None, 1, b"") is None
    # what answered before waiting is returned at once
    assert call(3, 1, b"GET", b"/answer-then-wait", None, 1, b"").endswith(b"early")
    assert host.sent == []
    assert runtime.execute(b"return WAKE_ALL()") == 2
    assert [(fd, seq, data[-6:]) for fd, seq, data, _ in host.sent] == [(3, 0, b"waited")]
    # after waiting, a handler's error is still its request's 500, logged once
    assert call(3, 2, b"GET", b"/wait-fail", None, 1, b"") is None
    runtime.execute(b"WAKE_ALL()")
    assert host.sent[-1][:2] == (3, 2) and host.sent[-1][2].startswith(b"HTTP/1.1 500")
    assert len(host.errors) == 1 and b"failed after waiting" in host.errors[0]
    assert b"app.lua:" in host.errors[0]


def test_threads_of_waiting_handlers_are_not_reused_and_are_collected(runtime: LuaRuntime) -> None:
    host: _Host = runtime.host  # type: ignore[assignment]
    call = runtime.direct_dispatch_http
    count = b"collectgarbage() collectgarbage() return collectgarbage('count')"
    call(5, 0, b"GET", b"/echo?name=warm", None, 1, b"")
    before = runtime.execute(count)
    for round_ in range(3):
        for seq in range(1000):
            assert call(5, seq, b"GET", b"/wait", None, 1, b"") is None
        # the pooled threads still serve quick requests meanwhile
        assert call(6, round_, b"GET", b"/echo?name=q", None, 1, b"").endswith(b"Hi, q!")
        assert runtime.execute(b"return WAKE_ALL()") == 1000
        runtime.dispatch_http_gone(5)
    assert len(host.sent) == 3000 and all(s[2].endswith(b"waited") for s in host.sent)
    assert runtime.execute(count) < before + 256  # KiB: the 3,000 threads are gone
    # handlers waiting on something that is dropped: once their connection is gone,
    # nothing holds their threads
    for seq in range(2000):
        assert call(7, seq, b"GET", b"/forever", None, 1, b"") is None
    assert runtime.execute(count) > before + 256
    runtime.dispatch_http_gone(7)
    assert runtime.execute(count) < before + 256


def test_a_nested_call_from_lua_through_python_is_served(runtime: LuaRuntime) -> None:
    # Lua -> Python -> the direct dispatch again (a handler that calls a host function
    # which serves another request inside it): both answers, and the stack restored
    inner: list[Any] = []

    def serve_inner() -> None:
        inner.append(runtime.direct_dispatch_http(9, 0, b"GET", b"/echo?name=in", None, 1, b""))

    runtime.lua.globals()[b"SERVE_INNER"] = serve_inner
    runtime.execute(b'aio:http_get("/outer", function(fd) SERVE_INNER() '
                    b'fd:http_response(200, "text/plain", "out") end)')
    outer = runtime.direct_dispatch_http(1, 0, b"GET", b"/outer", None, 1, b"")
    assert outer.endswith(b"out") and inner[0].endswith(b"Hi, in!")
    assert runtime.direct_dispatch_http(1, 1, b"GET", b"/echo?name=x", None, 1, b"").endswith(b"Hi, x!")
