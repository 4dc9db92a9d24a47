"""The server as real processes over real sockets: workers, restarts, signals,
errors in Lua code, mail between workers, outgoing connections, bind addresses.

Most tests drive tests/apps/control.lua (its header lists the commands).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import APPS, Server, free_port, line_of, pid_alive, wait_until
from eightys.master import MAX_QUICK_CRASHES

CONTROL = "tests/apps/control.lua"
CONTROL_PATH = APPS / "control.lua"

#: serialize(PAYLOAD) of tests/apps/control.lua, written out by hand: every key,
#: type and value of the nested table must survive the trip between workers.
PAYLOAD_TEXT = (
    '{"flag"=true,"list"={1=1,2="two",3={"three"=3}},"n"=42,"neg"=-7,'
    '"nested"={"deeper"={"deepest"="yes","nums"={1=10,2=20,3=30}}},'
    '"off"=false,"pi"=3.5,"text"="h\u00e9llo w\u00f6rld"}'
).encode()


def by_worker(server: Server, command: str, workers: int = 2, tries: int = 200) -> dict[int, bytes]:
    """Open connections until each of ``workers`` workers has answered ``command``
    once; returns {WORKERID: answer}. Fails if some worker never takes a connection."""
    answers: dict[int, bytes] = {}
    for _ in range(tries):
        with server.client() as c:
            worker = int(c.request("WORKER"))
            if worker not in answers:
                answers[worker] = c.request(command)
        if len(answers) == workers:
            return answers
    pytest.fail(f"only workers {sorted(answers)} took connections in {tries} tries")


def client_on(server: Server, worker: int, tries: int = 200):
    """A client connection served by worker ``worker``."""
    for _ in range(tries):
        c = server.client()
        if int(c.request("WORKER")) == worker:
            return c
        c.close()
    pytest.fail(f"worker {worker} took none of {tries} connections")


# -- workers ------------------------------------------------------------------------------


def test_raw_echo_with_two_workers(start_server):
    server = start_server("server/echo.lua", workers=2)
    assert len(server.worker_pids()) == 2
    with server.client() as c:
        c.send(b"hello\n")
        assert c.line() == b"hello"
        big = os.urandom(512 * 1024)  # more than one read and one write buffer
        c.send(big)
        c.sock.shutdown(socket.SHUT_WR)
        assert c.until_close() == big


def test_echo_flow_control_with_a_slow_reader(start_server):
    """8 MB through the echo app while the client at first reads nothing: the
    worker stops reading while its replies back up, resumes once the client
    reads, and nothing is lost or reordered."""
    server = start_server("server/echo.lua", workers=1)
    data = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    with server.client(timeout=20) as c:
        sender = threading.Thread(target=lambda: (c.sock.sendall(data),
                                                  c.sock.shutdown(socket.SHUT_WR)))
        sender.start()
        time.sleep(0.3)  # let the server's output back up before reading
        while chunk := c.sock.recv(1 << 20):
            received += chunk
        sender.join(5)
    assert len(received) == len(data)
    assert bytes(received) == data


def test_both_workers_take_connections(start_server):
    server = start_server(CONTROL, workers=2)
    seen: dict[int, int] = {}
    for _ in range(40):
        with server.client() as c:
            worker = int(c.request("WORKER"))
            seen[worker] = seen.get(worker, 0) + 1
    assert set(seen) == {0, 1}, seen
    pids = {int(pid) for pid in by_worker(server, "PID").values()}
    assert pids == set(server.worker_pids())


def test_kill_9_worker_is_replaced_within_2s(start_server):
    server = start_server(CONTROL, workers=2)
    pids = {w: int(pid) for w, pid in by_worker(server, "PID").items()}
    killed_at = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    # Connections made meanwhile wait in worker 0's socket backlog (the master
    # keeps it open) and are served by the replacement.
    new = by_worker(server, "PID")
    elapsed = time.monotonic() - killed_at
    assert elapsed < 2.0, f"took {elapsed:.2f} s"
    assert int(new[0]) != pids[0]
    assert int(new[1]) == pids[1]
    assert sorted(server.worker_pids()) == sorted([int(new[0]), pids[1]])
    assert not pid_alive(pids[0])
    server.wait_for_log(f"worker 0 (pid {pids[0]}) was killed by SIGKILL; restarting")


def test_crash_loop_makes_master_give_up(start_server, tmp_path):
    marker = tmp_path / "crash-now"
    server = start_server("tests/apps/crash_later.lua", workers=1,
                          env={"CRASH_MARKER": str(marker)})
    (first,) = server.worker_pids()
    marker.touch()  # from now on every new worker exits 50 ms after it is ready
    started = time.monotonic()
    os.kill(first, signal.SIGKILL)
    code = server.wait_exit(timeout=20)
    assert code == 1
    stderr = server.stderr_text()
    # backoff between restarts, then a clear reason
    assert stderr.count("exited with code 1; restarting") >= 3
    assert "exited with code 1; it died within" in stderr
    assert f"{MAX_QUICK_CRASHES} times in a row, giving up" in stderr
    # Each replacement got further apart (backoff) but the master did not loop forever.
    assert time.monotonic() - started < 15


def test_worker_that_cannot_load_on_restart_makes_master_give_up(start_server, tmp_path):
    app = tmp_path / "control.lua"
    shutil.copy(CONTROL_PATH, app)
    server = start_server(str(app), workers=2)
    pids = {w: int(pid) for w, pid in by_worker(server, "PID").items()}
    app.write_text("local broken = = 1\n")  # every new worker now fails to load
    os.kill(pids[0], signal.SIGKILL)
    assert server.wait_exit(timeout=20) == 1
    stderr = server.stderr_text()
    assert "worker 0 failed to load:" in stderr
    assert "/control.lua:1: unexpected symbol near '='" in stderr
    assert f"{MAX_QUICK_CRASHES} times in a row, giving up" in stderr
    assert not pid_alive(pids[1])  # the healthy worker was stopped too


def test_workers_exit_when_the_master_is_killed(start_server):
    server = start_server(CONTROL, workers=2)
    pids = server.worker_pids()
    server.send_signal(signal.SIGKILL)
    assert server.wait_exit() == -signal.SIGKILL
    # their control channel closes, so the orphans drain (nothing open) and exit
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5,
               message="orphaned workers to exit")


# -- signals --------------------------------------------------------------------------------


def test_sigterm_drains_open_reply_then_exits_0(start_server):
    server = start_server(CONTROL, workers=2)
    port, pids = server.port, server.worker_pids()
    with server.client(timeout=10) as c:
        assert c.request("SLOW 1.0 300000") == b"WAIT"  # the worker holds the request
        sent_at = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert c.line() == b"DATA 300000"
        body = c.until_close()
        waited = time.monotonic() - sent_at
    assert body == (b"0123456789" * 30000)
    assert waited > 0.8, "the reply came before the request's delay: was it really in flight?"
    assert server.wait_exit(timeout=10) == 0
    assert "stopping: draining connections" in server.stderr_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not any(pid_alive(pid) for pid in pids)


def test_responses_sent_while_draining_say_connection_close(start_server):
    # keep-alive clients must not send their next request into a closing socket
    server = start_server("tests/apps/http_app.lua", workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /slow?id=1 HTTP/1.1\r\nHost: x\r\n\r\n")  # answers after 0.3 s
        time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close" in head
    assert body == b"slow 1"  # and then the server closed the connection
    assert server.wait_exit(timeout=10) == 0


def test_aio_quit_stops_the_whole_server(start_server):
    server = start_server(CONTROL, "--graceful-timeout", "2", workers=2)
    pids = server.worker_pids()
    with server.client(timeout=10) as c:
        assert c.request("SHUTDOWN") == b"STOPPING true"
    assert server.wait_exit(timeout=10) == 0
    assert "asked the server to quit" in server.stderr_text()
    assert not any(pid_alive(pid) for pid in pids)


@pytest.mark.parametrize("shared", [False, True], ids=["reuseport", "shared-socket"])
def test_new_connections_are_refused_while_draining(start_server, shared):
    """Once stopping, the server accepts nothing new: a client connecting while an
    old request drains is refused at once, not queued unanswered until exit and reset."""
    server = start_server(CONTROL, *(["--shared-socket"] if shared else []), workers=2)
    with server.client(timeout=10) as c:
        assert c.request("SLOW 2.0 10") == b"WAIT"
        sent_at = time.monotonic()
        server.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                server.connect(timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, timeout=1.0, message="connections to be refused")
        assert time.monotonic() - sent_at < 1.5  # well before the drain ends
        assert c.line() == b"DATA 10"  # the open request still completes
        assert c.until_close() == b"0123456789"
    assert server.wait_exit() == 0


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_new_server_can_take_over_while_the_old_one_drains(start_server, tmp_path, kind):
    """A restart need not wait for the drain: the stopping server has let go of its
    address, and exiting later does not take the new server's address with it."""
    where = {"unix_path": str(tmp_path / "s.sock")} if kind == "unix" else {"port": free_port()}
    old = start_server(CONTROL, workers=1, **where)
    with old.client(timeout=10) as c:
        assert c.request("SLOW 1.0 10") == b"WAIT"
        old.send_signal(signal.SIGTERM)
        old.wait_for_log("stopping: draining connections")
        new = start_server(CONTROL, workers=1, **where)
        assert c.line() == b"DATA 10"
        assert c.until_close() == b"0123456789"
    assert old.wait_exit() == 0
    with new.client() as c:
        assert c.request("PID") == str(new.worker_pids()[0]).encode()


