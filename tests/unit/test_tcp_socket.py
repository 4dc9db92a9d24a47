"""eightys.protocols.tcp_socket: plain TCP read and written from one epoll set.

Real sockets on a uvloop loop, real clients (blocking sockets in a thread of their
own): bytes both ways and what the transport tells, a large response to a client
that does not read (buffered in order, ``pause_writing``/``resume_writing``),
``pause_reading``, a client's half-close (the server still answers), ``close``
with output queued, ``write_eof``, ``abort``, a reset, a protocol that raises, a
connection closed by another one's callback in the same batch of events, the
protocol switch, and the listener's close. The HTTP server on it is the whole
suite (it is the default transport of a compiled install).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import pytest
from transports import Recorder, RecordingServer, in_thread, run

import eightys.protocols.http_core as http_core

pytestmark = pytest.mark.skipif(not http_core.COMPILED, reason="eightys runs as plain Python here")


class Server(RecordingServer):
    def __init__(self, on_data: Any = None, keep_open_on_eof: bool = False) -> None:
        from eightys.protocols.tcp_socket import TcpListener

        super().__init__(on_data, keep_open_on_eof)
        self.listener = TcpListener(asyncio.get_running_loop(), self.sock, self.factory)

    def close(self) -> None:
        super().close()
        self.listener.poller.close()


def _client(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(got)
        got += chunk


def test_bytes_both_ways_and_what_the_transport_tells() -> None:
    async def main() -> None:
        from eightys.protocols.sockwrite import for_transport

        server = Server(on_data=lambda p, d: p.transport.write(b"echo:" + d))

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"hello")
                return sock.recv(100)

        assert await in_thread(client) == b"echo:hello"
        protocol = await server.nth(0)
        transport = protocol.transport
        assert for_transport(transport) is transport  # HttpProtocol writes through it in C
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert transport.get_extra_info("sockname")[1] == server.port
        assert isinstance(transport.get_extra_info("socket"), socket.socket)
        assert transport.get_extra_info("nothing", 7) == 7
        assert transport.get_write_buffer_size() == 0
        assert transport.can_write_eof()
        assert await protocol.lost is None  # the client closed: eof_received said close
        assert protocol.events == ["made", "eof", "lost"]
        assert transport.is_closing()
        server.close()

    run(main())


def test_a_large_response_to_a_client_that_does_not_read_is_buffered_in_order() -> None:
    size = 8 << 20
    payload = bytes(range(256)) * (size // 256)

    async def main() -> None:
        def answer(protocol: Recorder, data: bytes) -> None:
            for i in range(0, size, 1 << 20):  # several writes, most of them queued
                protocol.transport.write(payload[i:i + (1 << 20)])
            protocol.transport.close()  # after what is queued

        server = Server(on_data=answer)
        started = threading.Event()

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                sock.sendall(b"go")
                started.wait(10)
                return _read_all(sock)

        reading = asyncio.ensure_future(in_thread(client))
        protocol = await server.nth(0)
        await protocol.got_data.wait()
        assert protocol.transport.get_write_buffer_size() > 0
        assert "pause" in protocol.events
        protocol.transport.write(b"dropped")  # after close(): nobody gets it
        started.set()
        got = await reading
        assert got == payload
        assert await protocol.lost is None
        assert protocol.events[-2:] == ["resume", "lost"]
        server.close()

    run(main())


def test_pause_reading_holds_what_arrives_until_resume() -> None:
    async def main() -> None:
        def first_only(protocol: Recorder, data: bytes) -> None:
            protocol.transport.pause_reading()

        server = Server(on_data=first_only)
        sent_second = threading.Event()
        release = threading.Event()

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"one")
                release.wait(10)
                sock.sendall(b"two")
                sent_second.set()
                release.wait(10)
                return sock.recv(10)

        done = asyncio.ensure_future(in_thread(client))
        protocol = await server.nth(0)
        await protocol.got_data.wait()
        assert not protocol.transport.is_reading()
        release.set()
        await in_thread(lambda: sent_second.wait(10))
        await asyncio.sleep(0.1)
        assert bytes(protocol.data) == b"one"  # paused: "two" waits in the socket
        protocol.on_data = None
        protocol.transport.resume_reading()
        assert protocol.transport.is_reading()
        for _ in range(200):
            if bytes(protocol.data) == b"onetwo":
                break
            await asyncio.sleep(0.01)
        assert bytes(protocol.data) == b"onetwo"
        protocol.transport.write(b"ok")
        assert await done == b"ok"
        protocol.transport.close()
        server.close()

    run(main())


def test_a_client_that_half_closes_still_gets_its_answer() -> None:
    async def main() -> None:
        server = Server(keep_open_on_eof=True)

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"question")
                sock.shutdown(socket.SHUT_WR)
                return _read_all(sock)

        answer = asyncio.ensure_future(in_thread(client))
        protocol = await server.nth(0)
        while "eof" not in protocol.events:
            await asyncio.sleep(0.01)
        assert not protocol.transport.is_closing()  # eof_received kept it open
        await asyncio.sleep(0.05)  # the hung-up socket must not spin the loop meanwhile
        protocol.transport.write(b"answer")
        protocol.transport.close()
        assert await answer == b"answer"
        assert await protocol.lost is None
        server.close()

    run(main())


def test_write_eof_after_queued_output_and_the_peer_can_still_send() -> None:
    size = 4 << 20

    async def main() -> None:
        def answer(protocol: Recorder, data: bytes) -> None:
            if data.startswith(b"go"):
                protocol.transport.write(b"x" * size)
                protocol.transport.write_eof()
                protocol.transport.write(b"too late")  # after write_eof: dropped

        server = Server(on_data=answer)

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"go")
                got = _read_all(sock)  # ends at the server's write_eof
                sock.sendall(b"still here")
                return got

        assert await in_thread(client) == b"x" * size
        protocol = await server.nth(0)
        while b"still here" not in protocol.data:
            await asyncio.sleep(0.01)
        assert await protocol.lost is None
        server.close()

    run(main())


def test_abort_drops_queued_output_and_a_reset_ends_the_connection() -> None:
    async def main() -> None:
        server = Server()

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"hi")
                return _read_all(sock)

        reading = asyncio.ensure_future(in_thread(client))
        protocol = await server.nth(0)
        await protocol.got_data.wait()
        protocol.transport.abort()
        assert await protocol.lost is None
        assert await reading == b""

        sock = _client(server.port)
        second = await server.nth(1)

        def reset() -> None:
            sock.sendall(b"hi")
            # SO_LINGER 0: close() sends RST
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        await in_thread(reset)
        assert isinstance(await second.lost, OSError)
        assert second.transport.is_closing()
        server.close()

    run(main())


def test_a_protocol_that_raises_is_reported_and_its_connection_ends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        def broken(protocol: Recorder, data: bytes) -> None:
            raise RuntimeError("bug")

        server = Server(on_data=broken)

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"hi")
                return _read_all(sock)

        assert await in_thread(client) == b""
        protocol = await server.nth(0)
        assert isinstance(await protocol.lost, RuntimeError)
        assert reported and reported[0]["message"] == "data_received of Recorder raised"
        server.close()

    run(main())


def test_a_connection_closed_by_another_ones_callback_in_the_same_batch() -> None:
    """Both clients send at once; whichever is served first closes the other: the
    other's event of the same epoll batch must find nothing (no use of a closed
    transport), and the server goes on serving."""
    async def main() -> None:
        server: Server

        def close_the_other(protocol: Recorder, data: bytes) -> None:
            for other in server.protocols:
                if other is not protocol and not other.transport.is_closing():
                    other.transport.abort()
            protocol.transport.write(b"served")

        server = Server(on_data=close_the_other)
        a, b = _client(server.port), _client(server.port)
        try:
            await server.nth(1)
            await asyncio.sleep(0.05)
            a.sendall(b"1")
            b.sendall(b"2")

            def answer(sock: socket.socket) -> bytes:
                try:
                    return sock.recv(10)
                except ConnectionResetError:  # aborted with "1" or "2" unread: RST
                    return b""

            def answers() -> list[bytes]:
                return [answer(a), answer(b)]

            got = await in_thread(answers)
            assert sorted(got) == [b"", b"served"]
        finally:
            a.close()
            b.close()
        server.protocols.clear()  # the next one has no peer to close

        def again() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"3")
                return sock.recv(10)

        assert await in_thread(again) == b"served"
        server.close()

    run(main())


def test_set_protocol_hands_the_connection_over() -> None:
    async def main() -> None:
        server = Server()
        second = Recorder(on_data=lambda p, d: p.transport.write(b"second:" + d))

        def client() -> bytes:
            with _client(server.port) as sock:
                sock.sendall(b"first")
                ready.wait(10)
                sock.sendall(b"next")
                return sock.recv(100)

        ready = threading.Event()
        answer = asyncio.ensure_future(in_thread(client))
        first = await server.nth(0)
        await first.got_data.wait()
        first.transport.set_protocol(second)
        second.connection_made(first.transport)
        assert first.transport.get_protocol() is second
        ready.set()
        assert await answer == b"second:next"
        assert bytes(first.data) == b"first"
        assert await second.lost is None
        server.close()

    run(main())


def test_closing_the_listener_keeps_open_connections() -> None:
    async def main() -> None:
        server = Server(on_data=lambda p, d: p.transport.write(d))
        sock = _client(server.port)
        try:
            await server.nth(0)
            server.listener.close()
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()

            def echo() -> bytes:
                sock.sendall(b"still")
                return sock.recv(10)

            assert await in_thread(echo) == b"still"
        finally:
            sock.close()
        assert await server.protocols[0].lost is None
        server.listener.poller.close()

    run(main())
