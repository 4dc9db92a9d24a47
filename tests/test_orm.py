"""The ORM (eightys/lua/orm.lua) over the real MySQL client against a real MariaDB.

A real eightys process (one worker, LuaJIT and Lua 5.4) serves tests/apps/orm_app.lua:
each test POSTs a Lua snippet that drives the ORM and returns JSON, and checks the
database itself with PyMySQL. The SQL the ORM generates is covered exactly, without a
server, by tests/lua/test_orm.lua; here every method and option runs for real, and
SQL injection is tried through every kind of argument.

Database: ``eightys_test`` on 127.0.0.1:3306 as root without a password (override
with ORM_TEST_HOST, ORM_TEST_PORT, ORM_TEST_USER, ORM_TEST_PASSWORD, ORM_TEST_DB).
It is created if missing. If the server cannot be reached the tests are skipped,
unless the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import APPS
from eightys.mysql import DRIVERS, available
from http_helpers import running_server

try:
    import pymysql
except ImportError:  # a dependency of aiomysql, so normally present
    if os.environ.get("CI"):
        raise
    pytest.skip("PyMySQL is not installed", allow_module_level=True)

SETTINGS = {
    "host": os.environ.get("ORM_TEST_HOST", "127.0.0.1"),
    "port": int(os.environ.get("ORM_TEST_PORT", "3306")),
    "user": os.environ.get("ORM_TEST_USER", "root"),
    "password": os.environ.get("ORM_TEST_PASSWORD", ""),
}
DB = os.environ.get("ORM_TEST_DB", "eightys_test")
APP = APPS / "orm_app.lua"

SCHEMA = [
    "DROP TABLE IF EXISTS orm_posts",
    "DROP TABLE IF EXISTS orm_pairs",
    "DROP TABLE IF EXISTS orm_victim",
    """CREATE TABLE orm_posts (
        id INT AUTO_INCREMENT PRIMARY KEY,
        author VARCHAR(16) NOT NULL,
        text TEXT NULL,
        created_at DATETIME(6) NULL,
        score DOUBLE NULL,
        price DECIMAL(10, 2) NULL,
        is_published BIT(1) NOT NULL DEFAULT b'0',
        flag TINYINT(1) NULL,
        big BIGINT NULL,
        note VARCHAR(32) NOT NULL DEFAULT 'none'
    ) CHARACTER SET utf8mb4""",
    """CREATE TABLE orm_pairs (
        a INT NOT NULL, b VARCHAR(8) NOT NULL, val DOUBLE NULL, PRIMARY KEY (a, b)
    ) CHARACTER SET utf8mb4""",
    "CREATE TABLE orm_victim (id INT PRIMARY KEY)",
    "INSERT INTO orm_victim VALUES (1)",
    """INSERT INTO orm_posts (id, author, text, created_at, score, price, is_published, flag, big)
       VALUES (1, 'ann', 'first', '2024-01-02 03:04:05', 1.5, 9.99, b'1', 1, 9007199254740993),
              (2, 'bob', 'second', '2024-02-03 04:05:06.250000', NULL, NULL, b'0', 0, NULL),
              (3, 'ann', 'third', NULL, 3.25, 0.50, b'1', NULL, -5)""",
]


# -- fixtures -----------------------------------------------------------------------------


def _connect(db: str | None = None) -> Any:
    return pymysql.connect(**SETTINGS, database=db, autocommit=True, charset="utf8mb4",
                           connect_timeout=3)


@pytest.fixture(scope="module")
def database() -> Iterator[None]:
    """Make sure DB exists; skip (fail under CI) if MariaDB is unreachable."""
    try:
        conn = _connect()
    except pymysql.err.OperationalError as exc:
        reason = (f"MariaDB/MySQL at {SETTINGS['host']}:{SETTINGS['port']} is unreachable "
                  f"as {SETTINGS['user']!r}: {exc}")
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is a failure)", pytrace=False)
        pytest.skip(reason)
    with conn:
        conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{DB}` CHARACTER SET utf8mb4")
    yield


@pytest.fixture
def db(database: None) -> Iterator[Any]:
    """A PyMySQL connection to DB with fresh tables (see SCHEMA)."""
    conn = _connect(DB)
    with conn.cursor() as cur:
        for statement in SCHEMA:
            cur.execute(statement)
    try:
        yield conn
    finally:
        conn.close()


#: (engine, MySQL driver) pairs: both engines, each installed driver
SERVERS = [(engine, driver) for engine in ("luajit", "lua54")
           for driver in sorted(d for d in DRIVERS if available(d))]


@pytest.fixture(scope="module", params=SERVERS, ids=["-".join(p) for p in SERVERS])
def server(request: pytest.FixtureRequest, database: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {"ORM_TEST_" + k.upper(): str(v) for k, v in SETTINGS.items()}
    env["ORM_TEST_DB"] = DB
    engine, driver = request.param
    with running_server(tmp_path_factory.mktemp("orm"), APP, "--lua", engine,
                        "--mysql-driver", driver, env=env) as srv:
        yield srv


def query(db: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def run(server: Any, snippet: str) -> Any:
    """Run a Lua snippet in the app; return what it returned (JSON-decoded)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("POST", "/run", body=snippet.encode(), headers={"Content-Type": "text/x-lua"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, f"{response.status}: {body!r}\nstderr:\n{server.stderr_text()}"
    answer = json.loads(body)
    if not answer["ok"]:
        pytest.fail(f"Lua snippet failed: {answer['error']}\nstderr:\n{server.stderr_text()}",
                    pytrace=False)
    return answer.get("result")


def arr(value: Any) -> list[Any]:
    """A JSON array (what repo.all:byX resolves with encodes as one, even empty)."""
    assert isinstance(value, list), value
    return value


def ok(result: dict[str, Any]) -> Any:
    """The value of an R(promise) result that must have succeeded."""
    assert result.get("e") is None, f"unexpected error: {result.get('e')}"
    return result.get("v")


def refused(result: dict[str, Any], part: str) -> str:
    """An R(promise) result that must be nil, err with part in err."""
    assert result.get("v") is None, f"expected nil, err; got {result}"
    err = result.get("e")
    assert isinstance(err, str) and part in err, f"expected an error containing {part!r}, got {err!r}"
    return err


def victim_intact(db: Any) -> None:
    assert query(db, "SELECT id FROM orm_victim") == [(1,)]
    assert query(db, "SELECT COUNT(*) FROM orm_posts")[0][0] >= 0


# -- finders ------------------------------------------------------------------------------


def test_finders_all_one_count(server: Any, db: Any) -> None:
    got = run(server, """
        return {
            all = R(posts.all:by()),
            ann = R(posts.all:byAuthor("ann")),
            one = R(posts.one:byId(2)),
            missing = R(posts.one:byId(999)),
            count_all = R(posts.count:by()),
            count_ann = R(posts.count:byAuthor("ann")),
            count_none = R(posts.count:byAuthor("zed")),
            both = R(posts.all:byAuthorAndText("ann", "third")),
            published = R(posts.all:byPublished(true)),
            unpublished = R(posts.count:byPublished(false)),
            created = R(posts.all:byCreated("2024-01-02T03:04:05")),
            recent = R(posts.all:findRecent()),
            one_recent = R(posts.one:findRecent()),
            count_recent = R(posts.count:findRecent()),
            prefix = R(posts.all:byAuthorPrefix("a")),
            by_one = R(posts.one:by({ orderBy = "id" })),
        }
    """)
    assert sorted(p["id"] for p in arr(ok(got["all"]))) == [1, 2, 3]
    ann = sorted(arr(ok(got["ann"])), key=lambda p: p["id"])
    assert [p["id"] for p in ann] == [1, 3]
    first = ann[0]
    assert first["author"] == "ann" and first["text"] == "first"
    assert first["created"] == {"year": 2024, "month": 1, "day": 2, "hour": 3, "min": 4, "sec": 5}
    assert first["score"] == 1.5 and first["price"] == 9.99
    assert first["published"] is True and first["flag"] is True
    assert str(first["big"]) == "9007199254740993"  # exact: a string on LuaJIT, an integer on 5.4
    assert first["note"] == "none"
    assert "created" not in ann[1], "NULL reads as nil"
    assert ann[1]["big"] == -5 and ann[1]["price"] == 0.5
    assert ok(got["one"]) == {
        "id": 2, "author": "bob", "text": "second", "published": False, "flag": False, "note": "none",
        "created": {"year": 2024, "month": 2, "day": 3, "hour": 4, "min": 5, "sec": 6, "usec": 250000}}
    assert got["missing"] == {}, "one: nil without an error when nothing matches"
    assert ok(got["count_all"]) == 3
    assert ok(got["count_ann"]) == 2
    assert ok(got["count_none"]) == 0
    assert [p["id"] for p in arr(ok(got["both"]))] == [3]
    assert sorted(p["id"] for p in arr(ok(got["published"]))) == [1, 3]
    assert ok(got["unpublished"]) == 1
    assert [p["id"] for p in arr(ok(got["created"]))] == [1]
    assert [p["id"] for p in arr(ok(got["recent"]))] == [3, 2, 1]
    assert ok(got["one_recent"])["id"] == 3
    assert ok(got["count_recent"]) == 3
    assert [p["id"] for p in arr(ok(got["prefix"]))] == [1, 3]
    assert ok(got["by_one"])["id"] == 1


def test_options_order_limit_offset(server: Any, db: Any) -> None:
    query(db, "INSERT INTO orm_posts (id, author, text, score) VALUES (4, 'ann', 'fourth', 0.5),"
              " (5, 'cid', 'fifth', 2.5)")
    got = run(server, """
        local function ids(p)
            local rows, err = aio:await(p)
            if rows == nil then return { err = err } end
            local out = codec.array()
            for i, r in ipairs(rows) do out[i] = r.id end
            return out
        end
        return {
            desc = ids(posts.all:by({ orderBy = "id DESC" })),
            two = ids(posts.all:by({ orderBy = { "author desc", "id" } })),
            csv = ids(posts.all:by({ orderBy = "author ASC, id desc" })),
            limit = ids(posts.all:by({ orderBy = "id", limit = 2 })),
            page = ids(posts.all:by({ orderBy = "id", limit = 2, offset = 2 })),
            offset = ids(posts.all:by({ orderBy = "id", offset = 3 })),
            zero = ids(posts.all:by({ limit = 0 })),
            score = ids(posts.all:byAuthor("ann", { orderBy = "score DESC", limit = 2 })),
            recent_page = ids(posts.all:findRecent({ limit = 2, offset = 1 })),
            one_offset = R(posts.one:byAuthor("ann", { orderBy = "id DESC", offset = 1 })).v.id,
            count_limit = R(posts.count:by({ limit = 2 })).v,
            count_offset = R(posts.count:by({ offset = 4 })).v,
            count_order = R(posts.count:byAuthor("ann", { orderBy = "id DESC" })).v,
            count_recent = R(posts.count:findRecent({ limit = 4, offset = 3 })).v,
        }
    """)
    assert got["desc"] == [5, 4, 3, 2, 1]
    assert got["two"] == [5, 2, 1, 3, 4]
    assert got["csv"] == [4, 3, 1, 2, 5]
    assert got["limit"] == [1, 2]
    assert got["page"] == [3, 4]
    assert got["offset"] == [4, 5]
    assert arr(got["zero"]) == []
    assert got["score"] == [3, 1]
    assert got["recent_page"] == [4, 3]
    assert got["one_offset"] == 3
    assert got["count_limit"] == 2
    assert got["count_offset"] == 1
    assert got["count_order"] == 3
    assert got["count_recent"] == 2


def test_bad_options_never_reach_the_server(server: Any, db: Any) -> None:
    got = run(server, """
        local out = {}
        local bad_order = { "id; DROP TABLE orm_victim", "unknown", "created_at", "id DESCENDING",
                            "id DESC; DROP TABLE orm_victim", "(SELECT 1)", "id -- x", "",
                            { "id", "author; DROP TABLE orm_victim" }, 5 }
        for _, v in ipairs(bad_order) do out[#out + 1] = R(posts.all:by({ orderBy = v })) end
        for _, v in ipairs({ -1, 1.5, "10", "1; DROP TABLE orm_victim", true, 0 / 0 }) do
            out[#out + 1] = R(posts.all:by({ limit = v }))
            out[#out + 1] = R(posts.all:by({ offset = v }))
            out[#out + 1] = R(posts.delete:by({ limit = v }))
        end
        out[#out + 1] = R(posts.all:by({ order = "id" }))
        out[#out + 1] = R(posts.one:by({ limit = 5 }))
        out[#out + 1] = R(posts.delete:by({ offset = 1 }))
        out[#out + 1] = R(posts.deleteOne:by({ orderBy = "nope" }))
        return out
    """)
    assert len(got) == 10 + 6 * 3 + 4
    for result in got:
        assert result.get("v") is None and isinstance(result.get("e"), str), result
    victim_intact(db)
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(3,)], "the delete:by() calls ran nothing"


# -- writes -------------------------------------------------------------------------------


def test_insert_one_and_many(server: Any, db: Any) -> None:
    got = run(server, """
        local post = { author = "dee", text = "hello", created = "2024-05-06 07:08:09",
                       published = true, score = 4.5, big = "-9007199254740993" }
        local one = R(posts:insert(post))
        local a, b, c = { author = "eve" }, { author = "fay", text = orm.NULL, note = "n" },
                        { id = 50, author = "gus", flag = false }
        local many = R(posts:insert(a, b, c))
        local none = R(posts:insert())
        return { one = one, id = post.id, many = many, a_id = a.id or "unset", none = none }
    """)
    one = ok(got["one"])
    assert one["affected_rows"] == 1 and one["last_insert_id"] == 4
    assert got["id"] == 4, "insert stores the auto-increment id"
    assert query(db, "SELECT author, text, created_at, is_published, score, big, note FROM orm_posts"
                     " WHERE id = 4")[0][:2] == ("dee", "hello")
    row = query(db, "SELECT created_at, is_published, score, big, note FROM orm_posts WHERE id = 4")[0]
    assert str(row[0]) == "2024-05-06 07:08:09"
    assert row[1] == b"\x01" and row[2] == 4.5 and row[3] == -9007199254740993 and row[4] == "none"
    assert ok(got["many"])["affected_rows"] == 3
    assert got["a_id"] == "unset"
    rows = query(db, "SELECT id, author, text, note, flag, is_published FROM orm_posts WHERE id > 4 ORDER BY author")
    assert [r[1:] for r in rows] == [("eve", None, "none", None, b"\x00"), ("fay", None, "n", None, b"\x00"),
                                     ("gus", None, "none", 0, b"\x00")]
    assert rows[2][0] == 50
    assert ok(got["none"])["affected_rows"] == 0


def test_insert_refuses_invalid_values(server: Any, db: Any) -> None:
    got = run(server, """
        return {
            R(posts:insert({ author = "this name is far too long" })),
            R(posts:insert({ author = "ok" }, { author = "x", big = "abc" })),
            R(posts:insert({ author = "x", created = "next tuesday" })),
            R(posts:insert({ author = "x", published = "yes" })),
            R(posts:insert({ author = "x", score = "NaN" })),
            R(posts:replace({ id = "1; DROP TABLE orm_victim", author = "x" })),
        }
    """)
    refused(got[0], "varchar(16)")
    refused(got[1], "object 2: orm_posts.big")
    refused(got[2], "orm_posts.created")
    refused(got[3], "orm_posts.published")
    refused(got[4], "orm_posts.score")
    refused(got[5], "orm_posts.id")
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(3,)]
    victim_intact(db)