def test_sigterm_closes_idle_connections_after_grace_period(start_server):
    server = start_server(CONTROL, "--graceful-timeout", "0.5", workers=2)
    with server.client() as idle:
        assert idle.request("PING") == b"PONG"
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait_exit(timeout=10) == 0
        assert 0.4 < time.monotonic() - started < 5
        with pytest.raises(OSError):  # closed by the server: a reset, or EOF before a line
            idle.request("PING")
    assert "closed 1 connection(s) still open after the 0.5 s grace period" in server.stderr_text()


def test_sighup_reloads_code_in_every_worker_keeping_globals(start_server, tmp_path):
    app = tmp_path / "control.lua"
    shutil.copy(CONTROL_PATH, app)
    server = start_server(str(app), workers=2)
    pids = sorted(server.worker_pids())
    counters: dict[int, int] = {}
    for _ in range(6):  # bump each worker's global counter a few times
        for worker, value in by_worker(server, "INCR").items():
            counters[worker] = int(value)
    assert counters == {0: 6, 1: 6}
    text = app.read_text()
    assert 'VERSION = "v1"' in text
    app.write_text(text.replace('VERSION = "v1"', 'VERSION = "v2"'))

    server.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded ", count=2)

    stats = by_worker(server, "STATS")
    assert stats == {w: f"version=v2 loads=2 counter={counters[w]}".encode() for w in (0, 1)}
    assert sorted(server.worker_pids()) == pids  # reloaded in place, not restarted


