"""The default site (public_html/): one layout with navigation across every
demo and a footer, one stylesheet, "how this page is made" boxes showing each
page's own source, error pages in the same layout with a way home, and the
encrypted-link demo working without MASTER_KEY on every worker."""

from __future__ import annotations

import html
import re
from typing import Iterator

import pytest

from conftest import REPO, Server
from http_helpers import HttpClient, Response, running_server

DEMOS = ["/", "/loop", "/form/", "/counter", "/secret", "/posts/", "/hello?name=Jinja"]
SOURCES = {"/": "index.dyn.html", "/loop": "loop.dyn.html", "/form/": "form/index.dyn.html",
           "/counter": "counter.dyn.html", "/secret": "secret.dyn.html",
           "/posts/": "posts/index.dyn.html", "/hello?name=Jinja": "hello.j2.html"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # two workers: the encrypted links must work whichever answers
    with running_server(tmp_path_factory.mktemp("site"), "server/http.lua", "-c", "2",
                        env={"PUBLIC_HTML": "", "MASTER_KEY": "", "DB_PORT": "1"}) as srv:
        srv.wait_workers(2)
        yield srv


def get(server: Server, target: str) -> Response:
    with HttpClient.connect(server) as c:
        return c.request("GET", target, [("Connection", "close")])


def nav_links(page: str) -> list[str]:
    nav = re.search(r"<nav>(.*?)</nav>", page, re.S)
    assert nav, page[:2000]
    return re.findall(r'href="([^"]+)"', nav.group(1))


@pytest.mark.parametrize("target", DEMOS)
def test_every_demo_has_the_layout_and_shows_its_source(site: Server, target: str) -> None:
    response = get(site, target)
    assert response.status == 200, response.text[:2000]
    page = response.text
    assert [html.unescape(h) for h in nav_links(page)] == DEMOS  # the same navigation everywhere
    assert page.count('aria-current="page"') == 1
    assert page.count('<link rel="stylesheet"') == 1 and "/static/style.css" in page
    assert re.search(r"<footer>Served by worker \d of 2 .*</footer>", page)
    assert "How this page is made" in page
    source = (REPO / "public_html" / SOURCES[target]).read_text()
    shown = re.search(r"<pre><code>(.*?)</code></pre>", page, re.S)
    assert shown and html.unescape(shown.group(1)) == source


@pytest.mark.parametrize("target, status", [("/no/such/page", 404), ("/secret?e=bad", 400)])
def test_error_pages_share_the_layout_and_lead_home(site: Server, target: str, status: int) -> None:
    response = get(site, target)
    assert response.status == status
    assert [html.unescape(h) for h in nav_links(response.text)] == DEMOS
    assert 'href="/">Go to the home page</a>' in response.text
    assert "/static/style.css" in response.text


def test_encrypted_link_demo_works_without_master_key(site: Server) -> None:
    page = get(site, "/secret").text
    assert "No <code>MASTER_KEY</code> is set" in page
    link = html.unescape(re.search(r'<a class="button" href="([^"]+)"', page).group(1))
    assert link.startswith("/secret?e=")
    for _ in range(6):  # on either worker
        followed = get(site, link)
        assert followed.status == 200
        assert "The link carried: <strong>hello from eightys</strong>" in followed.text
    tampered = link[:-3] + ("A" if link[-3] != "A" else "B") + link[-2:]
    assert get(site, tampered).status == 400


def test_csv_without_a_database_says_why(site: Server) -> None:
    response = get(site, "/posts/as.csv")
    assert response.status == 503
    assert response.text.startswith("error\n") and "not available" in response.text
