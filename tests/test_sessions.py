"""Sessions of the content server: encrypted cookie sessions that every worker
reads, the server secret (SECRET_KEY / --secret-file, never on a command line),
and the server-side store (``httpd.session_store = httpd.memory_store``) staying
bounded under a flood of cookie-less clients.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import Server
from http_helpers import HttpClient, Response, rss_kib, running_server

ENTRY = "server/http.lua"
SECRET = "a-test-secret-that-is-long-enough-0123456789"


def visit(server: Server, target: str, cookie: str | None) -> tuple[Response, str | None]:
    """GET on a fresh connection (so the kernel may pick any worker); the cookie to
    send next time (the new one when the response set one)."""
    headers = [("Connection", "close")] + ([("Cookie", cookie)] if cookie else [])
    with HttpClient.connect(server) as c:
        response = c.request("GET", target, headers)
    set_cookie = response.header("Set-Cookie")
    if set_cookie:
        cookie = set_cookie.split(";", 1)[0]
    return response, cookie


def visits_count(response: Response) -> int:
    match = re.search(r"<strong>(\d+)</strong>", response.text)
    assert match, response.text[:2000]
    return int(match.group(1))


def worker_of(server: Server, cookie: str | None) -> int:
    response, _ = visit(server, "/worker", cookie)
    return int(response.text)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site whose /counter counts visits and whose /worker says which worker answered."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "counter.dyn.html").write_text(
        '<?lu session.visits = (session.visits or 0) + 1 ?>'
        '<p><strong><?lu write("%d", session.visits) ?></strong></p>')
    (root / "worker.dyn.html").write_text('<?lu write("%d", WORKERID) ?>')
    (root / "big.dyn.html").write_text(
        '<?lu session.blob = string.rep("x", 5000) write("ok") ?>')
    return root


def test_twelve_visits_count_one_to_twelve_on_two_workers(tmp_path: Path) -> None:
    """The default site's counter, -c 2, a new connection per visit: every worker
    reads the same (cookie) session, so the count never resets."""
    with running_server(tmp_path, ENTRY, "-c", "2", env={"PUBLIC_HTML": ""}) as server:
        server.wait_workers(2)
        cookie = None
        counts, workers = [], set()
        for _ in range(12):
            response, cookie = visit(server, "/counter", cookie)
            assert response.status == 200
            counts.append(visits_count(response))
        assert counts == list(range(1, 13))
        # the visits did land on both workers (connections hash by client port)
        for _ in range(40):
            workers.add(worker_of_default(server))
            if len(workers) == 2:
                break
        assert workers == {0, 1}


def worker_of_default(server: Server) -> int:
    """Which worker answered (the default site's index names it)."""
    response, _ = visit(server, "/", None)
    match = re.search(r"worker (\d+)", response.text)
    assert match, response.text[:3000]
    return int(match.group(1))


def test_secret_key_keeps_sessions_across_restarts(site: Path, tmp_path: Path) -> None:
    env = {"PUBLIC_HTML": str(site), "SECRET_KEY": SECRET}
    for name in "abc":
        (tmp_path / name).mkdir()
    with running_server(tmp_path / "a", ENTRY, env=env) as server:
        response, cookie = visit(server, "/counter", None)
        response, cookie = visit(server, "/counter", cookie)
        assert visits_count(response) == 2
        assert "random secret" not in server.stderr_text()
        # the secret is on no process's command line (master or workers)
        for pid in [server.proc.pid, *server.worker_pids()]:
            assert SECRET.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    with running_server(tmp_path / "b", ENTRY, "--secret-file", str(secret_file),
                        env={"PUBLIC_HTML": str(site), "SECRET_KEY": ""}) as server:
        response, cookie = visit(server, "/counter", cookie)
        assert visits_count(response) == 3  # same secret, same sessions
    with running_server(tmp_path / "c", ENTRY,
                        env={"PUBLIC_HTML": str(site), "SECRET_KEY": ""}) as server:
        server.wait_for_log("random secret")  # a warning: sessions end at restart
        response, _ = visit(server, "/counter", cookie)
        assert visits_count(response) == 1  # another secret: the old cookie means nothing


def test_short_secret_is_a_usage_error(run_eightys, site: Path, tmp_path: Path) -> None:
    result = run_eightys(ENTRY, "-p", "0", env={"PUBLIC_HTML": str(site), "SECRET_KEY": "short"})
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr
    result = run_eightys(ENTRY, "-p", "0", "--secret-file", str(tmp_path / "nope"),
                         env={"PUBLIC_HTML": str(site)})
    assert result.returncode == 2 and "--secret-file" in result.stderr


def test_session_too_big_for_a_cookie_is_logged_not_sent(site: Path, tmp_path: Path) -> None:
    with running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)}) as server:
        response, _ = visit(server, "/big", None)
        assert response.status == 200 and response.text == "ok"
        assert response.header("Set-Cookie") is None
        server.wait_for_log("more than a cookie holds")