def test_sighup_with_broken_code_keeps_old_code(start_server, tmp_path):
    app = tmp_path / "control.lua"
    shutil.copy(CONTROL_PATH, app)
    server = start_server(str(app), workers=2)
    app.write_text(app.read_text() + "\nthis is not lua\n")
    bad_line = len(app.read_text().splitlines())
    server.send_signal(signal.SIGHUP)
    stderr = server.wait_for_log("reload failed, previous code keeps serving", count=2)
    # Lua shortens long chunk names to "...<tail>", so only the tail is certain here.
    assert f"/control.lua:{bad_line}: '=' expected near 'is'" in stderr
    assert by_worker(server, "STATS") == {w: b"version=v1 loads=1 counter=0" for w in (0, 1)}


# -- errors in Lua code -------------------------------------------------------------------


def test_on_data_error_is_logged_with_file_line_and_next_connection_served(start_server):
    server = start_server(CONTROL, workers=2)
    pids = sorted(server.worker_pids())
    with server.client() as c:
        c.send(b"BOOM\n")
        assert c.until_close() == b""  # the failing connection is closed, with no reply
    line = line_of(CONTROL_PATH, "-- BOOM_LINE")
    stderr = server.wait_for_log(f"on_data: {CONTROL}:{line}: boom requested")
    assert "stack traceback" in stderr
    assert by_worker(server, "PING") == {0: b"PONG", 1: b"PONG"}
    assert sorted(server.worker_pids()) == pids  # nobody crashed


@pytest.mark.parametrize("command, marker, message", [
    ("TIMERBOOM", "-- TIMERBOOM_LINE", "timer boom"),
    ("CORBOOM", "-- CORBOOM_LINE", "coroutine boom"),
], ids=["timer", "coroutine"])
def test_error_in_timer_or_coroutine_is_logged_and_worker_serves(start_server, command,
                                                                  marker, message):
    server = start_server(CONTROL, workers=1)
    (pid,) = server.worker_pids()
    with server.client() as c:
        assert c.request(command) == b"SCHEDULED"
        server.wait_for_log(f"{CONTROL}:{line_of(CONTROL_PATH, marker)}: {message}")
        # the same connection, on the same worker, still works
        assert c.request("PING") == b"PONG"
        assert c.request("INCR") == b"1"
    assert server.worker_pids() == [pid]


