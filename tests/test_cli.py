"""The command line as a user meets it: usage errors are one line on stderr and
exit code 2 (never a traceback), --help/--version work, and an app that cannot
start makes eightys exit non-zero with the reason (file:line for Lua errors)."""

from __future__ import annotations

import socket

import pytest

import eightys
from conftest import APPS, line_of


def assert_usage_error(result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line naming the problem."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eightys: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_help(run_eightys):
    result = run_eightys("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: eightys")
    for flag in ("-p PORT", "-h HOST", "-6", "-c N", "-m", "--shared-socket", "--version"):
        assert flag in result.stdout, flag
    assert result.stderr == ""


def test_version(run_eightys):
    result = run_eightys("--version")
    assert result.returncode == 0
    assert result.stdout == f"eightys {eightys.__version__}\n"
    assert result.stderr == ""


def test_unknown_flag(run_eightys):
    assert_usage_error(run_eightys("server/echo.lua", "--bogus"), "--bogus")


def test_missing_entry_file(run_eightys):
    assert_usage_error(run_eightys("no/such/app.lua", "-p", "0"), "no/such/app.lua")


def test_missing_module_file(run_eightys):
    assert_usage_error(run_eightys("server/echo.lua", "-p", "0", "-m", "no_such_module.py"),
                       "no_such_module.py")


@pytest.mark.parametrize("args, fragment", [
    (["-c", "0"], "-c"),
    (["-p", "70000"], "70000"),
    (["-p", "eighty"], "eighty"),
    (["-h", "unix:"], "unix:"),
], ids=["no-workers", "port-out-of-range", "port-not-a-number", "unix-without-path"])
def test_bad_values(run_eightys, args, fragment):
    assert_usage_error(run_eightys("server/echo.lua", *args), fragment)


def test_port_in_use(run_eightys):
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        line = assert_usage_error(run_eightys("server/echo.lua", "-c", "1", "-p", str(port)),
                                  str(port))
    assert "address already in use" in line


def test_port_in_use_by_another_eightys(start_server, run_eightys):
    # SO_REUSEPORT must not let a second server silently share the first one's port.
    first = start_server("server/echo.lua", workers=1)
    line = assert_usage_error(run_eightys("server/echo.lua", "-c", "1", "-p", str(first.port)),
                              str(first.port))
    assert "address already in use" in line
    assert first.alive()


def test_unix_socket_in_use_by_another_eightys(start_server, run_eightys, tmp_path):
    path = str(tmp_path / "eightys.sock")
    first = start_server("server/echo.lua", workers=1, unix_path=path)
    assert_usage_error(run_eightys("server/echo.lua", "-h", f"unix:{path}"),
                       path, "another server is using it")
    with first.client() as c:  # the first server and its socket file are untouched
        assert c.request("still here") == b"still here"


def test_unix_path_that_is_a_regular_file(run_eightys, tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    assert_usage_error(run_eightys("server/echo.lua", "-h", f"unix:{path}"), str(path))
    assert path.read_text() == "keep me"


# -- apps that cannot start -----------------------------------------------------------------


@pytest.mark.parametrize("app, marker, message", [
    ("syntax_error.lua", "-- SYNTAX_ERROR_LINE", "unexpected symbol near '='"),
    ("start_error.lua", "-- START_ERROR_LINE", "start-up failure on purpose"),
], ids=["syntax-error", "runtime-error"])
def test_lua_start_up_error_exits_non_zero_with_file_line(start_server, app, marker, message):
    server = start_server(f"tests/apps/{app}", workers=2, wait=False)
    code = server.wait_exit(timeout=15)
    assert code != 0
    stderr = server.stderr_text()
    assert f"tests/apps/{app}:{line_of(APPS / app, marker)}: {message}" in stderr
    assert "Traceback (most recent call last)" not in stderr


def test_failing_module_exits_non_zero_with_reason(start_server):
    server = start_server("server/echo.lua", "-m", "tests/apps/bad_module.py", workers=1,
                          wait=False)
    assert server.wait_exit(timeout=15) != 0
    assert "tests/apps/bad_module.py:8: RuntimeError: bad module on purpose" in server.stderr_text()


def test_port_zero_picks_a_free_port(start_server):
    server = start_server("server/echo.lua", workers=2, port=0)
    assert server.port != 0  # read from the "serving ... on 0.0.0.0:PORT" log line
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(10) == b"ping"
