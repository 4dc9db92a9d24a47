"""httpd.security_headers: the content server's default security headers, on pages,
static files (Python's fast path), redirects and error pages; overridden, dropped
and turned off from main.lua. Strict-Transport-Security only on TLS requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from eightys.content import ContentHost
from eightys.wire import CONNECTION_HEADERS, FLAG_KEEP_ALIVE, FLAG_LIMIT, FLAG_TLS
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
