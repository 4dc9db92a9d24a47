"""The master process: binds the listening socket(s), runs N workers, restarts the
ones that die, relays mail between them and turns signals into actions.

Signals: SIGINT/SIGTERM stop the server (workers stop accepting, finish what is
open within ``--graceful-timeout``, exit; then the master exits 0). SIGHUP makes
every worker reload its Lua code in place.

Sockets: by default each worker gets its own listening socket, all bound to the
same port with SO_REUSEPORT, and the kernel spreads new connections evenly over
them. The master keeps every socket open, so connections that arrive while a
worker restarts wait in that socket's backlog for its replacement instead of
being refused. ``--shared-socket`` makes all workers accept from one inherited
socket instead (the only option for Unix sockets). README, "Workers and
sockets", has the measurements behind the default.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from eightys import channel
from eightys.config import Address, Config, UsageError
from eightys.log import setup_logging, user_traceback
from eightys.protocols import spool

log = logging.getLogger("master")

BACKLOG = 4096
#: A worker that dies within this many seconds of starting counts as crashing at once.
CRASH_WINDOW = 3.0
#: After this many such crashes in a row the master gives up and exits 1.
MAX_QUICK_CRASHES = 5
#: Extra time, beyond the graceful timeout, before stragglers get SIGKILL.
KILL_MARGIN = 5.0
#: Messages kept for a worker that is (re)starting; more are dropped, not piled up.
MAX_PENDING_MAIL = 10_000
#: How long a reload round waits for every worker's answer before notifying browsers.
RELOAD_WAIT = 3.0
#: How long a successor worker may take to start in a rolling restart.
STARTUP_WAIT = 30.0


@dataclass
class WorkerSlot:
    """One worker position (WORKERID); its process is replaced when it dies."""

    worker_id: int
    sock: socket.socket
    #: The plain listener of --redirect-http (None without it).
    redirect_sock: socket.socket | None = None
    process: subprocess.Popen[bytes] | None = None
    channel: "MasterChannel | None" = None
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    fatal: str | None = None
    quick_crashes: int = 0
    pending_mail: list[bytes] = field(default_factory=list)
    #: Replaced by a successor in a rolling restart: its exit is expected.
    retired: bool = False
    #: Pub/sub channels this worker has subscribers for (PUBLISH goes only there).
    channels: set[bytes] = field(default_factory=set)
    #: Resolved when the worker reports READY (True) or dies before (False).
    started: "asyncio.Future[bool] | None" = None


class MasterChannel(asyncio.Protocol):
    """The master's end of one worker's control channel."""

    def __init__(self, master: "Master", slot: WorkerSlot) -> None:
        self.master = master
        self.slot = slot
        self.decoder = channel.FrameDecoder()
        self.transport: asyncio.Transport | None = None
        #: Resolved when the worker's end is closed: everything it sent has been read.
        self.eof: asyncio.Future[None] = master.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except channel.FrameError as exc:
            log.error("worker %d sent a bad frame (%s); closing its channel",
                      self.slot.worker_id, exc)
            self.transport.close()  # type: ignore[union-attr]
            return
        for message in messages:
            self.master.on_worker_message(self.slot, message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)

    def send_frame(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)


class Master:
    """Supervises the workers until stopped; ``serve()`` returns the exit code."""

    def __init__(self, config: Config, sockets: list[socket.socket],
                 redirect_sockets: list[socket.socket] | None = None) -> None:
        if not config.server_id:  # one per run: its workers' messages on Redis carry it
            config = dataclasses.replace(config, server_id=secrets.token_hex(8))
        self.config = config
        self.sockets = sockets
        self.redirect_sockets = redirect_sockets or []
        self.slots = [WorkerSlot(i, sockets[i % len(sockets)], self._redirect_sock(i))
                      for i in range(config.workers)]
        self.starting = True
        self.stopping = False
        self.retired: list[WorkerSlot] = []  # old workers draining after a rolling restart
        self.reload_round = 0
        self.reload_pending: dict[int, str | None] = {}  # worker id -> error, for this round
        self.reload_acks: set[int] = set()
        self.reload_kind = "reload"
        self.reload_timer: asyncio.TimerHandle | None = None
        self.restarting = False
        #: Successful reloads and restarts so far: pages reload when it moves on.
        self.generation = 0
        self.sockets_closed = False
        self.exit_code = 0
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.done: asyncio.Future[int] = None  # type: ignore[assignment]
        self._config_json = config.to_json()
        #: --metrics: the workers' numbers and the listener serving them.
        self.hub: Any = None
        self.dashboard: Any = None

    def _redirect_sock(self, worker_id: int) -> socket.socket | None:
        redirect = self.redirect_sockets
        return redirect[worker_id % len(redirect)] if redirect else None

    async def serve(self) -> int:
        """Start every worker, then supervise until stopped."""
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self.stop, 0)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload_all)
        self.loop.add_signal_handler(signal.SIGUSR1, self.reopen_logs)
        if self.config.metrics_port >= 0:
            await self._start_metrics()
        for slot in self.slots:
            self.spawn(slot)
        watcher = None
        if self.config.reload:
            from eightys.reloader import Reloader  # watchfiles loads only in reload mode

            watcher = Reloader(self.config, self.reload_all, self.rolling_restart)
            watcher.start(self.loop)
        code = await self.done
        if watcher is not None:
            await watcher.stop()
        if self.dashboard is not None:
            self.dashboard.close()
        self._close_sockets()
        return code

    async def _start_metrics(self) -> None:
        from eightys.dashboard import Dashboard
        from eightys.metrics import MetricsHub

        self.hub = MetricsHub(self.config.workers)
        self.dashboard = Dashboard(self.hub)
        host = self.config.metrics_host
        try:
            port = await self.dashboard.start(host, self.config.metrics_port)
        except OSError as exc:
            raise UsageError(f"--metrics: cannot listen on {host}:{self.config.metrics_port}: "
                             f"{_os_error_text(exc)}") from None
        shown = f"[{host}]" if ":" in host else host
        log.info("metrics on http://%s:%d/metrics, dashboard on http://%s:%d/_eightys/",
                 shown, port, shown, port)

    def reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): every worker reopens its access log."""
        for slot in self.slots + self.retired:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGUSR1)

    # -- workers ------------------------------------------------------------------

    def spawn(self, slot: WorkerSlot) -> None:
        """Start a worker process for ``slot``."""
        if self.stopping:
            return
        ours, theirs = socket.socketpair()
        listen_fd = slot.sock.fileno()
        config_fd = config_file(self._config_json)
        extra_fds = (slot.redirect_sock.fileno(),) if slot.redirect_sock is not None else ()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "eightys.worker", str(config_fd),
                 str(slot.worker_id), str(listen_fd), str(theirs.fileno()),
                 *map(str, extra_fds)],
                pass_fds=(config_fd, listen_fd, theirs.fileno(), *extra_fds),
                # Its own process group: a signal for the terminal's group (Ctrl-C, hangup)
                # reaches the master alone, which relays it once to every worker.
                process_group=0,
            )
        finally:
            os.close(config_fd)
            theirs.close()
        slot.process = process
        slot.started_at = time.monotonic()
        slot.ready = False
        slot.fatal = None
        slot.channels = set()  # a new process has no subscribers yet
        slot.channel = MasterChannel(self, slot)
        slot.started = self.loop.create_future()
        self.loop.create_task(self._attach_channel(slot, slot.channel, ours))
        pidfd = os.pidfd_open(process.pid)
        self.loop.add_reader(pidfd, self._on_exit, slot, process, pidfd)

    async def _attach_channel(self, slot: WorkerSlot, chan: MasterChannel,
                              sock: socket.socket) -> None:
        await self.loop.connect_accepted_socket(lambda: chan, sock=sock)

    def on_worker_message(self, slot: WorkerSlot, message: tuple[Any, ...]) -> None:
        """Handle one control message from a worker."""
        kind = message[0]
        if kind == channel.Kind.MAIL:
            _, target, sender_fd, receiver_fd, payload = message
            frame = channel.encode((channel.Kind.MAIL, slot.worker_id, sender_fd,
                                    receiver_fd, payload))
            targets = self.slots if target == "*" else [self.slots[target]]
            for t in targets:
                if t.ready and t.channel is not None:
                    t.channel.send_frame(frame)
                elif len(t.pending_mail) < MAX_PENDING_MAIL:
                    t.pending_mail.append(frame)  # delivered once it is ready
                else:
                    log.warning("worker %d is not ready and has %d messages waiting; "
                                "dropping one from worker %d", t.worker_id,
                                len(t.pending_mail), slot.worker_id)
        elif kind == channel.Kind.PUBLISH:
            name = message[1]
            frame = None
            for t in self.slots:
                if t is not slot and name in t.channels and t.ready and t.channel is not None:
                    frame = frame or channel.encode(message)
                    t.channel.send_frame(frame)
        elif kind == channel.Kind.STATS:
            if self.hub is not None and slot.process is not None:
                self.hub.update(slot.worker_id, slot.process.pid, message[1])
        elif kind == channel.Kind.INTEREST:
            if message[2]:
                slot.channels.add(message[1])
            else:
                slot.channels.discard(message[1])
        elif kind == channel.Kind.READY:
            slot.ready = slot.ever_ready = True
            if slot.started is not None and not slot.started.done():
                slot.started.set_result(True)
            log.info("worker %d ready (pid %d)", slot.worker_id, slot.process.pid)  # type: ignore[union-attr]
            slot.channel.send_frame(channel.encode(  # type: ignore[union-attr]
                (channel.Kind.NOTIFY, "hello", "", self.generation)))
            for frame in slot.pending_mail:
                slot.channel.send_frame(frame)  # type: ignore[union-attr]
            slot.pending_mail.clear()
            if self.starting and not self.stopping and all(s.ready for s in self.slots):
                self.starting = False
                for note in self.config.notes:
                    log.warning("%s", note)
                log.info("serving %s on %s with %d worker(s)%s%s", self.config.entry,
                         self._describe_address(), len(self.slots),
                         " (SO_REUSEPORT)" if len(self.sockets) > 1 else "",
                         ", TLS" if self.config.tls_cert else "")
                if self.redirect_sockets:
                    log.info("redirecting plain HTTP on port %d to https",
                             self.redirect_sockets[0].getsockname()[1])
        elif kind == channel.Kind.FATAL:
            slot.fatal = message[1]
        elif kind == channel.Kind.RELOAD:
            self.reload_all()
        elif kind == channel.Kind.RELOADED:
            self._reloaded(slot, message[1], message[2])
        elif kind == channel.Kind.QUIT:
            log.info("worker %d asked the server to quit", slot.worker_id)
            self.stop(0)

    def _on_exit(self, slot: WorkerSlot, process: subprocess.Popen[bytes], pidfd: int) -> None:
        self.loop.remove_reader(pidfd)
        os.close(pidfd)
        code = process.wait()
        slot.ready = False
        if slot.started is not None and not slot.started.done():
            slot.started.set_result(False)
        # The exit can be seen before the worker's last messages (its start-up error)
        # are read: handle it once the channel has reached its end.
        self.loop.create_task(self._after_exit(slot, process, code))

    async def _after_exit(self, slot: WorkerSlot, process: subprocess.Popen[bytes],
                          code: int) -> None:
        chan = slot.channel
        if chan is not None:
            try:
                await asyncio.wait_for(asyncio.shield(chan.eof), 1.0)
            except asyncio.TimeoutError:
                pass
            if chan.transport is not None:
                chan.transport.close()
        if slot.process is process:
            slot.process = None
        spool.remove_dirs_of(process.pid)  # request bodies it left, if it died
        if self.hub is not None:
            self.hub.ended(process.pid)
        if slot.retired or slot not in self.slots:
            # replaced in a rolling restart, or a successor that never took over
            if slot in self.retired:
                self.retired.remove(slot)
            log.info("worker %d (pid %d, replaced) %s", slot.worker_id, process.pid,
                     _exit_reason(code))
            self._maybe_finish()
            return
        if self.stopping:
            self._maybe_finish()
            return
        reason = _exit_reason(code)
        if slot.fatal:
            log.error("worker %d failed to load:\n%s", slot.worker_id, user_traceback(slot.fatal))
        if self.starting and not slot.ever_ready:
            log.error("worker %d (pid %d) %s during start-up; stopping", slot.worker_id,
                      process.pid, reason)
            self.stop(1)
            return
        lived = time.monotonic() - slot.started_at
        slot.quick_crashes = slot.quick_crashes + 1 if lived < CRASH_WINDOW else 0
        if slot.quick_crashes >= MAX_QUICK_CRASHES:
            log.error("worker %d (pid %d) %s; it died within %.0f s of starting %d times "
                      "in a row, giving up", slot.worker_id, process.pid, reason,
                      CRASH_WINDOW, slot.quick_crashes)
            self.stop(1)
            return
        delay = 0.0 if slot.quick_crashes <= 1 else min(0.1 * 2 ** slot.quick_crashes, 2.0)
        log.warning("worker %d (pid %d) %s; restarting", slot.worker_id, process.pid, reason)
        if self.hub is not None:
            self.hub.restarted(slot.worker_id)
        self.loop.call_later(delay, self.spawn, slot)

    # -- control ------------------------------------------------------------------

    def reload_all(self, kind: str = "reload") -> None:
        """Ask every worker to reload its Lua code in place (one reload round).

        Each worker answers RELOADED; once all have (or after RELOAD_WAIT), the
        master tells every worker to notify its live-reload browsers: "reload",
        "css" (stylesheets only) or "failed" with the error, so a browser never
        refreshes before all workers serve the new code.
        """
        self.reload_round += 1
        self.reload_kind = kind
        self.reload_pending = {}
        self.reload_acks = {s.worker_id for s in self.slots if s.ready and s.channel is not None}
        frame = channel.encode((channel.Kind.RELOAD, self.reload_round, kind))
        for slot in self.slots:
            if slot.worker_id in self.reload_acks:
                slot.channel.send_frame(frame)  # type: ignore[union-attr]
        log.info("reload requested for %d worker(s)", len(self.reload_acks))
        if self.reload_timer is not None:
            self.reload_timer.cancel()
        self.reload_timer = self.loop.call_later(RELOAD_WAIT, self._reload_done)
        if not self.reload_acks:
            self._reload_done()

    def _reloaded(self, slot: WorkerSlot, round_id: int, error: str | None) -> None:
        if round_id != self.reload_round:
            return  # an answer to a round a newer one replaced
        self.reload_pending[slot.worker_id] = error
        self.reload_acks.discard(slot.worker_id)
        if not self.reload_acks:
            self._reload_done()

    def _reload_done(self) -> None:
        if self.reload_timer is not None:
            self.reload_timer.cancel()
            self.reload_timer = None
        errors = [e for e in self.reload_pending.values() if e]
        if self.hub is not None:
            self.hub.reloaded(self.reload_kind, errors[0] if errors else None)
        if errors:
            self.notify("failed", errors[0])
        else:
            self.generation += 1
            self.notify(self.reload_kind, "")
        self.reload_acks = set()

    def notify(self, event: str, data: str) -> None:
        """Tell every worker's live-reload browsers about ``event``."""
        frame = channel.encode((channel.Kind.NOTIFY, event, data, self.generation))
        for slot in self.slots:
            if slot.ready and slot.channel is not None:
                slot.channel.send_frame(frame)

    async def rolling_restart(self) -> None:
        """Replace the workers one at a time (Python modules changed): each successor
        must be ready before its predecessor drains, so the port keeps answering.
        A successor that fails to start leaves the old workers serving."""
        if self.restarting or self.stopping:
            return
        self.restarting = True
        try:
            for index, old in enumerate(list(self.slots)):
                successor = WorkerSlot(old.worker_id, old.sock, old.redirect_sock)
                self.spawn(successor)
                assert successor.started is not None
                try:
                    ok = await asyncio.wait_for(asyncio.shield(successor.started), STARTUP_WAIT)
                except asyncio.TimeoutError:
                    ok = False
                if self.stopping:
                    return
                if not ok:
                    if successor.process is not None:
                        await asyncio.sleep(0.2)  # its FATAL message may still be on the way
                    log.error("restart of worker %d failed; the running workers keep the "
                              "previous code%s", old.worker_id,
                              (":\n" + successor.fatal) if successor.fatal else "")
                    successor.retired = True
                    if successor.process is not None:
                        self.retired.append(successor)
                        successor.process.kill()
                    return
                successor.pending_mail = old.pending_mail
                self.slots[index] = successor
                old.retired = True
                if old.process is not None:
                    self.retired.append(old)
                    if old.channel is not None and old.channel.transport is not None:
                        # drains like SIGTERM, but knowing why: WebSockets get 1012
                        old.channel.send_frame(channel.encode((channel.Kind.RETIRE,)))
                    else:
                        old.process.send_signal(signal.SIGTERM)
                log.info("worker %d restarted (pid %d)", old.worker_id,
                         successor.process.pid)  # type: ignore[union-attr]
            self.generation += 1
            if self.hub is not None:
                self.hub.reloaded("restart", None)
            self.notify("reload", "")
        finally:
            self.restarting = False

    def stop(self, code: int = 0) -> None:
        """Stop gracefully: workers drain, then the master exits with ``code``."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        if code == 0:
            log.info("stopping: draining connections (up to %.1f s)", self.config.graceful_timeout)
        for slot in self.slots + self.retired:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGTERM)
        # Stop listening now, not after the drain: once the workers close their
        # copies too, new clients are refused at once instead of waiting in a
        # backlog nobody accepts from, only to be reset when the master exits.
        self._close_sockets()
        self.loop.call_later(self.config.graceful_timeout + KILL_MARGIN, self._kill_stragglers)
        self._maybe_finish()

    def _kill_stragglers(self) -> None:
        for slot in self.slots + self.retired:
            if slot.process is not None:
                log.warning("worker %d did not stop in time; killing it", slot.worker_id)
                slot.process.kill()

    def _maybe_finish(self) -> None:
        if all(s.process is None for s in self.slots + self.retired) and not self.done.done():
            self.done.set_result(self.exit_code)

    def _close_sockets(self) -> None:
        # Once only: a new server may own the Unix socket path by the second call.
        if self.sockets_closed:
            return
        self.sockets_closed = True
        for sock in self.sockets + self.redirect_sockets:
            sock.close()
        if self.config.address.family == "unix":
            try:
                os.unlink(self.config.address.path)
            except OSError:
                pass

    def _describe_address(self) -> str:
        address = self.config.address
        if address.family == "unix":
            return address.describe()
        port = self.sockets[0].getsockname()[1]
        return Address(address.family, address.host, port).describe()


def config_file(config_json: str) -> int:
    """An anonymous in-memory file holding ``config_json``, positioned at its start,
    for one worker to inherit and read (``worker.read_config``).

    The configuration holds the session secret, so it must not travel on the
    command line, which every local user can read with ``ps``. An in-memory file
    (not a pipe) because a write into it never blocks the master, whatever the
    size; only the owner (or root) can open another process's descriptors.
    """
    fd = os.memfd_create("eightys-config", os.MFD_CLOEXEC)
    try:
        data = memoryview(config_json.encode())
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# -- listening sockets ----------------------------------------------------------------

def bind_listeners(config: Config, address: Address | None = None) -> list[socket.socket]:
    """Bind and listen: one socket per worker with SO_REUSEPORT, or one shared socket.
    Raises UsageError (one clear line, exit 2) if the address cannot be used.
    ``address`` defaults to the configured one (the --redirect-http listener passes its own)."""
    address = address or config.address
    if address.family == "unix":
        return [_bind_unix(address.path)]
    family = socket.AF_INET6 if address.family == "inet6" else socket.AF_INET
    if address.port:
        _check_port_free(family, address)
    count = config.workers if config.reuseport else 1
    sockets: list[socket.socket] = []
    port = address.port
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if config.reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one picked
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise UsageError(f"cannot listen on {Address(address.family, address.host, port).describe()}: "
                         f"{_os_error_text(exc)}") from None
    return sockets


def _check_port_free(family: int, address: Address) -> None:
    # Without this, a second eightys on the same port would silently join the first
    # one's SO_REUSEPORT group (same user), and the two would split the traffic.
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address.host, address.port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {address.describe()}: {_os_error_text(exc)}") from None
    finally:
        probe.close()


def _bind_unix(path: str) -> socket.socket:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise UsageError(f"cannot listen on unix:{path}: a file that is not a socket is there")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket left by a process that died
        else:
            raise UsageError(f"cannot listen on unix:{path}: another server is using it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on unix:{path}: {_os_error_text(exc)}") from None
    return sock


def _os_error_text(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return exc.strerror or str(exc)


def run(config: Config) -> int:
    """Bind, start the workers and supervise them; return the process exit code."""
    import uvloop

    setup_logging()
    sockets = bind_listeners(config)
    redirect: list[socket.socket] = []
    if config.redirect_http is not None:
        address = config.address
        if address.family == "unix":
            raise UsageError("--redirect-http needs a TCP listener, not a Unix socket")
        try:
            redirect = bind_listeners(config, Address(address.family, address.host,
                                                      config.redirect_http))
        except UsageError:
            for sock in sockets:
                sock.close()
            raise
    return uvloop.run(Master(config, sockets, redirect).serve())
