"""PUBLIC_HTML as 80s defines it: the folder holding main.lua and public_html/
(default server/www/ relative to the working directory), and still a folder that
is itself the site root. Real servers, started in a temporary working directory."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from conftest import Server, free_port
from eightys.config import Address, Config
from eightys.reloader import watched_paths

# the 80s entry script: two lines (written for the test)
HTTP_LUA = 'local httpd = require("aio.lib.httpd")\nhttpd:default_initialize()\n'


def make_80s_layout(base: Path, folder: str = "server/www") -> Path:
    site = base / folder
    (site / "public_html" / "assets").mkdir(parents=True)
    (site / "public_html" / "posts").mkdir()
    (site / "main.lua").write_text('SITE_NAME = "from main.lua"\n')
    (site / "public_html" / "index.dyn.html").write_text(
        "<p><?lu write(SITE_NAME or 'no main') ?> <?lu write(query.name or 'Nomad') ?></p>")
    (site / "public_html" / "posts" / "index.dyn.html").write_text("<p>posts</p>")
    (site / "public_html" / "assets" / "style.css").write_text("body { color: red }")
    (base / "server").mkdir(exist_ok=True)
    (base / "server" / "http.lua").write_text(HTTP_LUA)
    return site


def serve(tmp_path: Path, public_html: str | None, entry: str = "server/http.lua") -> Server:
    port = free_port()
    server = Server([entry, "-p", str(port), "-c", "1"], tmp_path, port=port,
                    env={"PUBLIC_HTML": public_html or ""}, cwd=tmp_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def fetch(server: Server, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.parametrize("public_html", [None, "server/www/", "server/www"])
def test_the_80s_layout(tmp_path, public_html):
    make_80s_layout(tmp_path)
    server = serve(tmp_path, public_html)
    try:
        assert fetch(server, "/?name=Ann") == (200, b"<p>from main.lua Ann</p>")
        assert fetch(server, "/posts/") == (200, b"<p>posts</p>")
        assert fetch(server, "/assets/style.css") == (200, b"body { color: red }")
        assert fetch(server, "/public_html/index.html")[0] == 404
        assert fetch(server, "/main.lua")[0] == 404
    finally:
        server.stop()


def test_a_folder_that_is_the_site_root_still_works(tmp_path):
    root = tmp_path / "mysite"
    root.mkdir()
    (root / "index.dyn.html").write_text("<p>root <?lu write(SITE_NAME or 'none') ?></p>")
    (tmp_path / "main.lua").write_text('SITE_NAME = "beside"\n')  # main.lua beside the root
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "http.lua").write_text(HTTP_LUA)
    server = serve(tmp_path, "mysite/")
    try:
        assert fetch(server, "/") == (200, b"<p>root beside</p>")
    finally:
        server.stop()


def test_reload_mode_watches_the_served_folders(tmp_path, monkeypatch):
    site = make_80s_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = Config(entry="server/http.lua", address=Address("inet", "127.0.0.1", 0), workers=1)
    for value in ("", "server/www/", "server/www"):
        monkeypatch.setenv("PUBLIC_HTML", value)
        paths = [os.path.realpath(p) for p in watched_paths(config)]
        assert str((site / "public_html").resolve()) in paths
        assert str((site / "main.lua").resolve()) in paths


def test_initialize_with_an_80s_root(tmp_path):
    make_80s_layout(tmp_path)
    (tmp_path / "server" / "site.lua").write_text(
        'require("aio.lib.httpd"):initialize({ root = "server/www/", body_size = 8 })\n')
    server = serve(tmp_path, None, entry="server/site.lua")
    try:
        assert fetch(server, "/?name=Bo") == (200, b"<p>from main.lua Bo</p>")
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/", data=b"x" * 9)
        assert fetch_request(req)[0] == 413
    finally:
        server.stop()


def fetch_request(req: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
