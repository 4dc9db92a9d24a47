"""Helpers of the transport unit tests (tests/unit/test_tcp_socket.py, test_tls_socket.py):
a protocol that records what happens, and a uvloop loop to run a test's coroutine on."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable

import uvloop


class Recorder(asyncio.Protocol):
    """Keeps what happens; ``on_data(protocol, data)`` answers."""

    def __init__(self, on_data: Callable[["Recorder", bytes], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.data = bytearray()
        self.events: list[str] = []
        self.on_data = on_data
        self.lost = loop.create_future()
        self.got_data = asyncio.Event()
        #: what eof_received returns (False: the transport closes)
        self.keep_open_on_eof = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got_data.set()
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class RecordingServer:
    """A listening socket on 127.0.0.1 and the :class:`Recorder` of each connection
    it serves; a subclass starts its listener with :meth:`factory`."""

    def __init__(self, on_data: Any = None, keep_open_on_eof: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.protocols: list[Recorder] = []
        self.on_data = on_data
        self.keep_open_on_eof = keep_open_on_eof

    def factory(self) -> Recorder:
        """The protocol factory: a new Recorder, kept in ``protocols``."""
        protocol = Recorder(self.on_data)
        protocol.keep_open_on_eof = self.keep_open_on_eof
        self.protocols.append(protocol)
        return protocol

    async def nth(self, n: int) -> Recorder:
        """The protocol of the n-th connection (from 0), once it is made."""
        while len(self.protocols) <= n:
            await asyncio.sleep(0.005)
        return self.protocols[n]

    def close(self) -> None:
        """Close the listener, which closes the listening socket (as uvloop's server)."""
        self.listener.close()  # type: ignore[attr-defined]
        assert self.sock.fileno() == -1


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run the blocking ``fn`` (a client) in a thread; its result."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def run(coro: Any) -> Any:
    """Run ``coro`` on a new uvloop loop, 60 s at most."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 60))
    finally:
        loop.close()
