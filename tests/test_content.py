"""The content server (server/http.lua: eightys/lua/eightys/httpd.lua and friends)
against real eightys processes over real sockets.

Sites are generated into temporary directories (tests/content_site.py):

* ``server``: the main test site with MASTER_KEY set and a small body limit;
* ``dev_server``: the same site with ``--dev`` and no MASTER_KEY;
* ``error_server``: a site with main.lua in its root and its own 404/500 pages;
* ``default_server``: the repository's public_html/ (no PUBLIC_HTML);
* one test starts its own server on a site holding a FIFO and a socket, and
  another runs eightys with a MASTER_KEY that is too short (start-up fails).

Each runs one worker (so sessions and "the same worker" are well defined) and is
shared by the tests of this module; every process is stopped at teardown, also
when a test fails. Every response is parsed strictly by h11 (tests/http_helpers.py).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

import markupsafe
import pytest

from conftest import Server, free_port, line_of, wait_until
from content_site import (
    APP_CSS,
    BIG_SIZE,
    PRE_GZ_TEXT,
    SECRET_MARK,
    SITE_FILES,
    Site,
    build_error_site,
    build_site,
)
from http_helpers import HttpClient, Response, check_date_and_server, request_bytes, running_server
from test_mysql import Database, mysql_db  # noqa: F401 - the shared MySQL fixture

ENTRY = "server/http.lua"
MASTER_KEY = "test-master-key-0123456789"
MAX_BODY = 64 * 1024
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
STATIC_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
BUILTIN_404 = "<h1>404 <small>Not Found</small></h1>"
BUILTIN_500 = "<h1>500 <small>Internal Server Error</small></h1>"
BUILTIN_400 = "<h1>400 <small>Bad Request</small></h1>"


# -- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return build_site(tmp_path_factory.mktemp("content") / "site")


@pytest.fixture(scope="module")
def server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"PUBLIC_HTML": str(site.root), "MASTER_KEY": MASTER_KEY}
    with running_server(tmp_path_factory.mktemp("srv"), ENTRY, "--max-body-size", str(MAX_BODY),
                        env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def dev_server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"PUBLIC_HTML": str(site.root), "MASTER_KEY": ""}
    with running_server(tmp_path_factory.mktemp("dev"), ENTRY, "--dev", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def error_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = build_error_site(tmp_path_factory.mktemp("errsite") / "www")
    env = {"PUBLIC_HTML": str(root), "MASTER_KEY": ""}
    with running_server(tmp_path_factory.mktemp("err"), ENTRY, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory,
                   mysql_db: Database) -> Iterator[Server]:  # noqa: F811
    # the default site links the posts demo, which needs its database: the test one
    env = {"PUBLIC_HTML": "", "MASTER_KEY": "", "DB_HOST": mysql_db.host,
           "DB_PORT": str(mysql_db.port), "DB_USER": mysql_db.user,
           "DB_PASSWORD": mysql_db.password, "DB_NAME": mysql_db.name}
    with running_server(tmp_path_factory.mktemp("default"), ENTRY, env=env) as srv:
        yield srv


# -- helpers -------------------------------------------------------------------------------


def fetch(server: Server, method: str, target: str, headers: list[tuple[str, str]] | None = None,
          body: bytes = b"") -> Response:
    """One request on a fresh connection, its response parsed by h11."""
    with HttpClient.connect(server) as c:
        return c.request(method, target, headers, body)


def get(server: Server, target: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return fetch(server, "GET", target, headers)


def check_page(response: Response, body: str | bytes, status: int = 200,
               content_type: str | None = HTML) -> None:
    """Status, exact body, its length, Content-Type, Date and Server."""
    expected = body.encode() if isinstance(body, str) else body
    assert response.status == status, (response.status, response.body[:2000])
    assert response.body == expected
    assert response.header("Content-Length") == str(len(expected))
    assert response.header("Content-Type") == content_type
    check_date_and_server(response)


def check_error_page(response: Response, status: int, marker: str) -> None:
    """An HTML error page with ``status`` whose body contains ``marker``."""
    assert response.status == status, (response.status, response.body[:2000])
    assert response.header("Content-Type") == HTML
    assert response.header("Content-Length") == str(len(response.body))
    assert marker in response.text, response.text


def names_file(shown: str, path: Path, rel: str) -> bool:
    """Whether ``shown`` (a file name in an error) names ``path`` (``rel`` below the
    root): the full path, the path relative to the root, or the end of the path as
    Lua shortens long chunk names (``...end/of/path``)."""
    tail = shown[3:] if shown.startswith("...") else shown
    return tail.endswith(rel) and str(path).endswith(tail)


def session_cookie(response: Response) -> str:
    """``eightys_session=...`` from the response's only Set-Cookie."""
    value = response.header("Set-Cookie")
    assert value is not None, response.headers
    return value.split(";", 1)[0]


def multipart(fields: list[tuple[str, str | None, str | None, bytes]],
              boundary: str = "----eightysTestBoundary7MA4YWxk") -> tuple[str, bytes]:
    """(Content-Type, body) for parts (name, filename, content_type, data)."""
    out = b""
    for name, filename, ctype, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype is not None:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target, body, content_type", [
    ("/", "root index from-main", HTML),  # index.dyn.html, MAIN_VALUE from main.lua beside the root
    ("/about", "<p>about page</p>", HTML),  # about.html
    ("/data.json", '{"ok": true}', "application/json; charset=utf-8"),
    ("/notes.txt", "plain notes", TEXT),
    ("/report.csv", "a,b\n1,1\n2,4\n", "text/csv; charset=utf-8"),  # report.dyn.csv
    ("/docs/", "docs index", HTML),  # docs/index.html
    ("/docs/guide", "guide /docs/guide", HTML),  # docs/guide.dyn.html
    ("/static/raw.dyn.html", SITE_FILES["static/raw.dyn.html"], HTML),  # static: never run
    ("/t/lu?x=1", "ABC42", HTML),
])
def test_routes_from_file_names(server: Server, target: str, body: str, content_type: str) -> None:
    check_page(get(server, target), body, content_type=content_type)


