#!/usr/bin/env python3
"""WebSocket benchmark: eightys against the ``websockets`` library's own server, in one run.

    .venv/bin/python scripts/ws_bench.py                  # echo, memory, fan-out
    .venv/bin/python scripts/ws_bench.py --duration 10    # longer echo runs
    .venv/bin/python scripts/ws_bench.py --only echo      # one part (echo|memory|fanout|autobahn)
    .venv/bin/python scripts/ws_bench.py --autobahn       # also every Autobahn section (minutes)
    .venv/bin/python scripts/ws_bench.py --smoke          # a few seconds, small counts

Parts:
* echo: ``--clients`` (100) connections each keep ``--window`` (8) messages in
  flight against ``server/ws_echo.lua -c 1`` and against a ``websockets`` (asyncio,
  uvloop) echo server, with 64 B and 16 KiB text messages; messages/s and the ratio.
  No compression (the clients do not offer it), so both do the same work.
* memory: RSS of the eightys worker idle, then with ``--idle`` (10,000) open idle
  WebSockets; KiB per connection (and the same for the ``websockets`` server).
* fanout: ``--subscribers`` (1,000) connections on ``/sub/bench`` spread over 2
  workers, one publisher on ``/pub/bench``; messages delivered per second (the
  publisher sends rounds of ``--burst`` messages and waits until every subscriber
  has them all, so nobody is dropped as a slow subscriber).
* autobahn: ``kosoku`` runs sections 1-10 and 12-13 against ``server/ws_echo.lua``;
  counts per behaviour and section.

Servers are pinned to CPU 0 and the load generator (this process) to CPU 1 when
there are two CPUs. Ratios from the same run are what to compare. ``run(args)``
returns the figures as a dict (scripts/bench.py calls it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

REFERENCE_SERVER = textwrap.dedent("""
    import asyncio, sys, uvloop
    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None,
                         max_size=16 * 1024 * 1024, ping_interval=None):
            await asyncio.get_running_loop().create_future()

    uvloop.run(main())