# -- mail -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
def test_mail_between_workers(start_server, engine):
    server = start_server(CONTROL, "--lua", engine, workers=2)
    assert by_worker(server, "LOCAL") == {0: PAYLOAD_TEXT, 1: PAYLOAD_TEXT}
    for asker in (0, 1):
        other = 1 - asker
        with client_on(server, asker) as c:
            answer = c.request("ASK OTHER")
        assert answer == (f"ANSWER from={other} string=plain string from {asker} seen=".encode()
                          + PAYLOAD_TEXT + b" back=" + PAYLOAD_TEXT)
    with server.client() as c:
        assert c.request("ASK 7").startswith(b"ERR no worker 7")


def test_broadcast_reaches_every_worker(start_server):
    server = start_server(CONTROL, workers=2)
    for origin in (0, 1):
        with client_on(server, origin) as c:
            c.send(b"BCAST\n")
            lines = [c.line() for _ in range(3)]
        assert lines == [
            f"ACK 0 string=broadcast string from {origin} seen=".encode() + PAYLOAD_TEXT,
            f"ACK 1 string=broadcast string from {origin} seen=".encode() + PAYLOAD_TEXT,
            b"END",
        ]


# -- outgoing connections ---------------------------------------------------------------------


def test_aio_connect_to_a_local_server(start_server, upstream):
    server = start_server(CONTROL, workers=2, env={"UPSTREAM_PORT": str(upstream.port)})
    answers = by_worker(server, "FETCH")
    assert answers == {w: b"UPSTREAM upstream got: HELLO UPSTREAM|" for w in (0, 1)}
    assert upstream.lines == [b"hello upstream", b"hello upstream"]


def test_aio_connect_refused_reports_an_error(start_server):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    port = closed.getsockname()[1]
    try:
        server = start_server(CONTROL, workers=1)
        with server.client() as c:
            answer = c.request(f"FETCH {port}")
            assert answer.startswith(b"UPSTREAM-ERR "), answer
            assert b"refused" in answer.lower() or b"111" in answer, answer
            assert c.request("PING") == b"PONG"
    finally:
        closed.close()


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
def test_short_lived_aio_connect_readers_leave_the_lua_heap_flat(start_server, engine):
    # aio:cor/aio:buffered_cor readers of real outgoing sockets, each closed by the
    # peer: LuaJIT used to keep every one (~2 KiB each) in aio.lua's tables.
    server = start_server(CONTROL, "--lua", engine, workers=1)
    with server.client(timeout=60) as c:
        answer = c.request("CONNECTS 2000").decode()
    fields = dict(part.split("=") for part in answer.split()[1:])
    assert fields["ok"] == "2000", answer
    growth = float(fields["after"]) - float(fields["before"])
    assert growth < 128, f"Lua heap grew {growth:.0f} KiB over 1800 connections: {answer}"


# -- extension modules ------------------------------------------------------------------------


def test_example_module_functions(start_server):
    server = start_server(CONTROL, "-m", "modules/example.py", workers=2)
    for worker, answer in by_worker(server, "UPPER hello world").items():
        assert answer == b"HELLO WORLD", worker
    for worker, answer in by_worker(server, "RESOLVE localhost").items():
        assert answer.startswith(b"RESOLVED "), answer
        assert b"127.0.0.1" in answer.split(b" ", 1)[1].split(b","), answer
    with server.client(timeout=15) as c:
        # a failing coroutine in the module resolves the promise with nil, err
        answer = c.request("RESOLVE no-such-host.invalid")
        assert answer.startswith(b"ERR ") and len(answer) > 4, answer
        assert c.request("UPPER still serving") == b"STILL SERVING"


# -- listening addresses ----------------------------------------------------------------------


def test_unix_socket(start_server, tmp_path):
    path = str(tmp_path / "eightys.sock")
    server = start_server(CONTROL, workers=2, unix_path=path)
    assert by_worker(server, "PING") == {0: b"PONG", 1: b"PONG"}
    assert server.stop() == 0
    assert not os.path.exists(path)  # the master removes its socket file


def test_unix_socket_left_by_a_killed_server_is_reused(start_server, tmp_path):
    path = str(tmp_path / "eightys.sock")
    first = start_server(CONTROL, workers=1, unix_path=path)
    first.send_signal(signal.SIGKILL)
    first.wait_exit()
    first.stop()  # and its worker
    assert os.path.exists(path)  # stale: nobody accepts on it
    second = start_server(CONTROL, workers=1, unix_path=path)
    with second.client() as c:
        assert c.request("PING") == b"PONG"


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 loopback")


@needs_ipv6
def test_ipv6_host(start_server):
    server = start_server(CONTROL, workers=1, host="::1")
    with socket.create_connection(("::1", server.port), timeout=5) as s:
        s.sendall(b"PING\n")
        assert s.recv(100) == b"PONG\n"
    assert "on [::1]:" in server.stderr_text()


