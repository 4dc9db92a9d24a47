"""80s apps run unchanged: the 80s Lua surface on real eightys processes.

The app (tests/apps/compat80s_app.lua) is written against 80s's API: its module
names (aio.aio, aio.lib.*), globals, aio/net/codec/crypto calls, stream routes
and aio.lib.nodes. Every test talks to it over real sockets.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import APPS, wait_until

APP = APPS / "compat80s_app.lua"

#: crypto.cipher values produced by 80s itself (its crypto_cipher, built from
#: diznq/80s at 37ae446), as (key, use_iv, plaintext, token hex).
VECTORS_80S = [
    ("1234567890123456", False, b"Hello world!",
     "07ca7acb0a732b96464ebe7b610b1ea0603adb44e804f028beddc676778cb7200c000000"
     "b1fa95351526f7b3c9119acee9a87d60"),
    ("a much longer key of 29 bytes", False, b"0123456789abcdef",
     "5a635be9d8d266cf9dd72aa3f67b49d8d0d807a03123002709f4e02e57e88a7f10000000"
     "d49a5877ad84420b13fd1dbe65486da64e3cafeaf0b4482b40a7de7931c96ec1"),
    ("1234567890123456", True, b"Hello world!",
     "cb0a094155a3c59168938babf71e46a1e222dd52f708e21fdced77f7d70e66880c000000"
     "c65d908936d460d668fab4244a655a9a9d487458067884344ba549666dd63207"),
]


def get(server, path: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=timeout) as r:
        return r.read()


def get_json(server, path: str) -> dict:
    return json.loads(get(server, path))


@pytest.fixture
def app(start_server):
    return start_server(APP, workers=1)


def test_globals_and_library_functions_are_lua_functions(app):
    g = get_json(app, "/globals")
    assert g["node_id"] == f"localhost/{app.port}/0"
    assert (g["socket"], g["ktls"], g["pipe"], g["other"], g["mb"]) == (1, 2, 3, 4, 5)
    assert g["nilfd"] and g["reload"] and g["templates"]
    for table in ("net", "codec", "crypto"):
        assert g[table] and set(g[table].values()) == {"function"}, (table, g[table])
    for name in ("sockname", "partscan", "mkdir", "popen"):
        assert name in g["net"]
    assert {"lua_encode", "mysql_encode"} <= set(g["codec"])
    assert "cipher" in g["crypto"]


def test_sockname_is_the_peer_address(app):
    with socket.create_connection(("127.0.0.1", app.port)) as sock:
        sock.sendall(b"GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        port = sock.getsockname()[1]
    assert data.endswith(f"127.0.0.1:{port} 10.1.2.3".encode())


@pytest.mark.parametrize("haystack, needle, offset, expected", [
    ("hello world", "world", 1, [7, 5]),     # full match
    ("hello wor", "world", 1, [7, 3]),       # the delimiter starts at the end
    ("hello", "xyz", 1, [6, 0]),             # nothing
    ("abcabc", "abc", 2, [4, 3]),            # from an offset
    ("abc", "c", 1, [3, 1]),                 # one-byte needle
])
def test_partscan(app, haystack, needle, offset, expected):
    from urllib.parse import urlencode

    q = urlencode({"haystack": haystack, "needle": needle, "offset": offset})
    assert get_json(app, f"/partscan?{q}") == expected


def test_cipher_decrypts_what_80s_encrypted_and_back(app):
    from urllib.parse import urlencode

    from eightys import crypto

    for key, use_iv, plain, token in VECTORS_80S:
        assert get(app, "/cipher?" + urlencode({"key": key, "token": token})) == plain
        if not use_iv:  # a zero IV is deterministic: our output is 80s's, byte for byte
            ours = get(app, "/cipher?" + urlencode({"key": key, "text": plain, "iv": "0"}))
            assert ours.decode() == token
    # with a random IV, ours decrypts with an independent reading of 80s's format
    token = bytes.fromhex(get(app, "/cipher?text=with+iv").decode())
    assert _decrypt_80s_format(token, b"1234567890123456") == b"with iv"
    # tampering is refused
    bad = bytearray(bytes.fromhex(VECTORS_80S[0][3]))
    bad[-1] ^= 1
    assert crypto.cipher(bytes(bad), b"1234567890123456", True, False) == (None, b"failed to cipher")
    assert crypto.cipher(b"x", b"short", True, True)[0] is None


def _decrypt_80s_format(token: bytes, key: bytes) -> bytes:
    """80s's layout, written out from its description: hmac | len int32 LE | iv | AES-128-CBC."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert hmac.compare_digest(hmac.new(key, token[32:], hashlib.sha256).digest(), token[:32])
    length = int.from_bytes(token[32:36], "little")
    iv, body = token[36:52], token[52:]
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    plain = unpad.update(dec.update(body) + dec.finalize()) + unpad.finalize()
    return plain[:length]


