"""Graceful stop and rolling restart while a load runs (real processes, 127.0.0.1).

A closed-loop load (keep-alive clients, each sending its next request as soon as
it has read a response; a new connection after a ``Connection: close``) runs for
a few seconds against 2 workers while:

* the master gets SIGTERM: every request sent on an accepted connection gets its
  complete response (0 failed), the ones answered while draining carry
  ``Connection: close``, and once the listeners are closed new connections are
  refused (never accepted and then dropped);
* one worker gets SIGTERM (it drains and the master starts a successor): the
  load sees no failure at all; new connections go to the other worker or wait
  in the backlog of the restarting one's socket until its successor accepts.

Both over plain HTTP and over HTTPS (eightys' own TLS transport when compiled:
its accept path, its close_notify and its drain).
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from certs import self_signed
from conftest import REPO, Server
from http_helpers import HttpClient

APP = REPO / "tests" / "apps" / "http_app.lua"
#: What a client does between a response and its next request; the signal finds
#: most connections idle (the case a drain must not cut off).
THINK = 0.003


@dataclass
class Load:
    """What the load clients saw."""

    ok: int = 0
    closing: int = 0  # responses that said Connection: close
    failed: list[str] = field(default_factory=list)
    refused: int = 0  # connects refused (the server stopped listening)
    after_signal_ok: int = 0
    keep_alive_after_drain: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(params=["http", "https"])
def scheme_args(request: Any, tmp_path: Path) -> tuple[list[str], Callable[[socket.socket], Any]]:
    """Server arguments and the client's socket wrapper for one scheme."""
    if request.param == "http":
        return [], lambda sock: sock
    cert_path, key_path = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert_path))
    return (["--tls-cert", str(cert_path), "--tls-key", str(key_path)],
            lambda sock: context.wrap_socket(sock, server_hostname="localhost"))


def run_load(server: Server, seconds: float, signal_at: float, send_signal, clients: int = 6,
             stop_when_refused: bool = True,
             wrap: Callable[[socket.socket], Any] = lambda sock: sock) -> Load:
    load = Load()
    start = time.monotonic()
    signalled = threading.Event()

    def client_loop(n: int) -> None:
        i = 0
        while time.monotonic() - start < seconds:
            try:
                conn = HttpClient(wrap(socket.create_connection(("127.0.0.1", server.port),
                                                                timeout=10)), 10)
            except ConnectionRefusedError:
                with load.lock:
                    load.refused += 1
                if stop_when_refused and signalled.is_set():
                    return
                time.sleep(0.01)
                continue
            with conn:
                while time.monotonic() - start < seconds:
                    target = "/async" if i % 4 == 0 else f"/fast?id={n}-{i}"
                    i += 1
                    sent_after = signalled.is_set()
                    try:
                        response = conn.request("GET", target)
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded
                        with load.lock:
                            load.failed.append(f"{target} (signal {'before' if sent_after else 'pending'}): "
                                               f"{type(exc).__name__}: {exc}")
                        break
                    closing = response.header("Connection") == "close"
                    with load.lock:
                        if response.status != 200:
                            load.failed.append(f"{target}: status {response.status}")
                        load.ok += 1
                        load.closing += closing
                        if sent_after:
                            load.after_signal_ok += 1
                    if closing:
                        conn.assert_closed()
                        break
                    time.sleep(THINK)  # a client between two requests: its connection is idle

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    time.sleep(signal_at)
    signalled.set()
    send_signal()
    for t in threads:
        t.join(seconds + 15)
    return load


def test_sigterm_under_load_loses_no_request(start_server, scheme_args) -> None:
    args, wrap = scheme_args
    server = start_server(APP, "--graceful-timeout", "5", *args, workers=2, wait=not args)
    if args:
        server.wait_ready()  # a TLS listener: the readiness probe is a plain connect
    load = run_load(server, seconds=4.0, signal_at=1.5,
                    send_signal=lambda: server.send_signal(signal.SIGTERM), wrap=wrap)
    assert server.wait_exit() == 0
    assert load.failed == [], load.failed[:5]
    assert load.ok > 30, load.ok
    # every connection open at the signal was told to close by its last response
    assert load.closing >= 1
    assert load.refused >= 1  # after the drain, new connections are refused, not dropped


def test_worker_restart_under_load_loses_no_request(start_server, scheme_args) -> None:
    args, wrap = scheme_args
    server = start_server(APP, "--graceful-timeout", "5", *args, workers=2, wait=not args)
    if args:
        server.wait_ready()
    pids = server.wait_workers(2)
    load = run_load(server, seconds=4.0, signal_at=1.0,
                    send_signal=lambda: __import__("os").kill(pids[0], signal.SIGTERM),
                    stop_when_refused=False, wrap=wrap)
    assert load.failed == [], load.failed[:5]
    assert load.refused == 0  # the master holds the socket: connections wait for the successor
    assert load.after_signal_ok > 20, load.after_signal_ok
    assert load.closing >= 1  # the draining worker's connections were told to close
    new = server.wait_workers(2)
    assert pids[0] not in new and pids[1] in new
