"""``eightys --cli SCRIPT.lua``, as real processes: exit codes from aio:quit(n), the
natural end once nothing is pending, timers, sockets, MySQL and Redis from a
script, errors with file:line, signals, and the README's examples."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, Result, Server, free_port, line_of

@pytest.fixture
def run_script(tmp_path: Path):
    """``run_script(code, *args, timeout=20, env=None)``: write ``code`` as
    ``script.lua`` in a fresh folder and run ``eightys --cli script.lua ARGS`` from
    there (so error messages name ``script.lua``); returns a Result and the time taken."""
    servers: list[Server] = []

    def run(code: str, *args: str, timeout: float = 20.0, name: str = "script.lua",
            env: dict[str, str] | None = None) -> tuple[Result, float]:
        folder = tmp_path / f"run{len(servers)}"
        folder.mkdir()
        (folder / name).write_text(code)
        started = time.monotonic()
        server = Server(["--cli", name, *args], folder, port=None, env=env, cwd=folder)
        servers.append(server)
        try:
            code_ = server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.stop()
            pytest.fail(f"the script did not end within {timeout} s; "
                        f"stderr:\n{server.stderr_text()}")
        took = time.monotonic() - started
        return Result(code_, server.stdout_text(), server.stderr_text()), took

    try:
        yield run
    finally:
        for server in servers:
            server.stop()


def section_blocks(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```lua\n(.*?)```", text[start:end], re.S)


def no_errors(result: Result) -> None:
    assert " ERROR " not in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- ending ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_status_from_aio_quit(run_script, code):
    result, _ = run_script(f'print("before")\naio:quit({code})\n')
    assert result.returncode == code, result
    assert result.stdout == "before\n"
    no_errors(result)


def test_aio_quit_without_a_code_is_0_and_stops_pending_work(run_script):
    # an interval would keep the script alive for ever: quit ends it anyway
    result, took = run_script(
        'local n = 0\n'
        'aio:set_interval(function() n = n + 1 end, 0.01)\n'
        'aio:set_timeout(function() print("quitting"); aio:quit() end, 0.2)\n'
        'aio:set_timeout(function() print("never") end, 30)\n')
    assert result.returncode == 0, result
    assert result.stdout == "quitting\n"
    assert took < 10
    no_errors(result)


def test_80s_net_quit_with_s80_reload_exits_0(run_script):
    result, _ = run_script('aio:set_timeout(function() net.quit(S80_RELOAD) end, 0.05)\n'
                           'aio:set_interval(function() end, 1)\n')
    assert result.returncode == 0, result


def test_aio_quit_with_a_bad_code_is_an_error_at_the_caller(run_script):
    result, _ = run_script('aio:quit(256)\n')
    assert result.returncode == 1
    assert "script.lua:1: aio:quit(code): code must be an integer 0-255" in result.stderr


def test_natural_exit_when_nothing_is_pending(run_script):
    result, took = run_script('print("hello", WORKERID, WORKERS, PORT)\n')
    assert result.returncode == 0, result
    assert result.stdout == "hello\t0\t1\t0\n"
    no_errors(result)


def test_exit_after_a_timer_chain(run_script):
    result, took = run_script(
        'local n = 0\n'
        'local function tick()\n'
        '    n = n + 1\n'
        '    print("tick", n)\n'
        '    if n < 5 then aio:set_timeout(tick, 0.1) end\n'
        'end\n'
        'aio:set_timeout(tick, 0.1)\n')
    assert result.returncode == 0, result
    assert result.stdout == "".join(f"tick\t{i}\n" for i in range(1, 6))
    assert took >= 0.5
    no_errors(result)


def test_a_coroutine_awaiting_sleeps_keeps_it_alive(run_script):
    result, took = run_script(
        'aio:async(function()\n'
        '    for i = 1, 3 do aio:await(aio:sleep(0.1)); print("slept", i) end\n'
        '    local v = aio:await(aio:cached("c", "k", function() return aio:sleep(0.05) end))\n'
        '    print("cached", v)\n'
        'end)\n')
    assert result.returncode == 0, result
    assert result.stdout == "slept\t1\nslept\t2\nslept\t3\ncached\ttrue\n"
    assert took >= 0.3


def test_mail_to_itself_is_delivered_before_the_end(run_script):
    result, _ = run_script(
        'aio:mailbox("jobs", function(sender, data) print("job", sender, data) end)\n'
        'aio:post(0, "jobs", "first")\n'
        'function on_message(sender, _, _, _, _, _, message) print("mail", message) end\n'
        'aio:mail{worker = 0, message = "second"}\n'
        'print("sent", aio:mail{worker = 1, message = "x"})\n')
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("sent\tnil\tno worker 1"), lines
    assert lines[1:] == ["job\t0\tfirst", "mail\tsecond"]


# -- errors ------------------------------------------------------------------------------


def test_top_level_error_exits_1_with_file_line(run_script, tmp_path):
    code = 'print("first")\nlocal t = nil\nprint(t.x) -- TOP LEVEL ERROR\nprint("never")\n'
    result, _ = run_script(code)
    assert result.returncode == 1
    assert result.stdout == "first\n"
    line = line_of(tmp_path / "run0" / "script.lua", "TOP LEVEL ERROR")
    assert result.stderr.startswith(f"eightys: error: script.lua:{line}: attempt to index"), \
        result.stderr
    assert "Traceback" not in result.stderr


def test_syntax_error_exits_1_with_file_line(run_script):
    result, _ = run_script('local x = 1\nlocal = 2\n')
    assert result.returncode == 1
    assert "eightys: error: script.lua:2:" in result.stderr
    assert result.stdout == ""


def test_error_in_a_callback_is_logged_and_makes_the_status_1(run_script, tmp_path):
    result, _ = run_script(
        'aio:set_timeout(function() error("late failure") end, 0.05) -- CALLBACK ERROR\n'
        'aio:set_timeout(function() print("the rest still ran") end, 0.2)\n')
    assert result.returncode == 1
    assert result.stdout == "the rest still ran\n"
    line = line_of(tmp_path / "run0" / "script.lua", "CALLBACK ERROR")
    assert f"script.lua:{line}: late failure" in result.stderr
    assert " ERROR [script] " in result.stderr


def test_explicit_quit_code_wins_over_callback_errors(run_script):
    result, _ = run_script(
        'aio:set_timeout(function() error("oops") end, 0.01)\n'
        'aio:set_timeout(function() aio:quit(0) end, 0.1)\n')
    assert result.returncode == 0
    assert "oops" in result.stderr


def test_missing_script_is_a_usage_error(run_script, tmp_path):
    server = Server(["--cli", "no/such.lua"], tmp_path, port=None, cwd=tmp_path)
    assert server.proc.wait(20) == 2
    lines = server.stderr_text().splitlines()
    assert len(lines) == 1 and "no/such.lua" in lines[0]


def test_reload_makes_no_sense_with_cli(run_script):
    result, _ = run_script('print(1)\n', "--reload")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--reload" in result.stderr


def test_sigterm_ends_a_script_with_143(tmp_path):
    (tmp_path / "forever.lua").write_text(
        'aio:set_interval(function() end, 0.05)\nprint("running")\n')
    server = Server(["--cli", "forever.lua"], tmp_path, port=None, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while "running" not in server.stdout_text():
            assert time.monotonic() < deadline, server.stderr_text()
            assert server.alive(), server.stderr_text()
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 128 + signal.SIGTERM
    finally:
        server.stop()


# -- no listener -------------------------------------------------------------------------


def test_no_listener_even_with_a_port(tmp_path):
    port = free_port()
    (tmp_path / "wait.lua").write_text('print("up")\naio:set_timeout(function() end, 1)\n')
    server = Server(["--cli", "wait.lua", "-p", str(port), "-c", "4"], tmp_path, port=None,
                    cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while "up" not in server.stdout_text():
            assert time.monotonic() < deadline and server.alive(), server.stderr_text()
            time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert server.worker_pids() == []  # one process: no workers
        assert server.wait_exit() == 0
    finally:
        server.stop()


# -- the aio library against real services -------------------------------------------------


def test_aio_connect_to_a_local_server(run_script, start_server):
    echo = start_server("server/echo.lua", workers=1)
    result, _ = run_script(
        f'local sock = assert(aio:connect(ELFD, "127.0.0.1", {echo.port}))\n'
        'sock.on_data = function(self, elfd, fd, data)\n'
        '    print("echoed", data)\n'
        '    self:close()\n'
        'end\n'
        'sock:write("ping")\n')
    assert result.returncode == 0, result
    assert result.stdout == "echoed\tping\n"
    no_errors(result)


def test_http_client_to_a_local_server(run_script, start_server):
    site = start_server("server/simple_http.lua", workers=1)
    result, _ = run_script(
        'local http_client = require("aio.lib.http_client")\n'
        'aio:async(function()\n'
        f'    local res = aio:await(http_client:GET("http://127.0.0.1:{site.port}/echo?name=cli"))\n'
        '    print(res.status, res.body)\n'
        'end)\n')
    assert result.returncode == 0, result
    assert result.stdout == "200\tHi, cli!\n"


def test_aio_connect_refused_ends_with_on_close(run_script):
    port = free_port()
    result, _ = run_script(
        f'local sock = aio:connect(ELFD, "127.0.0.1", {port})\n'
        'sock.on_close = function(self, elfd, fd, err) print("closed", err ~= nil) end\n')
    assert result.returncode == 0, result
    assert result.stdout == "closed\ttrue\n"


def test_extension_modules_load_in_a_script(run_script):
    result, _ = run_script(
        'aio:async(function()\n'
        '    local addresses = aio:await(example.resolve("localhost"))\n'
        '    print(example.upper("abc"), #addresses > 0)\n'
        'end)\n', "-m", str(REPO / "modules" / "example.py"))
    assert result.returncode == 0, result
    assert result.stdout == "ABC\ttrue\n"
    no_errors(result)


def mysql_root():
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               autocommit=True, connect_timeout=3)
    except pymysql.err.Error as exc:
        pytest.skip(f"no MySQL/MariaDB as root at 127.0.0.1:3306: {exc}")


def test_a_migration_against_mysql(run_script):
    conn = mysql_root()
    with conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS eightys_cli CHARACTER SET utf8mb4")
        cur.execute("DROP TABLE IF EXISTS eightys_cli.notes")
    migration = (
        'local mysql = require("mysql")\n'
        'local db = mysql:new()\n'
        'aio:async(function()\n'
        '    assert(aio:await(db:connect("root", "", "eightys_cli", "127.0.0.1", 3306)))\n'
        '    assert(aio:await(db:exec("CREATE TABLE IF NOT EXISTS notes '
        '(id INT PRIMARY KEY, text VARCHAR(32))")))\n'
        '    local res = assert(aio:await(db:exec_args('
        '"INSERT INTO notes (id, text) VALUES (?, ?)", { 1, "migrated" })))\n'
        '    local rows = assert(aio:await(db:select("SELECT COUNT(*) AS n FROM notes")))\n'
        '    print("rows", rows[1].n)\n'
        'end)\n')
    result, _ = run_script(migration)
    assert result.returncode == 0, result
    assert result.stdout == "rows\t1\n"
    no_errors(result)
    conn = mysql_root()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id, text FROM eightys_cli.notes")
        assert cur.fetchall() == ((1, "migrated"),)
        cur.execute("DROP DATABASE eightys_cli")


def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=15, socket_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379: {exc}")
    return client


def test_redis_commands_and_a_subscription_that_ends(run_script):
    client = redis_client()
    client.delete("cli:counter")
    # the subscription keeps the script alive until the callback unsubscribes
    result, took = run_script(
        'local redis = require("redis")\n'
        'local r = redis:new("redis://127.0.0.1:6379/15")\n'
        'local listener = redis:new("redis://127.0.0.1:6379/15")\n'
        'aio:async(function()\n'
        '    print("incr", aio:await(r:call("INCRBY", "cli:counter", 41)))\n'
        '    aio:await(listener:subscribe("cli:done", function(message)\n'
        '        print("message", message)\n'
        '        listener:unsubscribe("cli:done")\n'
        '    end))\n'
        '    aio:set_timeout(function()\n'
        '        aio:async(function() aio:await(r:call("PUBLISH", "cli:done", "bye")) end)\n'
        '    end, 0.3)\n'
        'end)\n')
    assert result.returncode == 0, result
    assert result.stdout == "incr\t41\nmessage\tbye\n"
    assert took >= 0.3
    assert client.get("cli:counter") == b"41"
    client.delete("cli:counter")
    no_errors(result)


# -- the README --------------------------------------------------------------------------


def test_readme_cli_examples_run(run_script, tmp_path):
    # (test_readme.py finds this call: the section's blocks are run here)
    timers, queue = section_blocks("Scripts (`--cli`)")
    result, _ = run_script(timers)
    assert result.returncode == 0, result
    assert result.stdout == "waiting...\nslept 0.2 s\nticked 3 times\n"
    no_errors(result)

    client = redis_client()
    client.delete("jobs")
    client.rpush("jobs", "a", "b", "c")
    result, _ = run_script(queue, env={"REDIS_URL": "redis://127.0.0.1:6379/15"})
    assert result.returncode == 0, result
    assert result.stdout == "job a\njob b\njob c\n3 jobs done\n"
    assert client.llen("jobs") == 0
    no_errors(result)
