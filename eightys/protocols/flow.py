"""Flow control shared by every connection protocol (HTTP, raw, WebSocket).

Reading from a client stops for any of several reasons, each a bit: the kernel
buffer towards it is full (it does not read what we send), too many of its
requests wait for responses, an upgrade is being decided. Reading resumes when
no reason is left. Code that produces output faster than the client reads
(streamed files, ``stream:drain()`` in Lua) waits on :meth:`FlowControl.when_writable`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

#: Pause reading from a client once this much output is waiting for it.
WRITE_HIGH_WATER = 256 * 1024

#: Reasons to stop reading (bits).
PAUSE_WRITE = 1  # the transport's write buffer is above the high-water mark
PAUSE_BACKLOG = 2  # too many requests wait for their responses
PAUSE_UPGRADE = 4  # an upgrade request waits for its answer


class FlowControl:
    """Pause/resume reading of one transport, for several reasons at once."""

    __slots__ = ("transport", "reasons", "_writable")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.reasons = 0
        self._writable: list[Callable[[bool], Any]] = []
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    @property
    def write_paused(self) -> bool:
        """Whether the client is behind on reading what we sent."""
        return bool(self.reasons & PAUSE_WRITE)

    def pause(self, reason: int) -> None:
        """Stop reading for ``reason`` (reading already stopped for another is fine)."""
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        """``reason`` no longer holds; reading resumes when no other does."""
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()

    # the asyncio protocol forwards these two
    def pause_writing(self) -> None:
        """The transport's buffer went above the high-water mark."""
        self.pause(PAUSE_WRITE)

    def resume_writing(self) -> None:
        """The buffer drained: resume reading and wake whoever waits to write."""
        self.resume(PAUSE_WRITE)
        self.wake(True)

    def when_writable(self, callback: Callable[[bool], Any]) -> None:
        """Call ``callback(True)`` once the client has taken what was sent (at once if
        it has), or ``callback(False)`` if the connection closes first."""
        if self.reasons & PAUSE_WRITE:
            self._writable.append(callback)
        else:
            callback(True)

    async def writable(self) -> bool:
        """Wait until the client can take more output; False if the connection closed."""
        if not self.reasons & PAUSE_WRITE:
            return not self.transport.is_closing()
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._writable.append(lambda ok: future.done() or future.set_result(ok))
        return await future

    def wake(self, ok: bool) -> None:
        """Run the waiting callbacks (with ``ok=False`` when the connection is gone)."""
        if self._writable:
            waiters, self._writable = self._writable, []
            for callback in waiters:
                callback(ok)
