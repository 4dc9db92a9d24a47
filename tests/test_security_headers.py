"""httpd.security_headers: the content server's default security headers, on pages,
static files (Python's fast path), redirects and error pages; overridden, dropped
and turned off from main.lua. Strict-Transport-Security only on TLS requests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eightys.content import ContentHost
from eightys.wire import CONNECTION_HEADERS, FLAG_KEEP_ALIVE, FLAG_LIMIT, FLAG_TLS
from conftest import REPO
from http_helpers import HttpClient

DEFAULTS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
}
TARGETS = ("/", "/static/app.css", "/notes.txt", "/docs", "/missing")


def site(tmp_path: Path, main: str) -> Path:
    base = tmp_path / "site"
    root = base / "public_html"
    (root / "static").mkdir(parents=True)
    (root / "docs").mkdir()
    (base / "main.lua").write_text(main)
    (root / "index.dyn.html").write_text("home")
    (root / "docs" / "index.html").write_text("docs")
    (root / "static" / "app.css").write_text("body{}")
    (root / "notes.txt").write_text("notes")
    return base


def headers_of(start_server, tmp_path: Path, main: str) -> dict[str, dict[str, str | None]]:
    server = start_server("server/http.lua", workers=1, env={"PUBLIC_HTML": str(site(tmp_path, main))})
    found = {}
    with HttpClient.connect(server) as c:
        for target in TARGETS:
            response = c.request("GET", target)
            assert response.status == {"/docs": 301, "/missing": 404}.get(target, 200), target
            found[target] = {name: response.header(name) for name in
                             (*DEFAULTS, "Strict-Transport-Security")}
    return found


def test_defaults_on_every_kind_of_response(start_server, tmp_path: Path) -> None:
    for target, headers in headers_of(start_server, tmp_path, "").items():
        assert headers == {**DEFAULTS, "Strict-Transport-Security": None}, target


def test_overridden_dropped_and_hsts_not_over_plain_http(start_server, tmp_path: Path) -> None:
    main = """httpd.security_headers = { ["X-Frame-Options"] = "DENY", ["referrer-policy"] = false,
        ["Strict-Transport-Security"] = "max-age=600" }"""
    expected = {**DEFAULTS, "X-Frame-Options": "DENY", "Referrer-Policy": None,
                "Strict-Transport-Security": None}
    for target, headers in headers_of(start_server, tmp_path, main).items():
        assert headers == expected, target


def test_turned_off(start_server, tmp_path: Path) -> None:
    for target, headers in headers_of(start_server, tmp_path, "httpd.security_headers = false").items():
        assert set(headers.values()) == {None}, target


def test_bad_value_is_a_load_error(start_server, tmp_path: Path) -> None:
    main = 'httpd.security_headers = { ["X-Frame-Options"] = "DENY\\r\\nX: y" }'
    server = start_server("server/http.lua", workers=1, wait=False,
                          env={"PUBLIC_HTML": str(site(tmp_path, main))})
    assert server.wait_exit() != 0
    assert "httpd.security_headers: X-Frame-Options" in server.stderr_text()


class _Owner:
    config = live = host = log = runtime = acl = None


@pytest.mark.parametrize("flags", range(FLAG_LIMIT))
def test_static_files_get_hsts_on_tls_requests_only(flags: int) -> None:
    content = ContentHost(_Owner())  # type: ignore[arg-type]
    content.static_headers(b"A: 1\r\n", b"A: 1\r\nStrict-Transport-Security: max-age=9\r\n")
    lines = content.static_lines[flags]
    assert lines.startswith(CONNECTION_HEADERS[flags])
    assert (b"Strict-Transport-Security" in lines) == bool(flags & FLAG_TLS)
    assert b"A: 1\r\n" in lines
    content.static_headers(b"", b"")
    assert content.static_lines[flags | FLAG_KEEP_ALIVE] == CONNECTION_HEADERS[flags | FLAG_KEEP_ALIVE]


README_MARKER = "-- main.lua: the content server's ACLs by path prefix, and its security headers"


def test_readme_security_and_acl_example(start_server, tmp_path: Path) -> None:
    """The README's main.lua (README.md, "Security headers and ACLs")."""
    blocks = re.findall(r"^```lua\n(.*?)^```$", (REPO / "README.md").read_text(), re.S | re.M)
    (block,) = [b for b in blocks if README_MARKER in b]
    base = site(tmp_path, block)
    (base / "public_html" / "admin").mkdir()
    (base / "public_html" / "admin" / "index.dyn.html").write_text("admin")
    server = start_server("server/http.lua", "--proxy-from", "127.0.0.1", workers=1,
                          env={"PUBLIC_HTML": str(base)})
    with HttpClient.connect(server) as c:
        page = c.request("GET", "/admin/")
        assert (page.status, page.text) == (200, "admin")
        assert page.header("X-Frame-Options") == "DENY"
        assert page.header("Content-Security-Policy") == "frame-ancestors 'none'"
        assert page.header("X-Content-Type-Options") == "nosniff"
        assert page.header("Strict-Transport-Security") is None  # plain HTTP
        assert c.request("GET", "/admin/", [("X-Forwarded-For", "8.8.8.8")]).status == 403
        assert c.request("GET", "/", [("X-Forwarded-For", "8.8.8.8")]).text == "home"
    assert " ERROR " not in server.stderr_text()