def test_encrypt_decrypt_and_encrypted_urls(app):
    e = get_json(app, "/encrypt?text=secret")
    assert e["opened"] == "secret" and e["tampered"] is True
    u = get_json(app, "/url")
    assert u["url"].startswith("/target?e=") and u["url"].endswith("#frag")
    assert "x" not in u["url"].split("?")[1].split("#")[0].replace("%", "")[:0]  # opaque
    assert (u["a"], u["b"], u["e_b"]) == ("1", "x y", "x y")
    assert u["plain"] == "/target?a=1"


def test_lua_encode_and_mysql_encode(app):
    c = get_json(app, "/codec")
    assert c["same"] is True
    assert c["mysql"] == "it\\'s \\\"q\\\"\\n\\\\ \\0 end"


def test_popen_runs_without_a_shell(app):
    assert get(app, "/popen") == b"a b|$HOME"
    assert get(app, "/popen-write") == b"piped through cat"
    assert get(app, "/popen-missing") == b"got:"  # 80s: a failed exec reads as empty output


def test_popen_children_are_killed_when_the_server_stops(start_server):
    server = start_server(APP, workers=1)
    seconds = f"9{os.getpid()}.5"  # unique: other test runs may have their own sleepers
    assert get(server, f"/sleep?seconds={seconds}") == b"started"

    def sleepers() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd == b"sleep\0" + seconds.encode() + b"\0":
                    found.append(int(entry))
        return found

    wait_until(lambda: sleepers(), 5, message="the child process")
    server.stop()
    wait_until(lambda: not sleepers(), 5, message="the child to be gone")


def test_http_client(app):
    c = get_json(app, "/client")
    assert c["status"] == 200 and c["chunked"] == "chunk one, chunk two"
    assert c["redirect_status"] == 302 and c["location"] == "/chunked"  # not followed by default
    assert c["followed"] == "chunk one, chunk two"
    assert c["posted"] == 'application/json {"k":"v"}'
    assert c["query"] == "[3,2]"
    assert c["refused"] is True
    assert c["ip"] == "127.0.0.1"
    assert c["reused"] is True, "keep-alive: the second GET used the first one's connection"
    assert c["not_reused"] is True, "keepalive = false closes the connection"


def test_max_http_body_set_from_lua(app):
    assert get(app, "/limits?body=10") == b"ok"
    req = urllib.request.Request(f"http://127.0.0.1:{app.port}/upload", data=b"x" * 11)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 413
    get(app, "/limits")  # nil: back to the configured limit
    req = urllib.request.Request(f"http://127.0.0.1:{app.port}/upload", data=b"x" * 11)
    assert urllib.request.urlopen(req, timeout=5).read() == b"11"


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _chat_client(port: int, name: str) -> tuple[socket.socket, str]:
    sock = socket.create_connection(("127.0.0.1", port))
    # the head and the first line in one write: the stream gets the bytes after the head
    sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n" + name.encode() + b"\n")
    data = _read_until(sock, b"\n", 5)
    assert data.startswith(b"name? hello " + name.encode()), data
    return sock, data.split(b" on ")[1].strip().decode()


def test_stream_route_chat_across_workers(start_server):
    server = start_server(APP, workers=2)
    alice, alice_worker = _chat_client(server.port, "alice")
    others = []
    bob = None
    for _ in range(40):  # SO_REUSEPORT spreads connections: find one on the other worker
        sock, worker = _chat_client(server.port, f"bob{len(others)}")
        if worker != alice_worker:
            bob, bob_name = sock, f"bob{len(others)}"
            break
        others.append(sock)
    assert bob is not None, "no connection landed on the second worker"
    try:
        alice.sendall(b"hi there\n")
        assert b"alice: hi there\n" in _read_until(bob, b"hi there\n")
        bob.sendall(b"hello alice\n")
        assert f"{bob_name}: hello alice\n".encode() in _read_until(alice, b"hello alice\n")
        # the sender is excluded from its own broadcast
        alice.settimeout(0.5)
        with pytest.raises(socket.timeout):
            data = alice.recv(4096)
            assert b"hi there" not in data
            alice.recv(4096)
    finally:
        for sock in [alice, bob, *others]:
            sock.close()


def test_close_handler_sees_named_sockets(app):
    sock, _ = _chat_client(app.port, "carol")
    sock.close()
    wait_until(lambda: "carol" in get_json(app, "/closed"), 5, message="the close handler")


