"""eightys.protocols.tls_socket: TLS by libssl on the socket, as an asyncio transport.

Real sockets on a uvloop loop, real TLS clients (``ssl`` sockets in a thread of
their own, so that they can block): records both ways, a large response to a
client that does not read (buffered in order, ``pause_writing``/``resume_writing``),
``pause_reading`` with records already inside OpenSSL, close_notify and a bare TCP
close from the client, ``close``/``abort`` from the server, a client that does not
speak TLS, one that never finishes its handshake, a reset. HTTPS, WSS, raw apps over
TLS and the certificate swap on SIGHUP through a real server are in tests/test_tls.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from certs import self_signed
from transports import Recorder, RecordingServer, in_thread, run

import eightys.protocols.http_core as http_core
from eightys import tls

pytestmark = pytest.mark.skipif(not http_core.COMPILED, reason="eightys runs as plain Python here")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


class Server(RecordingServer):
    def __init__(self, certs: tuple[Path, Path], on_data: Any = None,
                 handshake_timeout: float = 5.0) -> None:
        from eightys.protocols.tls_socket import TlsListener, available

        super().__init__(on_data)
        self.context = tls.server_context(str(certs[0]), str(certs[1]))
        assert available(self.context)
        self.listener = TlsListener(asyncio.get_running_loop(), self.sock, self.context,
                                    self.factory, handshake_timeout)

    async def first(self) -> Recorder:
        return await self.nth(0)


def _client(port: int, cert: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _recv_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(min(65536, size - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_records_both_ways_and_what_the_transport_tells(certs) -> None:
    async def main() -> None:
        server = Server(certs, on_data=lambda p, d: p.transport.write(b"echo:" + d))

        def client() -> tuple[bytes, str]:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"hello")
                return _recv_exactly(sock, 10), sock.version()

        answer, version = await in_thread(client)
        assert answer == b"echo:hello"
        protocol = await server.first()
        transport = protocol.transport
        from eightys.protocols.sockwrite import for_transport
        assert for_transport(transport) is transport  # HttpProtocol writes through it in C
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert transport.get_extra_info("sockname")[1] == server.port
        assert transport.get_extra_info("sslcontext") is server.context
        assert transport.get_write_buffer_limits() == (16384, 65536)
        await asyncio.wait_for(protocol.lost, 5)
        assert protocol.events == ["made", "eof", "lost"]  # the client's close_notify
        assert version in ("TLSv1.2", "TLSv1.3")
        server.close()

    run(main())


def test_a_large_response_to_a_client_that_does_not_read_is_buffered_in_order(certs) -> None:
    blocks = [struct.pack(">I", i) * 16384 for i in range(128)]  # 128 x 64 KiB

    async def main() -> None:
        def answer(protocol: Recorder, data: bytes) -> None:
            for block in blocks:
                protocol.transport.write(block)

        server = Server(certs, on_data=answer)
        started = threading.Event()
        go = threading.Event()

        def client() -> bytes:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"go")
                started.set()
                go.wait(10)  # not reading until the server saw its buffer fill
                return _recv_exactly(sock, sum(map(len, blocks)))

        reading = asyncio.ensure_future(in_thread(client))
        await in_thread(lambda: started.wait(10))
        protocol = await server.first()
        while not protocol.data:
            await asyncio.sleep(0.005)
        transport = protocol.transport
        assert transport.get_write_buffer_size() > 0  # the socket took only part of it
        assert protocol.events[-1] == "pause"
        go.set()
        got = await reading
        assert got == b"".join(blocks)
        assert "resume" in protocol.events
        assert transport.get_write_buffer_size() == 0
        server.close()

    run(main())


def test_pause_reading_holds_records_openssl_already_read(certs) -> None:
    async def main() -> None:
        def first_only(protocol: Recorder, data: bytes) -> None:
            if not protocol.events.count("paused"):
                protocol.events.append("paused")
                protocol.transport.pause_reading()

        server = Server(certs, on_data=first_only)

        def client() -> None:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"one")  # two records, most likely read by one read(2)
                sock.sendall(b"two")
                _recv_exactly(sock, 2)

        done = asyncio.ensure_future(in_thread(client))
        protocol = await server.first()
        await protocol.got_data.wait()
        await asyncio.sleep(0.2)
        assert bytes(protocol.data) == b"one"  # paused: "two" waits
        assert not protocol.transport.is_reading()
        protocol.transport.resume_reading()
        for _ in range(1000):  # (epoll cannot say: they are inside OpenSSL, not the socket)
            if len(protocol.data) >= 6:
                break
            await asyncio.sleep(0.005)
        assert bytes(protocol.data) == b"onetwo"
        protocol.transport.write(b"ok")
        await done
        server.close()

    run(main())


def test_a_bare_tcp_close_is_an_end_and_close_sends_close_notify(certs) -> None:
    async def main() -> None:
        server = Server(certs, on_data=lambda p, d: p.transport.close())

        def client() -> bytes:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"bye")
                return sock.recv(10)  # b"": the server's close_notify, not an error

        assert await in_thread(client) == b""
        protocol = await server.first()
        assert await asyncio.wait_for(protocol.lost, 5) is None

        server2 = Server(certs)
        raw_context = ssl.create_default_context(cafile=str(certs[0]))

        def ragged_close() -> None:  # a client that closes without close_notify
            raw = socket.create_connection(("127.0.0.1", server2.port), timeout=10)
            sock = raw_context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(b"x")
            raw2 = socket.socket(fileno=sock.detach())
            # FIN with no close_notify before it (shutdown, not close: a close with
            # unread bytes, such as TLS 1.3 session tickets, would send a reset)
            raw2.shutdown(socket.SHUT_WR)
            raw2.settimeout(5)
            while raw2.recv(65536):
                pass  # until the server closes in turn
            raw2.close()

        await in_thread(ragged_close)
        protocol2 = await server2.first()
        assert await asyncio.wait_for(protocol2.lost, 5) is None
        assert protocol2.events == ["made", "eof", "lost"]
        server.close()
        server2.close()

    run(main())


def test_abort_cuts_the_connection(certs) -> None:
    async def main() -> None:
        # what the socket took is out; then the end, with no close_notify
        server = Server(certs, on_data=lambda p, d: (p.transport.write(b"sent"),
                                                     p.transport.abort()))

        def client() -> list:
            got = []
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"x")
                for _ in range(3):
                    try:
                        chunk = sock.recv(10)
                    except (ssl.SSLError, OSError) as exc:
                        got.append(type(exc))
                        break
                    got.append(chunk)
                    if not chunk:
                        break
            return got

        result = await in_thread(client)
        assert result[0] == b"sent"
        assert result[1] == b"" or isinstance(result[1], type)
        protocol = await server.first()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.transport.is_closing()
        protocol.transport.write(b"ignored")  # after the end: nothing, no error
        server.close()

    run(main())


def test_clients_that_do_not_finish_a_handshake_cost_no_protocol(certs) -> None:
    async def main() -> None:
        server = Server(certs, handshake_timeout=0.3)

        def plain_http() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    return sock.recv(100)  # a TLS alert, then the end
                except ConnectionResetError:
                    return b""

        def silent() -> float:
            import time
            start = time.monotonic()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                assert sock.recv(100) == b""  # closed by the handshake timeout
            return time.monotonic() - start

        answer = await in_thread(plain_http)
        assert not answer.startswith(b"HTTP")
        waited = await in_thread(silent)
        assert 0.2 < waited < 3
        assert server.protocols == []  # no protocol was made for either

        # and the listener still serves
        def client() -> int:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"ok")
                return 1

        assert await in_thread(client) == 1
        await server.first()
        server.close()

    run(main())


def test_a_reset_during_a_large_write_ends_the_connection(certs) -> None:
    async def main() -> None:
        server = Server(certs, on_data=lambda p, d: p.transport.write(b"x" * (8 << 20)))

        def client() -> None:
            sock = _client(server.port, certs[0])
            sock.sendall(b"go")
            sock.recv(1000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST, with most of the response still unsent

        await in_thread(client)
        protocol = await server.first()
        exc = await asyncio.wait_for(protocol.lost, 10)
        assert exc is None or isinstance(exc, (ConnectionError, ssl.SSLError))
        assert protocol.transport.is_closing()
        server.close()

    run(main())



def test_a_protocol_that_raises_is_reported_and_its_connection_ends(certs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        def broken(protocol: Recorder, data: bytes) -> None:
            raise ValueError("bug in the protocol")

        server = Server(certs, on_data=broken)

        def client() -> bytes:
            with _client(server.port, certs[0]) as sock:
                sock.sendall(b"x")
                try:
                    return sock.recv(10)
                except (ssl.SSLError, OSError):
                    return b""

        assert await in_thread(client) == b""
        protocol = await server.first()
        exc = await asyncio.wait_for(protocol.lost, 5)
        assert isinstance(exc, ValueError)
        assert reported and reported[0]["message"] == "data_received of Recorder raised"
        server.close()

    run(main())
