#!/usr/bin/env python3
"""Reload mode, measured: how fast a change reaches every worker, and what a
client hammering the server sees while the site keeps changing.

    .venv/bin/python scripts/reload_bench.py [--edits 20] [--interval 0.25]

Runs ``eightys server/http.lua --reload -c 2`` on a temporary copy of public_html/
(PUBLIC_HTML) with one extra page, ``who.dyn.txt`` (``worker=<WORKERID> <marker>``):

(a) latency: ``--edits`` times, writes a new marker into who.dyn.txt and polls
    /who.txt with fresh connections (SO_REUSEPORT spreads them over the workers)
    until both worker ids have answered with the marker. Prints p50/p95/max of the
    time from the write to the last worker serving it, and of the time from the
    write to the ``reload`` event on a live-reload stream (what a browser waits for).
(b) under load: wrk -c 50 on / while index.dyn.html is edited ``--edits`` times,
    one edit every ``--interval`` seconds. Prints wrk's total requests, non-2xx
    responses and socket errors, and how many reload rounds the server ran.

The server runs a copy of the package and of server/http.lua, made at start:
reload mode watches those directories too, and an edit in the checkout during the
run (someone working on eightys/lua) would add reloads to the measurement.
Nothing here is asserted; it prints numbers.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHO = 'worker=<?lu write("%d", WORKERID) ?> '


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    """GET on a fresh connection: (status, body). Content-Length framed responses only."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Server:
    def __init__(self, workdir: Path) -> None:
        self.site = workdir / "site"
        shutil.copytree(ROOT / "public_html", self.site)
        (self.site / "who.dyn.txt").write_text(WHO + "start")
        code = workdir / "code"
        shutil.copytree(ROOT / "eightys", code / "eightys",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (code / "server").mkdir()
        shutil.copy(ROOT / "server" / "http.lua", code / "server" / "http.lua")
        self.port = free_port()
        self.log_path = workdir / "server.log"
        env = dict(os.environ, PUBLIC_HTML=str(self.site), PYTHONPATH=str(code),
                   PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eightys", str(code / "server" / "http.lua"), "--reload",
                 "-c", "2", "-p", str(self.port), "-h", "127.0.0.1"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + 20
        while "serving " not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"eightys did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the workers too, whatever happened
        except ProcessLookupError:
            pass
        self.proc.wait()


def until_every_worker_serves(port: int, marker: str, timeout: float = 10.0) -> None:
    want = {f"worker={w} {marker}".encode() for w in (0, 1)}
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout
    while seen != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker}: only {sorted(seen)} after {timeout} s")
        status, body = get(port, "/who.txt")
        if status == 200 and body in want:
            seen.add(body)


class EventStream(threading.Thread):
    """A live-reload stream, read in the background: (arrival time, event name)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=None)
        self.sock.sendall(b"GET /__eightys/livereload HTTP/1.1\r\nHost: bench\r\n\r\n")
        self.events: list[tuple[float, str]] = []
        self.start()

    def run(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                now = time.perf_counter()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                self.events += [(now, line[7:].decode()) for line in lines
                                if line.startswith(b"event: ")]
        except OSError:
            pass

    def wait(self, name: str, after: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, event in list(self.events):
                if event == name and at > after:
                    return at
            time.sleep(0.001)
        raise TimeoutError(f"no {name} event within {timeout} s")


def summary(times: list[float]) -> str:
    return (f"p50 {percentile(times, 50):.0f} ms, p95 {percentile(times, 95):.0f} ms, "
            f"max {max(times):.0f} ms")


def latency(server: Server, edits: int) -> None:
    until_every_worker_serves(server.port, "start")
    stream = EventStream(server.port)
    template = server.site / "who.dyn.txt"
    served, notified = [], []
    for i in range(edits):
        marker = f"edit-{i}-{time.monotonic_ns()}"
        start = time.perf_counter()
        template.write_text(WHO + marker)
        until_every_worker_serves(server.port, marker)
        served.append((time.perf_counter() - start) * 1000)
        notified.append((stream.wait("reload", start) - start) * 1000)
        time.sleep(0.2)  # separate saves, not one batch
    stream.sock.close()
    print(f"(a) {edits} template edits: write -> served by both workers: {summary(served)}")
    print(f"    write -> reload event on a live-reload stream: {summary(notified)}")


def under_load(server: Server, edits: int, interval: float) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("(b) skipped: wrk is not installed")
        return
    index = server.site / "index.dyn.html"
    original = index.read_text()
    rounds_before = server.log().count("reload requested")
    duration = math.ceil(edits * interval + 2)
    proc = subprocess.Popen([wrk, "-t", "2", "-c", "50", "-d", f"{duration}s",
                             f"http://127.0.0.1:{server.port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    for i in range(edits):
        index.write_text(original.replace("<h1>eightys</h1>", f"<h1>eightys {i}</h1>"))
        time.sleep(interval)
    output, _ = proc.communicate(timeout=duration + 30)
    time.sleep(0.5)
    rounds = server.log().count("reload requested") - rounds_before
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    print(f"(b) wrk -t2 -c50 -d{duration}s on / with {edits} edits of index.dyn.html, "
          f"one every {interval} s ({rounds} reload rounds ran):")
    print(f"    requests: {total.group(1) if total else '?'} in "
          f"{total.group(2) if total else '?'}; non-2xx: {non2xx.group(1) if non2xx else 0}; "
          f"socket errors: {errors.group(1) if errors else 'none'}")
    if not total:
        print(output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eightys-reload-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            latency(server, args.edits)
            under_load(server, args.edits, args.interval)
            failed = server.log().count("reload failed")
            if failed:
                print(f"warning: {failed} reload(s) failed:\n{server.log()}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
