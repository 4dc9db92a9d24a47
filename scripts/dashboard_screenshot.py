"""A screenshot of the live dashboard (/_eightys/ on the --metrics port) under load.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--seconds 12]

Starts ``tests/apps/http_app.lua`` with two workers and ``--metrics`` on free
ports (127.0.0.1), puts load on it from a few client threads (mostly ``/hello``,
some ``/async``, 404s, one Lua error and a reload, so every panel has something
to show),
opens the dashboard in headless Chromium over the DevTools protocol, lets the
charts fill for ``--seconds`` and saves a PNG.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench import free_port, wait_port  # scripts/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent


def load(port: int, stop: threading.Event, paths: list[str], pause: float) -> None:
    """Requests on keep-alive connections until ``stop``; a new connection now and
    then so both workers get some (SO_REUSEPORT spreads connections)."""
    sent = 0
    conn = None
    while not stop.is_set():
        if conn is None or sent % 50 == 0:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", paths[sent % len(paths)])
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
        sent += 1
        time.sleep(pause)


def devtools(chromium: str, profile: str) -> tuple[subprocess.Popen[bytes], object]:
    from websockets.sync.client import connect

    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--hide-scrollbars", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-proxy-server",
         "--disable-extensions", f"--user-data-dir={profile}", "--window-size=1280,900",
         "--remote-debugging-port=0", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    active = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + 20
    while not (active.exists() and active.read_text().split("\n")[0]):
        if time.monotonic() > deadline:
            raise SystemExit("Chromium did not start")
        time.sleep(0.1)
    port = active.read_text().split("\n")[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    return proc, connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=5)


def call(ws, method: str, ids: list[int], **params: object) -> dict:  # type: ignore[no-untyped-def]
    ids[0] += 1
    ws.send(json.dumps({"id": ids[0], "method": method, "params": params}))
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message.get("id") == ids[0]:
            if "error" in message:
                raise SystemExit(f"{method}: {message['error']}")
            return message["result"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "dashboard.png"))
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    port, metrics = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "eightys", "tests/apps/http_app.lua",
                               "-p", str(port), "-h", "127.0.0.1", "-c", "2",
                               "--metrics", str(metrics)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    stop = threading.Event()
    threads = [threading.Thread(target=load, args=(port, stop, paths, pause), daemon=True)
               for paths, pause in ((["/hello"], 0.001), (["/hello", "/fast"], 0.002),
                                    (["/async", "/hello", "/nope"], 0.01))]
    browser = None
    try:
        wait_port(port, server)
        wait_port(metrics, server)
        time.sleep(1.0)
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/boom")
        for thread in threads:
            thread.start()
        with tempfile.TemporaryDirectory() as profile:
            browser, ws = devtools(chromium, profile)
            ids = [0]
            call(ws, "Page.navigate", ids, url=f"http://127.0.0.1:{metrics}/_eightys/")
            time.sleep(args.seconds / 2)
            server.send_signal(signal.SIGHUP)  # a reload, for the reload log
            time.sleep(args.seconds / 2)
            shot = call(ws, "Page.captureScreenshot", ids, format="png")
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(shot["data"]))
            ws.close()  # type: ignore[attr-defined]
            print(out)
    finally:
        stop.set()
        if browser is not None:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(10)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
