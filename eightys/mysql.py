"""The Python half of the MySQL module (eightys/lua/mysql.lua): the only module
that touches aiomysql.

Lua sees a handful of host functions (``MySQLHost.functions``, in the private
host table); each returns at once, with a promise (``LuaRuntime.promise_from``)
for the work done on the worker's loop. Clients and transactions are small
integer ids: Lua never holds a Python object.

Design:

* Every client (``mysql:new()``) has its own pool (:class:`Pool`) in each
  worker: at most ``pool_size`` aiomysql connections, opened on demand, so up
  to ``pool_size`` queries run at once and more wait for a connection.
* Connections use utf8mb4, autocommit, no multi-statements (one statement per
  query: an injected ``; DROP TABLE`` is a syntax error) and a session
  ``sql_mode`` without NO_BACKSLASH_ESCAPES, so backslash escaping (Lua's
  ``client:escape``) is always valid.
* A lost connection (server-side KILL, restart, wait_timeout) is discarded, and
  so are the other idle ones (after a restart they are all dead), so the next
  query opens a fresh connection. A SELECT that fails that way is retried once
  on a fresh connection; a write returns the error (it may or may not have run).
* Rows are decoded by PyMySQL converters chosen here (bytes in, Lua-ready values
  out: no second pass), and handed to Lua with one ``table_from`` call.
* Every failure reaches Lua as ``nil, "mysql: (code) message"``; no Python
  exception ever propagates into Lua.
* Two drivers speak the protocol (:class:`Driver`): aiomysql (pure Python, the
  default dependency) and asyncmy (Cython, ``pip install eightys[fast]``), used
  when installed unless ``--mysql-driver``/EIGHTYS_MYSQL_DRIVER says otherwise.
  Both take the same connection options and converters and produce the same
  result objects; the driver is only asked to make, open and judge connections.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import os
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from aiomysql import Connection

    from eightys.lua_runtime import LuaRuntime

#: Pool size when neither ``opts.pool_size`` nor DB_POOL_SIZE says otherwise.
DEFAULT_POOL_SIZE = 4
#: Seconds a new connection (TCP connect, handshake, session set-up) may take.
DEFAULT_CONNECT_TIMEOUT = 3.0

#: Error codes meaning "this connection is gone": CR_SERVER_GONE_ERROR,
#: CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED, ER_SERVER_SHUTDOWN,
#: ER_CONNECTION_KILLED (MariaDB), ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8).
LOST_CONNECTION_CODES = frozenset({2006, 2013, 2055, 1053, 1927, 4031})

#: Run on every new connection: the server's sql_mode minus NO_BACKSLASH_ESCAPES.
SESSION_SETUP = (
    "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE("
    "CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))"
)

# FIELD_TYPE codes (pymysql.constants.FIELD_TYPE), here to keep aiomysql's import lazy.
_TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _TIMESTAMP, _LONGLONG, _INT24 = 1, 2, 3, 4, 5, 7, 8, 9
_TIME, _DATETIME, _YEAR, _BIT = 11, 12, 13, 16

#: SQL text that may hold a ``?`` that is not a placeholder: quoted strings and
#: identifiers (backslash escapes and doubled quotes) and comments; or a ``?``.
_SQL_TOKENS = re.compile(
    rb"""'(?:[^'\\]|\\.|'')*'"""
    rb'''|"(?:[^"\\]|\\.|"")*"'''
    rb"""|`(?:[^`]|``)*`"""
    rb"""|--(?:[ \t\r\f\v][^\n]*|$|(?=\n))"""
    rb"""|\#[^\n]*"""
    rb"""|/\*.*?\*/"""
    rb"""|\?""",
    re.S,
)


class MySQLError(Exception):
    """A failure reported to Lua as ``nil, message``."""


class HasRuntime(Protocol):
    """What :class:`MySQLHost` needs from its owner (the worker, or the test host)."""

    runtime: "LuaRuntime"


# -- values ---------------------------------------------------------------------------------