def test_replace(server: Any, db: Any) -> None:
    got = run(server, "return R(posts:replace({ id = 2, author = 'bob2', text = 'replaced' }))")
    assert ok(got)["affected_rows"] == 2  # delete + insert
    assert query(db, "SELECT author, text, note FROM orm_posts WHERE id = 2") == [("bob2", "replaced", "none")]


def test_update_whole_object_and_changes(server: Any, db: Any) -> None:
    got = run(server, """
        local post = aio:await(posts.one:byId(1))
        post.text = "edited"
        post.score = orm.NULL
        post.flag = nil -- nil: left as it is
        local whole = R(posts:update(post))
        local changes = R(posts:update({ id = 3 }, { text = "changed", price = orm.NULL, published = false }))
        local new_id = R(posts:update({ id = 2 }, { id = 20 }))
        local none = R(posts:update({ id = 1 }, {}))
        local missing = R(posts:update({ author = "x" }))
        local bad = R(posts:update({ id = 1 }, { created = "2024-02-30 00:00:00" }))
        return { whole = whole, changes = changes, new_id = new_id, none = none,
                 missing = missing, bad = bad }
    """)
    assert ok(got["whole"])["affected_rows"] == 1
    row = query(db, "SELECT author, text, created_at, score, price, is_published, flag, big FROM orm_posts WHERE id = 1")
    assert row == [("ann", "edited", row[0][2], None, row[0][4], b"\x01", 1, 9007199254740993)]
    assert str(row[0][2]) == "2024-01-02 03:04:05" and str(row[0][4]) == "9.99", "read values write back"
    assert ok(got["changes"])["affected_rows"] == 1
    assert query(db, "SELECT text, price, is_published, score FROM orm_posts WHERE id = 3") == [
        ("changed", None, b"\x00", 3.25)]
    assert ok(got["new_id"])["affected_rows"] == 1
    assert query(db, "SELECT id FROM orm_posts ORDER BY id") == [(1,), (3,), (20,)]
    assert ok(got["none"])["affected_rows"] == 0
    refused(got["missing"], "id is not set")
    refused(got["bad"], "orm_posts.created")


