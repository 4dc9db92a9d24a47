"""Errors point at the user's code: file:line of the user's file, in Lua's words,
without eightys' own frames, with the fields of an error table, and a clear
message for a response body that cannot be sent."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Server
from http_helpers import HttpClient

APP = """\
aio:http_get("/table", function(fd) error({ code = 1, message = "nope" }) end)
aio:http_get("/later", function(fd) aio:await(aio:sleep(0.01)) error({ code = 2 }) end)
aio:http_get("/function", function(fd) fd:http_response(200, "text/plain", function() end) end)
aio:http_get("/readfile", function(fd)
    local data, err = net.readfile("/nonexistent/file")
    fd:http_response(200, "text/plain", tostring(data) .. " " .. err)
end)
aio:http_get("/listdir", function(fd)
    local names, err = net.listdir("/nonexistent")
    fd:http_response(200, "text/plain", tostring(names) .. " " .. err)
end)
aio:http_get("/crypto", function(fd)
    local token = crypto.encrypt("data", nil)
    fd:http_response(200, "text/plain", token)
end)
"""


def get(server: Server, target: str):
    with HttpClient.connect(server) as c:
        return c.request("GET", target)


def test_errors_name_the_users_line(start_server, tmp_path: Path) -> None:
    app = tmp_path / "app.lua"
    app.write_text(APP)
    server = start_server(app, workers=1)
    shown = "app.lua"  # the end of the name: Lua shortens long paths to ".../app.lua"
    for target in ("/table", "/later", "/function", "/crypto"):
        assert get(server, target).status == 500, target
    log = server.wait_for_log("crypto.encrypt")
    assert f"{shown}:1: error {{code = 1, message = \"nope\"}}" in log
    assert f"{shown}:2: error {{code = 2}}" in log
    assert "table: 0x" not in log
    assert (f"{shown}:3: the response body must be a string or a table (JSON), got a function"
            in log)
    assert f"{shown}:13: crypto.encrypt: expected a string, got nil" in log
    # framework frames are not what a user needs to read
    assert "eightys/lua/" not in log and "[C]: in function 'xpcall'" not in log
    assert "NoneType" not in log
    assert get(server, "/readfile").text == "nil no such file: /nonexistent/file"
    assert get(server, "/listdir").text == "nil no such file: /nonexistent"


def test_load_time_error_through_python_has_file_line(run_eightys, tmp_path: Path) -> None:
    app = tmp_path / "app.lua"
    app.write_text('local x = 1\nlocal token = crypto.encrypt("user=42", MASTER_KEY)\n')
    result = run_eightys(str(app), "-p", "0", "-c", "1")
    assert result.returncode == 1
    assert "app.lua:2: crypto.encrypt: expected a string, got nil" in result.stderr
    assert "expected bytes or str" not in result.stderr
    assert "bootstrap.lua" not in result.stderr
    # any error raised in Python names the Lua line that called it
    app.write_text('local x = 1\n\nnet.write(ELFD, 1, {})\n')
    result = run_eightys(str(app), "-p", "0", "-c", "1")
    assert result.returncode == 1
    assert "app.lua:3: net.write: data must be a string" in result.stderr


def test_a_template_block_that_never_calls_done_is_reported(tmp_path: Path) -> None:
    """The handler timeout's 504 and log line name the <?lua ?> block that never
    called done(), not the template engine's internals."""
    from http_helpers import running_server

    root = tmp_path / "www"
    root.mkdir()
    (root / "stuck.dyn.html").write_text(
        "<p>a</p>\n<?lu locals.x = 1 ?>\n<?lua\nawait(aio:sleep(0.01))\n-- forgot done()\n?>\n")
    with running_server(tmp_path, "server/http.lua", "--handler-timeout", "1",
                        env={"PUBLIC_HTML": str(root)}) as server:
        started = time.monotonic()
        response = get(server, "/stuck")
        assert response.status == 504
        assert time.monotonic() - started < 10
        log = server.wait_for_log("handler timeout")
        assert "GET /stuck" in log
        assert "stuck.dyn.html:1)" in log  # the handler: the page, not the content server
        assert "waiting on: <?lua ?> block at " in log and "stuck.dyn.html:3 never called done()" in log
        assert get(server, "/stuck").status == 504  # and the worker still serves
    # in --dev, the 504 page (for this machine's clients) shows the block and its source
    with running_server(tmp_path, "server/http.lua", "--handler-timeout", "1", "--dev",
                        env={"PUBLIC_HTML": str(root)}) as server:
        response = get(server, "/stuck")
        assert response.status == 504
        assert "this &lt;?lua ?&gt; block never called done()" in response.text
        assert "stuck.dyn.html" in response.text and "forgot done()" in response.text


def test_the_504_page_names_the_pending_block_in_dev(tmp_path: Path) -> None:
    """aio.http_error_page(504, nil, req) (what the HTTP layer calls when a handler
    times out) shows, in --dev and to a local client, the block and its source."""
    from http_helpers import running_server

    root = tmp_path / "www"
    root.mkdir()
    (root / "stuck.dyn.html").write_text("<p>a</p>\n<?lu x = 1 ?>\n<?lua -- BLOCK_MARK\n?>\n")
    (tmp_path / "main.lua").write_text(
        'aio:http_get("/fake504", function(fd)\n'
        '    fd.waiting_on = "<?lua ?> block at " .. httpd.root .. "/stuck.dyn.html:3 never called done()"\n'
        '    local mime, body = aio.http_error_page(504, nil, fd)\n'
        '    fd:http_response(504, mime, body)\n'
        'end)\n')
    with running_server(tmp_path, "server/http.lua", "--dev",
                        env={"PUBLIC_HTML": str(root)}) as server:
        response = get(server, "/fake504")
        assert response.status == 504
        assert "this &lt;?lua ?&gt; block never called done()" in response.text
        assert "stuck.dyn.html" in response.text and "BLOCK_MARK" in response.text