@pytest.mark.parametrize("target", [
    "/about.html", "/index", "/index.dyn.html", "/docs/index", "/docs/index.html",
    "/report.dyn.csv", "/docs/guide.dyn.html", "/static/raw", "/static/raw.html",
    "/part.priv.html", "/part", "/t/parts/a.priv.html", "/t/parts/a",  # .priv.: never routed
    "/helper.lua", "/helper", "/main.lua", "/public_html/main.lua",  # Lua source
    "/.hidden.html", "/.hidden", "/.hiddendir/page", "/.hiddendir/page.html",  # dot files
    "/notes.html~", "/notes", "/.notes.html.swp", "/%23notes.html%23",  # editor files
    "/i.ignored/page", "/i.ignored/plain", "/i.jinja/render", "/i.jinja/render.j2.html",
    "/post.submit.dyn.html", "/post.submit", "/hello.j2.html", "/edit_part",
    "/nothing", "/t", "/t/", "/docs/nothing",
])
def test_unrouted_files_are_404(server: Server, target: str) -> None:
    response = get(server, target)
    check_error_page(response, 404, BUILTIN_404)
    assert "<title>404 Not Found</title>" in response.text
    assert "custom" not in response.text
    check_date_and_server(response)


def test_static_dir_is_served_as_is_with_cache_control(server: Server) -> None:
    response = get(server, "/static/raw.dyn.html")
    assert response.text == '<?lu write("never run") ?>'
    assert response.header("Cache-Control") == STATIC_CACHE
    # fingerprinted names, and the folders main.lua lists in httpd.immutable, are kept a year
    for target in ("/static/app.3f2a1c.css", "/static/vendor/lib.js"):
        response = get(server, target)
        assert response.status == 200 and response.header("Cache-Control") == IMMUTABLE, target
    # everywhere else files must be revalidated
    assert get(server, "/about").header("Cache-Control") == "no-cache"
    assert get(server, "/notes.txt").header("Cache-Control") == "no-cache"
    # templates have no Cache-Control of their own
    assert get(server, "/t/lu").header("Cache-Control") is None


def test_method_prefixes_bind_methods(server: Server) -> None:
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    check_page(fetch(server, "POST", "/submit", form, b"x=1+2"), "submitted 1 2")
    response = get(server, "/submit")  # only post.submit.dyn.html exists
    check_page(response, "Method Not Allowed", 405, TEXT)
    assert response.header("Allow") == "POST"
    check_page(fetch(server, "PUT", "/item", [("Content-Type", "text/plain")], b"thing"),
               "put thing", 201)
    check_page(fetch(server, "DELETE", "/item"), "deleted")
    response = get(server, "/item")
    check_page(response, "Method Not Allowed", 405, TEXT)
    assert response.header("Allow") == "DELETE, PUT"
    response = fetch(server, "POST", "/t/lu", form, b"x=1")  # a GET template
    check_page(response, "Method Not Allowed", 405, TEXT)
    assert response.header("Allow") == "GET, HEAD"


def test_directory_redirects_to_its_slash_keeping_the_query(server: Server) -> None:
    response = get(server, "/docs")
    check_page(response, "", 301, TEXT)
    assert response.header("Location") == "/docs/"
    response = get(server, "/docs?x=1&y=a%20b")
    check_page(response, "", 301, TEXT)
    assert response.header("Location") == "/docs/?x=1&y=a%20b"


def test_head_on_templates_and_static_files(server: Server) -> None:
    with HttpClient.connect(server) as c:
        for target in ("/t/lu", "/report.csv", "/docs/guide", "/static/ten.txt", "/about", "/lua-jinja"):
            full = c.request("GET", target)
            head = c.request("HEAD", target)
            assert (head.status, head.body) == (200, b"")
            assert head.header("Content-Length") == str(len(full.body)) != "0"
            assert head.header("Content-Type") == full.header("Content-Type")
            assert head.header("ETag") == full.header("ETag")


def test_main_lua_beside_the_root_defines_globals_and_routes(server: Server) -> None:
    check_page(get(server, "/"), "root index from-main")
    # a route main.lua registered with aio:http_get renders a Jinja2 template
    check_page(get(server, "/lua-jinja"),
               "<h1>From Lua</h1><li>x&lt;y</li><li>z</li><p>Test &lt;Site&gt;</p>")


def test_main_lua_in_the_root_runs_and_is_not_served(error_server: Server) -> None:
    check_page(get(error_server, "/"), "main in root")
    check_page(get(error_server, "/main.lua"), "custom 404: 404 Not Found", 404)