def test_stream_handler_returning_a_coroutine_reads_the_body(app):
    with socket.create_connection(("127.0.0.1", app.port)) as sock:
        sock.sendall(b"POST /raw HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
        time.sleep(0.1)
        sock.sendall(b"lo")
        data = _read_until(sock, b"raw:hello")
    assert data.endswith(b"\r\n\r\nraw:hello")


def test_nodes_http_protocol_requires_the_secret(app):
    headers = {"Message": "m1", "From": json.dumps([["peer", 1, 0], "chat", "zed"]),
               "To": json.dumps([["localhost", app.port, 0]]), "Except": "-"}
    req = urllib.request.Request(f"http://127.0.0.1:{app.port}/nodes", data=b"",
                                 headers={**headers, "Authorization": "wrong"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    # a peer server registers a name here, then a broadcast to nodes.global reaches it
    req = urllib.request.Request(f"http://127.0.0.1:{app.port}/nodes", data=b"",
                                 headers={**headers, "Authorization": "TEST-SECRET"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    assert r.headers["message"] == "m1"
    assert body["name"][1:] == ["chat", "zed", "peer.1.0"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{app.port}/nodes",
        headers={**headers, "To": json.dumps(["chat"]), "Authorization": "TEST-SECRET"})
    with urllib.request.urlopen(req, timeout=5) as r:
        listed = json.loads(r.read())
    assert [entry["delegate"] for entry in listed] == [[["peer", 1, 0], "chat", "zed"]]


def test_nodes_across_two_servers(start_server):
    from conftest import free_port

    port_a = free_port()
    env = {"NODES_MASTER_PORT": str(port_a)}
    a = start_server(APP, workers=2, port=port_a, env=env)  # the master
    b = start_server(APP, workers=1, env=env)
    alice, _ = _chat_client(a.port, "alice")
    bob, _ = _chat_client(b.port, "bob")
    try:
        # bob's registration travels to the master (POST /nodes) and reaches both its workers
        headers = {"Message": "q", "From": json.dumps([["x", 1, 0]]), "Except": "-",
                   "To": json.dumps(["chat"]), "Authorization": "TEST-SECRET"}

        def registered() -> bool:
            for _ in range(4):  # ask several connections: they may land on either worker
                req = urllib.request.Request(f"http://127.0.0.1:{a.port}/nodes", headers=headers)
                with urllib.request.urlopen(req, timeout=5) as r:
                    if "bob" not in r.read().decode():
                        return False
            return True

        wait_until(registered, 10, message="bob registered at the master")
        alice.sendall(b"from a\n")
        assert b"alice: from a\n" in _read_until(bob, b"from a\n")
        bob.sendall(b"from b\n")
        assert b"bob: from b\n" in _read_until(alice, b"from b\n")
    finally:
        alice.close()
        bob.close()


def test_stream_route_takes_a_bare_80s_style_request(app):
    # an 80s chat client (nc) sends just the request line: no Host, then lines
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        sock.sendall(b"GET /chat HTTP/1.1\r\n\r\n")
        assert _read_until(sock, b"name? ") == b"name? "
        sock.sendall(b"dave\r\n")
        assert _read_until(sock, b"\n").startswith(b"hello dave on ")
    # HEAD on a GET stream route is refused as HTTP, not taken over
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as sock:
        sock.sendall(b"HEAD /chat HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_net_mail_in_80s_form(app):
    assert get(app, "/mail80") == b"true nil"
    wait_until(lambda: get(app, "/mailbox") == b"0 5 hi 80s", 5, message="the mail")


def test_connect2_and_parse_http(app):
    c = get_json(app, "/connect2")
    assert c["proto"] == "HTTP/1.1" and c["status"] == "200 OK"
    assert c["type"].startswith("text/plain")
    assert get(app, "/connect2-refused") == b"refused"


def test_templates_prepare_and_render_80s_calls(app):
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/tpl80?x=%3Cb%3E", timeout=5) as r:
        assert r.status == 201 and r.headers["X-T"] == "1"
        assert r.headers["Content-Type"] == "text/html"
        assert r.read() == b"<p>&lt;b&gt;</p>"


def test_watch(app, tmp_path):
    from urllib.parse import quote

    assert get(app, "/watch?dir=" + quote(str(tmp_path))) == b"watching"
    assert get(app, "/watch?dir=" + quote(str(tmp_path / "missing"))) == b"failed"
    time.sleep(0.3)  # the watch is set up off the request
    (tmp_path / "a.txt").write_text("one")
    wait_until(lambda: any(e.startswith("a.txt:") for e in get_json(app, "/watched")), 5,
               message="the change event")
    (tmp_path / "a.txt").unlink()
    wait_until(lambda: "a.txt:delete" in get_json(app, "/watched"), 5, message="the delete")
    assert get(app, "/unwatch") == b"true"
