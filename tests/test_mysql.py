"""The MySQL module (eightys/lua/mysql.lua + eightys/mysql.py) against a real server.

Most tests run Lua in-process (tests/luahost.py with the MySQL host functions, a
real uvloop loop), some on both engines; two run a real ``eightys`` process
(tests/apps/mysql_app.lua) over HTTP. The server is MariaDB/MySQL at
EIGHTYS_TEST_MYSQL_HOST:EIGHTYS_TEST_MYSQL_PORT (default 127.0.0.1:3306), reached
as root (EIGHTYS_TEST_MYSQL_ROOT_USER/_ROOT_PASSWORD, default root without a
password), which creates the database ``eightys_test`` and the user
``eightys``@``%`` (password ``eightys``, mysql_native_password) when missing.
Without a server these tests skip, unless CI is set: then they fail
(the ``mysql_db`` fixture). Every test that talks to the server runs once per
installed driver (aiomysql, asyncmy: the ``driver`` fixture).
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from conftest import Server, free_port
from eightys.lua_runtime import ENGINES
from eightys.mysql import DRIVERS, MySQLHost, available, split_placeholders
from http_helpers import HttpClient
from luahost import LuaHost

pymysql = pytest.importorskip("pymysql")

ENGINE_NAMES = sorted(ENGINES)
#: The MySQL drivers installed here; each passes the same tests.
MYSQL_DRIVERS = sorted(d for d in DRIVERS if available(d))
APP = "tests/apps/mysql_app.lua"


class _Null:
    def __repr__(self) -> str:
        return "NULL"


#: How mysql.NULL looks after Lua.to_py.
NULL = _Null()


@dataclass
class Database:
    host: str
    port: int
    name: str = "eightys_test"
    user: str = "eightys"
    password: str = "eightys"
    root_user: str = "root"
    root_password: str = ""

    def root(self) -> Any:
        """A new blocking PyMySQL connection as root, in the test database."""
        return pymysql.connect(host=self.host, port=self.port, user=self.root_user,
                               password=self.root_password, database=self.name,
                               autocommit=True, connect_timeout=3)

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run statements as root; the rows of the last one."""
        with self.root() as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return list(cur.fetchall())


def _create_user(cur: Any, user: str, plugin: str, password: str) -> None:
    cur.execute(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED VIA {plugin} "
                f"USING PASSWORD('{password}')")
    cur.execute(f"ALTER USER '{user}'@'%' IDENTIFIED VIA {plugin} USING PASSWORD('{password}')")
    cur.execute(f"GRANT ALL PRIVILEGES ON eightys_test.* TO '{user}'@'%'")


@pytest.fixture(scope="session")
def mysql_db() -> Database:
    """The test database, set up as root. The one place that decides: no server ->
    skip, or fail when the CI environment variable is set."""
    db = Database(host=os.environ.get("EIGHTYS_TEST_MYSQL_HOST", "127.0.0.1"),
                  port=int(os.environ.get("EIGHTYS_TEST_MYSQL_PORT", "3306")),
                  root_user=os.environ.get("EIGHTYS_TEST_MYSQL_ROOT_USER", "root"),
                  root_password=os.environ.get("EIGHTYS_TEST_MYSQL_ROOT_PASSWORD", ""))
    try:
        conn = pymysql.connect(host=db.host, port=db.port, user=db.root_user,
                               password=db.root_password, autocommit=True, connect_timeout=3)
    except pymysql.err.Error as exc:
        reason = (f"no MySQL/MariaDB server usable at {db.host}:{db.port} as "
                  f"{db.root_user!r}: {exc}")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the MySQL tests must run)", pytrace=False)
        pytest.skip(reason)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS eightys_test "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        _create_user(cur, db.user, "mysql_native_password", db.password)
    return db


@pytest.fixture(scope="session")
def ed25519_user(mysql_db: Database) -> str:
    """User ``eightys_ed`` authenticating with MariaDB's ed25519 plugin, or skip."""
    try:
        import nacl  # noqa: F401 - PyMySQL's ed25519 needs PyNaCl
    except ImportError:
        pytest.skip("PyNaCl is not installed (pip install pynacl): no ed25519 authentication")
    with mysql_db.root() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.plugins "
                    "WHERE plugin_name = 'ed25519' AND plugin_status = 'ACTIVE'")
        if not cur.fetchone()[0]:
            try:
                cur.execute("INSTALL SONAME 'auth_ed25519'")
            except pymysql.err.Error as exc:
                pytest.skip(f"the server cannot load auth_ed25519: {exc}")
        _create_user(cur, "eightys_ed", "ed25519", "eightys")
    return "eightys_ed"


# -- Lua in-process ------------------------------------------------------------------------

PRELUDE = b"""
local db_host, db_port, db_name, db_user, db_password, root_user, root_password = ...
mysql = require("mysql")
DB = { host = db_host, port = db_port, name = db_name, user = db_user, password = db_password }

--- A connected client (raises if connecting fails).
function connect(opts, user, password)
    local client = mysql:new(opts)
    local ok, err = aio:await(client:connect(user or db_user, password or db_password,
        db_name, db_host, db_port))
    assert(ok == true, err)
    return client
end

--- A connected client as root (for KILL).
function connect_root()
    return connect(nil, root_user, root_password)
end

--- Await a promise and fail unless it succeeded.
function must(promise)
    local value, err = aio:await(promise)
    if value == nil then error(err, 2) end
    return value
end

function is_array(t)
    return getmetatable(t) == getmetatable(codec.array())
end
"""