def test_special_files_are_not_served_and_odd_names_are(start_server, tmp_path: Path) -> None:
    """A FIFO or a socket in the site neither blocks start-up nor hangs a request;
    a file name that is not UTF-8 is served like any other."""
    root = tmp_path / "special"
    root.mkdir()
    (root / "index.html").write_text("special index")
    os.mkfifo(root / "pipe.html")
    os.mkfifo(root / "static-pipe.css")
    (root / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "app.sock"))
        server = start_server(ENTRY, workers=1, wait=False,
                              env={"PUBLIC_HTML": str(root), "MASTER_KEY": ""})
        server.wait_ready(timeout=8)
        check_page(get(server, "/"), "special index")
        check_page(get(server, "/caf%E9.txt"), "latin-1 name", content_type=TEXT)
        for target in ("/pipe", "/static-pipe.css", "/app.sock"):
            check_error_page(get(server, target), 404, BUILTIN_404)
        server.wait_for_log("not a regular file", count=3)
    finally:
        sock.close()


# -- path traversal ----------------------------------------------------------------------------


def _traversal_targets(site: Site) -> list[tuple[str, int]]:
    secret = str(site.secret_path)
    return [
        ("/../secret.txt", 404),
        ("/static/../../secret.txt", 404),
        ("/%2e%2e/secret.txt", 404),
        ("/%2E%2E/%2E%2E/secret.txt", 404),
        ("/static/%2e%2e/%2e%2e/secret.txt", 404),
        ("/static/..%2f..%2fsecret.txt", 404),
        ("/static%2f..%2f..%2fsecret.txt", 404),
        ("/..%2fsecret.txt", 404),
        ("/static/..%5c..%5csecret.txt", 404),
        ("//secret.txt", 404),
        ("//../secret.txt", 404),
        ("/static//../../secret.txt", 404),
        ("/about%00", 404),
        ("/about%00.html", 404),
        ("/static/ten.txt%00", 404),
        ("/static/ten.txt%00/../../../secret.txt", 404),
        (secret, 404),  # an absolute file-system path
        ("/" + secret, 404),
        ("/%2f" + secret.lstrip("/"), 404),
        ("http://test/../secret.txt", 404),  # absolute-form
        ("/leak.txt", 404),  # symlink to a file outside the root
        ("/leak", 404),  # leak.html -> ../secret.txt
        ("/leakdir/secret2.txt", 404),  # symlink to a directory outside the root
        ("/leakdir/page", 404),
        ("/leakdir/", 404),
        ("/static/leak.css", 404),
        ("/static/leakdir/secret2.txt", 404),
        ("/static/leakdir/page.html", 404),
    ]


def test_path_traversal_never_reads_outside_the_root(server: Server, site: Site) -> None:
    seen = []
    for target, status in _traversal_targets(site):
        for method in ("GET", "HEAD"):
            response = fetch(server, method, target)
            seen.append((target, method, response.status))
            assert SECRET_MARK not in response.body.decode("latin-1"), target
            assert response.status == status, (target, method, response.status)
    # a raw NUL byte in the request line is not even HTTP
    with HttpClient.connect(server) as c:
        c.send(b"GET /about\x00/../../secret.txt HTTP/1.1\r\nHost: test\r\n\r\n")
        response = c.read_response()
        assert response.status == 400
        assert SECRET_MARK not in response.body.decode("latin-1")
    # the secret is there to be found, and the same server serves normal files
    assert site.secret_path.read_text() == site.secret
    check_page(get(server, "/about"), "<p>about page</p>")


# -- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target, body", [
    ("/t/lu", "ABC42"),  # <?lu ?>
    ("/t/lua", "slept=true;next"),  # <?lua ?> with await(aio:sleep()) and done()
    ("/t/seq", "SF|slow,fast"),  # blocks run one after another
    ("/t/parallel", "SF|fast,slow"),  # #! parallel: the fast block finishes first
    ("/t/pipe", "Hello, &lt;World&gt;!pi=3.14 n=   42 raw=7"),  # | lines, #[[x]], #[[x:fmt]]
    ("/t/span", "<ul><li>a&amp;b</li><li>2 items, third=0.333</li></ul>"),  # ``` spans
    ("/t/write", "<b>raw</b>[&lt;b&gt;esc&lt;/b&gt;]&lt;i&gt;&amp;&lt;/i&gt;[5|]"),
    ("/t/post_render", "hello WORLD"),
    ("/t/inc", "[A(B2)]"),  # relative, nested includes with code in them
    ("/t/up", "root part|root part|B2"),  # ../x, /x (site root) and "quoted"
])
def test_template_constructs(server: Server, target: str, body: str) -> None:
    check_page(get(server, target), body)


def test_template_context(server: Server) -> None:
    response = get(server, "/t/ctx?q=a%20b%26c", [("X-Test", "<v>")])
    check_page(response, "endpoint=/t/ctx;method=GET;q=a b&amp;c;x=&lt;v&gt;;"
                         "e=table;session=table;locals=table;main=from-main")


def test_template_body(server: Server) -> None:
    response = fetch(server, "POST", "/echo", [("Content-Type", "text/plain")], b"a<b>c")
    check_page(response, "len=5 body=a&lt;b&gt;c")


def test_template_status_and_headers(server: Server) -> None:
    check_page(get(server, "/t/notfound"), "custom missing", 404)
    response = fetch(server, "POST", "/create", [("Content-Type", "application/x-www-form-urlencoded")],
                     b"name=widget")
    check_page(response, "created widget", 201)
    assert response.header("Location") == "/items/7"
    assert response.header("X-Custom") == "yes"
    response = get(server, "/t/redirect")  # a redirect has no body
    check_page(response, "", 302)
    assert response.header("Location") == "/about"


