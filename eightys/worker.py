"""One worker process: one uvloop loop, one Lua state, the listening protocol.

Started by the master as ``python -m eightys.worker CONFIG_FD WORKER_ID LISTEN_FD
CHANNEL_FD [REDIRECT_FD]``. It inherits its configuration as a file descriptor to read (never
on the command line: it holds the session secret, and ``ps`` shows every
process's arguments to every user), the listening socket and one end of a
socketpair to the master (the control channel: mail, reload, quit, readiness),
and with ``--redirect-http`` the plain listener that redirects to https.
Nothing is shared with other workers.

The worker is the Lua runtime's :class:`~eightys.lua_runtime.Host`: its methods
are what ``net.*`` does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import traceback
from typing import Any, Callable

from eightys import __version__, channel, tls, wire
from eightys.acl import AclHost, ProxyTrust, build_gate
from eightys.compat80s import EightiesHost
from eightys.config import Config
from eightys.content import ContentHost
from eightys.livereload import PATH as LIVE_PATH
from eightys.livereload import LiveReload
from eightys.log import setup_logging, user_traceback
from eightys.lua_runtime import LuaLoadError, LuaRuntime, display_path
from eightys.modules import ExtensionModule, load_modules
from eightys.mysql import MySQLHost
from eightys.protocols.host import ConnectionHost
from eightys.protocols.http import HttpProtocol
from eightys.protocols.http_core import COMPILED as CORE_COMPILED
from eightys.protocols.http_core import HttpLimits
from eightys.protocols import spool
from eightys.protocols.raw import RawProtocol
from eightys.protocols.redirect import RedirectProtocol
from eightys.redis_bus import BusHost
from eightys.redis_host import RedisHost
from eightys.timers import Timers
from eightys.ws_host import WebSockets

#: Exit code of a worker whose Lua code or modules failed to load at start-up.
EXIT_LOAD_FAILED = 3
#: How long an outgoing connect (including the name lookup) may take.
CONNECT_TIMEOUT = 30.0
BACKLOG = 4096


class ChannelProtocol(asyncio.Protocol):
    """The worker's end of the control channel to the master."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None],
                 on_lost: Callable[[], None]) -> None:
        self.decoder = channel.FrameDecoder()
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            self.on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()

    def send(self, *message: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(channel.encode(message))


class Worker:
    """The state of one worker process; implements ``net.*`` for Lua."""

    def __init__(self, config: Config, worker_id: int, listen_sock: socket.socket | None,
                 channel_sock: socket.socket | None,
                 redirect_sock: socket.socket | None = None) -> None:
        self.config = config
        self.worker_id = worker_id
        self.listen_sock = listen_sock
        self.redirect_sock = redirect_sock
        #: The listener's TLS (--tls-cert), re-read on SIGHUP; None for plain TCP.
        self.tls: tls.ServerTLS | None = None
        #: Flags every HTTP request of this worker's listener carries (wire.FLAG_TLS).
        self.conn_flags = 0
        self.redirect_server: asyncio.AbstractServer | None = None
        self.channel_sock = channel_sock
        self.log = logging.getLogger(f"worker {worker_id}")
        #: What the connection protocols see of this worker (set up in run()).
        self.host: ConnectionHost = None  # type: ignore[assignment]
        #: Open connections by handle (the host's registry).
        self.connections: dict[int, Any] = {}
        self.timers: Timers = None  # type: ignore[assignment]  # needs the loop: set in run()
        self.modules: list[ExtensionModule] = []
        self.runtime: LuaRuntime = None  # type: ignore[assignment]
        self.content: ContentHost = None  # type: ignore[assignment]  # set by _load
        self.mysql: MySQLHost = None  # type: ignore[assignment]  # set by _load
        self.compat: EightiesHost = None  # type: ignore[assignment]  # set by _load
        self.redis: RedisHost = None  # type: ignore[assignment]  # set by _load
        #: aio:publish and nodes across servers (--redis); set by _load
        self.bus: BusHost | None = None
        self.server: asyncio.AbstractServer | None = None
        self.channel: ChannelProtocol | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.stopping: asyncio.Event | None = None
        self.protocol_factory: Callable[[], asyncio.Protocol] = self._raw_factory
        self.http_limits = HttpLimits(config.max_header_size, config.max_body_size,
                                      config.header_timeout, config.keepalive_timeout,
                                      config.handler_timeout, config.max_headers,
                                      config.body_buffer_size)
        self.proxies = ProxyTrust(config.proxy_from)
        self.gate = build_gate(config.allow, config.deny, self.proxies)
        self.acl: AclHost = None  # type: ignore[assignment]  # needs the connections: run()
        self._last_reload_error = ""
        #: Browser live reload (--reload only).
        self.live: LiveReload | None = LiveReload() if config.reload else None
        self.ws = WebSockets(self)
        #: --access-log and --metrics (set up in run(), before the first connection).
        self.access_log: Any = None
        self.sampler: Any = None

    # -- life cycle ------------------------------------------------------------------

    async def run(self) -> int:
        """Load the code, serve until told to stop, drain, return the exit code."""
        self._start_services()
        _, self.channel = await self.loop.connect_accepted_socket(
            lambda: ChannelProtocol(self._on_master_message, self.begin_shutdown),
            sock=self.channel_sock)
        try:
            config = self.config
            if config.tls_cert:
                self.tls = tls.ServerTLS(config.tls_cert, config.tls_key,
                                         config.tls_key_password)
                self.conn_flags = wire.FLAG_TLS
            self._load()
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported to the master
            text = str(exc) if isinstance(exc, LuaLoadError) else _describe(exc)
            self.channel.send(channel.Kind.FATAL, text)
            await asyncio.sleep(0)  # let the frame go out
            return EXIT_LOAD_FAILED
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.begin_shutdown)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.http_limits.spool_dir = spool.make_dir()
        self.http_limits.spill_at = self.config.body_buffer_size
        self._start_accounting()
        try:
            if self.tls is not None:
                self.server = self._tls_listener()
                if self.server is None:  # uvloop's TLS layer
                    self.server = await self.loop.create_server(
                        lambda: self.protocol_factory(), sock=self.listen_sock,
                        backlog=BACKLOG, ssl=self.tls.context,
                        ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT,
                        ssl_shutdown_timeout=tls.SHUTDOWN_TIMEOUT)
            else:
                self.server = self._tcp_listener()
                if self.server is None:  # uvloop's transports
                    self.server = await self.loop.create_server(
                        lambda: self.protocol_factory(), sock=self.listen_sock,
                        backlog=BACKLOG)
            if self.redirect_sock is not None:
                host, https_port = self.host, self.listen_port()
                self.redirect_server = await self.loop.create_server(
                    lambda: RedirectProtocol(host, host.new_fd(), https_port),
                    sock=self.redirect_sock, backlog=BACKLOG)
            self.channel.send(channel.Kind.READY)
            await self.stopping.wait()
            await self._drain()
        finally:
            spool.remove_dir(self.http_limits.spool_dir)
        for module in self.modules:
            module.unload(reload=False)
        if self.access_log is not None:
            self.access_log.close()
        return 0

    def _tls_listener(self) -> Any:
        """The HTTPS listener with TLS done by libssl on each socket
        (eightys/protocols/tls_socket.pyx), or None: not compiled, its checks failed,
        or ``EIGHTYS_UVLOOP_TLS=1`` asks for uvloop's TLS layer."""
        if not CORE_COMPILED or os.environ.get("EIGHTYS_UVLOOP_TLS") or self.tls is None \
                or self.listen_sock is None:
            return None
        try:
            from eightys.protocols.tls_socket import TlsListener, available
        except ImportError:
            return None
        if not available(self.tls.context):
            self.log.warning("TLS through uvloop: this Python's ssl objects are not laid "
                             "out as eightys.protocols.tls_socket expects")
            return None
        self.log.info("TLS by libssl on each connection's socket")
        return TlsListener(self.loop, self.listen_sock, self.tls.context,
                           lambda: self.protocol_factory(), tls.HANDSHAKE_TIMEOUT)

    def _tcp_listener(self) -> Any:
        """The plain listener whose connections eightys reads and writes from one
        epoll set (eightys/protocols/tcp_socket.pyx), or None: not compiled, or
        ``EIGHTYS_UVLOOP_TCP=1`` asks for uvloop's transports."""
        if not CORE_COMPILED or os.environ.get("EIGHTYS_UVLOOP_TCP") or self.listen_sock is None:
            return None
        try:
            from eightys.protocols.tcp_socket import TcpListener
        except ImportError:
            return None
        return TcpListener(self.loop, self.listen_sock, lambda: self.protocol_factory())

    def _start_services(self) -> None:
        """What the Lua runtime needs of the running loop: the connection host, the
        timers, the once-a-second sweep (also used by eightys.script, without a listener)."""
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.host = ConnectionHost(self.loop, self.http_limits, self.log)
        self.host.gate = self.gate
        self.connections = self.host.connections
        self.acl = AclHost(self.connections, self.gate, self.proxies)
        self.timers = Timers(self.loop, lambda callback: self.runtime.dispatch_call(callback))
        self._sweep()

    def _start_accounting(self) -> None:
        # Only with --access-log or --metrics: otherwise host.stats stays None and the
        # HTTP adapter's hooks are one test each (eightys/protocols/stats.py).
        config = self.config
        if config.access_log:
            from eightys.access_log import AccessLog

            self.access_log = AccessLog(config.access_log, config.access_log_format,
                                        self.worker_id)
            self.access_log.start(self.loop)
        # logrotate's signal (relayed by the master); a no-op without an access log,
        # rather than SIGUSR1's default action, which is to die
        self.loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        if not config.access_log and config.metrics_port < 0:
            return
        from eightys.protocols.stats import HttpStats

        log = self.access_log
        stats = HttpStats(log.record if log else None, log.forget if log else None)
        self.host.stats = stats
        if config.metrics_port >= 0:
            from eightys.metrics import WorkerSampler

            self.sampler = WorkerSampler(stats, self.connections, self.send_to_master)
            self.sampler.start(self.loop)

    def _reopen_logs(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    def _load(self) -> None:
        config = self.config
        self.content = ContentHost(self)
        self.mysql = MySQLHost(self, driver=config.mysql_driver)
        self.compat = EightiesHost(self)
        self.redis = RedisHost(self, config.redis)
        self.bus = BusHost(self, config.redis, config.server_id, self.ws.delivered)
        self.ws.bus = self.bus.bus
        private = {**self.content.functions(), **self.mysql.functions(),
                   **self.compat.functions(), **self.redis.functions(),
                   **self.bus.functions(),
                   **self.ws.functions(), **self.acl.functions(),
                   b"live_subscribe": self.live_subscribe,
                   b"connect_tls": self.connect_tls,
                   # None without a master: the WAMP router makes its own
                   b"run_id": config.server_id.encode() or None,
                   b"handler_timeout": config.handler_timeout}
        self.runtime = LuaRuntime(
            self, engine=config.lua, entry=config.entry, worker_id=self.worker_id,
            workers=config.workers, port=self.listen_port(), node=config.node,
            dev=config.dev, private=private,
        )
        self.ws.attach(self.runtime)
        self.modules = load_modules(config.modules, self)
        for module in self.modules:
            module.load(reload=False)
        runtime = self.runtime
        host = self.host
        host.dispatch_http = runtime.dispatch_http
        host.direct_dispatch_http = runtime.direct_dispatch_http
        host.dispatch_call = runtime.dispatch_call
        host.http_timeout = runtime.dispatch_http_timeout
        host.http_gone = runtime.dispatch_http_gone
        host.raw_accept = runtime.dispatch_accept
        host.raw_data = runtime.dispatch_data
        host.raw_write = runtime.dispatch_write
        host.raw_close = runtime.dispatch_close
        host.inject = self.live.inject if self.live is not None else None  # type: ignore[assignment]
        self.runtime.run_entry()
        self._choose_protocol()
        self._install_live_route()
        self.runtime.call_hook("on_init", 0, 0)

    @property
    def workers(self) -> int:
        """How many workers the server runs."""
        return self.config.workers

    def send_to_master(self, *message: Any) -> None:
        """A control message to the master (dropped once the channel is gone)."""
        if self.channel is not None:
            self.channel.send(*message)

    def listen_port(self) -> int:
        """The TCP port the worker serves (0 for a Unix socket or no listener)."""
        if self.listen_sock is None:
            return 0
        name = self.listen_sock.getsockname()
        return name[1] if isinstance(name, tuple) else 0

    def _choose_protocol(self) -> None:
        # A script that handles raw bytes itself gets raw connections; anything
        # else is an HTTP app (aio:http_get & co., or the content server). Hooks
        # next to HTTP routes serve WebSockets (aio:websocket(path, "hooks")).
        if (self.runtime.defines("on_data") or self.runtime.defines("on_accept")) \
                and not self.runtime.has_http_routes():
            self.protocol_factory = self._raw_factory
        else:
            self.protocol_factory = self._http_factory
        # the static fast path only when the site has static files: one call less per
        # request for every other app
        self.host.static = self.content.static_hook if self.content.static_routes else None

    def _http_factory(self) -> Any:
        host = self.host
        return HttpProtocol(host, host.new_fd(), self.conn_flags)

    def _raw_factory(self) -> Any:
        host = self.host
        return RawProtocol(host, host.new_fd())

    def begin_shutdown(self) -> None:
        """SIGTERM/SIGINT or the master went away: stop accepting and drain."""
        if self.stopping is not None and not self.stopping.is_set():
            self.stopping.set()

    async def _drain(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.redirect_server is not None:
            self.redirect_server.close()
        if self.live is not None:
            self.live.close()  # before shutdown(), which waits for responses to end
        self.runtime.set_draining(True)  # responses from now on say Connection: close
        for conn in list(self.connections.values()):
            conn.shutdown()
        deadline = self.loop.time() + self.config.graceful_timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
        if self.connections:
            self.log.warning("closed %d connection(s) still open after the %.1f s grace period",
                             len(self.connections), self.config.graceful_timeout)
        if self.redis is not None:  # its clients' connections and subscriptions
            try:
                await asyncio.wait_for(self.redis.close_all(), 1.0)
            except asyncio.TimeoutError:
                self.log.warning("Redis connections still closing after 1 s; leaving them")
        if self.bus is not None:
            self.ws.bus = None
            try:
                await asyncio.wait_for(self.bus.close(), 1.0)
            except asyncio.TimeoutError:
                self.log.warning("the Redis bus still closing after 1 s; leaving it")

    def _sweep(self) -> None:
        # Once a second: advance the coarse clock and let each connection apply
        # its timeouts. O(connections), instead of a timer armed per request.
        self.host.now = now = self.loop.time()
        if self.runtime is not None:
            self.runtime.set_date(wire.date_line())
        for conn in list(self.connections.values()):
            conn.check_timeout(now)
        self.ws.sweep()
        self.loop.call_later(1.0, self._sweep)

    # -- master messages --------------------------------------------------------------

    def _on_master_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == channel.Kind.MAIL:
            _, sender, sender_fd, receiver_fd, payload = message
            self.runtime.dispatch_message(sender, sender_fd, receiver_fd,
                                          self.runtime.to_lua(payload))
        elif kind == channel.Kind.RELOAD:
            _, round_id, _kind = message
            self.reload_tls()
            ok = self.reload_lua()
            assert self.channel is not None
            self.channel.send(channel.Kind.RELOADED, round_id,
                              None if ok else self._last_reload_error)
        elif kind == channel.Kind.PUBLISH:
            self.ws.delivered(message[1], message[2], message[3])
        elif kind == channel.Kind.RETIRE:
            self.ws.restart()
            self.begin_shutdown()
        elif kind == channel.Kind.NOTIFY:
            if self.live is not None:
                self.live.notify(*message[1:])

    def reload(self) -> None:
        """SIGHUP sent to this worker alone: re-read the certificate, reload the Lua code."""
        self.reload_tls()
        self.reload_lua()

    def reload_tls(self) -> None:
        """Serve the certificate and key files as they are now, from the next handshake
        on (open connections keep theirs). A bad new pair is logged and the one loaded
        before keeps serving."""
        if self.tls is None:
            return
        before = self.tls.current
        error = self.tls.reload()
        if error:
            self.log.error("TLS certificate reload failed, the previous one keeps serving: %s",
                           error)
        elif self.tls.current is not before:
            self.log.info("TLS certificate reloaded from %s", self.tls.cert)

    def reload_lua(self) -> bool:
        """Re-run the entry script in the existing Lua state (globals survive).
        On failure the error is logged with file:line and the code already loaded
        keeps serving."""
        try:
            self.runtime.run_entry()
        except LuaLoadError as exc:
            self.log.error("reload failed, previous code keeps serving: %s", exc)
            self._last_reload_error = str(exc)
            return False
        self._choose_protocol()
        self._install_live_route()
        self.log.info("reloaded %s", self.runtime.entry)
        return True

    def _install_live_route(self) -> None:
        # the entry script may have cleared the routes: put the endpoint back each time
        if self.live is not None:
            self.runtime.execute(b'aio:http_get("' + LIVE_PATH + b'", function(fd) '
                                 b'require("eightys.host").live_subscribe(fd.fd, '
                                 b'fd[require("eightys.http").SEQ]) end)')

    def live_subscribe(self, fd: Any, seq: Any) -> bool:
        """The live-reload endpoint: request ``seq`` on ``fd`` becomes an event stream."""
        conn = self.connections.get(fd)
        if conn is None or self.live is None:
            return False
        self.live.subscribe(conn, seq)
        return True

    # -- net.* --------------------------------------------------------------------------

    def write(self, elfd: Any, fd: Any, data: Any = None, offset: Any = None, *rest: Any) -> Any:
        """``net.write(elfd, fd, data[, offset])``; the 80s form with fdtype
        (``net.write(elfd, fd, fdtype, data, offset)``) is accepted too."""
        if type(data) is not bytes:
            data, offset = offset, rest[0] if rest else None
            if type(data) is not bytes:
                raise TypeError("net.write: data must be a string")
        conn = self.connections.get(fd)
        if conn is None:
            return False, b"closed"
        if offset:
            data = data[int(offset):]
        if not conn.write(data):
            return False, b"closed"
        return True, len(data)

    def close(self, elfd: Any, fd: Any, *rest: Any) -> bool:
        """``net.close(elfd, fd)``: close after pending output is sent."""
        conn = self.connections.get(fd)
        if conn is None:
            return False
        conn.close()
        return True

    def connect(self, elfd: Any, host: Any, port: Any = None, *rest: Any) -> Any:
        """``net.connect(elfd, host, port)`` -> fd, or nil, err. Name lookup and
        connect happen in the background; on_write fires when connected, on_close
        (with a reason) if it fails. ``v6:addr`` and ``unix:/path`` hosts work."""
        return self._open(host, port, None, None)

    def connect_tls(self, elfd: Any, host: Any, port: Any, server_name: Any = None,
                    ca_file: Any = None, verify: Any = True) -> Any:
        """``aio:connect(elfd, host, port, {tls = true, ...})``: as ``net.connect``, over
        TLS. The certificate is checked against the system CAs (or ``ca_file``) and
        ``server_name`` (default: the host), which also goes out as SNI; ``verify``
        false turns every check off. A failed handshake is an on_close reason."""
        if type(host) is not bytes:
            raise TypeError("aio:connect: host must be a string")
        name = (server_name if type(server_name) is bytes else host).decode()
        if name.startswith(("unix:", "v6:")):
            name = name.split(":", 1)[1]
        if verify is not False and not name:
            return None, b"TLS to a Unix socket needs server_name"
        try:
            context = tls.client_context(os.fsdecode(ca_file) if ca_file else "",
                                         verify is not False)
        except (OSError, ssl.SSLError) as exc:
            return None, f"TLS: ca_file {os.fsdecode(ca_file)}: {tls.describe_error(exc)}".encode()
        return self._open(host, port, context, name.strip("[]"))

    def _open(self, host: Any, port: Any, context: ssl.SSLContext | None,
              server_name: str | None) -> Any:
        if type(host) is not bytes:
            raise TypeError("net.connect: host must be a string")
        text = host.decode()
        if text.startswith("unix:"):
            target: tuple[str, int | None] = (text[5:], None)
        else:
            if text.startswith("v6:"):
                text = text[3:]
            if not isinstance(port, int) or not 0 < port < 65536:
                return None, b"bad port"
            target = (text, port)
        fd = self.host.new_fd()
        protocol = RawProtocol(self.host, fd, outbound=True)
        self.host.register(fd, protocol)
        self.host.spawn(self._connect(protocol, *target, context, server_name))
        return fd

    async def _connect(self, protocol: RawProtocol, host: str, port: int | None,
                       context: ssl.SSLContext | None = None,
                       server_name: str | None = None) -> None:
        tls_args: dict[str, Any] = {}
        if context is not None:
            tls_args = {"ssl": context, "server_hostname": server_name,
                        "ssl_handshake_timeout": tls.HANDSHAKE_TIMEOUT,
                        "ssl_shutdown_timeout": tls.SHUTDOWN_TIMEOUT}
        try:
            if port is None:
                coro = self.loop.create_unix_connection(lambda: protocol, host, **tls_args)
            else:
                coro = self.loop.create_connection(lambda: protocol, host, port, **tls_args)
            await asyncio.wait_for(coro, CONNECT_TIMEOUT)
        except ssl.SSLError as exc:
            protocol.connect_failed(ConnectionError(tls.describe_error(exc)))
        except (OSError, asyncio.TimeoutError) as exc:
            protocol.connect_failed(exc)

    def reload(self, *args: Any) -> Any:
        """``net.reload()``: re-run the entry script in this worker only."""
        if self.reload_lua():
            return True
        return False, self._last_reload_error.encode()

    def reload_all(self) -> bool:
        """``aio:reload()``: every worker reloads (through the master)."""
        assert self.channel is not None
        self.channel.send(channel.Kind.RELOAD)
        return True

    def quit(self, *args: Any) -> bool:
        """``net.quit()``: stop the whole server gracefully."""
        assert self.channel is not None
        self.channel.send(channel.Kind.QUIT)
        return True

    def mail(self, target: Any, message: Any = None, receiver_fd: Any = None,
             sender_fd: Any = None) -> Any:
        """``net.mail(worker, message[, receiver_fd])``: deliver a string or plain
        table to worker ``worker``'s on_message ("*": every worker)."""
        if target == b"*":
            target = "*"
        elif not isinstance(target, int) or not 0 <= target < self.config.workers:
            return None, f"no worker {target!r} (0..{self.config.workers - 1})".encode()
        try:
            payload = self.runtime.to_python(message)
        except TypeError as exc:
            return None, f"cannot mail this value: {exc}".encode()
        assert self.channel is not None
        self.channel.send(channel.Kind.MAIL, target, sender_fd, receiver_fd, payload)
        return True

    def info(self) -> bytes:
        """``net.info()``: a one-line description of this build and worker."""
        return (f"eightys {__version__}; engine: {self.config.lua}; "
                f"worker: {self.worker_id}/{self.config.workers}; pid: {os.getpid()}; "
                f"flags: uvloop, httptools, lupa").encode()

    def start_timer(self, delay: Any, callback: Any) -> int:
        """Run the Lua function ``callback`` after ``delay`` seconds; returns its id."""
        return self.timers.start(delay, callback)

    def cancel_timer(self, timer_id: Any) -> bool:
        """Cancel a pending timer; False if it already fired or never existed."""
        return self.timers.cancel(timer_id)

    def http_send(self, fd: Any, seq: Any, data: bytes, final: Any, close: Any = None) -> bool:
        """Part (or, with ``final``, the end) of the response to request ``seq`` on
        connection ``fd``; False once the client is gone."""
        conn = self.connections.get(fd)
        if conn is None:
            return False
        if not isinstance(conn, HttpProtocol):
            raise TypeError(f"connection {fd} is not an HTTP connection")
        return conn.send(seq, data, bool(final), close)

    def http_drain(self, fd: Any, callback: Any) -> None:
        """Call the Lua ``callback(true)`` once connection ``fd`` can take more output."""
        conn = self.connections.get(fd)
        if conn is None:
            self.runtime.dispatch_call(callback, False)
        elif not isinstance(conn, HttpProtocol):
            raise TypeError(f"connection {fd} is not an HTTP connection")
        else:
            conn.drain(callback)

    def log_error(self, text: bytes) -> None:
        """Errors from Lua code, with their tracebacks through the user's code
        (the full traceback, with eightys' own frames, at debug level)."""
        full = text.decode("utf-8", "replace")
        shown = user_traceback(full)
        self.log.error("%s", shown)
        if self.sampler is not None:
            self.sampler.lua_error(shown)
        if shown != full:
            self.log.debug("full traceback: %s", full)

    def log_output(self, text: bytes) -> None:
        """Lua's print()."""
        sys.stdout.write(text.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()


def _describe(exc: BaseException) -> str:
    """``file:line: Type: message`` at the innermost frame outside eightys itself
    (the line of a -m module that raised), or ``Type: message``."""
    text = f"{type(exc).__name__}: {exc}"
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(package)
              and not f.filename.startswith("<frozen")]
    if frames:
        return f"{display_path(frames[-1].filename)}:{frames[-1].lineno}: {text}"
    return text


def read_config(fd: int) -> Config:
    """Read the JSON configuration the master wrote into ``fd`` (to its end) and
    close it, so the secret lives on in this process's memory only."""
    with open(fd, "rb") as f:
        return Config.from_json(f.read().decode())


def main(argv: list[str]) -> int:
    """Worker process entry point (see module docstring for the arguments)."""
    import uvloop

    config_fd, worker_id, listen_fd, channel_fd, *redirect_fd = argv
    config = read_config(int(config_fd))
    setup_logging()
    listen_sock = socket.socket(fileno=int(listen_fd))
    channel_sock = socket.socket(fileno=int(channel_fd))
    redirect_sock = socket.socket(fileno=int(redirect_fd[0])) if redirect_fd else None
    worker = Worker(config, int(worker_id), listen_sock, channel_sock, redirect_sock)
    return uvloop.run(worker.run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
