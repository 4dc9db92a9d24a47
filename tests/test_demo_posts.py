"""The default site's posts demo (public_html/main.lua + public_html/posts/) over
HTTP, against the real MariaDB: the SQL connection and the Posts repository of
main.lua, listing, creating (a post. template) and showing posts, validation,
escaping, an injection attempt, and a database that is down.

Like the other MySQL tests: skipped without a server, failed without one under CI.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from typing import Any

import pytest

from test_mysql import Database, mysql_db  # noqa: F401 - the shared MySQL fixture


def request(port: int, method: str, path: str, form: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = urllib.parse.urlencode(form) if form is not None else None
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, text
    conn.close()
    return result


@pytest.fixture(scope="module")
def demo(mysql_db: Database, tmp_path_factory: Any) -> Any:  # noqa: F811
    """The default site with the test database; the posts table starts empty."""
    from conftest import Server, free_port

    mysql_db.sql("DROP TABLE IF EXISTS posts")
    port = free_port()
    server = Server(["server/http.lua", "-p", str(port), "-c", "2", "-h", "127.0.0.1"],
                    tmp_path_factory.mktemp("demo"), port=port,
                    env={"DB_HOST": mysql_db.host, "DB_PORT": str(mysql_db.port),
                         "DB_USER": mysql_db.user, "DB_PASSWORD": mysql_db.password,
                         "DB_NAME": mysql_db.name})
    server.wait_ready()
    yield server
    server.stop()


def test_empty_list_then_create_list_and_show(demo: Any, mysql_db: Database) -> None:  # noqa: F811
    status, _, page = request(demo.port, "GET", "/posts/")
    assert status == 200
    assert "No posts yet" in page

    status, headers, _ = request(demo.port, "POST", "/posts/",
                                 {"author": "Ann", "text": "Hello <b>world</b> & co"})
    assert status == 303
    # the link is encrypted (to_url: MASTER_KEY, or the demo's per-start key)
    assert re.fullmatch(r"/posts/show\?e=[\w%]+", headers["location"]), headers["location"]
    ((post_id,),) = mysql_db.sql("SELECT MAX(id) FROM posts WHERE author = 'Ann'")
    assert mysql_db.sql(f"SELECT author, text FROM posts WHERE id = {post_id}") == \
        [("Ann", "Hello <b>world</b> & co")]

    status, _, page = request(demo.port, "GET", headers["location"])
    assert status == 200
    assert "<h1>Ann wrote</h1>" in page
    assert "<blockquote>Hello &lt;b&gt;world&lt;/b&gt; &amp; co</blockquote>" in page
    assert re.search(r"<p>on \d{4}-\d\d-\d\d \d\d:\d\d</p>", page)

    # every worker lists it (the connection per worker was made at start-up)
    for _ in range(6):
        status, _, page = request(demo.port, "GET", "/posts/")
        assert status == 200
        assert re.search(r'<a href="/posts/show\?e=[\w%]+">Ann</a>: Hello &lt;b&gt;world', page)


def test_newest_first(demo: Any) -> None:
    for author in ("First", "Second"):
        assert request(demo.port, "POST", "/posts/", {"author": author, "text": "x"})[0] == 303
    _, _, page = request(demo.port, "GET", "/posts/")
    assert page.index(">Second</a>") < page.index(">First</a>")


def test_validation(demo: Any, mysql_db: Database) -> None:  # noqa: F811
    before = mysql_db.sql("SELECT COUNT(*) FROM posts")
    status, _, page = request(demo.port, "POST", "/posts/", {"author": "", "text": "x"})
    assert status == 400 and "needs an author and a text" in page
    # varchar(64): refused by the ORM, not truncated
    status, _, page = request(demo.port, "POST", "/posts/", {"author": "a" * 65, "text": "x"})
    assert status == 400 and "Could not save the post" in page
    assert mysql_db.sql("SELECT COUNT(*) FROM posts") == before


def test_injection_is_stored_as_text(demo: Any, mysql_db: Database) -> None:  # noqa: F811
    evil = "x'); DROP TABLE posts; -- \\' \" %s ?"
    status, headers, _ = request(demo.port, "POST", "/posts/", {"author": "Mallory", "text": evil})
    assert status == 303
    ((post_id,),) = mysql_db.sql("SELECT MAX(id) FROM posts WHERE author = 'Mallory'")
    assert mysql_db.sql(f"SELECT text FROM posts WHERE id = {post_id}") == [(evil,)]
    assert request(demo.port, "GET", headers["location"])[0] == 200
    status, _, _ = request(demo.port, "GET", "/posts/show?id=1%20OR%201=1")
    assert status == 404  # not a number: no such post, and no query with it


def test_unknown_post_is_404(demo: Any) -> None:
    status, _, page = request(demo.port, "GET", "/posts/show?id=999999")
    assert status == 404 and "No such post" in page


def test_database_down_is_an_error_value_and_the_site_serves(start_server: Any) -> None:
    server = start_server("server/http.lua", workers=1, env={"DB_PORT": "1", "DB_HOST": "127.0.0.1"})
    status, _, page = request(server.port, "GET", "/posts/")
    assert status == 200
    assert "The database is not reachable" in page and "(2003)" in page
    status, _, _ = request(server.port, "POST", "/posts/", {"author": "a", "text": "b"})
    assert status == 503
    assert request(server.port, "GET", "/")[0] == 200
    assert request(server.port, "GET", "/posts/")[0] == 200  # and again: the worker lives


def test_posts_csv_lists_the_posts(demo: Any, mysql_db: Database) -> None:  # noqa: F811
    text = 'Quotes "and", commas\nand a newline & an ampersand'
    assert request(demo.port, "POST", "/posts/", {"author": "Csv", "text": text})[0] == 303
    status, headers, body = request(demo.port, "GET", "/posts/as.csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    import csv
    import io

    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == ["id", "author", "created", "text"]
    ((post_id,),) = mysql_db.sql("SELECT MAX(id) FROM posts WHERE author = 'Csv'")
    row = next(r for r in rows[1:] if r[0] == str(post_id))
    assert row[1] == "Csv" and row[3] == text  # quoted as CSV, not HTML-escaped
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[2])
    ids = [int(r[0]) for r in rows[1:]]
    assert ids == sorted(ids, reverse=True)  # newest first