def test_include_loop_is_a_500(server: Server, dev_server: Server, site: Site) -> None:
    response = get(server, "/t/loop")
    check_error_page(response, 500, BUILTIN_500)
    assert "loop_a" not in response.text and "include loop" not in response.text
    # --dev: the page names the loop
    response = get(dev_server, "/t/loop")
    check_error_page(response, 500, BUILTIN_500)
    a, b = site.root / "t/loop_a.priv.html", site.root / "t/loop_b.priv.html"
    loop = re.search(r"include loop: (\S+) -&gt; (\S+) -&gt; (\S+)</div>", response.text)
    assert loop, response.text
    assert names_file(loop[1], a, "loop_a.priv.html") and loop[1] == loop[3]
    assert names_file(loop[2], b, "loop_b.priv.html")
    where = re.search(r'<div class="where">(\S+):1</div>', response.text)
    assert where and names_file(where[1], b, "loop_b.priv.html"), response.text


ERROR_PAGES = [
    # (target, file, marker in its failing line, message)
    ("/t/runtime_error", "t/runtime_error.dyn.html", "MARK_RUNTIME",
     "attempt to index local &#39;x&#39; (a nil value)"),
    ("/t/syntax_error", "t/syntax_error.dyn.html", "MARK_SYNTAX",
     "&#39;&lt;name&gt;&#39; expected near &#39;=&#39;"),
    ("/t/async_error", "t/async_error.dyn.html", "MARK_ASYNC", "late failure MARK_ASYNC"),
]


@pytest.mark.parametrize("target, file, marker, message", ERROR_PAGES,
                         ids=[p[0] for p in ERROR_PAGES])
def test_template_error_is_a_plain_500_and_a_log_line(server: Server, site: Site, target: str,
                                                      file: str, marker: str, message: str) -> None:
    workers = server.worker_pids()
    assert len(workers) == 1
    response = get(server, target)
    check_error_page(response, 500, BUILTIN_500)
    assert "Something went wrong while answering this request." in response.text
    # nothing about the code: no file, no line, no source, no message
    for leak in (marker, file, str(site.root), '<section class="details">', "attempt to",
                 "expected near", "late failure"):
        assert leak not in response.text
    # the log names the file and line (Lua may shorten a long path to ".../end/of/it")
    path = site.root / file
    pattern = re.compile(rf"ERROR .*page GET {re.escape(target)}: (\S*{re.escape(file)}):"
                         rf"{line_of(path, marker)}: ")
    found = wait_until(lambda: pattern.search(server.stderr_text()), 5.0,
                       message=lambda: f"{pattern.pattern} in stderr:\n{server.stderr_text()}")
    assert names_file(found[1], path, file)
    # the worker lives on
    check_page(get(server, "/t/lu"), "ABC42")
    assert server.worker_pids() == workers


@pytest.mark.parametrize("target, file, marker, message", ERROR_PAGES,
                         ids=[p[0] for p in ERROR_PAGES])
def test_dev_error_page_shows_file_line_and_source(dev_server: Server, site: Site, target: str,
                                                   file: str, marker: str, message: str) -> None:
    workers = dev_server.worker_pids()
    response = get(dev_server, target)
    check_error_page(response, 500, BUILTIN_500)
    path = site.root / file
    line = line_of(path, marker)
    where = re.search(rf'<div class="where">(\S+):{line}</div>', response.text)
    assert where and names_file(where[1], path, file), response.text
    assert f'<div class="message">{message}</div>' in response.text
    source = [text for text in path.read_text().splitlines() if marker in text][0]
    escaped = str(markupsafe.escape(source))
    assert f'<span class="current"><b>{line} &gt;</b>{escaped}</span>' in response.text
    check_page(get(dev_server, "/t/lu"), "ABC42")
    assert dev_server.worker_pids() == workers


def test_missing_include_is_a_500(server: Server, dev_server: Server) -> None:
    response = get(server, "/t/missing_include")
    check_error_page(response, 500, BUILTIN_500)
    assert "nothere" not in response.text
    response = get(dev_server, "/t/missing_include")
    check_error_page(response, 500, 'cannot include &#34;nothere.priv.html&#34;')


def test_templates_recompile_when_their_files_change(server: Server, site: Site) -> None:
    workers = server.worker_pids()
    check_page(get(server, "/edit"), "v1 p1")
    # an included file changed: the page is rebuilt (checked at most once a second)
    (site.root / "edit_part.priv.html").write_text("p2")
    wait_until(lambda: get(server, "/edit").text == "v1 p2", 5.0, 0.1, "the include to recompile")
    (site.root / "edit.dyn.html").write_text("v2 <?include edit_part.priv.html ?> <?lu write('new') ?>")
    wait_until(lambda: get(server, "/edit").text == "v2 p2 new", 5.0, 0.1, "the page to recompile")
    check_page(get(server, "/edit"), "v2 p2 new")
    assert server.worker_pids() == workers  # no restart, no reload


def test_edited_css_is_fetched_fresh_on_a_normal_reload(server: Server, site: Site) -> None:
    """What a browser does on a normal reload of a no-cache file: revalidate with
    the validators it has. Unchanged: 304; edited: 200 with the new text."""
    path = site.root / "static/edit.css"
    first = get(server, "/static/edit.css")
    assert first.header("Cache-Control") == "no-cache"
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    validators = [("If-None-Match", etag), ("If-Modified-Since", modified)]
    assert get_with(server, "/static/edit.css", validators).status == 304
    path.write_text("body { color: blue; }")

    def fresh() -> bool:
        response = get_with(server, "/static/edit.css", validators)
        return response.status == 200 and response.text == "body { color: blue; }"

    wait_until(fresh, 5.0, 0.1, "the edited stylesheet")


