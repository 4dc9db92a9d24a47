"""Shared helpers for tests that run eightys as real processes over real sockets.

The main piece is :class:`Server`: one ``python -m eightys ...`` master process
(started from the repository root, in its own session so the master and its
workers form one process group), with stdout/stderr captured to files so a
chatty server can never block on a full pipe. Use it through the fixtures:

``start_server(entry, *args, workers=2, ...)``
    Start a server and wait until it serves (or fail with its stderr). Every
    server started this way is stopped at teardown, even if the test failed:
    SIGTERM, then SIGKILL to the whole process group after a timeout.

``run_eightys(*args)``
    Run ``eightys`` to completion (CLI errors, ``--help``) and return a
    :class:`Result` with the exit code and the captured output.

Plain helpers (``free_port``, ``wait_until``, ``line_of``, :class:`Client`,
:class:`Upstream`) need no fixture; the ``upstream`` fixture starts an Upstream.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS = REPO / "tests" / "apps"
#: The master logs this once every worker is ready (eightys/master.py).
READY_LINE = "serving "
#: The port in the master's "serving ... on HOST:PORT with N worker(s)" line.
_SERVING_PORT = re.compile(r" on (?:\[[^\]]*\]|[^\s\[]+):(\d+) with ")
#: How long a server may take to start (every worker imports lupa and uvloop).
START_TIMEOUT = 15.0
#: How long a stopping server gets before SIGKILL.
STOP_TIMEOUT = 10.0


# -- small helpers ----------------------------------------------------------------------


def free_port(family: int = socket.AF_INET) -> int:
    """A TCP port nothing listens on right now (free on IPv4 and, if possible, IPv6)."""
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
            port = s.getsockname()[1]
        if family == socket.AF_INET and not _free_on(socket.AF_INET6, "::", port):
            continue
        return port
    raise RuntimeError("no free port found")


def _free_on(family: int, host: str, port: int) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
        return True
    except OSError as exc:
        # no IPv6 at all is fine; the port being taken there is not
        return exc.errno != errno.EADDRINUSE


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
               message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {text}")
        time.sleep(interval)


def line_of(path: str | Path, marker: str) -> int:
    """1-based number of the only line of ``path`` containing ``marker`` (so tests
    can expect ``file:line`` in error messages without hard-coding numbers)."""
    lines = [i for i, text in enumerate(Path(path).read_text().splitlines(), 1) if marker in text]
    assert len(lines) == 1, f"{marker!r} should occur exactly once in {path}, found at {lines}"
    return lines[0]


class Client:
    """A client connection with a read buffer, for line-based protocols.
    ``sock`` is the plain socket for anything else."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, timeout: float | None = None) -> bytes:
        """The next ``\\n``-terminated line, without the newline."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed before a full line; got {bytes(self._buf)!r}")
            self._buf += chunk
        end = self._buf.index(b"\n")
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return line

    def request(self, command: str | bytes, timeout: float | None = None) -> bytes:
        """Send one command line and return the one-line answer."""
        if isinstance(command, str):
            command = command.encode()
        self.send(command + b"\n")
        return self.line(timeout)

    def until_close(self, timeout: float | None = None) -> bytes:
        """Everything (still buffered or arriving) until the peer closes."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                data = bytes(self._buf)
                self._buf.clear()
                return data
            self._buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


# -- the server process -------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest itself is killed (so no fixture
    # teardown runs), the master gets SIGTERM; its workers follow when it goes.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Result:
    """A finished ``eightys`` run."""

    returncode: int
    stdout: str
    stderr: str