""")


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """A server process (and, for eightys, its workers)."""

    def __init__(self, name: str, argv: list[str], port: int, workers: int = 0) -> None:
        self.name, self.port, self.workers = name, port, workers
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        wait_port(port, self.proc)
        if workers:
            deadline = time.monotonic() + 20
            while len(children(self.proc.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # every worker accepting

    def pids(self) -> list[int]:
        """The processes that serve (the workers for eightys)."""
        return children(self.proc.pid) if self.workers else [self.proc.pid]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def eightys(pin: list[str], workers: int = 1) -> Server:
    port = free_port()
    return Server("eightys", [*pin, PYTHON, "-m", "eightys", "server/ws_echo.lua", "-h", "127.0.0.1",
                              "-p", str(port), "-c", str(workers)], port, workers)


def reference(pin: list[str]) -> Server:
    port = free_port()
    return Server("websockets", [*pin, PYTHON, "-c", REFERENCE_SERVER, str(port)], port)


# -- a light client: pre-masked frames, counting replies by their headers ---------------------

MASK = b"\x37\xfa\x21\x3d"


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (the mask is fixed: the server only unmasks)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key))


class Client(asyncio.Protocol):
    """Counts whole messages received; in echo mode keeps `window` messages in flight."""

    def __init__(self, path: str, frame: bytes | None = None, window: int = 1) -> None:
        self.path, self.frame, self.window = path, frame, window
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.upgraded = False
        self.count = 0
        self.running = False
        self.first: bytes | None = None  # the first message (the welcome, on /sub)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(handshake(self.path))  # type: ignore[attr-defined]

    def start(self) -> None:
        self.running = True
        if self.frame is not None:
            self.transport.write(self.frame * self.window)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end == -1:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.open.set_exception(RuntimeError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[:end + 4]
            self.upgraded = True
            self.open.set_result(True)
        pos, size, got = 0, len(buf), 0
        while size - pos >= 2:
            n = buf[pos + 1] & 0x7F
            at = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, at = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, at = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < at + n:
                break
            if self.first is None:
                self.first = bytes(buf[pos + at:pos + at + n])
            pos += at + n
            got += 1
        if pos:
            del buf[:pos]
        if got:
            self.count += got
            if self.running and self.frame is not None:
                self.transport.write(self.frame * got)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed before the handshake"))


async def open_clients(port: int, count: int, path: str, frame: bytes | None = None,
                       window: int = 1, batch: int = 200) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for start in range(0, count, batch):  # in batches: the accept backlog is finite
        made = await asyncio.gather(*[
            loop.create_connection(lambda: Client(path, frame, window), "127.0.0.1", port)
            for _ in range(min(batch, count - start))])
        group = [protocol for _, protocol in made]
        await asyncio.wait_for(asyncio.gather(*[c.open for c in group]), 30)
        clients += group
    return clients


def close_clients(clients: list[Client]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


async def echo_rate(port: int, clients: int, size: int, window: int, duration: float) -> float:
    frame = client_frame(b"x" * size)
    conns = await open_clients(port, clients, "/", frame, window)
    try:
        for c in conns:
            c.start()
        await asyncio.sleep(min(1.0, duration / 4))  # warm-up
        before, t0 = sum(c.count for c in conns), time.monotonic()
        await asyncio.sleep(duration)
        after, t1 = sum(c.count for c in conns), time.monotonic()
        for c in conns:
            c.running = False
        return (after - before) / (t1 - t0)
    finally:
        close_clients(conns)
        await asyncio.sleep(0.2)


async def idle_memory(server: Server, count: int) -> tuple[int, int, float]:
    await asyncio.sleep(0.5)
    idle = sum(rss_kib(p) for p in server.pids())
    conns = await open_clients(server.port, count, "/")
    try:
        await asyncio.sleep(1.0)
        loaded = sum(rss_kib(p) for p in server.pids())
    finally:
        close_clients(conns)
        await asyncio.sleep(0.5)
    return idle, loaded, (loaded - idle) / count


async def fanout_rate(port: int, subscribers: int, burst: int, duration: float) -> tuple[float, dict[int, int]]:
    subs = await open_clients(port, subscribers, "/sub/bench")
    await asyncio.sleep(0.3)
    workers = collections.Counter(json.loads(c.first)["worker"] for c in subs if c.first)
    publisher = (await open_clients(port, 1, "/pub/bench"))[0]
    frame = client_frame(b"p" * 64)
    try:
        baseline = sum(c.count for c in subs)
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < duration:
            publisher.transport.write(frame * burst)  # type: ignore[union-attr]
            sent += burst
            target = baseline + sent * subscribers
            deadline = time.monotonic() + 10
            while sum(c.count for c in subs) < target:
                if time.monotonic() > deadline:
                    raise RuntimeError("subscribers stopped receiving")
                await asyncio.sleep(0.002)
        elapsed = time.monotonic() - t0
        return (sum(c.count for c in subs) - baseline) / elapsed, dict(workers)
    finally:
        close_clients(subs + [publisher])
        await asyncio.sleep(0.3)


# -- Autobahn -------------------------------------------------------------------------------


def autobahn(pin: list[str], sections: list[str], parallelism: int = 2,
             timeout: float = 1800) -> dict[str, Any]:
    kosoku = shutil.which("kosoku", path=str(Path(PYTHON).parent)) or shutil.which("kosoku")
    if kosoku is None:
        raise RuntimeError("kosoku is not installed (pip install -e .[test])")
    server = eightys(pin)
    try:
        with tempfile.TemporaryDirectory() as out:
            args = [kosoku, f"127.0.0.1:{server.port}", "-o", out, "-p", str(parallelism)]
            for section in sections:
                args += ["-i", f"{section}.*"]
            subprocess.run(args, capture_output=True, timeout=timeout)
            results = next(iter(json.loads((Path(out) / "index.json").read_text()).values()))
    finally:
        server.stop()
    by_section: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case, result in results.items():
        by_section[case.split(".")[0]][result["behavior"]] += 1
    total = collections.Counter(r["behavior"] for r in results.values())
    failed = sorted(case for case, r in results.items() if r["behavior"] == "FAILED")
    return {"total": dict(total), "sections": {k: dict(v) for k, v in by_section.items()},
            "failed": failed}


# -- the run --------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected parts; returns their figures (and prints them)."""
    raise_fd_limit()
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    pin = ["taskset", "-c", "0"] if two_cpus else []
    if two_cpus:
        os.sched_setaffinity(0, {1})
    parts = set(args.only.split(",")) if args.only else {"echo", "memory", "fanout"}
    if args.autobahn:
        parts.add("autobahn")
    results: dict[str, Any] = {}

    if "echo" in parts:
        echo: dict[str, dict[str, float]] = {}
        for make in (eightys, reference):
            server = make(pin)
            try:
                for size in (64, 16384):
                    rate = asyncio.run(echo_rate(server.port, args.clients, size, args.window,
                                                 args.duration))
                    echo.setdefault(f"{size} B", {})[server.name] = rate
            finally:
                server.stop()
        for row in echo.values():
            row["ratio"] = row["eightys"] / row["websockets"] if row["websockets"] else 0.0
        results["echo"] = echo
        print(f"\necho, {args.clients} clients, {args.window} in flight each (messages/s)")
        print(f"  {'size':>8} {'eightys':>10} {'websockets':>11} {'ratio':>6}")
        for size, row in echo.items():
            print(f"  {size:>8} {row['eightys']:>10.0f} {row['websockets']:>11.0f} {row['ratio']:>5.2f}x")

    if "memory" in parts:
        memory = {}
        for make in (eightys, reference):
            server = make(pin)
            try:
                idle, loaded, per = asyncio.run(idle_memory(server, args.idle))
                memory[server.name] = {"idle_kib": idle, "loaded_kib": loaded, "per_conn_kib": per}
            finally:
                server.stop()
        results["memory"] = memory
        print(f"\nmemory with {args.idle} idle WebSockets (RSS of the serving process)")
        for name, m in memory.items():
            print(f"  {name:>10}: idle {m['idle_kib'] / 1024:.1f} MiB, loaded "
                  f"{m['loaded_kib'] / 1024:.1f} MiB, {m['per_conn_kib']:.2f} KiB per connection")

    if "fanout" in parts:
        server = eightys(pin, workers=2)
        try:
            rate, spread = asyncio.run(fanout_rate(server.port, args.subscribers, args.burst,
                                                   args.duration))
        finally:
            server.stop()
        results["fanout"] = {"delivered_per_s": rate, "subscribers_per_worker": spread}
        print(f"\nfan-out: {args.subscribers} subscribers over 2 workers {spread}: "
              f"{rate:.0f} messages delivered/s")

    if "autobahn" in parts:
        sections = ["1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"]
        if args.smoke:
            sections = ["1", "2"]
        report = autobahn(pin, sections)
        results["autobahn"] = report
        print("\nAutobahn (kosoku fuzzingclient) against server/ws_echo.lua")
        for section in sorted(report["sections"], key=int):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(report["sections"][section].items()))
            print(f"  section {section:>2}: {counts}")
        print(f"  total: {report['total']}; FAILED: {report['failed'] or 'none'}")
    return results


def parser() -> argparse.ArgumentParser:
    """The command-line options (scripts/bench.py reuses them)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--clients", type=int, default=100, help="echo connections")
    p.add_argument("--window", type=int, default=8,
                   help="echo messages in flight per connection (with 1, this Python load "
                   "generator is the limit, not the servers)")
    p.add_argument("--idle", type=int, default=10000, help="idle connections for the memory figure")
    p.add_argument("--subscribers", type=int, default=1000, help="fan-out subscribers")
    p.add_argument("--burst", type=int, default=10, help="messages per fan-out round")
    p.add_argument("--only", help="comma-separated parts: echo, memory, fanout, autobahn")
    p.add_argument("--autobahn", action="store_true", help="also run every Autobahn section")
    p.add_argument("--smoke", action="store_true", help="a few seconds with small counts")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    if args.smoke:
        args.duration, args.clients, args.idle, args.subscribers = 1.0, 10, 200, 50
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