def get_with(server: Server, target: str, headers: list[tuple[str, str]]) -> Response:
    return get(server, target, headers)


# -- sessions -----------------------------------------------------------------------------------


def test_session_cookie_counts_across_requests(server: Server) -> None:
    first = get(server, "/counter")
    check_page(first, "n=1")
    set_cookie = first.header("Set-Cookie")
    assert set_cookie is not None
    cookie = session_cookie(first)
    # encrypted: the value says nothing of what the session holds
    assert re.fullmatch(r"eightys_session=[A-Za-z0-9_-]{40,}", cookie), cookie
    attributes = [a.strip() for a in set_cookie.split(";")[1:]]
    assert "HttpOnly" in attributes and "SameSite=Lax" in attributes and "Path=/" in attributes
    for n in (2, 3):
        response = get(server, "/counter", [("Cookie", f"other=1; {cookie}; more=2")])
        check_page(response, f"n={n}")
        cookie = session_cookie(response)  # the session changed: a new cookie carries it
    # another client has its own session
    check_page(get(server, "/counter"), "n=1")
    # and Jinja2 pages see the session too; it did not change, so no new cookie
    response = get(server, "/hello", [("Cookie", cookie)])
    assert "<p>n=3</p>" in response.text
    assert response.header("Set-Cookie") is None


def _flip(text: str) -> str:
    """``text`` with its last character changed (within the base64url alphabet)."""
    return text[:-1] + ("A" if text[-1] != "A" else "B")


@pytest.mark.parametrize("mangle", [
    lambda c: _flip(c),  # tag changed
    lambda c: c[:40] + _flip(c[40]) + c[41:],  # ciphertext changed
    lambda c: c[:-6],  # truncated
    lambda c: "eightys_session=" + "ab" * 16 + "." + "cd" * 16,  # an old-style id
    lambda c: "eightys_session=garbage",
], ids=["tag", "ciphertext", "truncated", "forged", "garbage"])
def test_tampered_session_cookie_gets_a_fresh_session(server: Server, mangle) -> None:
    first = get(server, "/counter")
    cookie = session_cookie(first)
    second = get(server, "/counter", [("Cookie", cookie)])
    check_page(second, "n=2")
    bad = mangle(cookie)
    assert bad != cookie
    response = get(server, "/counter", [("Cookie", bad)])
    check_page(response, "n=1")
    fresh = session_cookie(response)
    assert fresh != cookie and fresh != bad
    # the real session is untouched
    check_page(get(server, "/counter", [("Cookie", session_cookie(second))]), "n=3")


def test_own_set_cookie_is_kept_beside_the_session_cookie(server: Server) -> None:
    response = get(server, "/cookie")
    check_page(response, "user=bob")
    cookies = sorted(response.all("Set-Cookie"))
    assert len(cookies) == 2, cookies
    assert cookies[0].startswith("eightys_session=") and cookies[1] == "theme=dark; Path=/"
    session = cookies[0].split(";", 1)[0]
    response = get(server, "/cookie", [("Cookie", f"theme=dark; {session}")])
    check_page(response, "user=bob")
    assert response.all("Set-Cookie") == ["theme=dark; Path=/"]  # the session did not change


def test_no_cookie_for_pages_that_leave_the_session_empty(server: Server) -> None:
    for target in ("/t/lu", "/", "/hello", "/about", "/static/ten.txt", "/t/notfound", "/nothing"):
        assert get(server, target).header("Set-Cookie") is None, target


# -- forms ------------------------------------------------------------------------------------


def test_urlencoded_form(server: Server) -> None:
    response = fetch(server, "POST", "/form", [("Content-Type", "application/x-www-form-urlencoded")],
                     b"x=hello+w%C3%B6rld%20%3Cb%3E&y=2")
    check_page(response, "x=hello w\u00f6rld &lt;b&gt;;")


def test_multipart_upload_round_trips_exact_bytes(server: Server) -> None:
    data = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n\r\n" + os.urandom(20000) + b"\r\n"
    ctype, body = multipart([("x", None, None, "field <value>".encode()),
                             ("upload", "blob.bin", "application/octet-stream", data)])
    assert len(body) < MAX_BODY
    response = fetch(server, "POST", "/form", [("Content-Type", ctype)], body)
    check_page(response, "x=field &lt;value&gt;;file=blob.bin;type=application/octet-stream;"
                         f"size={len(data)};sha={hashlib.sha256(data).hexdigest()}")


def test_upload_larger_than_the_body_limit_is_413(server: Server) -> None:
    ctype, body = multipart([("upload", "big.bin", "application/octet-stream",
                              os.urandom(MAX_BODY))])
    with HttpClient.connect(server) as c:
        # the head announces the size: refused before the body is sent
        c.send(request_bytes("POST", "/form", [("Content-Type", ctype),
                                               ("Content-Length", str(len(body)))]))
        response = c.read_response("POST")
        assert (response.status, response.text) == (413, "Content Too Large")
        assert response.header("Connection") == "close"
        c.assert_closed()
    check_page(get(server, "/t/lu"), "ABC42")