class Server:
    """One eightys master process started by the tests (see module docstring)."""

    def __init__(self, args: Sequence[str], workdir: Path, *, port: int | None,
                 host: str = "127.0.0.1", unix_path: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.args = [sys.executable, "-m", "eightys", *args]
        self.port = port
        self.host = host
        self.unix_path = unix_path
        self.stdout_path = workdir / f"server-{id(self)}.out"
        self.stderr_path = workdir / f"server-{id(self)}.err"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        # `python -m eightys` must find the checkout even if the venv is not active.
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
        full_env.update(env or {})
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self._seen_workers: set[int] = set()

    # -- output -----------------------------------------------------------------------------

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 5.0) -> str:
        """Wait until ``text`` occurs ``count`` times in stderr; returns the stderr text."""
        return wait_until(
            lambda: (lambda s: s if s.count(text) >= count else "")(self.stderr_text()),
            timeout, message=lambda: f"{count}x {text!r} in stderr:\n{self.stderr_text()}")

    # -- processes --------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        """The master's current child processes (its workers), from /proc."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return []
        pids = [int(p) for p in text.split()]
        self._seen_workers.update(pids)
        return pids

    def wait_workers(self, count: int, timeout: float = START_TIMEOUT) -> list[int]:
        """Wait until the master has exactly ``count`` children; returns their pids."""
        return wait_until(lambda: (lambda p: p if len(p) == count else None)(self.worker_pids()),
                          timeout, message=f"{count} worker processes")

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the master to exit on its own; fail the test (with stderr) if it does not."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"eightys did not exit within {timeout} s; stderr:\n{self.stderr_text()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the master and wait; SIGKILL the whole process group if it takes too
        long. Also kills workers left behind by a master that died. Returns the exit code."""
        self.worker_pids()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
        code = self.proc.wait()
        self._kill_group()
        return code

    def _kill_group(self) -> None:
        # The master runs in its own session (start_new_session), so its process group
        # id is its pid and every worker it forked belongs to that group.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # Workers seen earlier that are no longer in the group are left alone: their pid
        # may belong to an unrelated process by now.
        for pid in self._seen_workers:
            try:
                if os.getpgid(pid) == self.pid:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- connecting -------------------------------------------------------------------------

    def address(self) -> tuple[int, Any]:
        """(socket family, address) to connect to."""
        if self.unix_path is not None:
            return socket.AF_UNIX, self.unix_path
        if ":" in self.host:
            return socket.AF_INET6, (self.host, self.port)
        return socket.AF_INET, (self.host, self.port)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A new client connection to the server."""
        family, address = self.address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def client(self, timeout: float = 5.0) -> Client:
        """A new line-protocol :class:`Client` connection."""
        return Client(self.connect(timeout), timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT, ready_line: str | None = READY_LINE) -> None:
        """Wait until the port accepts connections and (unless ``ready_line`` is None)
        the master has logged that every worker is ready. Fails with the server's
        stderr if it exits first."""
        deadline = time.monotonic() + timeout
        connected = False
        while True:
            if not self.alive():
                pytest.fail(f"eightys exited with code {self.proc.returncode} before it served; "
                            f"stderr:\n{self.stderr_text()}")
            if self.port == 0:  # -p 0: learn the port the master picked from its log
                found = _SERVING_PORT.search(self.stderr_text())
                if found:
                    self.port = int(found.group(1))
            elif not connected:
                try:
                    self.connect(timeout=1.0).close()
                    connected = True
                except OSError:
                    pass
            if connected and (ready_line is None or ready_line in self.stderr_text()):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"eightys did not serve within {timeout} s; stderr:\n{self.stderr_text()}")
            time.sleep(0.02)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory fixture: ``start_server(entry, *extra_args, workers=2, port=None,
    host=None, unix_path=None, env=None, wait=True, ready_line=READY_LINE)``.

    ``entry`` is relative to the repository root (or absolute). ``port`` defaults
    to a free one (``port=0``: the server picks one, and ``.port`` is read from its
    log once it serves); ``host`` is passed as ``-h`` (``unix_path`` as ``-h unix:PATH``).
    With ``wait=False`` the server is returned at once (for start-up failures).
    """
    servers: list[Server] = []

    def start(entry: str | Path, *args: str, workers: int | None = 2, port: int | None = None,
              host: str | None = None, unix_path: str | None = None,
              env: dict[str, str] | None = None, wait: bool = True,
              ready_line: str | None = READY_LINE) -> Server:
        argv = [str(entry), *args]
        if workers is not None:
            argv += ["-c", str(workers)]
        if unix_path is not None:
            argv += ["-h", f"unix:{unix_path}"]
            port = None
        else:
            if port is None:
                port = free_port()
            argv += ["-p", str(port)]
            if host is not None:
                argv += ["-h", host]
        # where to connect: the bound host, or loopback for a wildcard address
        connect_host = (host or "").removeprefix("v6:").strip("[]")
        if connect_host in ("", "0.0.0.0"):
            connect_host = "::1" if "-6" in args else "127.0.0.1"
        elif connect_host == "::":
            connect_host = "::1"
        server = Server(argv, tmp_path, port=port, host=connect_host, unix_path=unix_path, env=env)
        servers.append(server)
        if wait:
            server.wait_ready(ready_line=ready_line)
        return server

    try:
        yield start
    finally:
        errors = []
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def run_eightys(tmp_path: Path) -> Callable[..., Result]:
    """Run ``python -m eightys ARGS`` until it exits (at most ``timeout`` seconds)."""

    def run(*args: str, timeout: float = 20.0, env: dict[str, str] | None = None) -> Result:
        server = Server(list(args), tmp_path, port=None, env=env)
        try:
            code = server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.stop()
            pytest.fail(f"eightys {' '.join(args)} did not exit within {timeout} s; "
                        f"stderr:\n{server.stderr_text()}")
        server.stop()
        return Result(code, server.stdout_text(), server.stderr_text())

    return run


# -- a peer for outgoing connections --------------------------------------------------------


class Upstream:
    """A tiny threaded TCP server for testing outgoing connections: reads one line,
    answers ``upstream got: <LINE IN UPPER CASE>\\n`` and closes. ``lines`` records
    what it received."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # so the thread notices close() promptly
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    line = data.split(b"\n")[0]
                    self.lines.append(line)
                    conn.sendall(b"upstream got: " + line.upper() + b"\n")
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


# -- Redis ------------------------------------------------------------------------------

#: The machine's Redis (EIGHTYS_TEST_REDIS_URL, default redis://127.0.0.1:6379/15: a
#: database of its own, flushed by no test; tests use keys of their own).
REDIS_URL = os.environ.get("EIGHTYS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _unreachable(reason: str) -> None:
    """Skip, or fail when CI is set (the Redis tests must run there), as for MySQL."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the Redis tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis, or skip (fail under CI)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unreachable(f"no Redis at {REDIS_URL}: {exc}")
    return REDIS_URL


class PrivateRedis:
    """A redis-server of the test's own on a free port (no persistence), which the
    test may stop, restart and CLIENT KILL without disturbing anyone else."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers."""
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_until(lambda: _pings(client), 10.0)

    def stop(self) -> None:
        """Stop the server (SIGKILL: as abrupt as a crash) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> Any:
        """A blocking redis-py client of this server."""
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=2)


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running :class:`PrivateRedis` (stopped at teardown), or skip (fail under CI)
    when redis-server is not installed."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        _unreachable("redis-server is not installed")
    server = PrivateRedis(binary)  # type: ignore[arg-type]
    server.start()
    yield server
    server.stop()
