#!/usr/bin/env python3
"""WAMP router benchmark: calls/s and events/s through ``server/wamp.lua`` with
autobahn-python (asyncio, uvloop) clients, and through crossbar in the same run.

    ./scripts/80.sh bench wamp                 # both serializers, eightys and crossbar
    ./scripts/80.sh bench wamp --smoke         # a few seconds, small counts
    ./scripts/80.sh bench wamp --no-crossbar   # eightys alone

crossbar (PyPI) lives in a virtualenv of its own, .bench-venvs/crossbar/, made by
this script the first time (``--no-install`` to skip that); when it cannot be
installed the report says so ("crossbar: not installable: ...") and eightys runs alone.

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
* cross-server calls: two eightys servers with ``--redis`` (``--redis URL``, default
  DB 14 of the local Redis; skipped when it does not answer), the callee on one, the
  callers on the other (each call crosses Redis twice).

Ratios: eightys / crossbar for calls and events; cross-worker and cross-server
calls / calls within one worker.

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
CROSSBAR_VENV = ROOT / ".bench-venvs" / "crossbar"


# -- routers --------------------------------------------------------------------------------


def eightys(pin: list[str], workers: int = 1, redis: str | None = None) -> Server:
    """server/wamp.lua on a free port (linked to the others through ``redis``)."""
    port = free_port()
    extra = ["--redis", redis] if redis else []
    server = Server("eightys", [*pin, PYTHON, "-m", "eightys", "server/wamp.lua", "-h", "127.0.0.1",
                                "-p", str(port), "-c", str(workers), *extra], port, workers)
    server.path = "/ws"
    return server


def crossbar_executable() -> str | None:
    """crossbar from $CROSSBAR, .bench-venvs/crossbar/ or PATH."""
    for candidate in (os.environ.get("CROSSBAR"), str(CROSSBAR_VENV / "bin" / "crossbar"),
                      shutil.which("crossbar")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def install_crossbar() -> tuple[str | None, str]:
    """pip install crossbar into its own venv (.bench-venvs/crossbar/): (its path, "")
    or (None, why not)."""
    print("installing crossbar into .bench-venvs/crossbar/ (once) ...", file=sys.stderr)
    made = subprocess.run([PYTHON, "-m", "venv", str(CROSSBAR_VENV)], capture_output=True, text=True)
    if made.returncode != 0:
        return None, (made.stderr.strip().splitlines() or ["venv failed"])[-1]
    pip = [str(CROSSBAR_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    done = subprocess.run([*pip, "crossbar"], capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()
        return None, f"pip install crossbar failed: {(errors or ['no output'])[-1].strip()}"
    path = crossbar_executable()
    return (path, "") if path else (None, "installed, but no crossbar executable")


def redis_answers(url: str) -> bool:
    """Whether the Redis at ``url`` answers a PING."""
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


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


async def cross_server_call_rate(callee_server: Server, caller_server: Server, serializer: str,
                                 callers: int, window: int, duration: float) -> float:
    """Completed calls per second, the callee on one server, the callers on another."""
    callee, _ = await join(callee_server.port, serializer=serializer, path=callee_server.path)
    caller_sessions = [(await join(caller_server.port, serializer=serializer,
                                   path=caller_server.path))[0] for _ in range(callers)]
    await callee.register(lambda a, b: a + b, "bench.add")
    deadline = time.monotonic() + 10
    while True:  # the registration reaches the other server
        try:
            await caller_sessions[0].call("bench.add", 0, 0)
            break
        except Exception:  # noqa: BLE001 - not there yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    return await _lanes(callee, caller_sessions, window, duration)


async def _lanes(callee, caller_sessions, window: int, duration: float) -> float:
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
    return await _lanes(callee, caller_sessions, window, duration)


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


def run(args: argparse.Namespace, crossbar_status: str = "") -> dict[str, Any]:
    """Run the benchmark; returns {part: {serializer: {router: rate}}} (and prints it).
    ``crossbar_status``: why crossbar is missing, when it is."""
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    pin = ["taskset", "-c", "0"] if two_cpus else []
    if two_cpus:
        os.sched_setaffinity(0, {1})
    cb = None if args.no_crossbar else crossbar_executable()
    makers = [("eightys", lambda: eightys(pin))]
    if cb:
        makers.append(("crossbar", lambda: crossbar(pin, cb)))
    with_redis = bool(args.redis) and redis_answers(args.redis)
    results: dict[str, Any] = {"calls": {}, "events": {}, "cross_worker_calls": {}}
    if with_redis:
        results["cross_server_calls"] = {}
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
        if with_redis:
            pair = [eightys(pin, redis=args.redis), eightys(pin, redis=args.redis)]
            try:
                results["cross_server_calls"].setdefault(serializer, {})["eightys"] = uvloop.run(
                    cross_server_call_rate(pair[0], pair[1], serializer, args.callers, args.window,
                                           args.duration))
            finally:
                for server in pair:
                    server.stop()
    if args.no_crossbar:
        results["crossbar"] = "not run (--no-crossbar)"
    elif not cb:
        results["crossbar"] = f"not installable: {crossbar_status}" if crossbar_status \
            else "not installed (run without --no-install to install it)"
    if not with_redis:
        results["redis"] = f"cross-server calls not run: no Redis answers at {args.redis or '(none)'}"
    report(args, results)
    return results


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Print the figures and their ratios."""
    print(f"\nWAMP through the router ({args.callers} callers x {args.window} calls in flight; "
          f"{args.subscribers} subscribers, bursts of {args.burst}), per second:")
    for part, rows in results.items():
        if not isinstance(rows, dict):
            print(f"  {part}: {rows}")
            continue
        for serializer, row in rows.items():
            figures = ", ".join(f"{name} {rate:,.0f}" for name, rate in row.items())
            if row.get("crossbar"):
                ratio = f"  eightys/crossbar {row['eightys'] / row['crossbar']:.2f}x"
            elif part.startswith("cross_") and results["calls"].get(serializer, {}).get("eightys"):
                ratio = f"  vs one worker {row['eightys'] / results['calls'][serializer]['eightys']:.2f}x"
            else:
                ratio = ""
            print(f"  {part:>18} {serializer:>7}: {figures}{ratio}")


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
    p.add_argument("--no-install", action="store_true",
                   help="do not install crossbar into .bench-venvs/crossbar/ when it is missing")
    p.add_argument("--install-crossbar", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14",
                   help="Redis for the cross-server part ('' to skip it)")
    p.add_argument("--smoke", action="store_true", help="a few seconds, small counts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    if args.smoke:
        args.duration, args.callers, args.window, args.subscribers, args.burst = 0.5, 2, 4, 2, 20
    status = ""
    if not args.no_crossbar and not args.no_install and not crossbar_executable():
        _, status = install_crossbar()
        if status:
            print(f"crossbar: not installable ({status}); running eightys alone", file=sys.stderr)
    results = run(args, status)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