@pytest.mark.parametrize("ctype, body", [
    ("multipart/form-data; boundary=XYZ", b"garbage"),  # no boundary at all
    ("multipart/form-data; boundary=XYZ",
     b'--XYZ\r\nContent-Disposition: form-data; name="x"\r\n\r\nunfinished'),  # no closing boundary
    ("multipart/form-data; boundary=XYZ",
     b"--XYZ\r\nContent-Disposition: form-data\r\n\r\nnameless\r\n--XYZ--\r\n"),  # part without a name
    ("multipart/form-data", b"--XYZ\r\n\r\n--XYZ--\r\n"),  # no boundary parameter
], ids=["garbage", "unfinished", "nameless", "no-boundary-param"])
def test_malformed_multipart_is_400(server: Server, ctype: str, body: bytes) -> None:
    response = fetch(server, "POST", "/form", [("Content-Type", ctype)], body)
    check_error_page(response, 400, BUILTIN_400)
    check_page(get(server, "/t/lu"), "ABC42")


# -- encrypted URLs ---------------------------------------------------------------------------


def _encrypted_url(server: Server) -> str:
    response = get(server, "/t/tourl")
    assert response.status == 200
    url, plain = response.text.split(" ")
    assert plain == "/t/secret?msg=plain"  # e = false: never encrypted
    assert re.fullmatch(r"/t/secret\?e=[A-Za-z0-9%._~-]+", url), url
    assert "hi" not in url and "msg" not in url
    return url


def _with_token(url: str, mutate) -> str:
    endpoint, e = url.split("?e=")
    token = base64.b64decode(unquote(e))
    return f"{endpoint}?e={quote(base64.b64encode(mutate(token)).decode(), safe='')}"


def test_to_url_encrypts_and_query_e_decrypts(server: Server) -> None:
    url = _encrypted_url(server)
    check_page(get(server, url), "e.msg=hi there;e.n=7;msg=hi there")
    # plain parameters win in `query`, never in `query.e`
    check_page(get(server, url + "&msg=forged"), "e.msg=hi there;e.n=7;msg=forged")
    # the same parameters give the same URL (cacheable)
    assert _encrypted_url(server) == url


@pytest.mark.parametrize("mutate", [
    lambda t: t[:len(t) // 2] + bytes([t[len(t) // 2] ^ 1]) + t[len(t) // 2 + 1:],  # middle byte
    lambda t: t[:-1] + bytes([t[-1] ^ 0x80]),  # last byte (tag)
    lambda t: t[:-3],  # truncated
    lambda t: bytes([t[0] ^ 0xFF]) + t[1:],  # version byte
], ids=["middle", "tag", "truncated", "version"])
def test_tampered_e_is_400(server: Server, mutate) -> None:
    url = _with_token(_encrypted_url(server), mutate)
    response = get(server, url)
    check_error_page(response, 400, BUILTIN_400)
    assert "hi there" not in response.text


def test_e_made_for_another_endpoint_is_400(server: Server) -> None:
    url = _encrypted_url(server)
    response = get(server, url.replace("/t/secret?", "/t/other?"))
    check_error_page(response, 400, BUILTIN_400)
    assert "hi there" not in response.text


@pytest.mark.parametrize("e", ["!!!", "", "AAAA", quote(base64.b64encode(b"x" * 40).decode())])
def test_garbage_e_is_400_or_ignored(server: Server, e: str) -> None:
    response = get(server, f"/t/secret?e={e}&msg=m")
    if e == "":  # an empty e is no encrypted parameters at all
        check_page(response, "e.msg=;e.n=;msg=m")
    else:
        check_error_page(response, 400, BUILTIN_400)


def test_without_master_key_to_url_is_plain(dev_server: Server) -> None:
    check_page(get(dev_server, "/t/tourl"), "/t/secret?msg=hi%20there&n=7 /t/secret?msg=plain")
    check_page(get(dev_server, "/t/secret?msg=hi%20there&n=7"), "e.msg=;e.n=;msg=hi there")
    # encrypted parameters cannot be read without a key
    check_error_page(get(dev_server, "/t/secret?e=AAAA"), 400, BUILTIN_400)


def test_short_master_key_fails_start_up(run_eightys, site: Site) -> None:
    result = run_eightys(ENTRY, "-p", str(free_port()), "-c", "1",
                         env={"PUBLIC_HTML": str(site.root), "MASTER_KEY": "too-short"})
    assert result.returncode != 0
    assert "MASTER_KEY must be at least 16 bytes" in result.stderr


# -- static files -------------------------------------------------------------------------------


def test_etag_and_if_none_match(server: Server) -> None:
    with HttpClient.connect(server) as c:
        full = c.request("GET", "/static/ten.txt")
        check_page(full, "0123456789abcdefghij", content_type=TEXT)
        etag = full.header("ETag")
        assert etag and etag.startswith('"') and etag.endswith('"')
        assert full.header("Accept-Ranges") == "bytes"
        for value in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
            response = c.request("GET", "/static/ten.txt", [("If-None-Match", value)])
            assert (response.status, response.body) == (304, b""), value
            assert response.header("ETag") == etag
            assert response.header("Cache-Control") == STATIC_CACHE
            assert response.header("Content-Length") is None
        response = c.request("GET", "/static/ten.txt", [("If-None-Match", '"other"')])
        check_page(response, "0123456789abcdefghij", content_type=TEXT)


def test_last_modified_and_if_modified_since(server: Server, site: Site) -> None:
    with HttpClient.connect(server) as c:
        full = c.request("GET", "/about")
        last_modified = full.header("Last-Modified")
        mtime = int((site.root / "about.html").stat().st_mtime)
        assert last_modified == time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime))
        response = c.request("GET", "/about", [("If-Modified-Since", last_modified)])
        assert (response.status, response.body) == (304, b"")
        assert response.header("Last-Modified") == last_modified
        earlier = "Mon, 01 Jan 2001 00:00:00 GMT"
        check_page(c.request("GET", "/about", [("If-Modified-Since", earlier)]), "<p>about page</p>")


