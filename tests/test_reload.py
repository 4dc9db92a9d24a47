"""Reload mode (``--reload``) over real processes: ``eightys server/http.lua --reload
-c 2`` serves a temporary copy of public_html/ (PUBLIC_HTML) plus a few pages that
show WORKERID, and the tests edit its files while it runs.

Reload mode also watches the entry script's directory and the package's Lua
library, so an edit in the checkout while the tests run (someone working on
eightys/lua) would reload the test servers too, and add events and reloads the
tests do not expect. So the servers run a copy of the package and of
server/http.lua made at the start of the session (PYTHONPATH, PYTHONSAFEPATH).

"Every worker serves X" is checked with fresh connections (SO_REUSEPORT spreads
them by source port) until both worker ids have answered with X. Live-reload
streams are opened on a connection that first asked /who.txt, so each test knows
which worker a stream belongs to. Responses are parsed by h11
(tests/http_helpers.py). The Chromium tests drive Debian's ``chromium`` over the
DevTools protocol (``websockets``); they are skipped if either is missing, unless
CI is set (then they fail).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import h11
import pytest

from conftest import REPO, Server, line_of, wait_until
from http_helpers import HttpClient, Response

ENTRY = "server/http.lua"
LIVE = "/__eightys/livereload"
SCRIPT_MARK = "<script data-eightys-livereload>"
#: How long a change may take to be served everywhere (watchfiles step + reload).
CHANGE_TIMEOUT = 10.0

WHO = 'worker=<?lu write("%d", WORKERID) ?> '
#: Appended to the default site's main.lua: a version, a load counter, and a
#: global written the documented way (`x = x or ...`) that must survive reloads.
MAIN_EXTRA = """
MAIN_VERSION = "v1"
LOADS = (LOADS or 0) + 1
FIRST = FIRST or MAIN_VERSION
"""
STATE_PAGE = ('worker=<?lu write("%d", WORKERID) ?> version=<?lu write("%s", MAIN_VERSION) ?> '
              'loads=<?lu write("%d", LOADS) ?> first=<?lu write("%s", FIRST) ?>')
MODULE = '''\
"""Test module for reload mode: Lua gets reloadmod.version()."""


def on_load(ctx, params, reload):
    ctx.register("reloadmod.version", lambda: b"VERSION")
'''


# -- the site -------------------------------------------------------------------------------


def make_site(base: Path) -> Path:
    """A copy of public_html/ with test pages; returns its root."""
    root = base / "site"
    shutil.copytree(REPO / "public_html", root)
    (root / "who.dyn.txt").write_text(WHO + "v1")
    (root / "state.dyn.txt").write_text(STATE_PAGE)
    (root / "notes.txt").write_text("notes v1")
    with open(root / "main.lua", "a") as f:
        f.write(MAIN_EXTRA)
    return root


def edit(path: Path, text: str, atomic: bool = False) -> None:
    """Write ``text`` to ``path``: in place, or as editors that save to a temporary
    file and rename it over the original do."""
    if atomic:
        tmp = path.with_name(path.name + ".tmp-save")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


@pytest.fixture(scope="session")
def code_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the eightys package and of the entry script (see module docstring)."""
    base = tmp_path_factory.mktemp("code")
    shutil.copytree(REPO / "eightys", base / "eightys",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (base / "server").mkdir()
    shutil.copy(REPO / ENTRY, base / ENTRY)
    return base


@pytest.fixture
def reload_server(start_server: Callable[..., Server], site: Path,
                  code_copy: Path) -> Callable[..., Server]:
    """Start ``server/http.lua --reload -c 2`` on the test site (extra args allowed)."""

    def start(*args: str, reload: bool = True) -> Server:
        flags = ("--reload",) if reload else ()
        env = {"PUBLIC_HTML": str(site), "PYTHONPATH": str(code_copy), "PYTHONSAFEPATH": "1",
               "RELOAD": ""}  # RELOAD=true in the environment must not turn reload mode on
        server = start_server(code_copy / ENTRY, *flags, *args, workers=2, env=env)
        assert f"serving {code_copy / ENTRY} " in server.stderr_text()
        return server

    return start


# -- HTTP helpers ---------------------------------------------------------------------------


def get(server: Server, path: str, headers: list[tuple[str, str]] | None = None,
        method: str = "GET") -> Response:
    """One request on a fresh connection."""
    with HttpClient.connect(server) as client:
        return client.request(method, path, headers)


def worker_of(body: str) -> int:
    match = re.match(r"worker=(\d+) ", body)
    assert match, f"no worker id in {body!r}"
    return int(match.group(1))


def wait_all_workers(server: Server, path: str, expected: Callable[[int], str],
                     workers: int = 2, timeout: float = CHANGE_TIMEOUT) -> None:
    """Poll ``path`` with fresh connections until every worker has answered 200 with
    exactly ``expected(worker_id)``."""
    done: set[int] = set()
    last: dict[int, str] = {}

    def check() -> bool:
        response = get(server, path)
        if response.status == 200:
            worker = worker_of(response.text)
            last[worker] = response.text
            if response.text == expected(worker):
                done.add(worker)
        return len(done) == workers

    wait_until(check, timeout, interval=0.005,
               message=lambda: f"{path} = {[expected(w) for w in range(workers)]} from every "
                               f"worker; last answers {last}; stderr:\n{server.stderr_text()}")


def wait_all_status(server: Server, path: str, status: int, timeout: float = CHANGE_TIMEOUT,
                    tries_per_round: int = 40) -> None:
    """Poll until ``tries_per_round`` fresh connections in a row all get ``status``
    (so both workers do: P(all on one worker) = 2**-39)."""

    def check() -> bool:
        return all(get(server, path).status == status for _ in range(tries_per_round))

    wait_until(check, timeout, interval=0.01, message=f"{path} -> {status} everywhere")


class EventStream:
    """A live-reload event stream served by a known worker."""

    def __init__(self, client: HttpClient, worker: int) -> None:
        self.client = client
        self.worker = worker
        self.buffer = ""

    @classmethod
    def open(cls, server: Server, worker: int, tries: int = 200) -> "EventStream":
        for _ in range(tries):
            client = HttpClient.connect(server)
            if worker_of(client.request("GET", "/who.txt").text) != worker:
                client.close()
                continue
            client.send_request("GET", LIVE)
            client.expect()
            head = client.next_event()
            assert isinstance(head, h11.Response), head
            assert head.status_code == 200
            headers = dict(head.headers)
            assert headers[b"content-type"] == b"text/event-stream"
            return cls(client, worker)
        pytest.fail(f"worker {worker} took none of {tries} connections")

    def next(self, timeout: float = CHANGE_TIMEOUT) -> tuple[str, str]:
        """The next (event, data); blocks without a retry field are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            while "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                event, data = "message", []
                for line in block.split("\n"):
                    name, _, value = line.partition(": ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                if data:
                    return event, "\n".join(data)
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no event from worker {self.worker}'s stream within {timeout} s")
            self.client.sock.settimeout(left)
            try:
                event = self.client.next_event()
            except TimeoutError:
                continue
            if not isinstance(event, h11.Data):
                pytest.fail(f"worker {self.worker}'s stream ended: {event!r}")
            self.buffer += event.data.decode()

    def wait_end(self, timeout: float) -> None:
        """The server ends the stream (a complete chunked response, or a close)."""
        self.client.sock.settimeout(timeout)
        try:
            while True:
                event = self.client.next_event()
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        except TimeoutError:
            pytest.fail(f"worker {self.worker}'s stream still open after {timeout} s")
        except (AssertionError, OSError):
            pass  # closed under us (EOF mid-body, reset): ended too

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def streams() -> Iterator[Callable[[Server], dict[int, EventStream]]]:
    """``streams(server)``: one open live-reload stream per worker, each past its
    ``hello``; closed at teardown."""
    opened: list[EventStream] = []

    def open_all(server: Server, workers: int = 2) -> dict[int, EventStream]:
        result = {}
        for worker in range(workers):
            stream = EventStream.open(server, worker)
            opened.append(stream)
            event = stream.next()
            assert event[0] == "hello", event
            result[worker] = stream
        return result

    yield open_all
    for stream in opened:
        stream.close()


def footers(server: Server) -> dict[int, str]:
    """The footer of / ("Served by worker N of 2 ... up since ...") of each worker."""
    found: dict[int, str] = {}
    for _ in range(200):
        footer = re.search(r"<footer>Served by worker (\d) of 2 .*</footer>", get(server, "/").text)
        assert footer, "no footer"
        found[int(footer.group(1))] = footer.group(0)
        if len(found) == 2:
            return found
    pytest.fail(f"only workers {sorted(found)} answered")


def wait_reloads(server: Server, rounds: int) -> None:
    """Wait until both workers have reloaded ``rounds`` times in all. (Templates and
    static files are also checked for changes when requested, at most once a second:
    waiting for the reload makes sure it is the reload that served the change.)"""
    server.wait_for_log("] reloaded ", count=2 * rounds, timeout=CHANGE_TIMEOUT)


def script_initial(page: str) -> str:
    """The error the injected script shows at load ("" when none)."""
    match = re.search(r"initial = (\"(?:[^\"\\]|\\.)*\");", page)
    assert match, "no live-reload script in the page"
    return json.loads(match.group(1))


# -- content changes ------------------------------------------------------------------------


def test_template_change_is_served_by_every_worker(reload_server, site):
    server = reload_server()
    pids = sorted(server.wait_workers(2))
    wait_all_workers(server, "/who.txt", lambda w: f"worker={w} v1")
    edit(site / "who.dyn.txt", WHO + "v2 changed")
    wait_reloads(server, 1)
    wait_all_workers(server, "/who.txt", lambda w: f"worker={w} v2 changed", timeout=1.0)
    # saved the way many editors do (a temporary file renamed over it)
    edit(site / "who.dyn.txt", WHO + "v3 renamed", atomic=True)
    wait_reloads(server, 2)
    wait_all_workers(server, "/who.txt", lambda w: f"worker={w} v3 renamed", timeout=1.0)
    assert sorted(server.worker_pids()) == pids  # reloaded in place, not restarted


def test_main_lua_change_keeps_documented_globals(reload_server, site):
    server = reload_server()
    wait_all_workers(server, "/state.txt", lambda w: f"worker={w} version=v1 loads=1 first=v1")
    started = footers(server)  # SITE.started, per worker (public_html/main.lua)
    main = site / "main.lua"
    edit(main, main.read_text().replace('MAIN_VERSION = "v1"', 'MAIN_VERSION = "v2"'))
    # re-run in the same Lua state: LOADS counts both runs, FIRST and SITE survive
    wait_all_workers(server, "/state.txt", lambda w: f"worker={w} version=v2 loads=2 first=v1")
    assert footers(server) == started


def test_syntax_error_keeps_old_code_reports_file_line_and_fix_recovers(reload_server, site,
                                                                        streams):
    server = reload_server()
    live = streams(server)
    main = site / "main.lua"
    good = main.read_text()
    edit(main, good.replace('MAIN_VERSION = "v1"', 'MAIN_VERSION = = "broken"'))
    bad_line = line_of(main, "MAIN_VERSION =")
    where = f"main.lua:{bad_line}: unexpected symbol near '='"
    for worker, stream in live.items():
        event, data = stream.next()
        assert event == "failed", (worker, event, data)
        assert where in data, data
    stderr = server.wait_for_log("reload failed, previous code keeps serving", count=2)
    assert stderr.count(where) >= 2, stderr
    # the old code keeps serving, and pages show the error over themselves
    wait_all_workers(server, "/state.txt", lambda w: f"worker={w} version=v1 loads=1 first=v1",
                     timeout=1.0)
    assert where in script_initial(get(server, "/").text)

    edit(main, good.replace('MAIN_VERSION = "v1"', 'MAIN_VERSION = "v3"'))
    for worker, stream in live.items():
        assert stream.next() == ("reload", ""), worker
    wait_all_workers(server, "/state.txt", lambda w: f"worker={w} version=v3 loads=2 first=v1",
                     timeout=1.0)
    for _ in range(10):
        assert script_initial(get(server, "/").text) == ""


def test_live_reload_stream_notifies_every_worker_s_clients(reload_server, site, streams):
    server = reload_server()
    live = streams(server)
    index = site / "index.dyn.html"
    edit(index, index.read_text().replace("<h1>eightys</h1>", "<h1>eightys</h1><p>more</p>"))
    for worker, stream in live.items():
        assert stream.next() == ("reload", ""), worker
    # a page rendered now knows the generation, and a new stream says hello with it
    page = get(server, "/").text
    assert "<h1>eightys</h1><p>more</p>" in page
    assert 'var generation = "1", initial = "";' in page
    fresh = EventStream.open(server, 1)
    try:
        assert fresh.next() == ("hello", "1")
    finally:
        fresh.close()


def test_css_change_sends_css_event_and_serves_new_stylesheet(reload_server, site, streams):
    server = reload_server()
    css = site / "static" / "style.css"
    assert get(server, "/static/style.css").body == css.read_bytes()
    live = streams(server)
    new_css = "/* changed */\nbody { color: rebeccapurple; }\n"
    edit(css, new_css, atomic=True)  # the editor's temporary file is no page change
    for worker, stream in live.items():
        assert stream.next() == ("css", ""), worker
    for _ in range(20):  # both workers, at once (the event came after every worker reloaded)
        response = get(server, "/static/style.css")
        assert response.status == 200
        assert response.body == new_css.encode()
        assert response.header("Content-Type") == "text/css; charset=utf-8"
        # not static/'s day-long max-age: a refreshed page must ask for it again
        assert response.header("Cache-Control") == "no-cache"
    # anything else saved with a stylesheet is a full reload (should the two saves
    # land in two batches, the stylesheet's comes first: a css event, then reload)
    edit(css, new_css + "/* again */\n")
    edit(site / "notes.txt", "notes v2")
    for worker, stream in live.items():
        event = stream.next()
        if event == ("css", ""):
            event = stream.next()
        assert event == ("reload", ""), worker


def test_static_file_change_is_served(reload_server, site):
    server = reload_server()
    logo = site / "static" / "logo.svg"
    assert get(server, "/static/logo.svg").body == logo.read_bytes()
    new_logo = '<svg xmlns="http://www.w3.org/2000/svg"><title>new logo</title></svg>\n'
    edit(logo, new_logo)
    edit(site / "notes.txt", "notes v2", atomic=True)
    wait_reloads(server, 1)  # (two rounds if the saves fell in two batches)

    def served() -> bool:  # on fresh connections: both workers
        return all(get(server, "/static/logo.svg").body == new_logo.encode()
                   and get(server, "/notes.txt").body == b"notes v2" for _ in range(20))

    wait_until(served, 2.0, message="the new static files on every worker")


def test_new_template_gets_a_route_and_a_deleted_one_loses_it(reload_server, site):
    server = reload_server()
    assert get(server, "/fresh.txt").status == 404
    edit(site / "fresh.dyn.txt", WHO + "fresh page")
    wait_all_workers(server, "/fresh.txt", lambda w: f"worker={w} fresh page")
    (site / "fresh.dyn.txt").unlink()
    wait_all_status(server, "/fresh.txt", 404)
    assert get(server, "/who.txt").status == 200  # the rest of the site is still there


def test_keepalive_connection_opened_before_a_reload_is_served_after_it(reload_server, site):
    server = reload_server()
    with HttpClient.connect(server) as client:
        first = client.request("GET", "/who.txt")
        worker = worker_of(first.text)
        assert first.text == f"worker={worker} v1"
        edit(site / "who.dyn.txt", WHO + "v2")
        wait_reloads(server, 1)
        again = client.request("GET", "/who.txt")  # same connection, new code
        assert again.text == f"worker={worker} v2"


# -- what reload mode adds to responses -----------------------------------------------------


def test_reload_mode_off_injects_nothing_and_has_no_endpoint(reload_server, site):
    server = reload_server(reload=False)
    assert "reload mode" not in server.stderr_text()
    with HttpClient.connect(server) as client:
        assert client.request("GET", LIVE).status == 404
        page = client.request("GET", "/")
        assert page.status == 200
        assert page.text.rstrip().endswith("</footer>\n</body>\n</html>")
        assert "<script" not in page.text and "livereload" not in page.text
        assert int(page.header("Content-Length")) == len(page.body)
        missing = client.request("GET", "/nowhere")
        assert missing.status == 404 and "<script" not in missing.text


def test_html_responses_carry_the_script_once_with_correct_length(reload_server, site):
    # a static HTML page: its Content-Length is not the last header, it is big
    # enough to be gzipped, and it has validators and ranges
    static_page = "<!doctype html><html><body><h1>static page</h1>" + "x" * 3000 + \
        "</body></html>\n"
    (site / "plain.html").write_text(static_page)
    (site / "empty.dyn.html").write_text("")
    server = reload_server()
    html_paths = [("/", []), ("/loop", []), ("/hello?name=x", []), ("/nowhere", []),
                  ("/plain", []), ("/plain", [("Accept-Encoding", "gzip")]),
                  ("/counter", [])]  # /counter sets a cookie: more header lines
    with HttpClient.connect(server) as client:  # one connection: a bad length breaks the next
        for path, headers in html_paths:
            page = client.request("GET", path, headers)
            head = client.request("HEAD", path)
            for response in (page, head):
                assert response.header("Content-Encoding") is None, path
                assert response.header("Content-Type") == "text/html; charset=utf-8", path
                # validators would let a browser revalidate into an older generation's copy
                assert response.header("ETag") is None, path
                assert response.header("Last-Modified") is None, path
            assert int(page.header("Content-Length")) == len(page.body), path
            assert head.body == b"" and head.header("Content-Length") == \
                page.header("Content-Length"), path
            assert page.text.count(SCRIPT_MARK) == 1, path
            assert page.text.count("</script>") == 1, path
            assert "</script>\n</body>" in page.text, path
        plain = client.request("GET", "/plain", [("Accept-Encoding", "gzip")])
        start, end = plain.text.index(SCRIPT_MARK), plain.text.index("</script>\n") + 10
        assert plain.text[:start] + plain.text[end:] == static_page
        # not HTML, not the whole page, or nothing at all: unchanged
        for path, headers in [("/who.txt", []), ("/static/style.css", []), ("/empty", []),
                              ("/plain", [("Range", "bytes=0-9")])]:
            response = client.request("GET", path, headers)
            assert SCRIPT_MARK not in response.text, path
            assert int(response.header("Content-Length")) == len(response.body), path
        assert client.request("HEAD", "/empty").header("Content-Length") == "0"
        assert client.request("GET", "/plain", [("Range", "bytes=0-9")]).body == \
            static_page[:10].encode()


# -- Python module changes ------------------------------------------------------------------


class LoopingClient(threading.Thread):
    """Requests ``path`` on fresh connections until stopped; records every failure."""

    def __init__(self, server: Server, path: str, pattern: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.path = path
        self.pattern = re.compile(pattern)
        self.stopping = threading.Event()
        self.count = 0
        self.seen: set[str] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                response = get(self.server, self.path)
                if response.status != 200 or not self.pattern.fullmatch(response.text):
                    self.failures.append(f"{response.status} {response.text!r}")
                else:
                    self.seen.add(response.text.split(" ", 1)[1])
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(repr(exc))
            self.count += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


@pytest.fixture
def module_server(reload_server, site, tmp_path) -> tuple[Server, Path]:
    module = tmp_path / "mods" / "reloadmod.py"
    module.parent.mkdir()
    module.write_text(MODULE.replace("VERSION", "v1"))
    (site / "mod.dyn.txt").write_text(WHO + 'module=<?lu write("%s", reloadmod.version()) ?>')
    return reload_server("-m", str(module)), module


def test_python_module_change_restarts_workers_without_a_failed_request(module_server, streams):
    server, module = module_server
    old_pids = set(server.wait_workers(2))
    live = streams(server)
    looping = LoopingClient(server, "/mod.txt", r"worker=[01] module=v[12]")
    looping.start()
    try:
        wait_until(lambda: looping.count >= 20, 5.0, message="the looping client going")
        edit(module, MODULE.replace("VERSION", "v2"))
        server.wait_for_log("worker 1 restarted", timeout=CHANGE_TIMEOUT)
        # the replaced workers end their live-reload streams at once, so browsers
        # reconnect to the new ones instead of waiting out the grace period
        for stream in live.values():
            stream.wait_end(timeout=3.0)
        wait_all_workers(server, "/mod.txt", lambda w: f"worker={w} module=v2")
        count = looping.count
        wait_until(lambda: looping.count >= count + 20, 5.0, message="more requests")
    finally:
        looping.stop()
    assert looping.failures == [], looping.failures[:5]
    assert looping.seen == {"module=v1", "module=v2"}
    new_pids = set(server.wait_workers(2))
    assert not new_pids & old_pids
    # a stream on a new worker says hello with the new generation
    fresh = EventStream.open(server, 0)
    try:
        assert fresh.next() == ("hello", "1")
    finally:
        fresh.close()


def test_broken_module_change_keeps_the_old_workers(module_server):
    server, module = module_server
    pids = sorted(server.wait_workers(2))
    edit(module, MODULE.replace("VERSION", "v2") + "\ndef broken(:\n")
    bad_line = line_of(module, "def broken(:")
    stderr = server.wait_for_log("restart of worker 0 failed; the running workers keep the "
                                 "previous code", timeout=CHANGE_TIMEOUT)
    assert f"SyntaxError: invalid syntax (reloadmod.py, line {bad_line})" in stderr, stderr
    wait_all_workers(server, "/mod.txt", lambda w: f"worker={w} module=v1", timeout=2.0)
    assert sorted(server.wait_workers(2)) == pids
    # fixed by an editor that renames its temporary file over the module: the
    # watch must follow the new file, for this change and the next
    edit(module, MODULE.replace("VERSION", "v3"), atomic=True)
    wait_all_workers(server, "/mod.txt", lambda w: f"worker={w} module=v3")
    server.wait_for_log("worker 1 restarted", timeout=CHANGE_TIMEOUT)
    edit(module, MODULE.replace("VERSION", "v4"))
    wait_all_workers(server, "/mod.txt", lambda w: f"worker={w} module=v4")


# -- a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need(what: str | None, reason: str) -> None:
    if what:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run must install it)")
    pytest.skip(reason)


class DevTools:
    """A headless Chromium and one page target, over the DevTools protocol."""

    def __init__(self, workdir: Path) -> None:
        self.profile = workdir / "chromium-profile"
        self.log = open(workdir / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-proxy-server",
             "--disable-extensions", f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)
        self.ws = None
        self.exits = ExitStack()
        self._ids = 0

    def connect(self) -> None:
        from websockets.sync.client import connect

        # Chromium writes the port it picked (line 1) to DevToolsActivePort
        active = self.profile / "DevToolsActivePort"
        port = wait_until(lambda: active.exists() and active.read_text().split("\n")[0],
                          15.0, message="Chromium's DevToolsActivePort")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = self.exits.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=5))

    def call(self, method: str, **params: object) -> dict:
        self._ids += 1
        call_id = self._ids
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=10))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> object:
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.exits.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.log.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    _need(CHROMIUM, "chromium is not installed (apt-get install chromium)")
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        _need(None, "the websockets package is not installed")
    browser = DevTools(tmp_path)
    try:
        browser.connect()
        yield browser
    finally:
        browser.close()


def test_browser_shows_an_edited_page_by_itself(reload_server, site, chromium):
    server = reload_server()
    chromium.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/")
    heading = "document.querySelector('h1') && document.querySelector('h1').textContent"
    wait_until(lambda: chromium.evaluate(heading) == "eightys", 10.0,
               message="the page in Chromium")
    index = site / "index.dyn.html"
    edit(index, index.read_text().replace("<h1>eightys</h1>", "<h1>edited by the test</h1>"))
    wait_until(lambda: chromium.evaluate(heading) == "edited by the test", 10.0, interval=0.05,
               message=lambda: f"the new heading in Chromium (now {chromium.evaluate(heading)!r})")


def test_browser_on_a_static_page_refreshes_once_then_stays(reload_server, site, chromium):
    (site / "plain.html").write_text("<!doctype html><html><body><h1>static</h1>" + "x" * 2000 +
                                     "</body></html>\n")
    server = reload_server()
    chromium.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/plain")
    heading = "document.querySelector('h1') && document.querySelector('h1').textContent"
    wait_until(lambda: chromium.evaluate(heading) == "static", 10.0, message="the page")
    loaded = chromium.evaluate("performance.timeOrigin")
    edit(site / "notes.txt", "a change elsewhere")  # the page reloads, unchanged...
    wait_until(lambda: chromium.evaluate("performance.timeOrigin") != loaded, 10.0,
               interval=0.05, message="a refresh")
    time.sleep(0.3)
    settled = chromium.evaluate("performance.timeOrigin")
    time.sleep(1.5)  # ...once: it is not refreshed again and again
    assert chromium.evaluate("performance.timeOrigin") == settled
    assert chromium.evaluate(heading) == "static"


def test_browser_picks_up_changed_stylesheets(reload_server, site, chromium):
    server = reload_server()
    chromium.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/")
    heading = "document.querySelector('h1') && document.querySelector('h1').textContent"
    color = "getComputedStyle(document.querySelector('h1')).color"
    wait_until(lambda: chromium.evaluate(heading) == "eightys", 10.0, message="the page")
    chromium.evaluate("window.sameDocument = true")  # gone if the page reloads
    css = site / "static" / "style.css"
    edit(css, css.read_text() + "h1 { color: rgb(1, 2, 3); }\n", atomic=True)
    wait_until(lambda: chromium.evaluate(color) == "rgb(1, 2, 3)", 10.0, interval=0.05,
               message=lambda: f"the new color (now {chromium.evaluate(color)})")
    time.sleep(0.3)
    assert chromium.evaluate("window.sameDocument") is True  # swapped in place, no reload
    # a stylesheet saved with a page: the page reloads, and with the new stylesheet
    index = site / "index.dyn.html"
    edit(index, index.read_text().replace("<h1>eightys</h1>", "<h1>restyled</h1>"))
    edit(css, css.read_text() + "h1 { color: rgb(4, 5, 6); }\n")
    wait_until(lambda: chromium.evaluate(heading) == "restyled", 10.0, interval=0.05,
               message="the new heading")
    time.sleep(0.5)  # (the stylesheet might have come in a batch of its own: a swap)
    assert chromium.evaluate(color) == "rgb(4, 5, 6)"


@pytest.mark.parametrize("name, text, url", [
    ("broken.dyn.html", "<h1>t</h1>\n<?lu local x = nil; write(x.field) -- TEMPLATE_MARK ?>\n", "/broken"),
    ("jbroken.j2.html", "<h1>j</h1>\n{{ 1 // 0 }} {# JINJA_MARK #}\n", "/jbroken"),
], ids=["template", "jinja"])
def test_browser_shows_a_page_error_in_the_overlay(reload_server, site, chromium, name, text, url):
    """A template or Jinja page that fails under --reload shows its error the way
    a Lua load error does: the overlay, with file:line and the source line."""
    (site / name).write_text(text)
    server = reload_server()
    chromium.call("Page.navigate", url=f"http://127.0.0.1:{server.port}{url}")
    overlay = "(document.getElementById('eightys-reload-error') || {}).textContent"
    shown = wait_until(lambda: chromium.evaluate(overlay), 10.0, message="the error overlay")
    assert "this page failed" in shown
    assert f"{name}:2" in shown, shown
    assert "MARK" in shown  # the source line
    # a fix reloads the page, and the overlay is gone
    (site / name).write_text("<h1>fixed</h1>\n")
    wait_until(lambda: chromium.evaluate("document.querySelector('h1').textContent") == "fixed",
               10.0, message="the fixed page")
    assert chromium.evaluate("document.getElementById('eightys-reload-error')") is None