@needs_ipv6
def test_ipv6_flag_binds_any_v6_address(start_server):
    server = start_server(CONTROL, "-6", workers=1)
    with socket.create_connection(("::1", server.port), timeout=5) as s:
        s.sendall(b"PING\n")
        assert s.recv(100) == b"PONG\n"
    assert "on [::]:" in server.stderr_text()


def test_shared_socket_two_workers(start_server):
    server = start_server(CONTROL, "--shared-socket", workers=2)
    assert "(SO_REUSEPORT)" not in server.stderr_text()
    # One accept queue: while the worker that took the first connection is busy,
    # the other one must take the next.
    with server.client(timeout=10) as busy:
        assert busy.request("BLOCK 1.0") == b"BLOCKING"
        with server.client() as c:
            other = int(c.request("WORKER"))
        assert busy.line() == f"BLOCKED {1 - other}".encode()
    assert by_worker(server, "PING") == {0: b"PONG", 1: b"PONG"}


def test_many_concurrent_clients(start_server):
    """Ten threads x 20 requests at once over the two workers: every reply is right."""
    server = start_server("server/echo.lua", workers=2)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with server.client() as c:
                for i in range(20):
                    msg = f"client {n} message {i}"
                    c.send(msg.encode() + b"\n")
                    assert c.line() == msg.encode()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors


def test_lines_app_slow_reply_does_not_block_others(start_server):
    """server/lines.lua (aio:buffered_cor): a SLOW request does not hold up others
    on the same worker."""
    server = start_server("server/lines.lua", workers=1)
    with server.client() as slow, server.client() as fast:
        slow.send(b"SLOW 1.0 done\n")
        started = time.monotonic()
        assert fast.request("PING") == b"PONG"
        assert time.monotonic() - started < 0.8
        assert slow.line() == b"done"
        assert fast.request("UPPER abc") == b"ABC"
        assert fast.request("QUIT") == b"BYE"
        assert fast.until_close() == b""


# -- secrets ------------------------------------------------------------------------------

SECRET_APP = """
local host = require("eightys.host")
aio:http_get("/secret", function(fd)
    fd:http_response(200, "text/plain", WORKERID .. " " .. host.secret .. " " .. net.info())
end)
"""


def _secrets_by_worker(server: Server, workers: int = 2, tries: int = 200) -> dict[int, str]:
    answers: dict[int, str] = {}
    for _ in range(tries):
        with server.connect() as sock:
            sock.sendall(b"GET /secret HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        worker, secret, _ = data.partition(b"\r\n\r\n")[2].decode().split(" ", 2)
        answers[int(worker)] = secret
        if len(answers) == workers:
            return answers
    pytest.fail(f"only workers {sorted(answers)} answered in {tries} tries")


def _all_command_lines() -> dict[int, bytes]:
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                pass  # exited meanwhile
    return lines


def test_no_secret_on_any_command_line_or_in_worker_environments(start_server, tmp_path):
    app = tmp_path / "secret.lua"
    app.write_text(SECRET_APP)
    master_key = "known-master-key-0123456789abcdef"
    server = start_server(app, env={"MASTER_KEY": master_key})
    first = _secrets_by_worker(server)
    secret = first[0]
    assert len(secret) == 64 and first[1] == secret  # one secret per run, in every worker
    # A respawned worker gets the same configuration, still not through its arguments.
    old = server.worker_pids()
    os.kill(old[0], signal.SIGKILL)
    wait_until(lambda: len(set(server.worker_pids()) - set(old)) == 1, 10,
               message="a replacement worker")
    assert _secrets_by_worker(server) == {0: secret, 1: secret}

    # Every process on the machine (any user can read these), and `ps` for good measure.
    for pid, cmdline in _all_command_lines().items():
        for needle in (secret, master_key):
            assert needle.encode() not in cmdline, (pid, cmdline)
    ps = subprocess.run(["ps", "-eo", "args", "ww"], capture_output=True, check=True).stdout
    assert b"eightys.worker" in ps
    assert secret.encode() not in ps and master_key.encode() not in ps
    # The workers' environment is the one the user gave the master, nothing added.
    master_env = set(Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0"))
    for pid in server.worker_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert secret.encode() not in environ
        assert set(environ.split(b"\0")) <= master_env
    # The configuration descriptor is closed in the worker once read.
    for pid in server.worker_pids():
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()
                 if fd.is_symlink()]
        assert not [link for link in links if "eightys-config" in link], links