@pytest.mark.parametrize("value, first, last", [
    ("bytes=0-9", 0, 9), ("bytes=-5", 15, 19), ("bytes=10-", 10, 19), ("bytes=5-5", 5, 5),
    ("bytes=15-100", 15, 19), ("bytes=-100", 0, 19),
])
def test_range_206(server: Server, value: str, first: int, last: int) -> None:
    response = get(server, "/static/ten.txt", [("Range", value)])
    check_page(response, "0123456789abcdefghij"[first:last + 1], 206, TEXT)
    assert response.header("Content-Range") == f"bytes {first}-{last}/20"


@pytest.mark.parametrize("value", ["bytes=20-", "bytes=100-200", "bytes=-0"])
def test_range_416(server: Server, value: str) -> None:
    response = get(server, "/static/ten.txt", [("Range", value)])
    assert (response.status, response.body) == (416, b"")
    assert response.header("Content-Range") == "bytes */20"
    assert response.header("Content-Length") == "0"


def test_gzip_on_the_fly_when_accepted(server: Server) -> None:
    assert len(APP_CSS) > 1024
    with HttpClient.connect(server) as c:
        response = c.request("GET", "/static/app.css", [("Accept-Encoding", "deflate, gzip;q=0.8")])
        assert response.status == 200
        assert response.header("Content-Encoding") == "gzip"
        assert response.header("Vary") == "Accept-Encoding"
        assert response.header("Content-Type") == "text/css; charset=utf-8"
        assert response.header("Content-Length") == str(len(response.body)) != str(len(APP_CSS))
        assert gzip.decompress(response.body) == APP_CSS.encode()
        gz_etag = response.header("ETag")
        # the gzip representation has its own validator
        identity = c.request("GET", "/static/app.css")
        assert identity.header("ETag") != gz_etag
        again = c.request("GET", "/static/app.css", [("Accept-Encoding", "gzip"), ("If-None-Match", gz_etag)])
        assert (again.status, again.body) == (304, b"")
        assert (again.header("ETag"), again.header("Vary")) == (gz_etag, "Accept-Encoding")
        # the identity validator does not match the gzip representation
        again = c.request("GET", "/static/app.css", [("Accept-Encoding", "gzip"),
                                                     ("If-None-Match", identity.header("ETag"))])
        assert again.status == 200 and gzip.decompress(again.body) == APP_CSS.encode()


@pytest.mark.parametrize("accept", [None, "gzip;q=0", "br", "identity", "*;q=0"])
def test_identity_when_gzip_is_not_accepted(server: Server, accept: str | None) -> None:
    headers = [("Accept-Encoding", accept)] if accept is not None else []
    response = get(server, "/static/app.css", headers)
    check_page(response, APP_CSS, content_type="text/css; charset=utf-8")
    assert response.header("Content-Encoding") is None
    assert response.header("Vary") == "Accept-Encoding"


def test_precompressed_sibling_only_when_accepted(server: Server) -> None:
    response = get(server, "/static/pre.css", [("Accept-Encoding", "gzip")])
    assert response.status == 200
    assert response.header("Content-Encoding") == "gzip"
    assert response.header("Vary") == "Accept-Encoding"
    assert gzip.decompress(response.body).decode() == PRE_GZ_TEXT
    response = get(server, "/static/pre.css")
    check_page(response, SITE_FILES["static/pre.css"], content_type="text/css; charset=utf-8")
    assert response.header("Vary") == "Accept-Encoding"
    response = get(server, "/static/pre.css", [("Accept-Encoding", "gzip;q=0")])
    assert response.text == SITE_FILES["static/pre.css"]
    # ranges address the identity representation
    response = get(server, "/static/pre.css", [("Accept-Encoding", "gzip"), ("Range", "bytes=0-1")])
    check_page(response, "/*", 206, "text/css; charset=utf-8")


def test_small_files_are_not_gzipped(server: Server) -> None:
    response = get(server, "/static/ten.txt", [("Accept-Encoding", "gzip")])
    check_page(response, "0123456789abcdefghij", content_type=TEXT)
    assert response.header("Content-Encoding") is None and response.header("Vary") is None


def test_large_file_is_streamed_intact(server: Server, site: Site) -> None:
    digest = hashlib.sha256(site.big).hexdigest()
    with HttpClient.connect(server, timeout=10) as c:
        response = c.request("GET", "/static/big.bin", [("Accept-Encoding", "gzip")])
        assert response.status == 200
        assert response.header("Content-Length") == str(BIG_SIZE)
        assert response.header("Content-Encoding") is None
        assert hashlib.sha256(response.body).hexdigest() == digest
        first, last = 1_000_000, BIG_SIZE - 2
        response = c.request("GET", "/static/big.bin", [("Range", f"bytes={first}-{last}")])
        assert response.status == 206
        assert response.header("Content-Range") == f"bytes {first}-{last}/{BIG_SIZE}"
        assert response.body == site.big[first:last + 1]
        response = c.request("GET", "/static/big.bin", [("Range", "bytes=-300000")])
        assert response.body == site.big[-300000:]
        head = c.request("HEAD", "/static/big.bin")
        assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(BIG_SIZE))
        # the connection is still in step after all that
        check_page(c.request("GET", "/static/ten.txt"), "0123456789abcdefghij", content_type=TEXT)
        # pipelined: a page and a small file wait behind the streamed one
        c.send(request_bytes("GET", "/static/big.bin") + request_bytes("GET", "/t/lu")
               + request_bytes("GET", "/static/ten.txt"))
        assert hashlib.sha256(c.read_response().body).hexdigest() == digest
        assert c.read_response().body == b"ABC42"
        assert c.read_response().body == b"0123456789abcdefghij"