def test_save_inserts_then_updates(server: Any, db: Any) -> None:
    got = run(server, """
        local post = { author = "hal", text = "draft" }
        local first = R(posts:save(post))
        local id = post.id
        post.text = "final"
        local second = R(posts:save(post))
        local explicit = { id = 77, author = "ivy" }
        local third = R(posts:save(explicit))
        return { first = first, second = second, third = third, id = id, after = post.id,
                 bad = R(posts:save({ id = "x", author = "a" })) }
    """)
    assert ok(got["first"])["last_insert_id"] == 4
    assert got["id"] == 4 and got["after"] == 4
    assert ok(got["second"])["affected_rows"] == 1
    assert ok(got["third"])["affected_rows"] == 1
    assert query(db, "SELECT id, author, text FROM orm_posts WHERE id IN (4, 77) ORDER BY id") == [
        (4, "hal", "final"), (77, "ivy", None)]
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(5,)]
    refused(got["bad"], "orm_posts.id")


def test_deletes(server: Any, db: Any) -> None:
    query(db, "INSERT INTO orm_posts (id, author) VALUES (4, 'ann'), (5, 'ann'), (6, 'cid')")
    got = run(server, """
        return {
            one = R(posts.deleteOne:byAuthor("ann", { orderBy = "id DESC" })),      -- 5
            ordered = R(posts.delete:byAuthor("ann", { orderBy = "id", limit = 1 })), -- 1
            by_id = R(posts.deleteAll:byId(2)),
            object = R(posts:delete({ id = 6, author = "ignored" })),
            nothing = R(posts:delete({ id = 999 })),
            unset = R(posts:delete({ author = "ann" })),
            all_ann = R(posts.delete:byAuthor("ann")),                                 -- 3, 4
        }
    """)
    assert ok(got["one"])["affected_rows"] == 1
    assert ok(got["ordered"])["affected_rows"] == 1
    assert ok(got["by_id"])["affected_rows"] == 1
    assert ok(got["object"])["affected_rows"] == 1
    assert ok(got["nothing"])["affected_rows"] == 0
    refused(got["unset"], "id is not set")
    assert ok(got["all_ann"])["affected_rows"] == 2
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(0,)]
    query(db, "INSERT INTO orm_posts (id, author) VALUES (10, 'x'), (11, 'y')")
    got = run(server, "return R(posts.delete:findRecent())")
    assert ok(got)["affected_rows"] == 2
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(0,)]


