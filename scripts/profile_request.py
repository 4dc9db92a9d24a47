#!/usr/bin/env python3
"""Instructions per HTTP request, by layer: the hot path measured without the kernel.

    .venv/bin/python scripts/profile_request.py               # callgrind, compiled core
    .venv/bin/python scripts/profile_request.py --pure        # the pure-Python fallback
    .venv/bin/python scripts/profile_request.py --no-valgrind # quick check, wall clock
    .venv/bin/python scripts/profile_request.py --keep DIR    # keep the callgrind dumps

One worker's HTTP stack runs in this process: a real :class:`LuaRuntime` with
``server/simple_http.lua`` loaded, a real :class:`ConnectionHost` and
:class:`HttpProtocol`, and a fake transport (its ``write`` is a C-level
``deque.append``). What a real worker adds, uvloop's read path and the write
(``send(2)`` through :mod:`eightys.protocols.sockwrite`), is measured by
``scripts/profile_worker.sh``, on a running worker. The same bytes are fed to ``data_received`` again and again on one
keep-alive connection, as wrk does:

* ``single``: one request per read (``wrk -c 50``);
* ``pipelined``: 16 requests per read (the bench's ``pipeline 16`` load).

Each mode runs ``--warmup`` reads first (LuaJIT compiles its traces, the header
memo fills), then ``--requests`` requests are measured. Under callgrind the counters
are zeroed when the measured loop starts and dumped when it ends (the loop calls
``os.getppid()`` and ``os.getpgrp()`` as markers, ``--zero-before``/``--dump-before``),
so start-up costs nothing in the figures. Instruction counts do not depend on the
machine's load, unlike wall-clock figures: this is the number to cut.

The breakdown is callgrind's inclusive cost of the functions that mark each layer
(see ``LAYERS``); it is available for the compiled core (an interpreted core's
frames are all ``_PyEval_EvalFrameDefault``: only the total, httptools and the Lua
call are told apart there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "server" / "simple_http.lua"
#: What wrk sends in the bench (``-H "Connection: keep-alive"``).
REQUEST = (b"GET /echo?name=Abcde HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"Connection: keep-alive\r\n\r\n")
EXPECTED = b"Hi, Abcde!"
PIPELINE = 16

#: Layers, as callgrind function-name patterns (regular expressions on the names
#: callgrind_annotate prints); each figure is the inclusive cost of the first
#: function matching, per request. "rest" lines are derived in :func:`breakdown`.
LAYERS: dict[str, str] = {
    "data_received": r"HttpProtocol_\d*data_received$",
    "receive_data": r"HttpConnection_receive_data$|HttpConnection_\d*receive_data$",
    "feed_data": r"HttpParser_\d*feed_data$|RequestParser_\d*feed_data$",
    "on_message_begin": r"HttpConnection_\d*on_message_begin$",
    "on_url": r"HttpConnection_\d*on_url$",
    "on_header": r"HttpConnection_\d*on_header$",
    "on_headers_complete": r"HttpConnection_\d*on_headers_complete$",
    "on_message_complete": r"HttpConnection_\d*on_message_complete$",
    "dispatch_events": r"HttpProtocol__dispatch_events$",
    "lua_pcall": r"^lua_pcall$",
    "lua_resume": r"^lua_resume$",  # eightys.lua_call runs http.serve on a thread
    "lupa_call": r"^_PyObject_MakeTpCall$",  # lupa's call object: its tp_call is not exported
    "direct_call": r"LuaDispatch_call$",  # eightys/lua_call.pyx (compiled, LuaJIT)
    "core_send": r"HttpConnection_send$",
    "flush": r"HttpProtocol__flush$",
    "write": r"^deque_append$",
}


# -- the in-process server -------------------------------------------------------------


class FakeTransport:
    """What HttpProtocol needs of an asyncio transport, writes kept cheap."""

    def __init__(self) -> None:
        self.sink: deque[bytes] = deque(maxlen=1)
        self.write = self.sink.append  # C-level: the write costs no Python frame
        self.closed = False

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class ProfileHost:
    """The Lua side's host: only what the echo app reaches (http_send, logging)."""

    def __init__(self, connections: dict[int, Any]) -> None:
        self.connections = connections
        self.errors: list[bytes] = []

    def http_send(self, fd: Any, seq: Any, data: bytes, final: Any, close: Any = None) -> bool:
        return self.connections[fd].send(seq, data, bool(final), close)

    def http_drain(self, fd: Any, callback: Any) -> None:
        raise RuntimeError("not in the profile")

    def log_error(self, text: bytes) -> None:
        self.errors.append(text)
        sys.stderr.write(text.decode("utf-8", "replace") + "\n")

    def log_output(self, text: bytes) -> None:
        sys.stdout.write(text.decode("utf-8", "replace") + "\n")

    def start_timer(self, delay: Any, callback: Any) -> int:
        raise RuntimeError("not in the profile")

    def cancel_timer(self, timer_id: Any) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: (None, b"not in the profile")