def _datetime(value: bytes) -> bytes:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` -> ``YYYY-MM-DDTHH:MM:SS[.ffffff]`` (the
    fraction only when it is not zero, always six digits)."""
    head, _, fraction = value.partition(b".")
    head = head.replace(b" ", b"T", 1)
    if fraction.strip(b"0"):
        return head + b"." + fraction.ljust(6, b"0")
    return head


def _time(value: bytes) -> bytes:
    """``[-]HHH:MM:SS[.ffffff]`` as the server sends it, fraction as in :func:`_datetime`."""
    head, _, fraction = value.partition(b".")
    if fraction.strip(b"0"):
        return head + b"." + fraction.ljust(6, b"0")
    return head


def decoders(engine: str) -> dict[int, Callable[[bytes], Any]]:
    """PyMySQL converters (field type -> function of the raw bytes) producing the
    values Lua gets. Integers that the engine cannot hold exactly (beyond +-2^53
    on LuaJIT, beyond 64-bit signed on Lua 5.4) stay decimal strings; DECIMAL,
    DATE, strings and binary data are not converted at all (exact bytes)."""
    if engine == "luajit":
        low, high = -(2 ** 53), 2 ** 53
    else:
        low, high = -(2 ** 63), 2 ** 63 - 1

    def bigint(raw: bytes) -> int | bytes:
        value = int(raw)
        return value if low <= value <= high else raw

    def bit(raw: bytes) -> int | bytes:
        value = int.from_bytes(raw, "big")
        return value if value <= high else str(value).encode()

    return {
        _TINY: int, _SHORT: int, _LONG: int, _INT24: int, _YEAR: int,
        _LONGLONG: bigint, _BIT: bit, _FLOAT: float, _DOUBLE: float,
        _DATETIME: _datetime, _TIMESTAMP: _datetime, _TIME: _time,
    }


@functools.lru_cache(maxsize=512)
def split_placeholders(sql: bytes) -> tuple[bytes, ...]:
    """The pieces of ``sql`` around its ``?`` placeholders (one more piece than
    placeholders). A ``?`` inside a quoted string, a quoted identifier or a
    comment is not a placeholder."""
    pieces = []
    start = 0
    for match in _SQL_TOKENS.finditer(sql):
        if match.group() == b"?":
            pieces.append(sql[start:match.start()])
            start = match.end()
    pieces.append(sql[start:])
    return tuple(pieces)


def literal(value: Any, conn: "Connection") -> bytes:
    """``value`` as an SQL literal, escaped by PyMySQL for this connection (its
    escaping honours the session's NO_BACKSLASH_ESCAPES status). Strings that are
    valid UTF-8 are text literals; other byte strings are binary literals."""
    from pymysql.converters import escape_item

    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return b"_binary X'" + value.hex().encode() + b"'"
        return ("'" + conn.escape_string(text) + "'").encode("utf-8")
    return escape_item(value, "utf8mb4").encode("ascii")


def bind(pieces: tuple[bytes, ...], args: list[Any], conn: "Connection") -> bytes:
    """The statement with each placeholder replaced by the literal of its argument."""
    out = [pieces[0]]
    for piece, value in zip(pieces[1:], args):
        out.append(literal(value, conn))
        out.append(piece)
    return b"".join(out)


def describe(exc: BaseException) -> str:
    """An error message for Lua: ``mysql: (code) server message`` when there is a
    code, with the cause of a failed connect."""
    if isinstance(exc, MySQLError):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "mysql: (2003) timed out connecting to the server"
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"mysql: ({args[0]}) {args[1]}"
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, asyncio.IncompleteReadError):
            detail = str(cause) or type(cause).__name__
            if detail not in text:
                text += f" ({detail})"
        return text
    if type(exc).__name__ == "InterfaceError":
        return "mysql: (2013) Lost connection to MySQL server"
    return f"mysql: {type(exc).__name__}: {exc}"


def is_lost(exc: BaseException, conn: "Connection") -> bool:
    """Whether ``exc`` (raised by a query on ``conn``) means the connection is gone."""
    if not getattr(conn, "connected", True) or getattr(conn, "closed", False):
        return True
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and args[0] in LOST_CONNECTION_CODES:
        return True
    return type(exc).__name__ == "InterfaceError" or isinstance(exc, (OSError, EOFError))


def usable(conn: "Connection") -> bool:
    """Whether an idle aiomysql connection still looks alive, without a round trip: no
    EOF, no stream error, no unsolicited bytes (a server that closes a connection may
    send an error packet first)."""
    reader = conn._reader
    if reader is None or reader.at_eof() or reader.exception() is not None:
        return False
    if getattr(reader, "eof_received", False):
        return False
    return not getattr(reader, "_buffer", None)


@functools.cache
def connection_class() -> type:
    """aiomysql's Connection, plus MariaDB's ed25519 authentication (through
    PyMySQL's implementation, which needs PyNaCl), which aiomysql lacks."""
    import aiomysql

    class Connection(aiomysql.Connection):  # type: ignore[misc]
        async def _process_auth(self, plugin_name: bytes, auth_packet: Any) -> Any:
            if plugin_name != b"client_ed25519":
                return await super()._process_auth(plugin_name, auth_packet)
            from pymysql import _auth

            self.write_packet(_auth.ed25519_password(self._password.encode("latin1"),
                                                     auth_packet.read_all()))
            packet = await self._read_packet()
            packet.check_error()
            self._auth_plugin_used = "client_ed25519"
            return packet

    return Connection


#: The drivers, in the order "auto" prefers them.
DRIVERS = ("asyncmy", "aiomysql")


def available(name: str) -> bool:
    """Whether driver ``name`` can be imported here."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def choose_driver(setting: str = "auto") -> str:
    """The driver to use: ``setting`` ("aiomysql", "asyncmy"), or for "auto" (and
    anything else) asyncmy when it is installed, else aiomysql."""
    if setting in DRIVERS:
        return setting
    return "asyncmy" if available("asyncmy") else "aiomysql"


class Driver:
    """What the pool needs from a MySQL driver: make a connection from the options,
    open it, and tell whether one is closed or still usable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def make(self, options: dict[str, Any]) -> "Connection":
        """A new, unopened connection, multi-statements off (one statement per
        query is safer; both drivers ask for them by default)."""
        from pymysql.constants import CLIENT

        if self.name == "asyncmy":
            from asyncmy.connection import Connection as AsyncmyConnection

            conn = AsyncmyConnection(**options)
            conn._client_flag &= ~CLIENT.MULTI_STATEMENTS
            return conn
        conn = connection_class()(**options)
        conn.client_flag &= ~CLIENT.MULTI_STATEMENTS
        return conn

    async def open(self, conn: "Connection") -> None:
        """Connect, authenticate and run the session set-up."""
        if self.name == "asyncmy":
            await conn.connect()
        else:
            await conn._connect()

    def closed(self, conn: "Connection") -> bool:
        """Whether the connection is known to be closed."""
        if self.name == "asyncmy":
            return not conn.connected
        return bool(conn.closed)

    def usable(self, conn: "Connection") -> bool:
        """Whether an idle connection still looks alive (see :func:`usable`)."""
        if self.name == "asyncmy":
            return conn.connected and not getattr(conn, "_stream_broken", False)
        return usable(conn)


# -- the pool -----------------------------------------------------------------------------


class Pool:
    """At most ``size`` connections, opened on demand; acquirers beyond that wait
    (first come, first served). Idle connections are reused most recent first."""

    def __init__(self, size: int, timeout: float, options: dict[str, Any],
                 driver: Driver | None = None) -> None:
        self.driver = driver or Driver(choose_driver())
        self.size = size
        self.timeout = timeout
        self.options = options
        self.closed = False
        self._idle: collections.deque[Connection] = collections.deque()
        self._slots = asyncio.Semaphore(size)

    async def acquire(self, fresh: bool = False) -> "Connection":
        """A connection for one task; give it back with :meth:`release`. ``fresh``:
        a new one, not an idle one. Raises if a new connection cannot be made."""
        if self.closed:
            raise MySQLError("mysql: the client is closed")
        await self._slots.acquire()
        try:
            if self.closed:
                raise MySQLError("mysql: the client is closed")
            if not fresh:
                while self._idle:
                    conn = self._idle.pop()
                    if self.driver.usable(conn):
                        return conn
                    conn.close()
            return await self._open()
        except BaseException:
            self._slots.release()
            raise

    async def _open(self) -> "Connection":
        conn = self.driver.make(self.options)
        try:
            # the whole set-up is timed (aiomysql's connect_timeout covers TCP only)
            await asyncio.wait_for(self.driver.open(conn), self.timeout)
        except asyncio.TimeoutError:
            conn.close()
            host = self.options.get("unix_socket") or \
                f"{self.options.get('host')}:{self.options.get('port')}"
            raise MySQLError(f"mysql: (2003) timed out after {self.timeout:g} s connecting to "
                             f"{host}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def release(self, conn: "Connection", discard: bool = False) -> None:
        """Give a connection back. It is closed instead of kept if ``discard``, if the
        pool is closed, or if it is inside a transaction (an ``exec("BEGIN")``
        never committed must not leak into the next task)."""
        if discard or self.closed or self.driver.closed(conn) or conn.get_transaction_status():
            conn.close()
        else:
            self._idle.append(conn)
        self._slots.release()

    def discard_idle(self) -> None:
        """Close every idle connection (after one was found dead)."""
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        """No more acquiring; idle connections close now, busy ones on release."""
        self.closed = True
        self.discard_idle()


class Transaction:
    """One dedicated connection between BEGIN and COMMIT/ROLLBACK."""

    def __init__(self, pool: Pool, conn: "Connection") -> None:
        self.pool = pool
        self.conn = conn
        self.lost = False
        #: statements of one transaction run one at a time on its connection
        self.lock = asyncio.Lock()


class Client:
    """One ``mysql:new()`` client of one worker."""

    def __init__(self, pool_size: int, connect_timeout: float) -> None:
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.pool: Pool | None = None


# -- the host functions ----------------------------------------------------------------------


class MySQLHost:
    """The host functions mysql.lua calls (through the private host table)."""

    def __init__(self, owner: HasRuntime, driver: str = "auto") -> None:
        self.owner = owner
        #: the driver every pool of this host uses (see :func:`choose_driver`)
        self.driver = Driver(choose_driver(driver))
        self._clients: dict[int, Client] = {}
        self._transactions: dict[int, Transaction] = {}
        #: tasks in flight (see _promise)
        self._pending: set[asyncio.Future[Any]] = set()
        self._ids = itertools.count(1)
        self._null: Any = None
        self._array_mt: Any = None
        self._setmetatable: Any = None
        self._decoders: dict[int, Callable[[bytes], Any]] | None = None

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {
            b"mysql_setup": self.setup, b"mysql_new": self.new,
            b"mysql_connect": self.connect, b"mysql_query": self.query,
            b"mysql_begin": self.begin, b"mysql_finish": self.finish,
            b"mysql_close": self.close,
        }

    @property
    def runtime(self) -> "LuaRuntime":
        return self.owner.runtime

    # -- called by Lua ----------------------------------------------------------------------

    def setup(self, null: Any, array_mt: Any) -> None:
        """Learn the NULL sentinel and the array metatable (once, when mysql.lua loads)."""
        self._null = null
        self._array_mt = array_mt
        self._setmetatable = self.runtime.lua.globals()[b"setmetatable"]

    def new(self, pool_size: Any = None, connect_timeout: Any = None) -> int:
        """A new client; returns its id. Defaults: DB_POOL_SIZE (or 4) connections,
        a 3 s connect timeout."""
        if isinstance(pool_size, (int, float)) and pool_size >= 1:
            pool_size = int(pool_size)  # Lua 5.4 may pass 4.0
        else:
            pool_size = _env_pool_size()
        if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            connect_timeout = DEFAULT_CONNECT_TIMEOUT
        client_id = next(self._ids)
        self._clients[client_id] = Client(pool_size, float(connect_timeout))
        return client_id

    def connect(self, client_id: int, user: bytes, password: bytes | None, db: bytes | None,
                host: bytes, port: int) -> Any:
        """Set the client's server and credentials (its pool, replacing any earlier
        one) and open a first connection. Promise of ``true`` or ``nil, err``."""
        client = self._clients.get(client_id)
        if client is None:
            return self._failed("mysql: the client is closed")
        if client.pool is not None:
            client.pool.close()
        address = host.decode("utf-8", "replace")
        options: dict[str, Any] = {
            "user": user.decode("utf-8", "replace"),
            # aiomysql encodes the password as latin-1: this keeps its bytes exact
            "password": (password or b"").decode("latin-1"),
            "db": db.decode("utf-8", "replace") if db else None,
            "charset": "utf8mb4", "use_unicode": False, "autocommit": True,
            "conv": self._converters(), "init_command": SESSION_SETUP,
            "connect_timeout": client.connect_timeout,
        }
        if address.startswith("unix:"):
            options["unix_socket"] = address[5:]
        else:
            options["host"] = address.removeprefix("v6:").strip("[]")
            options["port"] = int(port)
        client.pool = Pool(client.pool_size, client.connect_timeout, options, self.driver)
        return self._promise(self._check(client.pool))

    def query(self, client_id: int, tx_id: int, want_rows: bool, sql: bytes, args: Any = None,
              count: int = 0) -> Any:
        """Run one statement: promise of rows (``want_rows``) or of the exec result
        table, or ``nil, err``. With ``args`` (a Lua array of ``count`` values, nil
        for NULL), ``?`` placeholders are bound to them. Returns ``nil, message``
        (not a promise) when the placeholders do not match the arguments."""
        try:
            pieces: tuple[bytes, ...] | None = None
            values: list[Any] = []
            if args is not None:
                pieces = split_placeholders(sql)
                if len(pieces) - 1 != count:
                    return None, (f"mysql: the statement has {len(pieces) - 1} placeholder(s) "
                                  f"but {count} argument(s) were given").encode()
                values = [args[i] for i in range(1, count + 1)]
            if tx_id:
                tx = self._transactions.get(tx_id)
                if tx is None:
                    return self._failed("mysql: the transaction is already finished")
                work: Awaitable[Any] = self._in_transaction(tx, sql, pieces, values, want_rows)
            else:
                client = self._clients.get(client_id)
                if client is None:
                    return self._failed("mysql: the client is closed")
                if client.pool is None:
                    return self._failed("mysql: not connected (call client:connect first)")
                work = self._run(client.pool, sql, pieces, values, want_rows)
            return self._promise(work)
        except Exception as exc:  # noqa: BLE001 - never raise into Lua
            return self._failed(describe(exc))

    def begin(self, client_id: int) -> Any:
        """Start a transaction on a dedicated connection: promise of its id, or ``nil, err``."""
        client = self._clients.get(client_id)
        if client is None:
            return self._failed("mysql: the client is closed")
        if client.pool is None:
            return self._failed("mysql: not connected (call client:connect first)")
        return self._promise(self._begin(client.pool))

    def finish(self, tx_id: int, commit: bool) -> Any:
        """COMMIT (``commit``) or ROLLBACK, and give the connection back: promise of
        ``true``, or ``nil, err`` (a failed COMMIT is rolled back)."""
        tx = self._transactions.pop(tx_id, None)
        if tx is None:
            return self._failed("mysql: the transaction is already finished")
        return self._promise(self._finish(tx, bool(commit)))

    def close(self, client_id: int) -> Any:
        """Close the client's pool (busy connections close when their query ends)."""
        client = self._clients.pop(client_id, None)
        if client is not None and client.pool is not None:
            client.pool.close()
        promise, resolve = self.runtime.new_promise()
        resolve(True)
        return promise

    def close_all(self) -> None:
        """Close every client's pool (a --cli script ended)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            if client.pool is not None:
                client.pool.close()

    # -- the work ---------------------------------------------------------------------------

    async def _check(self, pool: Pool) -> tuple[Any, ...]:
        conn = await pool.acquire()
        pool.release(conn)
        return (True,)

    async def _run(self, pool: Pool, sql: bytes, pieces: tuple[bytes, ...] | None,
                   values: list[Any], want_rows: bool) -> tuple[Any, ...]:
        fresh = False
        while True:
            conn = await pool.acquire(fresh)
            try:
                await conn.query(bind(pieces, values, conn) if pieces is not None else sql)
                result = conn._result
            except Exception as exc:
                lost = is_lost(exc, conn)
                pool.release(conn, discard=lost)
                if not lost:
                    raise
                pool.discard_idle()  # after a restart every idle connection is dead too
                if want_rows and not fresh:
                    fresh = True  # a read is safe to repeat, once, on a new connection
                    continue
                raise
            pool.release(conn)
            return self._result(result, want_rows)

    async def _in_transaction(self, tx: Transaction, sql: bytes,
                              pieces: tuple[bytes, ...] | None, values: list[Any],
                              want_rows: bool) -> tuple[Any, ...]:
        async with tx.lock:
            if tx.lost:
                raise MySQLError("mysql: (2013) the transaction's connection was lost")
            conn = tx.conn
            try:
                await conn.query(bind(pieces, values, conn) if pieces is not None else sql)
            except Exception as exc:
                if is_lost(exc, conn):
                    tx.lost = True
                raise
            return self._result(conn._result, want_rows)

    async def _begin(self, pool: Pool) -> tuple[Any, ...]:
        fresh = False
        while True:
            conn = await pool.acquire(fresh)
            try:
                await conn.query(b"START TRANSACTION")
            except Exception as exc:
                lost = is_lost(exc, conn)
                pool.release(conn, discard=lost)
                if lost and not fresh:  # nothing ran yet: safe to try a new connection
                    pool.discard_idle()
                    fresh = True
                    continue
                raise
            tx_id = next(self._ids)
            self._transactions[tx_id] = Transaction(pool, conn)
            return (tx_id,)

    async def _finish(self, tx: Transaction, commit: bool) -> tuple[Any, ...]:
        async with tx.lock:
            conn = tx.conn
            try:
                if tx.lost:
                    if commit:
                        raise MySQLError("mysql: (2013) the transaction's connection was lost; "
                                         "nothing was committed")
                    return (True,)
                try:
                    await conn.query(b"COMMIT" if commit else b"ROLLBACK")
                except Exception as exc:
                    tx.lost = is_lost(exc, conn)
                    if not tx.lost and commit:
                        try:
                            await conn.query(b"ROLLBACK")
                        except Exception as again:  # noqa: BLE001 - the first error is the news
                            tx.lost = is_lost(again, conn)
                    raise
                return (True,)
            finally:
                tx.pool.release(conn, discard=tx.lost)

    # -- results ----------------------------------------------------------------------------

    def _result(self, result: Any, want_rows: bool) -> tuple[Any, ...]:
        table = self.runtime.table
        if not want_rows:
            info = {b"ok": True, b"affected_rows": result.affected_rows or 0,
                    b"last_insert_id": result.insert_id or 0,
                    b"warnings": result.warning_count or 0}
            message = _info(result.message)
            if message:
                info[b"info"] = message
            return (table(info),)
        rows = result.rows
        lua_rows: list[dict[bytes, Any]] = []
        if rows:
            names = [field.name.encode("utf-8") for field in result.fields]
            null = self._null
            append = lua_rows.append
            for row in rows:
                if None in row:
                    append({name: null if value is None else value
                            for name, value in zip(names, row)})
                else:
                    append(dict(zip(names, row)))
        lua = table(lua_rows, recursive=True)
        self._setmetatable(lua, self._array_mt)
        return (lua,)

    # -- helpers ----------------------------------------------------------------------------

    def _converters(self) -> dict[int, Callable[[bytes], Any]]:
        if self._decoders is None:
            self._decoders = decoders(self.runtime.engine)
        return self._decoders

    def _promise(self, work: Awaitable[tuple[Any, ...]]) -> Any:
        # The loop keeps only weak references to tasks, and a connection's stream
        # reader is weakly held by its transport: without this strong reference a
        # task waiting for the server can be garbage-collected mid-query.
        task = asyncio.ensure_future(_reported(work))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return self.runtime.promise_from(task, _values)

    def _failed(self, message: str) -> Any:
        promise, resolve = self.runtime.new_promise()
        resolve(None, message.encode())
        return promise


async def _reported(work: Awaitable[tuple[Any, ...]]) -> tuple[Any, ...]:
    """``work``'s values, or ``(nil, message)`` if it raised."""
    try:
        return await work
    except Exception as exc:  # noqa: BLE001 - every failure is a value for Lua
        return None, describe(exc).encode()


def _values(result: tuple[Any, ...]) -> tuple[Any, ...]:
    return result


def _info(message: bytes | None) -> bytes:
    """The OK packet's human-readable info ("Records: 3  Duplicates: 0 ..."). Servers
    may send it length-prefixed (MariaDB does), which PyMySQL leaves in."""
    if message and message[0] == len(message) - 1:
        return message[1:]
    return message or b""


def _env_pool_size() -> int:
    try:
        size = int(os.environ.get("DB_POOL_SIZE", ""))
    except ValueError:
        return DEFAULT_POOL_SIZE
    return size if size > 0 else DEFAULT_POOL_SIZE