def test_composite_index(server: Any, db: Any) -> None:
    got = run(server, """
        local p = { a = 1, b = "x", value = 1.5 }
        local inserted = R(pairs_repo:save(p))
        p.value = 2.5
        local updated = R(pairs_repo:save(p))
        R(pairs_repo:insert({ a = 1, b = "y" }, { a = 2, b = "x", value = 7 }))
        local found = R(pairs_repo.all:byA(1, { orderBy = "b" }))
        local deleted = R(pairs_repo:delete({ a = 1, b = "y" }))
        local unset = R(pairs_repo:delete({ a = 1 }))
        return { inserted = inserted, updated = updated, found = found, deleted = deleted, unset = unset }
    """)
    assert ok(got["inserted"])["affected_rows"] == 1
    assert ok(got["updated"])["affected_rows"] == 1
    assert arr(ok(got["found"])) == [{"a": 1, "b": "x", "value": 2.5}, {"a": 1, "b": "y"}]
    assert ok(got["deleted"])["affected_rows"] == 1
    refused(got["unset"], "b is not set")
    assert query(db, "SELECT a, b, val FROM orm_pairs ORDER BY a, b") == [(1, "x", 2.5), (2, "x", 7.0)]


# -- types --------------------------------------------------------------------------------


def test_type_round_trips(server: Any, db: Any) -> None:
    epoch = int(time.mktime((2024, 7, 8, 9, 10, 11, 0, 0, -1)))
    got = run(server, f"""
        local writes = {{
            {{ "string", "2024-07-08 09:10:11" }}, {{ "iso", "2024-07-08T09:10:11" }},
            {{ "epoch", {epoch} }}, {{ "table", os.date("*t", {epoch}) }},
            {{ "fraction", "2024-07-08 09:10:11.5" }},
        }}
        local out = {{}}
        for i, w in ipairs(writes) do
            local post = {{ id = 100 + i, author = w[1], created = w[2], flag = i % 2 == 0,
                            published = i % 2 == 1, big = "9223372036854775807", score = 0.1 }}
            local res, err = aio:await(posts:insert(post))
            if not res then return {{ err = err }} end
            local back = aio:await(posts.one:byId(100 + i))
            local copy = {{}} -- os.time normalises its argument in place on Lua 5.4
            for k, v in pairs(back.created) do copy[k] = v end
            out[w[1]] = {{ created = back.created, epoch = os.time(copy),
                          flag = back.flag, published = back.published, big = tostring(back.big),
                          score = back.score }}
        end
        out.null = R(posts.one:byCreated(orm.NULL))
        out.bad_int = R(posts.all:byId("abc"))
        out.bad_bit = R(posts.all:byPublished("yes"))
        out.bad_date = R(posts.all:byCreated("2024-13-01"))
        return out
    """)
    assert "err" not in got, got
    for kind in ("string", "iso", "epoch", "table", "fraction"):
        assert got[kind]["epoch"] == epoch, kind
        created = dict(got[kind]["created"])
        assert created.pop("usec", 0) == (500000 if kind == "fraction" else 0)
        assert created == {"year": 2024, "month": 7, "day": 8, "hour": 9, "min": 10, "sec": 11}, (kind, created)
        assert got[kind]["big"] == "9223372036854775807"
        assert got[kind]["score"] == 0.1
    assert got["string"]["flag"] is False and got["string"]["published"] is True
    assert got["iso"]["flag"] is True and got["iso"]["published"] is False
    rows = query(db, "SELECT author, created_at, flag, is_published FROM orm_posts WHERE id > 100 ORDER BY id")
    assert [str(r[1]) for r in rows] == ["2024-07-08 09:10:11"] * 4 + ["2024-07-08 09:10:11.500000"]
    assert [(r[2], r[3]) for r in rows] == [(0, b"\x01"), (1, b"\x00"), (0, b"\x01"), (1, b"\x00"), (0, b"\x01")]
    refused(got["null"], "nil")
    refused(got["bad_int"], "argument 1 (id)")
    refused(got["bad_bit"], "argument 1 (published)")
    refused(got["bad_date"], "argument 1 (created)")