def test_expired_cookie_starts_a_new_session(site: Path, tmp_path: Path) -> None:
    """The expiry is inside the authenticated payload: a cookie made with a past
    expiry (encrypted with the server's own key, via a page) is refused."""
    (site / "old.dyn.html").write_text(
        '<?lu local key = httpd.secret .. "/session" '
        'local t = crypto.encrypt(\'{"x":1000,"d":{"visits":41}}\', key) '
        'write(codec.base64_encode(t)) ?>')
    with running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)}) as server:
        token, _ = visit(server, "/old", None)
        response, _ = visit(server, "/counter", "eightys_session=" + token.text)
        assert visits_count(response) == 1


# -- the server-side store --------------------------------------------------------------------

STORE_MAIN = """
httpd.session_store = httpd.memory_store
httpd.memory_store.max_sessions = %d
aio:http_get("/store", function(fd)
    fd:http_response(200, "text/plain", tostring(httpd.memory_store.count))
end)
"""


@pytest.fixture
def store_server(site: Path, tmp_path: Path) -> Iterator[Callable[[int], Server]]:
    started: list = []

    def start(max_sessions: int) -> Server:
        (site.parent / "main.lua").write_text(STORE_MAIN % max_sessions)
        cm = running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)})
        started.append(cm)
        return cm.__enter__()

    yield start
    for cm in started:
        cm.__exit__(None, None, None)


def test_memory_store_sessions_and_lru_eviction(store_server) -> None:
    server = store_server(3)
    cookies = []
    for _ in range(3):
        response, cookie = visit(server, "/counter", None)
        assert re.fullmatch(r"eightys_session=[0-9a-f]{32}\.[0-9a-f]{32}", cookie)
        cookies.append(cookie)
    response, _ = visit(server, "/counter", cookies[0])  # the first is now the newest
    assert visits_count(response) == 2
    visit(server, "/counter", None)  # a fourth session evicts the least recently used: [1]
    assert visit(server, "/store", None)[0].text == "3"
    assert visits_count(visit(server, "/counter", cookies[0])[0]) == 3
    assert visits_count(visit(server, "/counter", cookies[1])[0]) == 1  # evicted
    forged = cookies[2][:-1] + ("0" if cookies[2][-1] != "0" else "1")
    assert visits_count(visit(server, "/counter", forged)[0]) == 1


def pipelined(server: Server, target: str, total: int, batch: int = 200) -> None:
    """``total`` GETs without cookies, ``batch`` per write on one connection;
    waits for every response."""
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    marker = b"HTTP/1.1 200 OK\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        seen, tail = 0, b""
        sent = 0
        while seen < total:
            if sent - seen < batch and sent < total:
                n = min(batch, total - sent)
                sock.sendall(request * n)
                sent += n
            data = sock.recv(1 << 20)
            assert data, f"closed after {seen} responses"
            chunk = tail + data
            seen += chunk.count(marker)
            tail = chunk[-(len(marker) - 1):]
    finally:
        sock.close()


def test_cookieless_flood_keeps_the_store_bounded(store_server) -> None:
    """200,000 cookie-less clients, each making a session: the store stays at its
    bound (oldest out, O(1) each) and the worker's memory stays flat."""
    server = store_server(2000)
    (pid,) = server.worker_pids()
    pipelined(server, "/counter", 10_000)  # fill the store, warm up
    assert visit(server, "/store", None)[0].text == "2000"
    before = rss_kib(pid)
    pipelined(server, "/counter", 190_000)
    assert visit(server, "/store", None)[0].text == "2000"
    after = rss_kib(pid)
    assert after - before < 16 * 1024, (before, after)
    # and the server still answers normally
    response, cookie = visit(server, "/counter", None)
    assert visits_count(response) == 1 and cookie
    assert visits_count(visit(server, "/counter", cookie)[0]) == 2
