"""The README's examples for the 80s surface run as written (section "HTTP client,
DNS, nodes"): each Lua block is served as an app and exercised."""

from __future__ import annotations

import re
import socket
import urllib.request

from conftest import REPO


def section_blocks(title: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```lua\n(.*?)```", text[start:end], re.S)


def test_http_client_and_dns_example(start_server, tmp_path):
    app = tmp_path / "client.lua"
    app.write_text(section_blocks("HTTP client, DNS, nodes")[0])
    server = start_server(app, workers=1)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/proxy", timeout=10) as r:
        assert r.read() == b"200 Hi, proxy 127.0.0.1"


def test_nodes_chat_example(start_server, tmp_path):
    app = tmp_path / "chat.lua"
    app.write_text(section_blocks("HTTP client, DNS, nodes")[1])
    server = start_server(app, workers=2)
    clients = []
    for name in (b"ann", b"bo"):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100) == b"name? "
        sock.sendall(name + b"\n")
        clients.append(sock)
    ann, bo = clients
    try:
        for _ in range(50):  # until bo's registration is in (it raced ann's message)
            ann.sendall(b"hello\n")
            bo.settimeout(0.2)
            try:
                data = bo.recv(100)
            except socket.timeout:
                continue
            assert data.startswith(b"ann: hello\n")
            break
        else:
            raise AssertionError("bo never got ann's line")
    finally:
        ann.close()
        bo.close()
