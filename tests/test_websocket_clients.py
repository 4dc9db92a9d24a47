"""WebSocket interop and conformance: npm ``ws``, headless Chromium running the chat
demo (public_html/chat.dyn.html) with two browser pages on different workers, the
Autobahn fuzzingclient cases (run by ``kosoku``) against server/ws_echo.lua, and
the close codes of a rolling restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import REPO, wait_until
from test_reload import CHROMIUM, DevTools, _need  # noqa: F401 - the browser fixture's parts

NODE = shutil.which("node")
NODE_CLIENTS = REPO / "tests" / "node"


def test_npm_ws_client(start_server):
    _need(NODE, "node is not installed")
    _need((NODE_CLIENTS / "node_modules" / "ws").is_dir() or None,
          "npm ws is not installed (./scripts/80.sh test installs it into tests/node/)")
    server = start_server("tests/apps/ws_app.lua", workers=1)
    result = subprocess.run([NODE, str(NODE_CLIENTS / "ws_client.js"),
                             f"ws://127.0.0.1:{server.port}/echo?from=node"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["protocol"] == "chat.v1"
    assert "permessage-deflate" in report["extensions"]
    got = report["got"]
    assert got[0]["text"].startswith("open worker=0 query=from=node")
    assert got[1] == {"text": "hello from node", "length": 15}
    assert got[2] == {"binary": "000102ff"}
    assert got[3]["length"] == len("compressible ") * 5000
    assert got[4] == {"text": "fragmented", "length": 10}
    assert (report["code"], report["reason"]) == (4000, "bye")


# -- a real browser: the chat demo ------------------------------------------------------------


class Page:
    """One more page target in a running Chromium (DevTools gives the first)."""

    def __init__(self, browser: DevTools) -> None:
        port = (browser.profile / "DevToolsActivePort").read_text().split("\n")[0]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank",
                                         method="PUT")
        with urllib.request.urlopen(request, timeout=5) as r:
            target = json.load(r)
        self.ws = browser.exits.enter_context(
            connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=5))
        self._ids = 0

    call = DevTools.call
    evaluate = DevTools.evaluate


@pytest.fixture
def chromium(tmp_path: Path):
    _need(CHROMIUM, "chromium is not installed (apt-get install chromium)")
    browser = DevTools(tmp_path)
    try:
        browser.connect()
        yield browser
    finally:
        browser.close()


def _chat_worker(page) -> str | None:
    return page.evaluate("document.getElementById('status').dataset.worker || null")


def test_chat_page_in_two_browsers_on_different_workers(start_server, chromium):
    server = start_server("server/http.lua", workers=2)
    chat = f"http://127.0.0.1:{server.port}/chat"
    first = chromium
    first.call("Page.navigate", url=chat)
    worker_a = wait_until(lambda: _chat_worker(first), 10.0, message="the first page connected")
    second = Page(chromium)
    worker_b = None
    for _ in range(60):  # each load is a new connection: SO_REUSEPORT spreads them
        second.call("Page.navigate", url=chat)
        worker_b = wait_until(lambda: _chat_worker(second), 10.0, message="the second page")
        if worker_b != worker_a:
            break
    assert worker_b is not None and worker_b != worker_a, "both pages stayed on one worker"

    def log(page) -> list[str]:
        return page.evaluate("[...document.querySelectorAll('#log li')].map(li => li.textContent)")

    assert first.evaluate("chat.send('ann', 'hello from worker " + worker_a + "')") is True
    # (messages published in different workers may reach a page in either order: wait)
    for page in (first, second):
        wait_until(lambda: len(log(page)) == 1, 10.0, message="the first message")
    second.evaluate("document.getElementById('name').value = 'bob'")
    second.evaluate("document.getElementById('text').value = 'hi ann'")
    second.evaluate("document.getElementById('send').click()")
    expected = [f"ann: hello from worker {worker_a}", "bob: hi ann"]
    for page in (first, second):
        wait_until(lambda: log(page) == expected, 10.0,
                   message=lambda: f"both messages in {log(page)}")
    # text, not markup: a message cannot inject HTML into the other page
    first.evaluate("chat.send('eve', '<img src=x onerror=alert(1)>')")
    wait_until(lambda: len(log(second)) == 3, 10.0, message="the third message")
    assert second.evaluate("document.querySelectorAll('#log img').length") == 0


# -- Autobahn ----------------------------------------------------------------------------------


def run_autobahn(port: int, cases: list[str], outdir: Path, parallelism: int = 4,
                 timeout: float = 600) -> dict[str, dict]:
    """Run kosoku's fuzzingclient on ``cases``; returns case -> result."""
    kosoku = shutil.which("kosoku", path=str(Path(sys.executable).parent)) or shutil.which("kosoku")
    _need(kosoku, "kosoku is not installed (pip install -e .[test])")
    args = [str(kosoku), f"127.0.0.1:{port}", "-o", str(outdir),
            "-p", str(parallelism)]
    for case in cases:
        args += ["-i", case]
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    index = outdir / "index.json"
    assert index.exists(), result.stdout + result.stderr
    return next(iter(json.loads(index.read_text()).values()))


def test_autobahn_sections_1_to_7_and_10(start_server, tmp_path):
    server = start_server("server/ws_echo.lua", workers=1)
    results = run_autobahn(server.port, [f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 10)],
                           tmp_path / "autobahn")
    assert len(results) > 240
    failed = {case: r for case, r in results.items() if r["behavior"] in ("FAILED", "UNIMPLEMENTED")
              or r["behaviorClose"] not in ("OK", "INFORMATIONAL")}
    assert failed == {}


# -- rolling restart -----------------------------------------------------------------------------

MODULE = '''\
"""Test module: a change to it makes the workers restart one by one."""


def on_load(ctx, params, reload):
    ctx.register("wsmod.version", lambda: b"VERSION")
'''


def test_rolling_restart_closes_websockets_with_1012(start_server, tmp_path):
    app = tmp_path / "ws_app.lua"
    app.write_text((REPO / "tests/apps/ws_app.lua").read_text())
    module = tmp_path / "mods" / "wsmod.py"
    module.parent.mkdir()
    module.write_text(MODULE.replace("VERSION", "v1"))
    server = start_server(str(app), "--reload", "-m", str(module), workers=1,
                          env={"RELOAD": ""})
    with connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
        ws.recv()
        module.write_text(MODULE.replace("VERSION", "v2"))
        with pytest.raises(ConnectionClosed) as err:
            ws.recv(timeout=20)
    assert err.value.rcvd.code == 1012
    server.wait_for_log("worker 0 restarted", timeout=20)
    with connect(f"ws://127.0.0.1:{server.port}/echo") as ws:  # clients reconnect
        assert ws.recv().startswith("open worker=0")
