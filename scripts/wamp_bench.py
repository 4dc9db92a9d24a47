#!/usr/bin/env python3
"""WAMP router benchmark: calls/s and events/s through ``server/wamp.lua`` with
autobahn-python (asyncio, uvloop) clients, and through crossbar in the same run
when it is installed.

    .venv/bin/python scripts/wamp_bench.py                 # both serializers, eightys (+ crossbar)
    .venv/bin/python scripts/wamp_bench.py --smoke         # a few seconds, small counts
    .venv/bin/python scripts/wamp_bench.py --install-crossbar   # crossbar into scripts/.crossbar/

Parts:
* calls: one callee session and ``--callers`` (8) caller sessions, each keeping
  ``--window`` (16) calls in flight to a procedure that adds two numbers; completed
  calls per second. Every call is CALL -> INVOCATION -> YIELD -> RESULT through the router.
* events: one publisher and ``--subscribers`` (10) subscriber sessions; the
  publisher sends bursts of ``--burst`` (200) events and waits until every
  subscriber has them all; events delivered per second (each event counts once
  per subscriber).
* cross-worker calls: the same as ``calls`` with ``-c 2``, the callee on worker 0
  and every caller on worker 1 (each call crosses the master twice).

The router is pinned to CPU 0 and the clients (this process) to CPU 1 when there
are two CPUs. The clients are Python: on a 2-CPU machine they, not the router, are
usually the limit; compare eightys and crossbar within one run. ``run(args)``
returns the figures as a dict (scripts/bench.py can call it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from ws_bench import Server, free_port  # noqa: E402

import uvloop  # noqa: E402

from wamp_client import join, leave, worker_of  # noqa: E402

PYTHON = sys.executable
CROSSBAR_VENV = ROOT / "scripts" / ".crossbar"


# -- routers --------------------------------------------------------------------------------


def eightys(pin: list[str], workers: int = 1) -> Server:
    """server/wamp.lua on a free port."""
    port = free_port()
    server = Server("eightys", [*pin, PYTHON, "-m", "eightys", "server/wamp.lua", "-h", "127.0.0.1",
                                "-p", str(port), "-c", str(workers)], port, workers)
    server.path = "/ws"
    return server


def crossbar_executable() -> str | None:
    """crossbar from $CROSSBAR, scripts/.crossbar/ or PATH."""
    for candidate in (os.environ.get("CROSSBAR"), str(CROSSBAR_VENV / "bin" / "crossbar"),
                      shutil.which("crossbar")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_crossbar() -> str | None:
    """pip install crossbar into its own venv (scripts/.crossbar/); its path, or None."""
    subprocess.run([PYTHON, "-m", "venv", str(CROSSBAR_VENV)], check=True)
    pip = [str(CROSSBAR_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    done = subprocess.run([*pip, "crossbar"])
    return crossbar_executable() if done.returncode == 0 else None


def crossbar(pin: list[str], executable: str) -> Server:
    """A crossbar router with realm1 open to anonymous sessions, one router worker."""
    port = free_port()
    node = Path(tempfile.mkdtemp(prefix="crossbar-"))
    (node / ".crossbar").mkdir()
    allow = {"call": True, "register": True, "publish": True, "subscribe": True}
    config = {"version": 2, "controller": {}, "workers": [{
        "type": "router",
        "realms": [{"name": "realm1", "roles": [{"name": "anonymous", "permissions": [
            {"uri": "", "match": "prefix", "allow": allow,
             "disclose": {"caller": False, "publisher": False}, "cache": True}]}]}],
        "transports": [{"type": "websocket", "endpoint": {"type": "tcp", "port": port,
                                                          "interface": "127.0.0.1"},
                        "serializers": ["json", "msgpack"]}],
    }]}
    (node / ".crossbar" / "config.json").write_text(json.dumps(config))
    server = Server("crossbar", [*pin, executable, "start", "--cbdir", str(node / ".crossbar")], port)
    server.path = "/"
    return server


# -- load -----------------------------------------------------------------------------------


async def call_rate(server: Server, serializer: str, callers: int, window: int, duration: float,
                    cross_worker: bool = False) -> float:
    """Completed calls per second (see the module docstring)."""
    callee, caller_sessions, extra = None, [], []
    for _ in range(400 if cross_worker else callers + 1):
        s, d = await join(server.port, serializer=serializer, path=server.path)
        if callee is None and (not cross_worker or worker_of(d) == 0):
            callee = s
        elif len(caller_sessions) < callers and (not cross_worker or worker_of(d) == 1):
            caller_sessions.append(s)
        else:
            extra.append(s)
        if callee is not None and len(caller_sessions) == callers:
            break
    await leave(*extra)
    if callee is None or len(caller_sessions) < callers:
        raise RuntimeError("could not place the sessions on the workers")
    await callee.register(lambda a, b: a + b, "bench.add")
    await asyncio.sleep(0.2)  # the registration reaches the other worker
    done = 0
    stop_at = time.monotonic() + duration

    async def lane(s):
        nonlocal done
        while time.monotonic() < stop_at:
            await s.call("bench.add", 1, 2)
            done += 1

    await asyncio.gather(*(s.call("bench.add", 0, 0) for s in caller_sessions))  # warm
    begin = time.monotonic()
    await asyncio.gather(*(lane(s) for s in caller_sessions for _ in range(window)))
    elapsed = time.monotonic() - begin
    await leave(callee, *caller_sessions)
    return done / elapsed


async def event_rate(server: Server, serializer: str, subscribers: int, burst: int,
                     duration: float) -> float:
    """Events delivered per second (see the module docstring)."""
    publisher, _ = await join(server.port, serializer=serializer, path=server.path)
    subs = [(await join(server.port, serializer=serializer, path=server.path))[0]
            for _ in range(subscribers)]
    received = 0
    target = 0
    reached = asyncio.Event()

    def on_event(_n):
        nonlocal received
        received += 1
        if received >= target:
            reached.set()

    for s in subs:
        await s.subscribe(on_event, "bench.topic")
    begin = time.monotonic()
    stop_at = begin + duration
    while time.monotonic() < stop_at:
        target += burst * subscribers
        reached.clear()
        for i in range(burst):
            publisher.publish("bench.topic", i)
        await asyncio.wait_for(reached.wait(), 30)
    elapsed = time.monotonic() - begin
    await leave(publisher, *subs)
    return received / elapsed


# -- driver ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns {part: {serializer: {router: rate}}} (and prints it)."""
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    pin = ["taskset", "-c", "0"] if two_cpus else []
    if two_cpus:
        os.sched_setaffinity(0, {1})
    cb = None if args.no_crossbar else crossbar_executable()
    makers = [("eightys", lambda: eightys(pin))]
    if cb:
        makers.append(("crossbar", lambda: crossbar(pin, cb)))
    results: dict[str, Any] = {"calls": {}, "events": {}, "cross_worker_calls": {}}
    for serializer in args.serializers.split(","):
        for name, make in makers:
            server = make()
            try:
                results["calls"].setdefault(serializer, {})[name] = uvloop.run(call_rate(
                    server, serializer, args.callers, args.window, args.duration))
                results["events"].setdefault(serializer, {})[name] = uvloop.run(event_rate(
                    server, serializer, args.subscribers, args.burst, args.duration))
            finally:
                server.stop()
        server = eightys(pin, workers=2)
        try:
            results["cross_worker_calls"].setdefault(serializer, {})["eightys"] = uvloop.run(call_rate(
                server, serializer, args.callers, args.window, args.duration, cross_worker=True))
        finally:
            server.stop()
    if not cb and not args.no_crossbar:
        results["crossbar"] = "not installed (--install-crossbar)"
    print(f"\nWAMP through the router ({args.callers} callers x {args.window} calls in flight; "
          f"{args.subscribers} subscribers, bursts of {args.burst}), per second:")
    for part, rows in results.items():
        if not isinstance(rows, dict):
            print(f"  crossbar: {rows}")
            continue
        for serializer, row in rows.items():
            figures = ", ".join(f"{name} {rate:,.0f}" for name, rate in row.items())
            ratio = (f" ({row['eightys'] / row['crossbar']:.2f}x)"
                     if row.get("crossbar") else "")
            print(f"  {part:>18} {serializer:>7}: {figures}{ratio}")
    return results


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--window", type=int, default=16, help="calls in flight per caller")
    p.add_argument("--subscribers", type=int, default=10)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--serializers", default="json,msgpack")
    p.add_argument("--no-crossbar", action="store_true", help="eightys only")
    p.add_argument("--install-crossbar", action="store_true",
                   help="pip install crossbar into scripts/.crossbar/ first")
    p.add_argument("--smoke", action="store_true", help="a few seconds, small counts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    if args.smoke:
        args.duration, args.callers, args.window, args.subscribers, args.burst = 0.5, 2, 4, 2, 20
    if args.install_crossbar and not crossbar_executable():
        if install_crossbar() is None:
            print("crossbar did not install; running eightys alone", file=sys.stderr)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
