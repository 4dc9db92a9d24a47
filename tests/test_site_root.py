"""The content server never serves, runs or includes a file from outside its
site root: not through a symlink made after the start, not through
``<?include ../../etc/passwd ?>``, unless the site says to follow symlinks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Server, wait_until
from http_helpers import HttpClient, Response, running_server

ENTRY = "server/http.lua"
SECRET = "TOPSECRET-outside-the-root"


def get(server: Server, target: str) -> Response:
    with HttpClient.connect(server) as c:
        return c.request("GET", target)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "static").mkdir(parents=True)
    (root / "static/app.css").write_text("body { color: green }")
    (root / "page.html").write_text("<p>inside</p>")
    (root / "dyn.dyn.html").write_text('<?lu write("dyn inside") ?>')
    (root / "hello.j2.html").write_text("jinja inside")
    (root / "part.priv.html").write_text("part inside")
    (root / "uses.dyn.html").write_text("[<?include part.priv.html ?>]")
    (root / "passwd.dyn.html").write_text("[<?include ../../../../../../../etc/passwd ?>]")
    (root / "passwd2.dyn.html").write_text("[<?include /../../etc/passwd ?>]")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.html").write_text(SECRET)
    (outside / "secret.dyn.html").write_text(f'<?lu write("{SECRET} executed") ?>')
    return root


@pytest.fixture
def server(site: Path, tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)}) as srv:
        yield srv


def replace_with_link(path: Path, target: Path) -> None:
    tmp = path.with_name(path.name + ".new-link")
    os.symlink(target, tmp)
    os.replace(tmp, path)  # atomic: the route never sees a missing file


@pytest.mark.parametrize("rel, target, url", [
    ("static/app.css", "secret.html", "/static/app.css"),
    ("page.html", "secret.html", "/page"),
    ("dyn.dyn.html", "secret.dyn.html", "/dyn"),
    ("hello.j2.html", "secret.html", "/hello"),
], ids=["static", "file", "template", "jinja"])
def test_file_replaced_by_a_link_out_of_the_root_gets_404(server: Server, site: Path,
                                                          rel: str, target: str, url: str) -> None:
    first = get(server, url)
    assert first.status == 200 and SECRET not in first.text
    replace_with_link(site / rel, site.parent / "outside" / target)

    def refused() -> bool:
        response = get(server, url)
        assert SECRET not in response.text, response.text
        return response.status == 404

    wait_until(refused, 5.0, 0.1, f"{url} to be refused")
    for _ in range(3):  # and it stays refused
        assert get(server, url).status == 404


def test_include_out_of_the_root_is_refused(server: Server, site: Path) -> None:
    passwd = Path("/etc/passwd").read_text()
    for url in ("/passwd", "/passwd2"):
        response = get(server, url)
        assert response.status == 500, response.text
        assert "root:" not in response.text and passwd not in response.text
    server.wait_for_log("outside the site root")
    # an include that becomes a link out of the root is refused too
    assert get(server, "/uses").text == "[part inside]"
    replace_with_link(site / "part.priv.html", site.parent / "outside" / "secret.html")

    def refused() -> bool:
        response = get(server, "/uses")
        assert SECRET not in response.text, response.text
        return response.status == 500

    wait_until(refused, 5.0, 0.1, "the include to be refused")


def test_links_out_are_followed_when_the_site_says_so(site: Path, tmp_path: Path) -> None:
    os.symlink(site.parent / "outside" / "secret.html", site / "linked.html")
    (site.parent / "main.lua").write_text("httpd.follow_symlinks = true\n")
    with running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)}) as server:
        response = get(server, "/linked")
        assert response.status == 200 and response.text == SECRET
        # .. in an include is still refused: it is not a symlink
        assert get(server, "/passwd").status == 500
    (site.parent / "main.lua").unlink()
    with running_server(tmp_path, ENTRY, env={"PUBLIC_HTML": str(site)}) as server:
        assert get(server, "/linked").status == 404
