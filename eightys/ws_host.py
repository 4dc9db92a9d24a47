"""The worker's WebSocket service: what Lua's ``eightys.websocket`` module calls
(handshake, send, close, ping, pub/sub) and what WebSocket connections call back
(the Lua dispatchers, the connection table, the clock).

It is the narrow host a :class:`~eightys.protocols.websocket.WebSocketProtocol`
sees, so the protocol never touches the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from eightys import channel
from eightys.protocols.websocket import (GOING_AWAY, INTERNAL_ERROR, SERVICE_RESTART,
                                         WebSocketProtocol, WsOptions, handshake)
from eightys.pubsub import PubSub
from eightys.redis_bus import BINARY, TEXT

if TYPE_CHECKING:
    from eightys.lua_runtime import LuaRuntime
    from eightys.protocols.host import ConnectionHost
    from eightys.redis_bus import Bus

_NOT_UPGRADE = b"upgrade required"


class WsOwner(Protocol):
    """What :class:`WebSockets` uses of its owner (the worker): a narrow view, so this
    module never imports the worker."""

    host: "ConnectionHost"
    connections: dict[int, Any]

    @property
    def workers(self) -> int:
        """How many workers the server runs."""
        ...

    def send_to_master(self, *message: Any) -> None:
        """Send a control message to the master."""
        ...


class WebSockets:
    """WebSocket connections and channels of one worker."""

    def __init__(self, worker: WsOwner) -> None:
        self.worker = worker
        #: the close code connections get when the worker stops
        self.close_code = GOING_AWAY
        self.options: list[WsOptions] = []
        self._option_ids: dict[WsOptions, int] = {}
        #: accepted, waiting for the responses before theirs to go out: fd -> (http, ws)
        self._switching: dict[int, tuple[Any, WebSocketProtocol]] = {}
        self.pubsub = PubSub(self._forward, self._interest)
        #: the other servers, through Redis (--redis), or None
        self.bus: "Bus | None" = None
        self.on_open: Callable[..., Any] = _unattached
        self.on_message: Callable[..., Any] = _unattached
        self._on_close: Callable[..., Any] = _unattached

    def attach(self, runtime: "LuaRuntime") -> None:
        """Load the Lua side and take its dispatchers (before the entry script runs)."""
        dispatch = runtime.execute(b'return require("eightys.websocket").dispatch')
        self.on_open = dispatch[b"open"]
        self.on_message = dispatch[b"message"]
        self._on_close = dispatch[b"close"]

    def functions(self) -> dict[bytes, Callable[..., Any]]:
        """The private host functions for Lua."""
        return {
            b"ws_options": self.define_options, b"ws_accept": self.accept,
            b"ws_send": self.send, b"ws_close": self.close, b"ws_ping": self.ping,
            b"ws_subscribe": self.subscribe, b"ws_unsubscribe": self.unsubscribe,
            b"ws_publish": self.publish,
        }

    # -- for connections (WsHost) -----------------------------------------------------

    @property
    def now(self) -> float:
        """The worker's coarse clock."""
        return self.worker.host.now

    def register(self, fd: int, conn: WebSocketProtocol) -> None:
        """A WebSocket connection took over handle ``fd``."""
        self.worker.host.register(fd, conn)

    def forget(self, fd: int) -> None:
        """The connection with handle ``fd`` ended."""
        self.worker.host.forget(fd)

    def on_close(self, conn: WebSocketProtocol, code: int, reason: bytes) -> None:
        """A connection closed (once): leave its channels, tell Lua."""
        self.pubsub.drop(conn)
        self._on_close(conn.fd, code, reason)

    def sweep(self) -> None:
        """Once a second: an HTTP connection that closed before its switch could
        happen never makes the WebSocket; Lua forgets what it prepared for it."""
        for fd, (conn, ws) in list(self._switching.items()):
            if ws.transport is not None:
                del self._switching[fd]
            elif conn.closed:
                del self._switching[fd]
                self._on_close(fd, 1006, b"")

    def restart(self) -> None:
        """A rolling restart retires this worker: connections get 1012 (service restart)."""
        self.close_code = SERVICE_RESTART

    # -- for Lua ----------------------------------------------------------------------

    def define_options(self, protocols: Any, max_message: Any, compress: Any,
                       idle_timeout: Any, origins: Any, send_buffer: Any) -> int:
        """Register the options of a route; returns their id for ``accept``."""
        options = WsOptions(
            subprotocols=tuple(p.decode() for p in _sequence(protocols)),
            max_message=int(max_message),
            compress=bool(compress),
            idle_timeout=float(idle_timeout),
            origins=(tuple(None if o == b"" else o.decode("latin-1") for o in _sequence(origins))
                     if origins is not None else None),
            send_buffer=int(send_buffer),
        )
        known = self._option_ids.get(options)  # reloads register the same options again
        if known is not None:
            return known
        self.options.append(options)
        self._option_ids[options] = len(self.options) - 1
        return len(self.options) - 1

    def accept(self, fd: Any, seq: Any, options_id: Any) -> Any:
        """``fd:websocket``: validate request ``seq``'s upgrade and switch the
        connection. Returns the subprotocol ("" if none), or nil, err (the refusal
        was answered, except for "upgrade required": Lua answers 426 itself)."""
        conn = self.worker.connections.get(fd)
        if conn is None:
            return None, b"closed"
        upgrade_request = getattr(conn, "upgrade_request", None)
        head = upgrade_request(seq) if upgrade_request is not None else None
        if head is None:
            return None, _NOT_UPGRADE
        options = self.options[options_id]
        protocol, response, ok = handshake(*head, options)
        if not ok:
            conn.send(seq, response, True, True)
            return None, response.split(b"\r\n", 1)[0][9:]  # "403 Forbidden"
        ws = WebSocketProtocol(self, fd, protocol, head[1], options)
        if not conn.switch_protocol(seq, response, ws):
            return None, b"closed"
        if ws.transport is None:  # the switch comes after this handler (or earlier responses)
            self._switching[fd] = (conn, ws)  # see sweep()
        return (protocol.subprotocol or "").encode()

    def _conn(self, fd: Any) -> WebSocketProtocol | None:
        conn = self.worker.connections.get(fd)
        return conn if type(conn) is WebSocketProtocol else None

    def send(self, fd: Any, data: Any, binary: Any) -> Any:
        """``ws:send``: true, or nil, err."""
        conn = self._conn(fd)
        if conn is None:
            return None, b"closed"
        err = conn.send(data, bool(binary))
        if err is None:
            return True
        return None, err.encode()

    def close(self, fd: Any, code: Any = None, reason: Any = None, failed: Any = None) -> bool:
        """``ws:close``; ``failed``: a handler error, close with 1011 at once."""
        conn = self._conn(fd)
        if conn is None:
            return False
        text = reason.decode("utf-8", "replace") if reason else ""
        if failed:
            conn.fail(INTERNAL_ERROR, text)
            return True
        return conn.close(int(code) if code is not None else 1000, text)

    def ping(self, fd: Any, data: Any = None) -> bool:
        """``ws:ping``."""
        conn = self._conn(fd)
        return conn is not None and conn.ping(data or b"")

    def subscribe(self, fd: Any, name: Any) -> bool:
        """``ws:subscribe``."""
        conn = self._conn(fd)
        return conn is not None and not conn.lost and self.pubsub.subscribe(conn, name)

    def unsubscribe(self, fd: Any, name: Any) -> bool:
        """``ws:unsubscribe``."""
        conn = self._conn(fd)
        return conn is not None and self.pubsub.unsubscribe(conn, name)

    def publish(self, name: Any, data: Any, binary: Any = None, server_only: Any = None) -> Any:
        """``aio:publish``: the number of local subscribers it was queued for; with
        ``--redis``, plus the reason when it could not go to the other servers."""
        sent = self.pubsub.publish(name, data, bool(binary))
        bus = self.bus
        if bus is not None and not server_only:
            err = bus.publish(b"ws:" + name, BINARY if binary else TEXT, data)
            if err is not None:
                return sent, err.encode()
        return sent

    # -- between workers --------------------------------------------------------------

    def _forward(self, name: bytes, data: bytes, binary: bool) -> None:
        if self.worker.workers > 1:
            self.worker.send_to_master(channel.Kind.PUBLISH, name, data, binary)

    def _interest(self, name: bytes, subscribed: bool) -> None:
        if self.worker.workers > 1:
            self.worker.send_to_master(channel.Kind.INTEREST, name, subscribed)
        if self.bus is not None:
            self.bus.listen(b"ws:" + name, subscribed)

    def delivered(self, name: bytes, data: bytes, binary: bool) -> None:
        """A message published in another worker (or, through Redis, another server)."""
        self.pubsub.deliver(name, data, binary)


def _sequence(table: Any) -> list[Any]:
    """The items 1..#t of a Lua sequence, in order (empty for nil)."""
    if table is None:
        return []
    return [table[i] for i in range(1, len(table) + 1)]


def _unattached(*args: Any) -> None:
    raise RuntimeError("the Lua WebSocket dispatchers are not attached yet")
