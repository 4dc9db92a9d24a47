"""Every fenced ```lua block of README.md runs, as written, in a real server.

Each block is claimed by exactly one case below (by a line it contains); the
case writes the block as the entry script (or a site's main.lua), adds the
fixtures it needs (a site, a database, a module), starts ``eightys`` and checks
what the README says the code does. A block no case claims fails the test: a
new example must come with its check, so the README cannot drift from the code.
No case may log an error.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, Server, wait_until
from http_helpers import HttpClient

README = REPO / "README.md"


def lua_blocks() -> list[str]:
    """The text of every ```lua block, in order."""
    return re.findall(r"^```lua\n(.*?)^```$", README.read_text(), re.S | re.M)


def get(server: Server, target: str, method: str = "GET", headers=None, body: bytes = b""):
    with HttpClient.connect(server) as c:
        return c.request(method, target, headers, body)


def no_errors(server: Server) -> None:
    text = server.stderr_text()
    assert " ERROR " not in text and "Traceback" not in text, text


def wait_output(server: Server, text: str, timeout: float = 10.0) -> str:
    wait_until(lambda: text in server.stdout_text(), timeout, 0.05,
               f"{text!r} on stdout (stderr: {server.stderr_text()[-2000:]})")
    return server.stdout_text()


def redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
        return True
    except OSError:
        return False

def redis_without(pattern: str):
    """A client of the tests' Redis database (15) with no key matching ``pattern``;
    skips the test without a Redis."""
    if not redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=15)
    for key in client.scan_iter(pattern):
        client.delete(key)
    return client



# -- the cases: (a line the block contains, check(block, start, tmp_path)) -------------------

Start = Callable[..., Server]


def entry(tmp_path: Path, code: str, name: str = "app.lua") -> Path:
    path = tmp_path / name
    path.write_text(code)
    return path


def check_echo_hooks(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block), workers=1)
    with server.client() as c:
        c.send(b"hello, echo\n")
        assert c.line() == b"hello, echo"  # line() strips the newline
    no_errors(server)


def check_http_routes(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block), workers=1)
    assert get(server, "/echo?name=Abcde").text == "Hi, Abcde!"
    assert get(server, "/echo").text == "Hi, Nomad!"
    response = get(server, "/users/7")
    assert json.loads(response.text) == {"id": "7"}
    response = get(server, "/echo", "POST", [("Content-Type", "text/x-test")], b"posted")
    assert (response.text, response.header("Content-Type")) == ("posted", "text/x-test")
    started = time.monotonic()
    response = get(server, "/slow")
    assert response.text == "done" and response.header("X-Took") == "0.5"
    assert time.monotonic() - started >= 0.45
    response = get(server, "/stream")
    assert response.text == "".join(f"line {i}\n" for i in range(1, 11))
    no_errors(server)


def check_codec(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block + "\nprint(text, value.id, err)\n"), workers=1)
    out = wait_output(server, "\tnil")
    text, number, err = out.strip().split("\t")
    assert json.loads(text) == {"ok": True, "items": []}  # (key order is Lua's)
    assert number.removesuffix("LL") == "9007199254740993" and err == "nil"
    no_errors(server)


def check_crypto(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block + "\nprint(plain, err, nothing, why)\n"), workers=1)
    wait_output(server, "user=42\tnil\tnil\tdecryption failed")
    no_errors(server)


def check_promises(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block), workers=1)
    out = wait_output(server, "a\tb\t40")
    assert "got\t42" in out
    no_errors(server)


def check_sockets_and_mail(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block), workers=1)
    with server.client() as c:  # on_accept: the line protocol
        c.send(b"shout\n")
        assert c.line() == b"SHOUT"
    wait_output(server, "worker 0 says hello")
    if redis_up():
        wait_output(server, "redis says\t+PONG")
    else:
        time.sleep(0.5)  # the connect fails; nothing may break
    no_errors(server)


def check_jinja_main(block: str, start: Start, tmp_path: Path) -> None:
    base = tmp_path / "site"
    root = base / "public_html"
    root.mkdir(parents=True)
    (base / "main.lua").write_text(block)
    template = re.search(r"report\.j2\.html: (.*)\)$", block, re.M)
    assert template, "the example shows its template"
    (root / "report.j2.html").write_text(template.group(1))
    server = start("server/http.lua", workers=1, env={"PUBLIC_HTML": str(root)})
    response = get(server, "/api/report")
    assert response.status == 200
    assert response.text == "<h1>My site</h1><p>north</p><p>south</p>"
    no_errors(server)


APP_DB = ("app", "secret", "appdb")


def app_database() -> None:
    """The database the MySQL and ORM examples use: appdb, user app (password
    secret), tables users (with user 42) and posts. Made as MariaDB root."""
    pymysql = pytest.importorskip("pymysql")
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               autocommit=True, connect_timeout=3)
    except pymysql.err.Error as exc:
        pytest.skip(f"no MySQL/MariaDB as root at 127.0.0.1:3306: {exc}")
    with conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS appdb CHARACTER SET utf8mb4")
        cur.execute("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'secret'")
        cur.execute("GRANT ALL PRIVILEGES ON appdb.* TO 'app'@'%'")
        cur.execute("DROP TABLE IF EXISTS appdb.users")
        cur.execute("CREATE TABLE appdb.users (id INT AUTO_INCREMENT PRIMARY KEY, "
                    "name VARCHAR(64) NOT NULL)")
        cur.execute("INSERT INTO appdb.users (id, name) VALUES (42, 'ann')")
        cur.execute("DROP TABLE IF EXISTS appdb.posts")
        cur.execute("CREATE TABLE appdb.posts (id INT AUTO_INCREMENT PRIMARY KEY, "
                    "author VARCHAR(64) NOT NULL, text TEXT NOT NULL, "
                    "created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)")


def app_rows(query: str) -> list[tuple]:
    import pymysql

    with pymysql.connect(host="127.0.0.1", user="root", password="", database="appdb") as conn, \
            conn.cursor() as cur:
        cur.execute(query)
        return list(cur.fetchall())


def mysql_block() -> str:
    return next(b for b in lua_blocks() if 'require("mysql")' in b)


def check_mysql(block: str, start: Start, tmp_path: Path) -> None:
    app_database()
    server = start(entry(tmp_path, block), workers=1)
    wait_output(server, "1\t43")  # affected_rows, last_insert_id of the INSERT
    assert app_rows("SELECT id, name FROM users ORDER BY id") == [(42, "ann"), (43, "ann")]
    no_errors(server)


def check_orm(block: str, start: Start, tmp_path: Path) -> None:
    app_database()
    # the ORM example works on the client the MySQL example made (SQL)
    server = start(entry(tmp_path, mysql_block() + "\n" + block), workers=1)
    wait_until(lambda: app_rows("SELECT author, text FROM posts") == [("ann", "hello")],
               10.0, 0.1, "the saved post")
    time.sleep(0.3)
    no_errors(server)


def check_module(block: str, start: Start, tmp_path: Path) -> None:
    server = start(entry(tmp_path, block), "-m", "modules/example.py", workers=1)
    out = wait_output(server, "localhost is")
    assert re.search(r"localhost is\t(127\.0\.0\.1|::1)", out), out
    no_errors(server)
    # and the module's demo app the README names
    demo = start("server/modules_demo.lua", "-m", "modules/example.py", workers=1)
    assert get(demo, "/upper?text=hello").text == "HELLO"
    assert "127.0.0.1" in json.loads(get(demo, "/resolve?host=localhost").text)
    no_errors(demo)


def check_shared_cache(block: str, start: Start, tmp_path: Path) -> None:
    r = redis_without("eightys:cache:prices:*")
    server = start(entry(tmp_path, block), "--redis", "redis://127.0.0.1:6379/15", workers=2)
    for _ in range(4):  # both workers: the first fill is shared through Redis
        response = get(server, "/price?item=tea")
        assert response.status == 200, response.text
        assert json.loads(response.text) == {"amount": 42, "currency": "EUR"}
    keys = list(r.scan_iter("eightys:cache:prices:*"))
    assert len(keys) == 1, keys
    assert 0 < r.ttl(keys[0]) <= 30
    no_errors(server)


def check_redis_session_store(block: str, start: Start, tmp_path: Path) -> None:
    r = redis_without("eightys:session:*")
    root = tmp_path / "public_html"
    root.mkdir()
    (root / "counter.dyn.html").write_text(
        '<?lu session.n = (session.n or 0) + 1 write("n=%d", session.n) ?>')
    (tmp_path / "main.lua").write_text(block)  # "beside the site root"
    server = start("server/http.lua", workers=2,
                   env={"PUBLIC_HTML": str(root), "REDIS_URL": "redis://127.0.0.1:6379/15"})
    cookie = None
    for n in range(1, 5):  # fresh connections: both workers, one session in Redis
        response = get(server, "/counter", headers=[("Cookie", cookie)] if cookie else [])
        assert response.text == f"n={n}", response.text
        cookie = (response.header("Set-Cookie") or "").split(";", 1)[0] or cookie
    keys = list(r.scan_iter("eightys:session:*"))
    assert len(keys) == 1, keys
    assert 3600 < r.ttl(keys[0]) <= 24 * 3600  # the block's ttl, not the default
    no_errors(server)


CASES: dict[str, Callable[[str, Start, Path], None]] = {
    "-- server/echo.lua\nfunction on_data(elfd, childfd, data, length)": check_echo_hooks,
    'aio:http_get("/users/:id", function(fd)': check_http_routes,
    "local text = codec.json_encode(": check_codec,
    'local token = crypto.encrypt("user=42", key)': check_crypto,
    "local function later(s, value)": check_promises,
    "-- a line protocol on an accepted connection": check_sockets_and_mail,
    'httpd:expose("site", { name = "My site" })': check_jinja_main,
    'local mysql = require("mysql")': check_mysql,
    'local orm = require("orm")': check_orm,
    'aio:await(example.resolve("localhost"))': check_module,
    'local price = aio:await(aio:cached("prices", query, function()': check_shared_cache,
    'httpd.session_store = require("eightys.redis_sessions"):new({ ttl = 24 * 3600 })':
        check_redis_session_store,
}


def claims(block: str) -> list[str]:
    return [marker for marker in CASES if marker in block]


def _run_by_another_test(block: str) -> bool:
    """Blocks of the WebSocket, 80s, Redis and WAMP sections are run by their own
    test files (which pick them out of README.md by one of their lines)."""
    others = [p.read_text() for p in Path(__file__).parent.glob("test_*.py")
              if p.name != Path(__file__).name and "README" in p.read_text()]
    lines = [line.strip() for line in block.splitlines() if len(line.strip()) > 20]
    if any(line in text for line in lines for text in others):
        return True
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    at = readme.find(block)
    heading = readme.rfind("\n## ", 0, at)
    section = readme[heading + 4:readme.find("\n", heading + 4)] if at >= 0 and heading >= 0 else ""
    return bool(section) and any(f'readme_lua_blocks("{section}")' in text
                                or f'section_blocks("{section}")' in text for text in others)



def test_every_lua_block_has_exactly_one_check() -> None:
    blocks = lua_blocks()
    assert len(blocks) >= len(CASES)
    for block in blocks:
        claimed = claims(block)
        assert len(claimed) == 1 or not claimed and _run_by_another_test(block), \
            f"README block claimed by {claimed}:\n{block}"


@pytest.mark.parametrize("marker", list(CASES), ids=[f.__name__ for f in CASES.values()])
def test_readme_lua_block_runs(marker: str, start_server: Start, tmp_path: Path) -> None:
    matching = [b for b in lua_blocks() if marker in b]
    assert len(matching) == 1, f"no README block contains {marker!r} any more"
    CASES[marker](matching[0], start_server, tmp_path)