def test_pipelined_static_and_dynamic_requests_answer_in_order(server: Server) -> None:
    """More pipelined requests than the HTTP layer dispatches at once: the rest
    are parked and reach Lua's routes, static files included."""
    targets = ["/static/ten.txt", "/t/lu", "/about", "/static/app.css", "/docs"] * 30
    with HttpClient.connect(server, timeout=10) as c:
        c.send(b"".join(request_bytes("GET", t) for t in targets))
        for target in targets:
            response = c.read_response()
            expected = {"/static/ten.txt": (200, b"0123456789abcdefghij"), "/t/lu": (200, b"ABC42"),
                        "/about": (200, b"<p>about page</p>"),
                        "/static/app.css": (200, APP_CSS.encode()), "/docs": (301, b"")}[target]
            assert (response.status, response.body) == expected, target


@pytest.mark.parametrize("version, headers, stays_open", [
    ("1.0", [], False), ("1.0", [("Connection", "keep-alive")], True),
    ("1.1", [("Connection", "close")], False), ("1.1", [], True),
])
@pytest.mark.parametrize("target", ["/static/ten.txt", "/static/big.bin"])
def test_static_files_keep_or_close_the_connection(server: Server, site: Site, target: str,
                                                   version: str, headers: list[tuple[str, str]],
                                                   stays_open: bool) -> None:
    with HttpClient.connect(server, timeout=10) as c:
        c.send(request_bytes("GET", target, headers, version=version))
        response = c.read_response()
        assert response.status == 200
        assert response.body == (site.big if target.endswith(".bin") else b"0123456789abcdefghij")
        if stays_open:
            assert response.header("Connection") == ("keep-alive" if version == "1.0" else None)
            c.assert_open()
        else:
            assert response.header("Connection") == "close"
            c.assert_closed()


# -- Jinja2 ---------------------------------------------------------------------------------------


def test_jinja_page_autoescapes_and_sees_query_session_and_exposed(server: Server) -> None:
    cookie = session_cookie(get(server, "/counter"))
    cookie = session_cookie(get(server, "/counter", [("Cookie", cookie)]))
    response = get(server, "/hello?name=%3Cscript%3Ealert(1)%3C/script%3E", [("Cookie", cookie)])
    check_page(response, "<p>name=&lt;script&gt;alert(1)&lt;/script&gt;</p><p>n=2</p>"
                         "<p>site=Test &lt;Site&gt;</p><p>tags=a,b</p><p>method=GET</p>")


def test_jinja_error_is_a_500(server: Server, dev_server: Server, site: Site) -> None:
    response = get(server, "/bad")
    check_error_page(response, 500, BUILTIN_500)
    assert "ZeroDivisionError" not in response.text
    response = get(dev_server, "/bad")
    # named like every file: relative to the working directory, or absolute outside it
    check_error_page(response, 500, f'<div class="where">{site.root / "bad.j2.html"}:1</div>')
    assert "ZeroDivisionError" in response.text
    assert '<span class="current"><b>1 &gt;</b>&lt;p&gt;{{ 1 // 0 }}&lt;/p&gt;</span>' in response.text


def test_overridden_error_pages(error_server: Server) -> None:
    check_page(get(error_server, "/nothing"), "custom 404: 404 Not Found", 404)
    check_page(get(error_server, "/errors/404.j2.html"), "custom 404: 404 Not Found", 404)
    check_page(get(error_server, "/errors/404"), "custom 404: 404 Not Found", 404)
    check_page(get(error_server, "/boom"), "custom 500: 500 Internal Server Error", 500)
    check_page(get(error_server, "/"), "main in root")


# -- hooks ------------------------------------------------------------------------------------------


def test_before_and_after_hooks_run_around_dynamic_pages(server: Server) -> None:
    def counts() -> tuple[int, int]:
        response = get(server, "/hooks")
        assert response.status == 200
        before, after, last = response.text.split("/", 2)
        assert last == "GET /hooks"  # the hook got the method and endpoint
        return int(before), int(after)

    before, after = counts()
    assert before == after + 1  # during the page: before ran, after not yet
    get(server, "/about")  # static: no hooks
    get(server, "/static/ten.txt")
    get(server, "/nothing")  # 404: no hooks
    assert counts() == (before + 1, after + 1)
    fetch(server, "POST", "/submit", [("Content-Type", "application/x-www-form-urlencoded")], b"x=1")
    get(server, "/hello")  # Jinja2 pages too
    assert counts() == (before + 4, after + 4)


# -- the default site --------------------------------------------------------------------------------


def test_default_site_serves_every_linked_page(default_server: Server) -> None:
    index = get(default_server, "/")
    assert index.status == 200
    assert "<h1>eightys</h1>" in index.text
    links = sorted(set(re.findall(r'(?:href|src)="(/[^"]*)"', index.text)))
    assert len(links) >= 8, links
    for link in links:
        response = get(default_server, link)
        assert response.status == 200, (link, response.status, response.text[:500])
        assert response.body, link
