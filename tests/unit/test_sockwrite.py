"""The compiled server's direct socket writes (eightys/protocols/sockwrite.pyx).

Real uvloop transports on real sockets: what a :class:`SocketWriter` sends must
arrive in the order it was written, whether ``send`` took all of it or uvloop had
to buffer the rest (a client that does not read); it must never write to a
descriptor once its transport is closing (the number may name another connection
by then); a peer that reset the connection is reported through uvloop's usual
path; and TLS or non-uvloop transports get no writer at all.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from typing import Any

import pytest
import uvloop
from certs import self_signed

import eightys.protocols.http as http_adapter
import eightys.protocols.http_core as http_core

pytestmark = pytest.mark.skipif(not http_core.COMPILED, reason="eightys runs as plain Python here")


def _sockwrite() -> Any:
    from eightys.protocols import sockwrite

    return sockwrite


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.made = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.paused = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set_result(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused += 1


async def _serve() -> tuple[Any, list[_Protocol], int]:
    loop = asyncio.get_running_loop()
    made: list[_Protocol] = []

    def factory() -> _Protocol:
        protocol = _Protocol()
        made.append(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, made, server.sockets[0].getsockname()[1]


async def _connect(port: int, made: list[_Protocol]) -> tuple[socket.socket, _Protocol]:
    before = len(made)
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    while len(made) == before:
        await asyncio.sleep(0.001)
    protocol = made[-1]
    await protocol.made
    return client, protocol


async def _read(client: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(client, min(size - len(got), 65536))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 30))
    finally:
        loop.close()


def test_a_small_write_goes_straight_to_the_socket() -> None:
    async def main() -> None:
        server, made, port = await _serve()
        client, protocol = await _connect(port, made)
        writer = _sockwrite().for_transport(protocol.transport)
        assert writer is not None
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        # nothing left for uvloop: the bytes were sent by send(2) itself
        assert protocol.transport.get_write_buffer_size() == 0
        assert await _read(client, 19) == b"HTTP/1.1 200 OK\r\n\r\n"
        client.close()
        server.close()

    _run(main())


def test_what_the_socket_does_not_take_is_buffered_by_uvloop_in_order() -> None:
    async def main() -> None:
        server, made, port = await _serve()
        client, protocol = await _connect(port, made)
        writer = _sockwrite().for_transport(protocol.transport)
        # numbered blocks, far more than the socket buffers hold while nobody reads
        blocks = [struct.pack(">I", i) * 16384 for i in range(64)]  # 64 x 64 KiB
        for block in blocks:
            writer.write(block)
        # the rest waits in uvloop's buffer (and flow control sees it)
        assert protocol.transport.get_write_buffer_size() > 0
        assert protocol.paused >= 1
        got = await _read(client, sum(map(len, blocks)))
        assert got == b"".join(blocks)
        # drained: writes go straight to the socket again
        while protocol.transport.get_write_buffer_size():
            await asyncio.sleep(0.001)
        writer.write(b"tail")
        assert protocol.transport.get_write_buffer_size() == 0
        assert await _read(client, 4) == b"tail"
        client.close()
        server.close()

    _run(main())


def test_nothing_is_written_once_the_transport_is_closing() -> None:
    async def main() -> None:
        server, made, port = await _serve()
        client_a, protocol_a = await _connect(port, made)
        writer = _sockwrite().for_transport(protocol_a.transport)
        protocol_a.transport.close()  # nothing buffered: uvloop closes the descriptor now
        await protocol_a.lost
        # new connections may get the closed descriptor's number
        others = [await _connect(port, made) for _ in range(4)]
        with pytest.raises(RuntimeError):  # as transport.write does on a closed transport
            writer.write(b"LEAK")
        for protocol in made[1:]:
            protocol.transport.write(b"ok")
        for client, _ in others:
            assert await _read(client, 2) == b"ok"
            client.setblocking(True)
            client.settimeout(0.2)
            with pytest.raises(socket.timeout):
                client.recv(16)  # "LEAK" reached none of them
            client.close()
        assert await _read(client_a, 16) == b""
        client_a.close()
        server.close()

    _run(main())


def test_a_reset_connection_is_reported_through_uvloop() -> None:
    async def main() -> None:
        server, made, port = await _serve()
        client, protocol = await _connect(port, made)
        writer = _sockwrite().for_transport(protocol.transport)
        # RST instead of FIN
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await asyncio.sleep(0.05)
        for _ in range(100):  # the first send may still be taken; then EPIPE/ECONNRESET
            if protocol.transport.is_closing():
                break
            writer.write(b"x" * 1000)
            await asyncio.sleep(0.01)
        exc = await asyncio.wait_for(protocol.lost, 5)
        assert isinstance(exc, ConnectionError)
        assert protocol.transport.is_closing()
        server.close()

    _run(main())


def test_tls_and_other_loops_get_no_writer(tmp_path: Any) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def with_tls() -> None:
        loop = asyncio.get_running_loop()
        made: list[_Protocol] = []
        server = await loop.create_server(lambda: made.append(_Protocol()) or made[-1],
                                          "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context,
                                                       server_hostname="localhost")
        while not made:
            await asyncio.sleep(0.001)
        transport = await made[0].made
        # its socket carries TLS records: writing these bytes there would corrupt them
        assert _sockwrite().for_transport(transport) is None
        writer.close()
        server.close()

    _run(with_tls())

    async def plain_asyncio() -> None:
        server, made, port = await _serve()
        client, protocol = await _connect(port, made)
        assert _sockwrite().for_transport(protocol.transport) is None
        client.close()
        server.close()

    loop = asyncio.new_event_loop()  # asyncio's own loop, not uvloop
    try:
        loop.run_until_complete(plain_asyncio())
    finally:
        loop.close()


def test_the_http_adapter_writes_through_it() -> None:
    assert http_adapter.writer_for is _sockwrite().for_transport