def build(entry: Path, bare: bool = False) -> tuple[Any, Any, FakeTransport]:
    """A protocol on a fake transport, with the entry script loaded: (protocol, host, transport)."""
    import asyncio
    import logging

    import uvloop

    from eightys import wire
    from eightys.lua_runtime import LuaRuntime
    from eightys.protocols.host import ConnectionHost
    from eightys.protocols.http import HttpProtocol
    from eightys.protocols.http_core import HttpLimits

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    chost = ConnectionHost(loop, HttpLimits(), logging.getLogger("profile"))
    lhost = ProfileHost(chost.connections)
    runtime = LuaRuntime(lhost, entry=str(entry))  # type: ignore[arg-type]
    chost.dispatch_http = runtime.dispatch_http
    chost.direct_dispatch_http = runtime.direct_dispatch_http
    chost.dispatch_call = runtime.dispatch_call
    chost.http_timeout = runtime.dispatch_http_timeout
    chost.http_gone = runtime.dispatch_http_gone
    runtime.run_entry()
    runtime.set_date(wire.date_line())
    if bare:  # the floor: a Lua function that returns a constant response
        chost.direct_dispatch_http = None
        chost.dispatch_http = runtime.execute(
            b'local r = "HTTP/1.1 200 OK\\r\\nContent-Type: text/plain; charset=utf-8\\r\\n'
            b'Content-Length: 10\\r\\n\\r\\nHi, Abcde!" return function() return r end')
    protocol = HttpProtocol(chost, chost.new_fd())
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, lhost, transport


def check(protocol: Any, transport: FakeTransport, data: bytes, count: int) -> None:
    """One read must produce ``count`` complete echo responses in one write."""
    protocol.data_received(data)
    out = transport.sink[-1]
    if out.count(b"HTTP/1.1 200 OK\r\n") != count or out.count(EXPECTED) != count:
        raise SystemExit(f"unexpected response to the profiled request:\n{out[:400]!r}")