class Lua:
    """A Lua state with the MySQL host functions; :meth:`run` runs async Lua code."""

    def __init__(self, engine: str, db: Database, driver: str = "auto") -> None:
        self.engine = engine
        self.driver = driver
        self.host = LuaHost(engine, private=lambda host: MySQLHost(host, driver).functions())
        self.runtime = self.host.runtime
        self.host.call(self.runtime.lua.execute, PRELUDE, db.host.encode(), db.port,
                       db.name.encode(), db.user.encode(), db.password.encode(),
                       db.root_user.encode(), db.root_password.encode())
        self._is_null = self.runtime.execute(b"return function(v) return rawequal(v, mysql.NULL) end")

    def run(self, body: str, *args: Any, timeout: float = 10.0) -> tuple[Any, ...]:
        """Run ``body`` (a Lua function body receiving ``...`` = args) in aio:async and
        return its results as Python values (:meth:`to_py`). An error raised in it
        fails the test."""
        fn = self.runtime.execute(
            b"return function(done, ...) aio:async(function(...)\n" + body.encode()
            + b"\nend, nil, ...)(done) end")
        results: list[tuple[Any, ...]] = []
        self.host.call(fn, lambda *values: results.append(values), *args)
        self.host.run_until(lambda: results, timeout, what="the Lua code to finish")
        if self.host.errors:
            pytest.fail("Lua errors:\n" + "\n".join(self.host.errors), pytrace=False)
        return tuple(self.to_py(v) for v in results[0])

    def to_py(self, value: Any) -> Any:
        """Lua -> Python: mysql.NULL -> NULL, tables with positive integer keys ->
        lists (holes: None; an empty table: []), other tables -> dicts with str keys; strings stay
        bytes, numbers stay int/float as Lua had them."""
        if self.runtime.lupa.lua_type(value) != "table":
            return value
        if self._is_null(value):
            return NULL
        items = dict(value.items())
        if not items:
            return []
        if all(isinstance(k, int) and k > 0 for k in items):
            # an array; {nil, err} has no key 1: holes become None
            return [self.to_py(items.get(i)) for i in range(1, max(items) + 1)]
        return {(k.decode() if isinstance(k, bytes) else k): self.to_py(v) for k, v in items.items()}