def test_varchar_is_checked_in_characters_not_bytes(server: Any, db: Any) -> None:
    got = run(server, """
        local fits = string.rep("\\195\\169", 16)      -- 16 characters, 32 bytes
        return { fits = R(posts:insert({ author = fits })),
                 long = R(posts:insert({ author = fits .. "x" })) }
    """)
    assert ok(got["fits"])["affected_rows"] == 1
    refused(got["long"], "varchar(16)")
    assert query(db, "SELECT author FROM orm_posts WHERE id = 4") == [("é" * 16,)]


# -- SQL injection through every kind of argument ----------------------------------------

INJECTIONS = [
    "x' OR '1'='1",
    "x\\' OR 1=1 -- ",
    "ann'; DROP TABLE orm_victim; --",
    "ann\"; DROP TABLE orm_victim; #",
    "1 OR 1=1",
    "' UNION SELECT * FROM orm_posts -- ",
    "\\",
    "x\x00y",
    "`id`",
    "?",
    "%s %d",
]


def lua_string(s: str) -> str:
    """A Lua string literal for s (decimal escapes for every byte)."""
    return '"' + "".join(f"\\{b}" for b in s.encode()) + '"'


def test_injection_through_finder_arguments(server: Any, db: Any) -> None:
    values = "{" + ", ".join(lua_string(s) for s in INJECTIONS) + "}"
    got = run(server, f"""
        local out = {{}}
        for i, v in ipairs({values}) do
            out[i] = {{
                all = R(posts.all:byAuthor(v)), count = R(posts.count:byAuthorAndText("ann", v)),
                one = R(posts.one:byAuthorPrefix(v)), id = R(posts.all:byId(v)),
                del = R(posts.delete:byAuthor(v)), del1 = R(posts.deleteOne:byAuthor(v)),
            }}
        end
        return out
    """)
    assert len(got) == len(INJECTIONS)
    for text, result in zip(INJECTIONS, got):
        if len(text) <= 16:
            assert arr(ok(result["all"])) == [], text
        else:
            refused(result["all"], "varchar(16)")
        assert ok(result["count"]) == 0, text
        assert result["one"] == {}, text
        refused(result["id"], "argument 1 (id)")
        if len(text) <= 16:
            assert ok(result["del"])["affected_rows"] == 0, text
            assert ok(result["del1"])["affected_rows"] == 0, text
    victim_intact(db)
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(3,)]


