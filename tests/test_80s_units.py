"""Pure functions and the HTTP client behind the 80s surface, in-process:
net.partscan, codec.mysql_encode, crypto.cipher's edge cases, and the HTTP client's
framing, pooling and timeouts against real local sockets."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from eightys import codec, crypto
from eightys.net80s import mkdir, partscan
from eightys.http_client import HttpClient


@pytest.mark.parametrize("haystack, needle, offset, expected", [
    (b"", b"x", 1, (1, 0)),
    (b"abc", b"", 1, (4, 0)),
    (b"abc\r\n\r", b"\r\n\r\n", 1, (4, 3)),       # a delimiter split across reads
    (b"abc\r\n\r\nx", b"\r\n\r\n", 1, (4, 4)),
    (b"aaa", b"aab", 1, (2, 2)),                  # longest start of the needle at the end
    (b"abcabc", b"abc", 0, (1, 3)),               # an offset below 1 counts as 1
    (b"abcabc", b"abc", 99, (7, 0)),              # past the end
    (b"x" * 10, b"y" * 300, 1, (0, 0)),           # 80s's needle limit
])
def test_partscan(haystack, needle, offset, expected):
    assert partscan(haystack, needle, offset) == expected


def test_mkdir(tmp_path):
    target = tmp_path / "d"
    assert mkdir(str(target).encode()) is True and target.is_dir()
    assert mkdir(str(target).encode()) is True  # exists already
    assert mkdir(str(tmp_path / "no" / "such").encode()) is False


def test_mysql_encode():
    assert codec.mysql_encode(b"plain") == b"plain"
    assert codec.mysql_encode(b"a'b\"c\\d\r\n\x00\x01\x08") == b"a\\'b\\\"c\\\\d\\r\\n\\0\\1\\b"


def test_cipher_edges():
    key = b"k" * 16
    token = crypto.cipher(b"", key, True, True)
    assert crypto.cipher(token, key, True, False) == b""
    block = crypto.cipher(b"x" * 16, key, False, True)  # a full block of padding
    assert len(block) == 36 + 32 and crypto.cipher(block, key, False, False) == b"x" * 16
    assert crypto.cipher(token, b"other-key-16byte", True, False) == (None, b"failed to cipher")
    assert crypto.cipher(token[:20], key, True, False)[0] is None
    # a long key is folded by XOR into 16 bytes: equal folds, equal ciphers
    folded = bytes(a ^ b for a, b in zip(b"A" * 16, b"B" * 16))
    assert crypto.cipher(b"hi", b"A" * 16 + b"B" * 16, False, True) == \
        crypto.cipher(b"hi", folded, False, True)


class _Peer:
    """A threaded server answering each request with the next canned response."""

    def __init__(self, responses: list[bytes], close_after: bool = False, delay: float = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.responses = responses
        self.connections = 0
        self.requests: list[bytes] = []
        self.close_after = close_after
        self.delay = delay
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.responses:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    self.requests.append(data)
                    time.sleep(self.delay)
                    conn.sendall(self.responses.pop(0))
                    if self.close_after:
                        break

    def close(self) -> None:
        self.sock.close()


class _Worker:
    pass


def request(client: HttpClient, url: str, **kw) -> dict:
    args = dict(method="GET", headers=[], body=b"", timeout=5.0, redirects=0, keepalive=True)
    args.update(kw)
    return asyncio.run(_in_loop(client, url, args))


async def _in_loop(client: HttpClient, url: str, args: dict) -> dict:
    try:
        return await client._request(args["method"], url, args["headers"], args["body"],
                                     args["timeout"], args["redirects"], args["keepalive"])
    finally:
        client.close()


def test_http_client_bodies_and_pool():
    peer = _Peer([
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    ])
    client = HttpClient(_Worker())

    async def both() -> list[dict]:
        base = f"http://127.0.0.1:{peer.port}/x"
        first = await client._request("GET", base, [], b"", 5, 0, True)
        second = await client._request("POST", base, [(b"X-A", b"1")], b"body", 5, 0, True)
        client.close()
        return [first, second]

    first, second = asyncio.run(both())
    assert first[b"body"] == b"hello" and second[b"body"] == b"abcde"
    assert peer.connections == 1, "the second request reused the connection"
    assert b"Content-Length: 4\r\n" in peer.requests[1] and b"X-A: 1\r\n" in peer.requests[1]
    peer.close()


def test_http_client_body_until_close_and_errors():
    peer = _Peer([b"HTTP/1.0 200 OK\r\n\r\nall of it"], close_after=True)
    assert request(HttpClient(_Worker()), f"http://127.0.0.1:{peer.port}/")[b"body"] == b"all of it"
    peer.close()
    slow = _Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], delay=2)
    result = request(HttpClient(_Worker()), f"http://127.0.0.1:{slow.port}/", timeout=0.3)
    assert result[b"error"].startswith("timed out")
    slow.close()
    assert b"error" in request(HttpClient(_Worker()), "ftp://example.invalid/")
    cut = _Peer([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], close_after=True)
    assert b"error" in request(HttpClient(_Worker()), f"http://127.0.0.1:{cut.port}/")
    cut.close()
    assert b"error" in request(HttpClient(_Worker()), "http://127.0.0.1:1/",
                               headers=[(b"X", b"a\r\nb")])


def _self_signed(tmp_path) -> tuple[str, str]:
    from certs import self_signed

    cert, key = self_signed(tmp_path)
    return str(cert), str(key)


def test_http_client_https_checks_the_certificate(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def scenario() -> tuple[dict, dict, dict]:
        async def handle(reader, writer):
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(_Worker())
        url = f"https://localhost:{port}/"
        try:
            trusted = await client._request("GET", url, [], b"", 5, 0, True, cert)
            untrusted = await client._request("GET", url, [], b"", 5, 0, True)
            wrong_name = await client._request("GET", f"https://127.0.0.1:{port}/", [], b"",
                                               5, 0, True, cert)
        finally:
            client.close()
            server.close()
        return trusted, untrusted, wrong_name

    trusted, untrusted, wrong_name = asyncio.run(scenario())
    assert trusted[b"status"] == 200 and trusted[b"body"] == b"secure"
    assert "certificate" in untrusted[b"error"].lower()
    assert b"error" in wrong_name


# -- stream routes in the sans-IO HTTP core (compiled and pure Python) ---------------------

@pytest.fixture(params=["installed", "python"])
def core(request):
    import importlib.util
    import sys
    from pathlib import Path

    import eightys.protocols.http_core as installed

    if request.param == "installed":
        return installed
    spec = importlib.util.spec_from_file_location(
        "eightys_http_core_pure_80s", Path(installed.__file__).with_name("http_core.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _stream_conn(core):
    limits = core.HttpLimits()
    limits.stream_routes.update({b"/chat": {b"GET"}, b"/raw": {b"POST"}})
    return core.HttpConnection(limits, core.Clock(1000.0))


def test_core_stream_request_becomes_a_pending_upgrade(core):
    conn = _stream_conn(core)
    events = conn.receive_data(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"GET /chat?room=1 HTTP/1.1\r\n\r\nalice\nmore")
    assert [e[2] for e in events] == [b"/echo", b"/chat?room=1"]
    assert conn.state == core.SWITCHING and conn.is_upgrade(1)
    assert conn.trailing == b"alice\nmore"
    assert conn.receive_data(b" later") == [] and conn.trailing == b"alice\nmore later"
    conn.send(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True)
    assert conn.switch_protocol(1, b"")
    assert conn.state == core.SWITCHED
    assert conn.data_to_send().startswith(b"HTTP/1.1 200 OK")


def test_core_stream_request_head_split_and_body_kept_for_the_stream(core):
    conn = _stream_conn(core)
    assert conn.receive_data(b"POST /raw HTTP/1.1\r\nContent-Length: 5\r\n\r") == []
    events = conn.receive_data(b"\nhel")
    assert [e[2] for e in events] == [b"/raw"] and events[0][3] is None  # no body parsed
    assert conn.trailing == b"hel"


def test_core_other_requests_are_not_streams(core):
    conn = _stream_conn(core)
    events = conn.receive_data(b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert events[0][3] == b"hi" and conn.state != core.SWITCHING  # POST /chat is plain HTTP
