"""--dev error details are for this machine only: a client on another address
gets the production error page, a loopback client the page with the source.

The remote client is real: the server runs in a network namespace made by the
test, joined by a veth pair to a second namespace the client runs in, so its
address is not a loopback one (nothing is added to the machine's own network).
Needs root (``ip netns``); skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                                or shutil.which("curl") is None,
                                reason="needs root, ip and curl for network namespaces")

MARK = "SOURCE_MARK_in_the_template"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    """(server netns, client netns, the server's address as the client sees it)."""
    tag = secrets.token_hex(3)
    server_ns, client_ns = f"e80s-s{tag}", f"e80s-c{tag}"
    octet = int(tag[:2], 16)
    server_ip, client_ip = f"10.233.{octet}.1", f"10.233.{octet}.2"
    try:
        ip("netns", "add", server_ns)
        ip("netns", "add", client_ns)
        ip("link", "add", f"v{tag}s", "netns", server_ns, "type", "veth",
           "peer", "name", f"v{tag}c", "netns", client_ns)
        ip("-n", server_ns, "addr", "add", f"{server_ip}/30", "dev", f"v{tag}s")
        ip("-n", client_ns, "addr", "add", f"{client_ip}/30", "dev", f"v{tag}c")
        for ns, dev in ((server_ns, f"v{tag}s"), (client_ns, f"v{tag}c")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
    except subprocess.CalledProcessError as exc:
        for ns in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot make network namespaces: {exc.stderr.decode().strip()}")
    try:
        yield server_ns, client_ns, server_ip
    finally:
        for ns in (server_ns, client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def curl(ns: str, url: str) -> tuple[int, str]:
    result = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-m", "10",
                             "-w", "\n%{http_code}", url],
                            capture_output=True, text=True, timeout=20)
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def test_dev_details_only_for_loopback_clients(namespaces, tmp_path: Path) -> None:
    server_ns, client_ns, server_ip = namespaces
    root = tmp_path / "www"
    root.mkdir()
    (root / "boom.dyn.html").write_text(f'<p>x</p>\n<?lu error("kaboom") -- {MARK} ?>\n')
    port = free_port()
    env = dict(os.environ, PUBLIC_HTML=str(root), PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    err_path = tmp_path / "server.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", server_ns, sys.executable, "-m", "eightys",
             "server/http.lua", "-h", "0.0.0.0", "-p", str(port), "-c", "1", "--dev"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "serving " not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        # on this machine (the server's loopback): the dev page with the source
        status, local = curl(server_ns, f"http://127.0.0.1:{port}/boom")
        assert status == 500 and MARK in local and "kaboom" in local
        # from another address: the production page, no source, no message
        status, remote = curl(client_ns, f"http://{server_ip}:{port}/boom")
        assert status == 500, remote
        assert MARK not in remote and "kaboom" not in remote and "boom.dyn.html" not in remote
        assert "500" in remote
        # and the error is logged either way
        assert err_path.read_text().count("kaboom") >= 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_reload_without_host_binds_loopback(start_server) -> None:
    server = start_server("server/http.lua", "--reload", workers=1,
                          env={"PUBLIC_HTML": ""})
    text = server.wait_for_log("listening on 127.0.0.1 only")
    assert "on 127.0.0.1:" in text