def test_injection_through_insert_and_update_values(server: Any, db: Any) -> None:
    values = "{" + ", ".join(lua_string(s) for s in INJECTIONS) + "}"
    got = run(server, f"""
        local ids = {{}}
        for i, v in ipairs({values}) do
            local post = {{ author = "p" .. i, text = v, note = v:sub(1, 32) }}
            local res, err = aio:await(posts:insert(post))
            if not res then return {{ err = err }} end
            local upd, uerr = aio:await(posts:update(post, {{ author = v:sub(1, 16) }}))
            if not upd then return {{ err = uerr }} end
            local saved, serr = aio:await(posts:save({{ id = post.id, author = "s" .. i, text = v .. v }}))
            if not saved then return {{ err = serr }} end
            ids[i] = post.id
        end
        local back = {{}}
        for i, id in ipairs(ids) do back[i] = aio:await(posts.one:byId(id)) end
        return {{ ids = ids, back = back }}
    """)
    assert "err" not in got, got
    rows = {r[0]: r[1:] for r in query(db, "SELECT id, author, text, note FROM orm_posts WHERE id > 3")}
    for i, text in enumerate(INJECTIONS):
        post_id = got["ids"][i]
        assert rows[post_id] == (f"s{i + 1}", text + text, text[:32]), text
        assert got["back"][i]["text"] == text + text
    victim_intact(db)
    got = run(server, f"""
        local v = {lua_string(INJECTIONS[1])}
        return R(posts:update({{ id = 1 }}, {{ author = v, text = v }}))
    """)
    assert ok(got)["affected_rows"] == 1
    assert query(db, "SELECT author, text FROM orm_posts WHERE id = 1") == [(INJECTIONS[1], INJECTIONS[1])]
    assert query(db, "SELECT COUNT(*) FROM orm_posts WHERE author = %s", INJECTIONS[1]) == [(1,)]


