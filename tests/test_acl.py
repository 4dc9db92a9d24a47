"""Network ACLs against real eightys processes: 127.0.0.1 and ::1 clients of one
dual-stack (``-h ::``) listener.

* server-wide ``--allow``/``--deny``: a refused connection is closed right after
  accept and no Lua runs for it (HTTP routes, the raw ``on_accept`` hook);
* per route (aio:http_*, a path-parameter route, aio:websocket): 403, the
  handler does not run;
* ``--proxy-from``: X-Forwarded-For decides the client (ACLs, fd:client_ip(),
  aio:get_ip) only when the peer is a trusted proxy;
* the content server's ``httpd.acl`` by path prefix (pages, static files,
  redirects), next to its security headers (tests/test_security_headers.py).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from conftest import REPO, Server
from http_helpers import HttpClient

APP = REPO / "tests" / "apps" / "acl_app.lua"
RAW_APP = REPO / "tests" / "apps" / "acl_raw.lua"


def _has_dual_stack() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            port = s.getsockname()[1]
            s.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_dual_stack(), reason="no dual-stack IPv6 on this host")


def client(server: Server, family: str) -> HttpClient:
    """A connection from 127.0.0.1 ("4") or ::1 ("6") to a server on ``::``."""
    if family == "4":
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    else:
        sock = socket.create_connection(("::1", server.port), timeout=5)
    return HttpClient(sock)


def get(server: Server, family: str, target: str, method: str = "GET",
        headers: list[tuple[str, str]] | None = None) -> tuple[int, str]:
    with client(server, family) as c:
        response = c.request(method, target, headers)
        return response.status, response.text


def ran(server: Server) -> int:
    """How many times a handler of the app ran (asked over IPv4)."""
    status, text = get(server, "4", "/ran")
    assert status == 200
    return int(text)


def assert_refused(server: Server, family: str, payload: bytes = b"GET /open HTTP/1.1\r\nHost: t\r\n\r\n") -> None:
    """The connection is accepted by the kernel, then closed with nothing sent."""
    host = "127.0.0.1" if family == "4" else "::1"
    with socket.create_connection((host, server.port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        assert data == b"", f"a refused connection got {data!r}"


# -- per route --------------------------------------------------------------------------


def test_route_acls_on_ipv4_and_ipv6(start_server) -> None:
    server = start_server(APP, host="::", workers=1)
    assert get(server, "4", "/local4") == (200, "v4 only")
    assert get(server, "6", "/local4") == (403, "Forbidden")
    assert get(server, "4", "/not6", "POST") == (200, "not from ::1")
    assert get(server, "6", "/not6", "POST") == (403, "Forbidden")  # deny wins over allow ::/0
    assert get(server, "4", "/nobody")[0] == 403  # an empty allow list lets nobody in
    assert get(server, "6", "/nobody")[0] == 403
    assert get(server, "6", "/users/7") == (200, "user 7")
    # what Lua sees: IPv4 clients of a dual-stack listener read as IPv4
    assert get(server, "4", "/open") == (200, "open 127.0.0.1 get_ip=::ffff:127.0.0.1")
    assert get(server, "6", "/open")[1].startswith("open ::1 ")
    # the handlers ran for the 5 requests let in, never for a 403
    assert ran(server) == 5


def test_websocket_route_acl(start_server) -> None:
    server = start_server(APP, host="::", workers=1)
    with ws_connect(f"ws://127.0.0.1:{server.port}/ws4") as ws:
        assert ws.recv(timeout=5) == "hello"
    with pytest.raises(InvalidStatus) as refused:
        with ws_connect(f"ws://[::1]:{server.port}/ws4"):
            pass
    assert refused.value.response.status_code == 403
    assert ran(server) == 1  # the open handler ran once: for the IPv4 client


def test_bad_route_acl_is_a_load_error(start_server, tmp_path: Path) -> None:
    entry = tmp_path / "bad_acl.lua"
    entry.write_text('aio:http_get("/x", function(fd) end, { allow = { "10.0.0.300/8" } })\n')
    server = start_server(entry, workers=1, wait=False)
    assert server.wait_exit() != 0
    err = server.stderr_text()
    assert "bad_acl.lua:1" in err and "10.0.0.300/8" in err, err


# -- server-wide ----------------------------------------------------------------------


def test_server_wide_deny_closes_before_lua_runs(start_server) -> None:
    server = start_server(APP, "--deny", "::1", host="::", workers=1)
    assert_refused(server, "6")
    assert_refused(server, "6")
    assert get(server, "4", "/open")[0] == 200
    assert ran(server) == 1  # only the IPv4 request reached Lua


def test_server_wide_allow_list(start_server) -> None:
    server = start_server(APP, "--allow", "10.0.0.0/8", "--allow", "::1,192.168.0.0/16",
                          host="::", workers=1)
    assert_refused(server, "4")
    assert get(server, "6", "/open")[0] == 200
    status, text = get(server, "6", "/ran")
    assert (status, text) == (200, "1")


def test_server_wide_acl_for_raw_apps_runs_no_on_accept(start_server) -> None:
    server = start_server(RAW_APP, "--deny", "::1", host="::", workers=1, ready_line=None)
    assert_refused(server, "6", b"count\n")
    assert_refused(server, "6", b"count\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"count\n")
        assert sock.recv(100) == b"1\n"  # this connection's on_accept only


def test_bad_cidr_on_the_command_line(run_eightys) -> None:
    result = run_eightys(str(APP), "--deny", "10.0.0.0/33")
    assert result.returncode == 2
    assert "--deny entry '10.0.0.0/33'" in result.stderr


# -- X-Forwarded-For --------------------------------------------------------------------


def test_forwarded_for_is_believed_from_trusted_proxies_only(start_server) -> None:
    server = start_server(APP, "--proxy-from", "127.0.0.1", "--deny", "10.0.0.0/8",
                          host="::", workers=1)
    xff = [("X-Forwarded-For", "1.2.3.4, 9.9.9.9")]
    # from the trusted proxy: the rightmost hop is the client, for Lua and the ACLs
    assert get(server, "4", "/open", headers=xff) == (200, "open 9.9.9.9 get_ip=9.9.9.9")
    # a chain of trusted proxies is walked through (127.0.0.1 is one)
    assert get(server, "4", "/open", headers=[("X-Forwarded-For", "9.9.9.8, 127.0.0.1")])[1] \
        == "open 9.9.9.8 get_ip=9.9.9.8"
    # the server-wide deny applies to the forwarded client: 403, the connection stays
    with client(server, "4") as c:
        assert c.request("GET", "/open", [("X-Forwarded-For", "10.1.2.3")]).status == 403
        head = c.request("HEAD", "/open", [("X-Forwarded-For", "10.1.2.3")])  # h11 checks framing
        assert (head.status, head.body) == (403, b"")
        assert c.request("GET", "/open", [("X-Forwarded-For", "9.9.9.9")]).status == 200
    # route ACLs check the forwarded client too (/local4 allows 127.0.0.0/8 only)
    assert get(server, "4", "/local4", headers=xff)[0] == 403
    assert get(server, "4", "/local4")[0] == 200
    # ::1 is no trusted proxy: its header is ignored (it is the client; /local4 refuses it)
    assert get(server, "6", "/open", headers=[("X-Forwarded-For", "10.1.2.3")])[1] \
        .startswith("open ::1 get_ip=::1")
    assert get(server, "6", "/local4", headers=[("X-Forwarded-For", "127.0.0.1")])[0] == 403
    # a spoofed hop left of an untrusted one changes nothing
    assert get(server, "4", "/open", headers=[("X-Forwarded-For", "10.0.0.1, 8.8.8.8")])[1] \
        == "open 8.8.8.8 get_ip=8.8.8.8"


# -- content server ---------------------------------------------------------------------

ACL_MAIN = """\
httpd.acl = {
    ["/admin"] = { allow = { "127.0.0.1" } },
    ["/admin/open"] = { },
}
"""


def content_site(tmp_path: Path, main: str) -> Path:
    base = tmp_path / "site"
    root = base / "public_html"
    (root / "admin" / "open").mkdir(parents=True)
    (root / "static").mkdir()
    (base / "main.lua").write_text(main)
    (root / "index.dyn.html").write_text("home")
    (root / "admin" / "index.dyn.html").write_text("admin home")
    (root / "admin" / "report.txt").write_text("admin report")
    (root / "admin" / "open" / "index.html").write_text("open to all")
    (root / "static" / "app.css").write_text("body{}")
    return base


def test_content_server_acl_by_path_prefix(start_server, tmp_path: Path) -> None:
    site = content_site(tmp_path, ACL_MAIN)
    server = start_server("server/http.lua", host="::", workers=1,
                          env={"PUBLIC_HTML": str(site)})
    for target, body in (("/admin/", "admin home"), ("/admin/report.txt", "admin report"),
                         ("/", "home"), ("/static/app.css", "body{}"),
                         ("/admin/open/", "open to all")):
        assert get(server, "4", target) == (200, body), target
    assert get(server, "4", "/admin")[0] == 301  # the redirect to /admin/
    for target in ("/admin/", "/admin/report.txt", "/admin"):
        status, _ = get(server, "6", target)
        assert status == 403, target
    # a longer prefix without lists lifts the ACL; the rest of the site is open
    assert get(server, "6", "/admin/open/") == (200, "open to all")
    assert get(server, "6", "/static/app.css") == (200, "body{}")
    assert get(server, "6", "/")[1] == "home"


# -- the README's examples ---------------------------------------------------------------

README_MARKER = "-- ACLs: only the office and this machine reach /admin; one office network is shut out"


def readme_block(marker: str) -> str:
    """The ```lua block of README.md that contains ``marker``."""
    blocks = re.findall(r"^```lua\n(.*?)^```$", (REPO / "README.md").read_text(), re.S | re.M)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_readme_acl_example(start_server, tmp_path: Path) -> None:
    entry = tmp_path / "app.lua"
    entry.write_text(readme_block(README_MARKER))
    server = start_server(entry, "--proxy-from", "127.0.0.1", host="::", workers=1)
    assert get(server, "4", "/admin") == (200, "hello admin at 127.0.0.1")
    assert get(server, "6", "/admin") == (200, "hello admin at ::1")
    office = [("X-Forwarded-For", "10.1.2.3")]
    assert get(server, "4", "/admin", headers=office) == (200, "hello admin at 10.1.2.3")
    assert get(server, "4", "/admin", headers=[("X-Forwarded-For", "10.1.66.9")])[0] == 403
    assert get(server, "4", "/admin", headers=[("X-Forwarded-For", "8.8.8.8")])[0] == 403
    with ws_connect(f"ws://[::1]:{server.port}/admin/feed") as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    with pytest.raises(InvalidStatus):
        with ws_connect(f"ws://127.0.0.1:{server.port}/admin/feed",
                        additional_headers={"X-Forwarded-For": "8.8.8.8"}):
            pass
    assert " ERROR " not in server.stderr_text()