@pytest.fixture(params=MYSQL_DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Each installed MySQL driver in turn."""
    return request.param


@pytest.fixture
def lua_factory(mysql_db: Database, driver: str) -> Iterator[Any]:
    """``lua_factory(engine)``: a :class:`Lua` on ``driver`` (disposed of at teardown)."""
    made: list[Lua] = []

    def make(engine: str = "luajit") -> Lua:
        lua = Lua(engine, mysql_db, driver)
        made.append(lua)
        return lua

    yield make
    for lua in made:
        lua.host.dispose()


@pytest.fixture(params=ENGINE_NAMES)
def lua(request: pytest.FixtureRequest, lua_factory: Any) -> Lua:
    """A :class:`Lua` on each engine."""
    return lua_factory(request.param)


@pytest.fixture
def lua_offline() -> Iterator[Lua]:
    """A :class:`Lua` for what needs no server (escaping): runs without one."""
    lua = Lua("luajit", Database(host="127.0.0.1", port=1))
    yield lua
    lua.host.dispose()


@pytest.fixture
def lua_jit(lua_factory: Any) -> Lua:
    """A :class:`Lua` on LuaJIT only (engine-independent behaviour)."""
    return lua_factory("luajit")


# -- connecting -------------------------------------------------------------------------------


def test_connect_with_good_and_bad_credentials(lua_jit: Lua) -> None:
    good, bad_password, bad_db = lua_jit.run("""
        local a = mysql:new()
        local b = mysql:new()
        local c = mysql:new()
        return { aio:await(a:connect(DB.user, DB.password, DB.name, DB.host, DB.port)) },
               { aio:await(b:connect(DB.user, "wrong", DB.name, DB.host, DB.port)) },
               { aio:await(c:connect(DB.user, DB.password, "no_such_db", DB.host, DB.port)) }
    """)
    assert good == [True]
    assert bad_password[0] is None
    assert bad_password[1].startswith(b"mysql: (1045) Access denied for user 'eightys'@")
    assert bad_db[0] is None and bad_db[1].startswith(b"mysql: (1044) "), bad_db


def test_unreachable_server_fails_fast(lua_jit: Lua) -> None:
    closed = free_port()
    # a server that accepts TCP connections but never speaks MySQL
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        connect, query, connect_time, silent_result, silent_time = lua_jit.run("""
            local closed, silent = ...
            local t = net.clock()
            local client = mysql:new()
            local connect = { aio:await(client:connect("eightys", "x", "db", "127.0.0.1", closed)) }
            local query = { aio:await(client:select("SELECT 1")) }
            local ran = false
            local tx = { aio:await(client:transaction(function() ran = true return true end)) }
            assert(tx[1] == nil and tx[2]:find("^mysql: %(2003%)") and not ran)
            local connect_time = net.clock() - t
            t = net.clock()
            local quiet = mysql:new({ connect_timeout = 0.5 })
            local silent_result = { aio:await(quiet:connect("eightys", "x", "db", "127.0.0.1", silent)) }
            return connect, query, connect_time, silent_result, net.clock() - t
        """, closed, silent.getsockname()[1])
    finally:
        silent.close()
    assert connect[0] is None and connect[1].startswith(b"mysql: (2003) Can't connect"), connect
    assert query[0] is None and query[1].startswith(b"mysql: (2003) "), query
    assert connect_time < 1.0
    assert silent_result[0] is None and b"timed out after 0.5 s" in silent_result[1], silent_result
    assert 0.4 < silent_time < 2.0


def test_ed25519_authentication(lua_jit: Lua, ed25519_user: str) -> None:
    user, bad = lua_jit.run("""
        local client = connect(nil, ..., "eightys")
        local wrong = mysql:new()
        return must(client:select("SELECT CURRENT_USER() AS u"))[1].u,
               select(2, aio:await(wrong:connect(..., "nope", DB.name, DB.host, DB.port)))
    """, ed25519_user.encode())
    assert user == b"eightys_ed@%"
    assert bad.startswith(b"mysql: (1045) ")


def test_require_names_and_global(lua_jit: Lua) -> None:
    same, is_global, null = lua_jit.run("""
        return require("aio.lib.mysql") == require("mysql"), _G.mysql == require("mysql"),
               rawequal(mysql.NULL, codec.null)
    """)
    assert (same, is_global, null) == (True, True, True)


# -- values -----------------------------------------------------------------------------------

ALL_BYTES = bytes(range(256))

TYPES_TABLE = """
    CREATE TABLE {t} (
        id INT AUTO_INCREMENT PRIMARY KEY,
        i INT, big BIGINT, ubig BIGINT UNSIGNED, tiny TINYINT, f FLOAT, d DOUBLE,
        dc DECIMAL(20,6), vc VARCHAR(100), tx TEXT, bl BLOB, dt DATE,
        dtm DATETIME(6), ts TIMESTAMP NULL DEFAULT NULL, tm TIME, b8 BIT(8),
        e ENUM('small','big'), j JSON, vb VARBINARY(10)
    ) ENGINE=InnoDB
"""
COLUMNS = ["i", "big", "ubig", "tiny", "f", "d", "dc", "vc", "tx", "bl", "dt", "dtm", "ts",
           "tm", "b8", "e", "j", "vb"]


def test_every_type_has_its_documented_lua_value(lua: Lua, mysql_db: Database) -> None:
    table = f"types_{lua.engine}"
    mysql_db.sql(f"DROP TABLE IF EXISTS {table}", TYPES_TABLE.format(t=table))
    rows, empty, empty_is_array, rows_is_array, small = lua.run(f"""
        local all_bytes = ...
        local db = connect()
        local cols = "{", ".join(COLUMNS)}"
        local marks = ("?,"):rep({len(COLUMNS)} - 1) .. "?"
        local sql = "INSERT INTO {table} (" .. cols .. ") VALUES (" .. marks .. ")"
        must(db:exec_args(sql, {{
            -2147483648, "4611686018427387905", "18446744073709551615", -128, 1.5, 0.1,
            "12345678901234.123456", "héllo ✓", "line1\\nline2 'q' \\"dq\\"", all_bytes,
            "2024-02-29", "2024-02-29 13:14:15.123456", "2024-01-02 03:04:05", "-838:59:59",
            165, "big", '{{"a": [1, 2.5, null]}}', "\\0\\1\\255",
        }}))
        must(db:exec_args(sql, {{
            42, "-4611686018427387905", 7, 0, -0.25, 1e300, "-0.000001", "", "", "",
            "0000-00-00", "2024-02-29 13:14:15", "2038-01-19 03:14:07", "12:34:56.5",
            0, "small", "[]", "",
        }}))
        must(db:exec("INSERT INTO {table} (i) VALUES (NULL)"))
        local rows = must(db:select("SELECT " .. cols .. " FROM {table} ORDER BY id"))
        local empty = must(db:select("SELECT * FROM {table} WHERE id < 0"))
        local small = must(db:select("SELECT COUNT(*) AS n, SUM(i) AS s, 2.5 AS lit, NULL AS nothing FROM {table}"))
        return rows, codec.json_encode(empty), is_array(empty), is_array(rows), small[1]
    """, ALL_BYTES)
    luajit = lua.engine == "luajit"
    assert rows_is_array and empty_is_array and empty == b"[]"
    assert len(rows) == 3
    first, second, nulls = rows
    assert first == {
        "i": -2147483648,
        "big": b"4611686018427387905" if luajit else 2 ** 62 + 1,
        "ubig": b"18446744073709551615",
        "tiny": -128, "f": 1.5, "d": 0.1,
        "dc": b"12345678901234.123456",
        "vc": "héllo ✓".encode(), "tx": b"line1\nline2 'q' \"dq\"", "bl": ALL_BYTES,
        "dt": b"2024-02-29", "dtm": b"2024-02-29T13:14:15.123456",
        "ts": b"2024-01-02T03:04:05", "tm": b"-838:59:59", "b8": 165, "e": b"big",
        "j": b'{"a": [1, 2.5, null]}', "vb": b"\x00\x01\xff",
    }
    assert second == {
        "i": 42,
        "big": b"-4611686018427387905" if luajit else -(2 ** 62) - 1,
        "ubig": 7, "tiny": 0, "f": -0.25, "d": 1e300, "dc": b"-0.000001",
        "vc": b"", "tx": b"", "bl": b"", "dt": b"0000-00-00",
        "dtm": b"2024-02-29T13:14:15", "ts": b"2038-01-19T03:14:07", "tm": b"12:34:56",
        "b8": 0, "e": b"small", "j": b"[]", "vb": b"",
    }
    assert nulls == {name: NULL for name in COLUMNS}
    # Lua 5.4 keeps integers and floats apart; LuaJIT has only numbers
    if not luajit:
        assert type(first["i"]) is int and type(first["f"]) is float and type(second["d"]) is float
    assert small == {"n": 3, "s": b"-2147483606", "lit": b"2.5", "nothing": NULL}


def test_integer_limits_on_each_engine(lua: Lua) -> None:
    (row,) = lua.run("""
        local db = connect()
        return must(db:select("SELECT 9007199254740992 AS max_exact, -9007199254740992 AS min_exact,"
            .. " 9007199254740993 AS past, 9223372036854775807 AS i64, CAST(-9223372036854775808 AS SIGNED) AS i64min,"
            .. " b'1111111111111111111111111111111111111111111111111111111111111111' + 0 AS u64,"
            .. " CAST(b'11111111' AS UNSIGNED) AS small_bits"))[1]
    """)
    luajit = lua.engine == "luajit"
    assert row["max_exact"] == 2 ** 53 and row["min_exact"] == -(2 ** 53)
    assert row["past"] == (b"9007199254740993" if luajit else 2 ** 53 + 1)
    assert row["i64"] == (b"9223372036854775807" if luajit else 2 ** 63 - 1)
    assert row["i64min"] == (b"-9223372036854775808" if luajit else -(2 ** 63))
    assert row["u64"] == b"18446744073709551615"
    assert row["small_bits"] == 255


# -- escaping and injection -----------------------------------------------------------------------

EVIL = [
    b"' OR '1'='1",
    b"\\' OR 1=1 -- ",
    b"\"; DROP TABLE x; --",
    b"'; DROP TABLE injection_x; -- ",
    b"a\x00b\x00",
    b"\x00",
    b"\\",
    b"\\\\'",
    b"'",
    b"''",
    b"\x1a\r\n\t",
    "ünïcödé ✓ 😀 \u2028".encode(),
    b"100% ?",
    b"%s %d",
    b"?",
    b"/* ? */ -- ? # ?",
]


def test_escape_values(lua_offline: Lua) -> None:
    results = lua_offline.run("""
        local db = mysql:new()
        return db:escape("it's"), db:escape("a\\0b\\n\\r\\\\\\"\\26"), db:escape(42), db:escape(-1.5),
               db:escape(2^53), db:escape(true), db:escape(false), db:escape(mysql.NULL), db:escape(nil),
               db:escape({ "a", "b'c", 3, mysql.NULL }), db:escape({}), mysql:escape("x'"),
               select(2, pcall(db.escape, db, function() end)),
               select(2, pcall(db.escape, db, 0/0)),
               select(2, pcall(db.escape, db, { a = 1 }))
    """)
    assert results[:12] == (
        b"it\\'s", b"a\\0b\\n\\r\\\\\\\"\\Z", b"42", b"-1.5", b"9007199254740992", b"1", b"0",
        b"NULL", b"NULL", b"('a','b\\'c',3,NULL)", b"(NULL)", b"x\\'")
    assert b"cannot escape a function" in results[12]
    assert b"cannot use nan" in results[13] or b"cannot use -nan" in results[13]
    assert b"not an array" in results[14]


def test_a_nil_query_argument_is_an_error_not_null(lua_offline: Lua) -> None:
    """SQL:select("... '%s'", name) with name unset used to query the string 'NULL'."""
    results = lua_offline.run("""
        local db = mysql:new()
        local ok1, err1 = pcall(db.select, db, "SELECT * FROM t WHERE name = '%s'", nil)
        local ok2, err2 = pcall(db.exec, db, "UPDATE t SET a = %d, b = '%s'", 1, nil)
        return ok1, err1, ok2, err2
    """)
    assert results[0] is False and b"query argument #1 is nil" in results[1]
    assert b"mysql.NULL" in results[1]
    assert results[2] is False and b"query argument #2 is nil" in results[3]


def test_injection_attempts_round_trip_exactly(lua: Lua, mysql_db: Database) -> None:
    table = f"injection_{lua.engine}"
    mysql_db.sql(f"DROP TABLE IF EXISTS {table}", "DROP TABLE IF EXISTS injection_x",
                 f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT, b BLOB)",
                 "CREATE TABLE injection_x (id INT)")
    found = lua.run(f"""
        local evil = ...
        local db = connect()
        local out = {{}}
        for i = 1, #evil do
            local s = evil[i]
            -- string.format style, single and double quotes; and bound by the driver
            must(db:exec("INSERT INTO {table} (v, b) VALUES ('%s', '%s')", s, s))
            must(db:exec('INSERT INTO {table} (v, b) VALUES ("%s", "%s")', s, s))
            must(db:exec_args("INSERT INTO {table} (v, b) VALUES (?, ?)", {{ s, s }}))
            local a = must(db:select("SELECT v, b FROM {table} WHERE v = '%s' AND b = '%s'", s, s))
            local b = must(db:select_args("SELECT v, b FROM {table} WHERE v = ? AND b = ?", {{ s, s }}))
            local c = must(db:select("SELECT '%s' AS lit", s))
            local d = must(db:select_args("SELECT ? AS lit, '?' AS q", {{ s }}))
            out[i] = {{ #a, #b, a[1].v, a[1].b, b[3].v, c[1].lit, d[1].lit, d[1].q }}
        end
        -- a statement cannot be smuggled in: one statement per query
        local stacked = {{ aio:await(db:exec("SELECT 1; DROP TABLE injection_x")) }}
        -- numbers are the caller's %d, which refuses text
        local ok, numeric = pcall(db.select, db, "SELECT * FROM {table} WHERE id = %d", "1 OR 1=1")
        local count = must(db:select("SELECT COUNT(*) AS n FROM {table}"))[1].n
        local survivors = must(db:select("SELECT COUNT(*) AS n FROM injection_x"))[1].n
        return out, stacked, ok, numeric, count, survivors
    """, lua.runtime.table(EVIL))
    out, stacked, ok, numeric, count, survivors = found
    for value, (n_format, n_args, v, b, v_args, lit, lit_args, q) in zip(EVIL, out):
        assert (n_format, n_args) == (3, 3), value
        assert v == b == v_args == lit == lit_args == value, value
        assert q == b"?"
    assert stacked[0] is None and stacked[1].startswith(b"mysql: (1064) "), stacked
    assert ok is False and b"cannot format the query" in numeric
    assert count == 3 * len(EVIL)
    assert survivors == 0
    assert mysql_db.sql(f"SELECT COUNT(*) FROM {table}") == [(3 * len(EVIL),)]


def test_placeholders_bind_types_and_skip_quoted_question_marks(lua_jit: Lua) -> None:
    row, mismatch, bad_type, invalid_utf8 = lua_jit.run("""
        local db = connect()
        local row = must(db:select_args(
            "SELECT ? AS s, ? AS i, ? AS f, ? AS t, ? AS f2, ? AS n, '?' AS q1, \\"?\\" AS q2, `?` AS q3,"
            .. " 'it''s ?' AS q4, 'a\\\\'?' AS q5 /* ? */ FROM (SELECT 1 AS `?`) x -- ?\\n",
            { "s", 7, 2.5, true, false, mysql.NULL }))[1]
        local ok1, mismatch = pcall(db.select_args, db, "SELECT ?, ?", { 1 })
        local ok2, bad_type = pcall(db.select_args, db, "SELECT ?", { {} })
        local bytes = must(db:select_args("SELECT ? AS raw, HEX(?) AS hex", { "\\255\\0\\254", "\\255" }))[1]
        local holes = must(db:select_args("SELECT ? AS a, ? AS b", { n = 2, nil, "x" }))[1]
        assert(holes.a == mysql.NULL and holes.b == "x")
        return row, mismatch, bad_type, bytes
    """)
    assert row == {"s": b"s", "i": 7, "f": 2.5, "t": 1, "f2": 0, "n": NULL, "q1": b"?",
                   "q2": b"?", "q3": 1, "q4": b"it's ?", "q5": b"a'?"}
    assert b"2 placeholder(s) but 1 argument(s)" in mismatch
    assert b"argument #1 is a table" in bad_type
    assert invalid_utf8 == {"raw": b"\xff\x00\xfe", "hex": b"FF"}


def test_split_placeholders() -> None:
    assert split_placeholders(b"SELECT ?, '?', \"?\", `?`, ? -- ?\n, ? # ?\n/* ? */") == (
        b"SELECT ", b", '?', \"?\", `?`, ", b" -- ?\n, ", b" # ?\n/* ? */")
    assert split_placeholders(b"SELECT 'a\\'?', 'b''?', ?") == (b"SELECT 'a\\'?', 'b''?', ", b"")
    assert split_placeholders(b"SELECT 1") == (b"SELECT 1",)


# -- exec results -------------------------------------------------------------------------------------


def test_exec_reports_affected_rows_last_insert_id_and_warnings(lua_jit: Lua, mysql_db: Database) -> None:
    mysql_db.sql("DROP TABLE IF EXISTS exec_result",
                 "CREATE TABLE exec_result (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    first, batch, update, noop, warned, as_rows = lua_jit.run("""
        local db = connect()
        return must(db:exec("INSERT INTO exec_result (v) VALUES (%d)", 1)),
               must(db:exec_args("INSERT INTO exec_result (v) VALUES (?), (?), (?)", { 2, 3, 4 })),
               must(db:exec("UPDATE exec_result SET v = v + 10 WHERE v >= 3")),
               must(db:exec("UPDATE exec_result SET v = v WHERE id = 1")),
               must(db:exec("DO 1/0")),
               must(db:select("INSERT INTO exec_result (v) VALUES (5)"))
    """)
    assert first == {"ok": True, "affected_rows": 1, "last_insert_id": 1, "warnings": 0}
    assert batch["affected_rows"] == 3 and batch["last_insert_id"] == 2
    assert batch["info"].startswith(b"Records: 3")
    assert update["affected_rows"] == 2 and update["last_insert_id"] == 0
    assert noop["affected_rows"] == 0
    assert warned["warnings"] == 1
    assert as_rows == []  # select on a statement without rows: an empty array


# -- lost connections -------------------------------------------------------------------------------


def test_idle_connection_killed_by_the_server_is_replaced(lua_jit: Lua) -> None:
    before, after, after_write, id3 = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local root = connect_root()
        local id = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        must(root:exec("KILL %d", id))
        -- the very next query runs on the dead connection or notices it is dead: it succeeds
        local id2 = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        must(root:exec("KILL %d", id2))
        aio:await(aio:sleep(0.1))
        local w = must(db:exec("DO 1"))
        local id3 = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        return id, id2, w.ok, id3
    """)
    assert before != after and after != id3
    assert after_write is True


def test_select_interrupted_by_a_lost_connection_is_retried_once(lua_jit: Lua) -> None:
    value, elapsed, ids = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local root = connect_root()
        local id = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        local t = net.clock()
        local slow = db:select("SELECT SLEEP(0.4) AS s, CONNECTION_ID() AS id")
        aio:await(aio:sleep(0.1))
        must(root:exec("KILL CONNECTION %d", id))
        local rows = must(slow)
        return rows[1].s, net.clock() - t, { id, rows[1].id }
    """)
    assert value == 0  # the retry ran the whole SLEEP on a new connection
    assert 0.45 < elapsed < 3
    assert ids[0] != ids[1]


def test_write_interrupted_by_a_lost_connection_fails_and_the_next_query_works(lua_jit: Lua) -> None:
    write, own_kill, next_id, first_id = lua_jit.run("""
        local db = connect({ pool_size = 2 })
        local root = connect_root()
        local id = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        local slow = db:exec("DO SLEEP(0.4)")
        aio:await(aio:sleep(0.1))
        must(root:exec("KILL CONNECTION %d", id))
        local write = { aio:await(slow) }
        -- a statement that kills its own connection: the error comes back as a value
        local own = { aio:await(db:exec("KILL CONNECTION_ID()")) }
        local next_id = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        return write, own, next_id, id
    """)
    assert write[0] is None and write[1].startswith(b"mysql: (2013) Lost connection"), write
    assert own_kill[0] is None and own_kill[1].startswith(b"mysql: (1927) "), own_kill
    assert next_id != first_id


def test_connection_closed_by_wait_timeout_is_replaced(lua_jit: Lua) -> None:
    first, second = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local id = must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
        must(db:exec("SET SESSION wait_timeout = 1"))
        aio:await(aio:sleep(1.6))  -- the server closes the idle connection
        return id, must(db:select("SELECT CONNECTION_ID() AS id"))[1].id
    """)
    assert first != second


def test_pending_query_survives_garbage_collection(lua_jit: Lua) -> None:
    # asyncio keeps tasks weakly: a query waiting for the server must not be collected
    fn = lua_jit.runtime.execute(b"""return function(done) aio:async(function()
        local db = connect()
        return must(db:select("SELECT SLEEP(0.3) AS s"))[1].s
    end)(done) end""")
    results: list[tuple[Any, ...]] = []
    lua_jit.host.call(fn, lambda *values: results.append(values))
    lua_jit.host.run_until(lambda: (gc.collect(), results)[1], 5.0, what="the query")
    assert results == [(0,)]


def test_backslash_escaping_holds_whatever_the_server_sql_mode(lua_jit: Lua,
                                                                mysql_db: Database) -> None:
    (old_mode,) = mysql_db.sql("SELECT @@GLOBAL.sql_mode")[0]
    mysql_db.sql("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    try:
        session_mode, formatted, bound_in_nbe_session = lua_jit.run("""
            local evil = ...
            local db = connect({ pool_size = 1 })
            local mode = must(db:select("SELECT @@SESSION.sql_mode AS m"))[1].m
            local formatted = must(db:select("SELECT '%s' AS v", evil))[1].v
            -- a session that turns the mode on itself: driver-bound values still hold
            must(db:exec("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"))
            local bound = must(db:select_args("SELECT ? AS v", { evil }))[1].v
            return mode, formatted, bound
        """, b"\\' OR 1=1 -- \x00")
    finally:
        mysql_db.sql(f"SET GLOBAL sql_mode = '{old_mode}'")
    assert b"NO_BACKSLASH_ESCAPES" not in session_mode
    assert session_mode.split(b",") == [m for m in old_mode.encode().split(b",") if m]
    assert formatted == bound_in_nbe_session == b"\\' OR 1=1 -- \x00"


# -- transactions ------------------------------------------------------------------------------------


@pytest.fixture
def accounts(mysql_db: Database) -> str:
    mysql_db.sql("DROP TABLE IF EXISTS accounts",
                 "CREATE TABLE accounts (name VARCHAR(20) PRIMARY KEY, balance INT) ENGINE=InnoDB",
                 "INSERT INTO accounts VALUES ('alice', 100), ('bob', 0)")
    return "accounts"


def test_transaction_commits_and_resolves_with_fn_results(lua_jit: Lua, accounts: str,
                                                          mysql_db: Database) -> None:
    result = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local a, b = aio:await(db:transaction(function(tx)
            must(tx:exec("UPDATE accounts SET balance = balance - %d WHERE name = '%s'", 30, "alice"))
            must(tx:exec_args("UPDATE accounts SET balance = balance + ? WHERE name = ?", { 30, "bob" }))
            local rows = must(tx:select_args("SELECT balance FROM accounts WHERE name = ?", { "bob" }))
            return "moved", rows[1].balance
        end))
        -- the only connection went back to the pool
        local after = must(db:select("SELECT SUM(balance) AS total FROM accounts"))[1].total
        return a, b, after
    """)
    assert result == (b"moved", 30, b"100")
    assert mysql_db.sql("SELECT name, balance FROM accounts ORDER BY name") == [("alice", 70), ("bob", 30)]


def test_transaction_rolls_back_when_fn_raises(lua_jit: Lua, accounts: str, mysql_db: Database) -> None:
    ok, err, count = _run_claiming(lua_jit, """
        local db = connect({ pool_size = 1 })
        local ok, err = aio:await(db:transaction(function(tx)
            must(tx:exec("DELETE FROM accounts"))
            error("changed my mind")
        end))
        return ok, err, must(db:select("SELECT COUNT(*) AS n FROM accounts"))[1].n
    """, b"changed my mind")
    assert ok is None and b"changed my mind" in err
    assert count == 2
    assert mysql_db.sql("SELECT COUNT(*) FROM accounts") == [(2,)]


def _run_claiming(lua: Lua, body: str, logged: bytes) -> tuple[Any, ...]:
    """lua.run for code that logs one expected error (a raise inside aio:async)."""
    errors = lua.host.errors
    fn = lua.runtime.execute(b"return function(done) aio:async(function()\n" + body.encode()
                             + b"\nend)(done) end")
    results: list[tuple[Any, ...]] = []
    lua.host.call(fn, lambda *values: results.append(values))
    lua.host.run_until(lambda: results, 10.0)
    matching = [line for line in errors if logged.decode() in line]
    assert len(matching) == 1, errors
    errors.remove(matching[0])
    assert not errors, errors
    return tuple(lua.to_py(v) for v in results[0])


def test_transaction_rolls_back_on_a_failed_statement(lua_jit: Lua, accounts: str,
                                                      mysql_db: Database) -> None:
    ok, err, tx_after, names = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local saved
        local ok, err = aio:await(db:transaction(function(tx)
            saved = tx
            must(tx:exec("INSERT INTO accounts VALUES ('carol', 5)"))
            local res, err = aio:await(tx:exec("INSERT INTO accounts VALUES ('alice', 1)"))
            if not res then return nil, err end
            return true
        end))
        local after = { aio:await(saved:select("SELECT 1")) }
        local rows = must(db:select("SELECT name FROM accounts ORDER BY name"))
        return ok, err, after, rows
    """)
    assert ok is None and err.startswith(b"mysql: (1062) Duplicate entry 'alice'"), err
    assert tx_after == [None, b"mysql: the transaction is already finished"]
    assert names == [{"name": b"alice"}, {"name": b"bob"}]


def test_transaction_rolls_back_when_fn_returns_false(lua_jit: Lua, accounts: str) -> None:
    ok, err, count = lua_jit.run("""
        local db = connect({ pool_size = 1 })
        local ok, err = aio:await(db:transaction(function(tx)
            must(tx:exec("DELETE FROM accounts"))
            return false
        end))
        return ok, err, must(db:select("SELECT COUNT(*) AS n FROM accounts"))[1].n
    """)
    assert ok is None and err == b"mysql: transaction rolled back: the function returned false"
    assert count == 2


def test_uncommitted_rows_are_invisible_to_other_connections(lua_jit: Lua, accounts: str) -> None:
    inside, seen_by_other, after = lua_jit.run("""
        local db = connect({ pool_size = 2 })
        local other = connect()
        local seen
        local inside = must(db:transaction(function(tx)
            must(tx:exec("INSERT INTO accounts VALUES ('dave', 1)"))
            seen = must(other:select("SELECT COUNT(*) AS n FROM accounts WHERE name = 'dave'"))[1].n
            -- the client's own pool (another connection) does not see it either
            local own = must(db:select("SELECT COUNT(*) AS n FROM accounts WHERE name = 'dave'"))[1].n
            return must(tx:select("SELECT COUNT(*) AS n FROM accounts WHERE name = 'dave'"))[1].n + own * 10
        end))
        local after = must(other:select("SELECT COUNT(*) AS n FROM accounts WHERE name = 'dave'"))[1].n
        return inside, seen, after
    """)
    assert (inside, seen_by_other, after) == (1, 0, 1)


# -- pool ------------------------------------------------------------------------------------------


def test_queries_run_in_parallel_up_to_the_pool_size(lua_jit: Lua) -> None:
    parallel, queued, distinct = lua_jit.run("""
        local function sleeps(db, n)
            local promises = {}
            for i = 1, n do promises[i] = db:select("SELECT SLEEP(0.2) AS s, CONNECTION_ID() AS id") end
            local t = net.clock()
            local ids = {}
            for i = 1, n do ids[must(promises[i])[1].id] = true end
            local distinct = 0
            for _ in pairs(ids) do distinct = distinct + 1 end
            return net.clock() - t, distinct
        end
        local four = connect({ pool_size = 4 })
        must(four:select("SELECT 1"))
        local parallel, distinct = sleeps(four, 4)
        local two = connect({ pool_size = 2 })
        local queued = sleeps(two, 4)
        return parallel, queued, distinct
    """)
    assert parallel < 0.5, parallel  # 4 x 0.2 s in parallel, not 0.8 s
    assert distinct == 4
    assert 0.38 < queued < 0.9, queued  # two rounds of two


def test_pool_size_default_comes_from_db_pool_size(lua_factory: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    lua = lua_factory("lua54")
    (distinct,) = lua.run("""
        local db = connect()
        local promises = {}
        for i = 1, 6 do promises[i] = db:select("SELECT SLEEP(0.05), CONNECTION_ID() AS id") end
        local ids, n = {}, 0
        for i = 1, 6 do
            local id = must(promises[i])[1].id
            if not ids[id] then ids[id] = true; n = n + 1 end
        end
        return n
    """)
    assert distinct == 3


def test_misuse_raises_and_closed_client_fails_as_a_value(lua_jit: Lua) -> None:
    bad_query, bad_port, closed = lua_jit.run("""
        local db = connect()
        local _, bad_query = pcall(function() local p = db:select(42) return p end)
        local _, bad_port = pcall(db.connect, db, "u", "p", "d", "h", "nope")
        db:close()
        return bad_query, bad_port, { aio:await(db:select("SELECT 1")) }
    """)
    # errors point at the caller's line, not into mysql.lua
    assert re.match(rb'\[string "<python>"\]:\d+: mysql: the query must be a string, got number',
                    bad_query), bad_query
    assert b"port must be an integer" in bad_port
    assert closed == [None, b"mysql: the client is closed"]


# -- real processes -------------------------------------------------------------------------------


@pytest.fixture
def app_server(start_server: Any, mysql_db: Database, driver: str) -> Server:
    mysql_db.sql("DROP TABLE IF EXISTS mysql_app",
                 "CREATE TABLE mysql_app (id INT PRIMARY KEY, name VARCHAR(20), score DOUBLE, note TEXT)",
                 "INSERT INTO mysql_app VALUES (1, 'ann', 1.5, NULL), (2, 'ann', 2, 'it''s'), "
                 "(3, 'bob', 3, 'x')")
    env = {"EIGHTYS_TEST_MYSQL_HOST": mysql_db.host, "EIGHTYS_TEST_MYSQL_PORT": str(mysql_db.port),
           "EIGHTYS_TEST_MYSQL_USER": mysql_db.user,
           "EIGHTYS_TEST_MYSQL_PASSWORD": mysql_db.password,
           "EIGHTYS_TEST_MYSQL_DB": mysql_db.name,
           "EIGHTYS_TEST_MYSQL_DOWN_PORT": str(free_port())}
    return start_server(APP, "--mysql-driver", driver, workers=1, env=env)


def test_http_route_selects_through_the_module(app_server: Server) -> None:
    with HttpClient.connect(app_server) as client:
        response = client.request("GET", "/rows?name=ann")
        assert response.status == 200, response.body
        assert json.loads(response.body) == {"rows": [
            {"id": 1, "name": "ann", "score": 1.5, "note": None},
            {"id": 2, "name": "ann", "score": 2, "note": "it's"}]}
        evil = client.request("GET", "/rows?name=%27%20OR%20%271%27%3D%271")
        assert json.loads(evil.body) == {"rows": []}


def test_worker_survives_a_database_outage(app_server: Server) -> None:
    pids = app_server.worker_pids()
    with HttpClient.connect(app_server) as client:
        for _ in range(3):
            t = time.monotonic()
            response = client.request("GET", "/down")
            assert response.status == 503
            assert json.loads(response.body)["error"].startswith("mysql: (2003) Can't connect")
            assert time.monotonic() - t < 2
        assert client.request("GET", "/rows?name=bob").status == 200
        assert client.request("GET", "/pid").text == str(pids[0])
    assert app_server.worker_pids() == pids
    assert "Traceback" not in app_server.stderr_text()


def test_driver_choice(run_eightys: Any) -> None:
    from eightys.mysql import choose_driver

    assert choose_driver("aiomysql") == "aiomysql"
    assert choose_driver("asyncmy") == "asyncmy"
    assert choose_driver("auto") == ("asyncmy" if available("asyncmy") else "aiomysql")
    result = run_eightys("--mysql-driver", "pgsql", "server/simple_http.lua")
    assert result.returncode == 2 and "--mysql-driver" in result.stderr
    result = run_eightys("server/simple_http.lua", env={"EIGHTYS_MYSQL_DRIVER": "nope"})
    assert result.returncode == 2 and "EIGHTYS_MYSQL_DRIVER" in result.stderr