def child(args: argparse.Namespace) -> None:
    """Run the measured loops (under callgrind when the parent started us there)."""
    import time

    protocol, lhost, transport = build(Path(args.entry), args.bare)
    results = []
    for mode, per_read in (("single", 1), ("pipelined", PIPELINE)):
        data = REQUEST * per_read
        reads = max(1, args.requests // per_read)
        check(protocol, transport, data, per_read)
        feed = protocol.data_received
        for _ in range(max(1, args.warmup // per_read)):
            feed(data)
        os.getppid()  # callgrind: --zero-before
        start = time.perf_counter()
        for _ in range(reads):
            feed(data)
        elapsed = time.perf_counter() - start
        os.getpgrp()  # callgrind: --dump-before
        check(protocol, transport, data, per_read)
        results.append({"mode": mode, "requests": reads * per_read, "seconds": elapsed})
    if lhost.errors:
        raise SystemExit("Lua errors while profiling")
    Path(args.result).write_text(json.dumps(results))


# -- reading callgrind's output -----------------------------------------------------------


def inclusive_costs(dump: Path) -> tuple[int, dict[str, int]]:
    """(program total, {function name: inclusive instructions}) of one callgrind dump."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                          "--context=0", str(dump)], capture_output=True, text=True,
                         check=True).stdout
    total = 0
    costs: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+PROGRAM TOTALS", line) \
            or re.match(r"\s*([\d,]+)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*?:(\S+?)(?:'\d+)?(?:\s+\[.*\])?$", line)
        if m:
            name = m.group(2)
            cost = int(m.group(1).replace(",", ""))
            if cost > costs.get(name, -1):
                costs[name] = cost
    return total, costs


def layer_cost(costs: dict[str, int], pattern: str) -> int:
    """The largest inclusive cost among functions matching ``pattern`` (0: none)."""
    rx = re.compile(pattern)
    return max((c for name, c in costs.items() if rx.search(name)), default=0)


def breakdown(total: int, costs: dict[str, int], n: int) -> list[tuple[str, float]]:
    """Per-request rows: the layers of the request path, each without its children."""
    per = {name: layer_cost(costs, rx) / n for name, rx in LAYERS.items()}
    callbacks = sum(per[k] for k in ("on_message_begin", "on_url", "on_header",
                                     "on_headers_complete", "on_message_complete"))
    rows = [("total (the measured loop)", total / n)]
    if per["data_received"]:
        # the call into Lua: eightys.lua_call when built (LuaJIT), else lupa's
        lupa = per["direct_call"] or per["lupa_call"]
        lua = per["lua_resume"] if per["direct_call"] else per["lua_pcall"]
        rows += [
            ("llhttp (+ its callback glue)", per["feed_data"] - callbacks),
            ("core callbacks (on_url, on_header, ...)", callbacks),
            ("core receive_data, without httptools", per["receive_data"] - per["feed_data"]),
            ("call into Lua (arguments, results)" if per["direct_call"]
             else "lupa call (arguments, results, locking)", lupa - lua),
            ("Lua (dispatch, routing, handler, response)", lua),
            ("adapter dispatch loop, core.send", per["dispatch_events"] - lupa),
            ("flush + transport.write", per["flush"]),
            ("data_received, rest", per["data_received"] - per["receive_data"]
             - per["dispatch_events"] - per["flush"]),
            ("harness loop", total / n - per["data_received"]),
        ]
    else:  # interpreted core: Python frames have no names of their own
        rows += [
            ("httptools feed_data, callbacks included", per["feed_data"]),
            ("Lua (lua_pcall)", per["lua_pcall"]),
        ]
    return rows


def parent(args: argparse.Namespace) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="eightys-cg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / "result.json"
    env = dict(os.environ)
    if args.pure:
        env["EIGHTYS_PURE_PYTHON"] = "1"
    cmd = ["valgrind", "--tool=callgrind", "--quiet",
           f"--callgrind-out-file={workdir}/callgrind.out",
           "--zero-before=getppid", "--dump-before=getpgrp",
           sys.executable, __file__, "--child", "--result", str(result),
           "--requests", str(args.requests), "--warmup", str(args.warmup),
           "--entry", args.entry] + (["--bare"] if args.bare else [])
    subprocess.run(cmd, env=env, check=True)
    runs = json.loads(result.read_text())
    dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    label = "pure-Python fallback" if args.pure else "compiled core"
    for run, dump in zip(runs, dumps):
        total, costs = inclusive_costs(dump)
        n = run["requests"]
        print(f"\n{run['mode']} ({n:,} requests, {label}): instructions per request")
        for name, value in breakdown(total, costs, n):
            print(f"  {value:>9,.0f}  {name}")
        if args.functions:
            rx = re.compile(args.functions)
            print("  functions matching --functions (inclusive):")
            for name, cost in sorted(costs.items(), key=lambda kv: -kv[1]):
                if rx.search(name) and cost >= n:
                    print(f"  {cost / n:>9,.0f}  {name}")
    if not args.keep:
        shutil.rmtree(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=5000, help="requests before measuring")
    parser.add_argument("--pure", action="store_true", help="profile the pure-Python fallback")
    parser.add_argument("--no-valgrind", action="store_true",
                        help="run in-process and print wall-clock µs per request")
    parser.add_argument("--functions", metavar="REGEX",
                        help="also list the inclusive cost of every function matching REGEX")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR")
    parser.add_argument("--entry", default=str(ENTRY), help="the Lua app (default: simple_http.lua)")
    parser.add_argument("--bare", action="store_true",
                        help="replace the Lua dispatcher by a function returning a constant")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        child(args)
    elif args.no_valgrind:
        if args.pure:
            os.environ["EIGHTYS_PURE_PYTHON"] = "1"
        with tempfile.TemporaryDirectory() as tmp:
            args.result = str(Path(tmp) / "result.json")
            child(args)
            for run in json.loads(Path(args.result).read_text()):
                print(f"{run['mode']}: {run['seconds'] / run['requests'] * 1e6:.2f} µs per request "
                      f"(wall clock: meaningless on a loaded machine)")
    else:
        parent(args)


if __name__ == "__main__":
    main()
