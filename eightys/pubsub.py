"""Pub/sub between WebSocket connections: channels, local fan-out, and the hand-off
to the other workers of the server through the master.

``aio:publish`` delivers here, in Python, without a Lua call per subscriber (nor
any Lua call in a worker whose connections did not subscribe), then forwards the
message once to the master, which relays it to the other workers that have
subscribers for the channel (each worker tells the master when a channel gets its
first local subscriber and when it loses its last); each delivers it to its own. No lock, no shared memory: the workers only exchange
messages on their control channels.

A message goes to every subscriber that can take it: a connection whose send
buffer is over its bound is dropped with 1013 (try again later) instead of
letting its backlog grow or holding the others back (see
``WebSocketProtocol.publish``).
"""

from __future__ import annotations

from typing import Callable

from websockets.frames import Frame, Opcode

from eightys.protocols.websocket import WebSocketProtocol


class PubSub:
    """The channels of one worker."""

    def __init__(self, forward: Callable[[bytes, bytes, bool], None],
                 interest: Callable[[bytes, bool], None] | None = None) -> None:
        #: channel -> its local subscribers (insertion ordered, so delivery is fair)
        self.channels: dict[bytes, dict[WebSocketProtocol, None]] = {}
        self._forward = forward
        # told when a channel gets its first local subscriber (True) or loses its last
        self._interest = interest

    def subscribe(self, conn: WebSocketProtocol, channel: bytes) -> bool:
        """Add ``conn`` to ``channel``; False if it already was there."""
        subscribers = self.channels.get(channel)
        if subscribers is None:
            subscribers = self.channels[channel] = {}
            if self._interest is not None:
                self._interest(channel, True)
        elif conn in subscribers:
            return False
        subscribers[conn] = None
        conn.channels.add(channel)
        return True

    def unsubscribe(self, conn: WebSocketProtocol, channel: bytes) -> bool:
        """Remove ``conn`` from ``channel``; False if it was not subscribed."""
        subscribers = self.channels.get(channel)
        if subscribers is None or conn not in subscribers:
            return False
        del subscribers[conn]
        if not subscribers:
            del self.channels[channel]
            if self._interest is not None:
                self._interest(channel, False)
        conn.channels.discard(channel)
        return True

    def drop(self, conn: WebSocketProtocol) -> None:
        """A connection closed: leave all its channels."""
        for channel in list(conn.channels):
            self.unsubscribe(conn, channel)

    def publish(self, channel: bytes, data: bytes, binary: bool) -> int:
        """``aio:publish``: deliver here and in every other worker; returns the
        number of local subscribers the message was queued for."""
        self._forward(channel, data, binary)
        return self.deliver(channel, data, binary)

    def deliver(self, channel: bytes, data: bytes, binary: bool) -> int:
        """Queue the message for this worker's subscribers of ``channel``."""
        subscribers = self.channels.get(channel)
        if not subscribers:
            return 0
        # Server frames are not masked: one encoding serves every connection that
        # negotiated no extension (compressed ones encode their own, with their context).
        frame = Frame(Opcode.BINARY if binary else Opcode.TEXT, data).serialize(
            mask=False, extensions=[])
        sent = 0
        for conn in list(subscribers):
            if conn.publish(frame, data, binary):
                sent += 1
        return sent