def test_injection_through_order_and_limit(server: Any, db: Any) -> None:
    got = run(server, """
        local out = {}
        for _, opts in ipairs({
            { orderBy = "id; DROP TABLE orm_victim" }, { orderBy = "id DESC; DROP TABLE orm_victim" },
            { orderBy = "(SELECT id FROM orm_victim)" }, { orderBy = "IF(1, id, author)" },
            { orderBy = { "id", "author`; DROP TABLE orm_victim; --" } },
            { limit = "1; DROP TABLE orm_victim" }, { offset = "0; DROP TABLE orm_victim" },
            { limit = "1 UNION SELECT * FROM orm_victim" },
        }) do
            out[#out + 1] = R(posts.all:by(opts))
            out[#out + 1] = R(posts.deleteAll:by(opts))
        end
        return out
    """)
    assert len(got) == 16
    for result in got:
        assert result.get("v") is None and isinstance(result.get("e"), str), result
    victim_intact(db)
    assert query(db, "SELECT COUNT(*) FROM orm_posts") == [(3,)]


def test_server_errors_come_back_as_nil_err(server: Any, db: Any) -> None:
    query(db, "DROP TABLE orm_pairs")
    got = run(server, """
        return { R(pairs_repo.all:byA(1)), R(pairs_repo:insert({ a = 1, b = "x" })),
                 R(pairs_repo.count:byA(1)), R(pairs_repo:save({ a = 1, b = "x" })) }
    """)
    for result in got:
        refused(result, "orm_pairs")


def test_repository_over_a_transaction(server: Any, db: Any) -> None:
    got = run(server, """
        local def = { source = "orm_posts", entity = { id = { type = orm.t.int },
                      author = { type = orm.t.varchar(16) } }, findByAuthor = true }
        local rolled_back = R(sql:transaction(function(tx)
            local repo = orm:create(tx, def)
            aio:await(repo:insert({ author = "tx1" }))
            local seen = aio:await(repo.count:byAuthor("tx1"))
            return nil, "undo after seeing " .. seen
        end))
        local committed = R(sql:transaction(function(tx)
            local repo = orm:create(tx, def)
            local post = { author = "tx2" }
            aio:await(repo:insert(post))
            aio:await(repo:update(post, { author = "tx3" }))
            return post.id
        end))
        return { rolled_back = rolled_back, committed = committed }
    """)
    refused(got["rolled_back"], "undo after seeing 1")
    post_id = ok(got["committed"])
    assert query(db, "SELECT id, author FROM orm_posts WHERE author LIKE 'tx%%'") == [(post_id, "tx3")]
