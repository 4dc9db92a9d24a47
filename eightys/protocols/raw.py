"""Raw TCP connections: bytes go to the 80s hooks ``on_data``/``on_write``/``on_close``.

Used for accepted connections when the entry script defines ``on_data`` or
``on_accept`` (a raw app such as ``server/echo.lua``), and for every outgoing
``net.connect``/``aio:connect`` socket.

Flow control (:class:`~eightys.protocols.flow.FlowControl`): when the kernel cannot
take what Lua writes, reading stops until the buffer drains (then ``on_write``
fires), so a client that does not read its replies holds at most
``WRITE_HIGH_WATER`` bytes of them.
"""

from __future__ import annotations

from typing import Any

from eightys.acl import DENY
from eightys.protocols.flow import FlowControl
from eightys.protocols.host import ConnectionHost


class RawProtocol:
    """One raw connection, accepted or outgoing. Its handle in Lua is ``self.fd``."""

    __slots__ = ("host", "fd", "transport", "flow", "outbound", "closing", "_batch", "_pending")

    def __init__(self, host: ConnectionHost, fd: int, outbound: bool = False) -> None:
        self.host = host
        self.fd = fd
        self.outbound = outbound
        self.transport: Any = None
        self.flow: FlowControl | None = None
        self.closing = False
        # Writes made while Lua handles one read are joined into one transport.write.
        self._batch: list[bytes] | None = None
        # Writes made before an outgoing connection is up.
        self._pending: list[bytes] = []

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        host = self.host
        if not self.outbound and host.gate is not None \
                and host.gate.admit(transport, http=False) == DENY:
            self.closing = True
            transport.close()  # server-wide ACL: on_accept never runs
            return
        self.flow = FlowControl(transport)
        host.register(self.fd, self)
        if self.outbound:
            if self._pending:
                transport.write(b"".join(self._pending))
                self._pending.clear()
            if self.closing:
                transport.close()
                return
            host.raw_write(self.fd)  # 80s: a completed connect fires on_write
        elif not host.raw_accept(self.fd):
            transport.close()

    def data_received(self, data: bytes) -> None:
        batch: list[bytes] = []
        self._batch = batch
        ok = self.host.raw_data(self.fd, data)
        self._batch = None
        if batch:
            self.transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
        if not ok or self.closing:
            # a Lua error in the handler closes this connection only
            self.close()

    def eof_received(self) -> bool:
        return False  # close our side too; on_close follows

    def pause_writing(self) -> None:
        self.flow.pause_writing()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.flow.resume_writing()  # type: ignore[union-attr]
        if not self.transport.is_closing():
            self.host.raw_write(self.fd)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow is None:
            return  # refused by the server-wide ACL: Lua never knew of it
        self.host.forget(self.fd)
        if self.flow is not None:
            self.flow.wake(False)
        self.host.raw_close(self.fd, str(exc).encode() if exc else None)

    # -- called for net.* ----------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False if the connection is closing."""
        if self.closing:
            return False
        batch = self._batch
        if batch is not None:
            batch.append(data)
        elif self.transport is None:
            self._pending.append(data)
        else:
            self.transport.write(data)
        return True

    def close(self) -> None:
        """Close once queued data is sent; ``on_close`` follows."""
        self.closing = True
        transport = self.transport
        if transport is None or self._batch is not None:
            return  # closed when the connection comes up / when the batch is written
        transport.close()

    def check_timeout(self, now: float) -> None:
        """Raw connections have no server-side timeouts: the app decides."""

    def shutdown(self) -> None:
        """The worker is draining: raw connections end when either side closes them."""

    def connect_failed(self, exc: BaseException) -> None:
        """An outgoing connection could not be made: report it as a close with a reason."""
        self.closing = True
        self.host.forget(self.fd)
        reason = str(exc) or type(exc).__name__
        self.host.raw_close(self.fd, reason.encode())
