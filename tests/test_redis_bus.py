"""Beyond one machine (eightys/redis_bus.py): ``aio:publish``/``ws:subscribe`` and
``aio.lib.nodes`` across eightys servers sharing a Redis, and sessions across them.

Real ``eightys`` servers on different ports, real WebSocket and TCP clients, and a
redis-server of the test's own (``private_redis``: killed, restarted and
``CLIENT KILL``-ed at will) or the machine's Redis.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import PrivateRedis, Server, wait_until
from http_helpers import HttpClient

pytest.importorskip("redis")
from websockets.sync.client import connect as ws_connect  # noqa: E402

ROOMS_APP = """
aio:websocket("/rooms/:room", {
    open = function(ws) ws:subscribe(ws.params.room) end,
    message = function(ws, data) aio:publish(ws.params.room, data) end,
})
aio:http_get("/publish", function(fd, query)
    local q = aio:parse_query(query)
    local started = net.clock()
    local n, err = aio:publish(q.room, q.m, q.binary and { binary = true } or nil)
    fd:http_response(200, "application/json",
        { n = n, err = err or false, took = net.clock() - started })
end)
aio:http_get("/ping", function(fd) fd:http_response(200, "text/plain", "pong") end)
"""


def get(server: Server, target: str) -> Any:
    with HttpClient.connect(server) as http:
        return http.request("GET", target)


def publish(server: Server, room: str, message: str) -> dict[str, Any]:
    response = get(server, f"/publish?room={room}&m={message}")
    assert response.status == 200, response
    return json.loads(response.body)


def received(client: Any, timeout: float = 0.3) -> list[str]:
    """Every message ``client`` gets until it is quiet for ``timeout``."""
    messages = []
    while True:
        try:
            messages.append(client.recv(timeout=timeout))
        except TimeoutError:
            return messages


def until_everyone_hears(senders: list[Any], clients: list[Any], what: str) -> None:
    """Probe from each sender until every client hears it (each subscription made:
    at the master, on Redis), then drain what the probes left."""
    for sender in senders:
        for attempt in range(100):
            sender.send(f"probe{attempt}")
            if all(any(m.startswith("probe") for m in received(c, 0.1)) for c in clients):
                break
        else:
            pytest.fail(f"the probes never reached every client ({what})")
    for client in clients:
        received(client, 0.3)


@contextlib.contextmanager
def room_clients(servers: list[Server], room: str) -> Iterator[list[Any]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(
            ws_connect(f"ws://127.0.0.1:{server.port}/rooms/{room}", open_timeout=5))
            for server in servers]


def numsub(admin: Any, channel: str) -> int:
    return admin.pubsub_numsub(channel)[0][1]


def test_websocket_publish_reaches_every_server_exactly_once(
        start_server: Any, tmp_path: Path, private_redis: PrivateRedis) -> None:
    """Clients on two servers of two workers each: every message any of them sends
    reaches every client once (its own server's through the master, the other's
    through Redis), and Redis is subscribed to the room only while it has local
    subscribers."""
    entry = tmp_path / "rooms.lua"
    entry.write_text(ROOMS_APP)
    env = {"REDIS_URL": private_redis.url}
    a = start_server(entry, workers=2, env=env)
    b = start_server(entry, workers=2, env=env)
    admin = private_redis.client()
    room = f"r{uuid.uuid4().hex[:8]}"
    channel = f"eightys:0:ws:{room}"
    with room_clients([a, b, a, b, a, b], room) as clients:
        until_everyone_hears([clients[1], clients[0]], clients, "two servers")
        subscribed = numsub(admin, channel)
        assert 2 <= subscribed <= 4  # one pub/sub connection per worker that has clients
        for i, client in enumerate(clients):
            client.send(f"m{i}")
        expected = sorted(f"m{i}" for i in range(len(clients)))
        for client in clients:
            got: list[str] = []
            deadline = time.monotonic() + 5
            while len(got) < len(expected) and time.monotonic() < deadline:
                got += received(client, 0.2)
            got += received(client, 0.3)  # and nothing more: exactly once
            assert sorted(got) == expected, got
        # a publish from an HTTP handler on B: A's clients hear it too
        assert publish(b, room, "from-http")["err"] is False
        for client in clients:
            assert received(client) == ["from-http"]
        assert get(b, f"/publish?room={room}&m=bytes&binary=1").status == 200
        for client in clients:  # binary on both servers
            assert received(client) == [b"bytes"]
    # the last subscribers gone: no worker listens on the room any more
    wait_until(lambda: numsub(admin, channel) == 0, 5.0, message="the room unsubscribed")
    other = f"eightys:0:ws:{room}-other"
    assert numsub(admin, other) == 0  # nothing subscribed for rooms without subscribers
    for server in (a, b):
        assert "Traceback" not in server.stderr_text()


def test_redis_killed_or_restarted_publish_stays_local_and_fast(
        start_server: Any, tmp_path: Path, private_redis: PrivateRedis) -> None:
    """``CLIENT KILL`` of the pub/sub connections, then Redis killed and restarted:
    the subscriptions come back each time; while Redis is down a publish still
    reaches the server's own subscribers and fails fast with the reason; no
    worker blocks."""
    entry = tmp_path / "rooms.lua"
    entry.write_text(ROOMS_APP)
    env = {"REDIS_URL": private_redis.url}
    a = start_server(entry, workers=1, env=env)
    b = start_server(entry, workers=1, env=env)
    admin = private_redis.client()
    room = "lobby"
    channel = f"eightys:0:ws:{room}"
    with room_clients([a, b], room) as clients:
        on_a, on_b = clients
        until_everyone_hears([on_a, on_b], clients, "at the start")
        assert numsub(admin, channel) == 2

        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        wait_until(lambda: numsub(admin, channel) == 2, 10.0,
                   message="both servers subscribed again after CLIENT KILL")
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        until_everyone_hears([on_b, on_a], clients, "after CLIENT KILL")

        private_redis.stop()
        answers = [publish(a, room, f"down{i}") for i in range(20)]
        assert all(answer["n"] == 1 for answer in answers)  # A's own subscriber, each time
        assert all(answer["took"] < 0.05 for answer in answers), answers
        failed = [answer["err"] for answer in answers if answer["err"]]
        assert failed and failed[-1].startswith("redis: "), answers
        assert received(on_a) == [f"down{i}" for i in range(20)]
        assert received(on_b, 0.5) == []
        started = time.monotonic()
        assert get(b, "/ping").body == b"pong"  # no worker waits for Redis
        assert time.monotonic() - started < 0.5
        on_b.send("while down")  # B's handler publishes; B's client hears it at once
        assert on_b.recv(timeout=2) == "while down"

        private_redis.start()
        admin = private_redis.client()
        wait_until(lambda: numsub(admin, channel) == 2, 15.0,
                   message="both servers subscribed again after the restart")
        until_everyone_hears([on_a, on_b], clients, "after the restart")
        on_b.send("back")
        assert received(on_a) == ["back"] and received(on_b) == ["back"]
    for server in (a, b):
        log = server.stderr_text()
        assert "not published to the other servers" in log
        assert "Traceback" not in log


NODES_APP = """
require("aio.lib.nodes")
aio:stream_http_get("/chat", function(sock)
    local name = coroutine.yield("\\n")
    if not name then return end
    nodes:register(sock, { "chat", name })
    sock:write("hello " .. name .. " " .. codec.json_encode(nodes:get_node()) .. "\\n")
    while true do
        local line = coroutine.yield("\\n")
        if not line then break end
        local to, text = line:match("^(%S+) (.*)$")
        if to == "*" then       -- the room, everywhere, but not me
            nodes:broadcast({ nodes.global, "chat" }, sock:get_name(), name .. ": " .. text .. "\\n")
        elseif to then          -- one name, wherever it is
            nodes:broadcast({ nodes.global, "chat", to }, nil, name .. " to you: " .. text .. "\\n")
        end
    end
end)
aio:http_get("/tell", function(fd, query)   -- to a name on one node (worker of a server)
    local q = aio:parse_query(query)
    local ok, err = nodes:broadcast({ nodes:get_node(q.host, tonumber(q.port), tonumber(q.worker)),
        "chat", q.name }, nil, "told: " .. q.m .. "\\n")
    fd:http_response(200, "text/plain", tostring(ok) .. " " .. tostring(err))
end)
"""


class Chat:
    """A line client of NODES_APP."""

    def __init__(self, server: Server, name: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.sock.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n" + name.encode() + b"\n")
        self.buffer = b""
        hello = self.lines(1.0)
        assert hello and hello[0].startswith(f"hello {name} "), hello
        self.node = json.loads(hello[0].split(" ", 2)[2])

    def say(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def lines(self, quiet: float = 0.3) -> list[str]:
        """The lines that arrive until none came for ``quiet`` seconds."""
        self.sock.settimeout(quiet)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in done]

    def close(self) -> None:
        self.sock.close()


def test_nodes_broadcasts_and_names_across_servers(start_server: Any, tmp_path: Path,
                                                   private_redis: PrivateRedis) -> None:
    entry = tmp_path / "chat.lua"
    entry.write_text(NODES_APP)
    env = {"REDIS_URL": private_redis.url}
    a = start_server(entry, workers=2, env=env)
    b = start_server(entry, workers=1, env=env)
    alice, bob, carol = Chat(a, "alice"), Chat(b, "bob"), Chat(a, "carol")
    chats = (alice, bob, carol)
    try:
        for attempt in range(100):  # until the registrations are subscribed on Redis
            bob.say(f"* probe{attempt}")
            alice.say(f"* probe{attempt}")
            heard = [chat.lines(0.1) for chat in chats]
            if all(any("probe" in line for line in lines) for lines in heard):
                break
        else:
            pytest.fail("the probes never reached every client")
        for chat in chats:
            chat.lines()
        alice.say("* hi all")
        assert bob.lines() == ["alice: hi all"]  # another server, once
        assert carol.lines() == ["alice: hi all"]  # this server, once
        assert alice.lines() == []  # not the sender
        bob.say("alice psst")  # a name, found wherever it is
        assert alice.lines() == ["bob to you: psst"]
        assert carol.lines() == [] and bob.lines() == []
        node = alice.node  # a name on one node of the other server
        told = get(b, f"/tell?host={node[0]}&port={node[1]}&worker={node[2]}&name=alice&m=x")
        assert told.body == b"true nil"
        assert alice.lines() == ["told: x"]
        assert bob.lines() == [] and carol.lines() == []
    finally:
        for chat in chats:
            chat.close()
    admin = private_redis.client()
    wait_until(lambda: not admin.pubsub_channels("eightys:0:nodes:*"), 5.0,
               message="no nodes channel left once the named sockets closed")
    for server in (a, b):
        assert "Traceback" not in server.stderr_text() and " ERROR " not in server.stderr_text()


COUNTER = '<?lu session.n = (session.n or 0) + 1 write("n=%d", session.n) ?>'


def test_cookie_session_moves_between_servers(start_server: Any, tmp_path: Path) -> None:
    """The default encrypted-cookie sessions: two servers sharing SECRET_KEY read
    each other's sessions, no store at all."""
    root = tmp_path / "public_html"
    root.mkdir()
    (root / "counter.dyn.html").write_text(COUNTER)
    env = {"PUBLIC_HTML": str(root), "SECRET_KEY": "the-same-secret-on-both-0123456789"}
    servers = [start_server("server/http.lua", workers=1, env=env) for _ in range(2)]
    cookie = None
    for visit in range(1, 5):
        server = servers[visit % 2]
        with HttpClient.connect(server) as http:
            response = http.request("GET", "/counter",
                                    headers=[("Cookie", cookie)] if cookie else [])
        assert response.body == f"n={visit}".encode(), response
        cookie = (response.header("Set-Cookie") or "").split(";", 1)[0] or cookie


def readme_block(marker: str) -> str:
    """The README's ```lua block (Deployment: several servers) holding ``marker``."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Deployment: several servers"):]
    at = section.index(marker)
    start = section.rindex("```lua\n", 0, at) + len("```lua\n")
    return section[start:section.index("```\n", at)]


def test_readme_rooms_across_servers(start_server: Any, tmp_path: Path,
                                     private_redis: PrivateRedis) -> None:
    entry = tmp_path / "rooms.lua"
    entry.write_text(readme_block("-- every server runs this with --redis (or REDIS_URL)"))
    env = {"REDIS_URL": private_redis.url}
    a = start_server(entry, workers=2, env=env)
    b = start_server(entry, workers=2, env=env)
    with room_clients([a, b, a, b], "lobby") as clients:
        until_everyone_hears([clients[1], clients[0]], clients, "the README rooms")
        clients[1].send("hello")  # from server B
        for client in clients:
            assert received(client) == ["hello"]  # exactly once, on both servers
        # another program publishing in the documented format
        private_redis.client().publish("eightys:0:ws:lobby", b"0000000000000000tfrom outside")
        for client in clients:
            assert received(client) == ["from outside"]
        private_redis.stop()
        sent = [f"down{i}" for i in range(10)]
        for message in sent:  # the first ones may still fail after being queued
            clients[0].send(message)
            time.sleep(0.1)
        got = received(clients[0], 1.0)
        notes = [m for m in got if m.startswith("(not sent to the other servers: redis: ")]
        assert notes, got  # the reason, once the connection attempt failed
        assert [m for m in got if m not in notes] == sent  # the server's own subscribers
        assert received(clients[2]) == sent
        assert received(clients[1]) == [] and received(clients[3]) == []


def test_readme_custom_relay(start_server: Any, tmp_path: Path,
                             private_redis: PrivateRedis) -> None:
    """The README's relay of its own: with scope = "server", a message relayed by
    worker 0 of each server reaches each subscriber once (not once per server)."""
    entry = tmp_path / "relay.lua"
    entry.write_text(readme_block(
        'aio:websocket("/feeds/:feed", { open = function(ws) ws:subscribe(ws.params.feed) end })'))
    env = {"REDIS_URL": private_redis.url}
    a = start_server(entry, workers=2, env=env)
    b = start_server(entry, workers=2, env=env)
    admin = private_redis.client()
    # no WebSocket subscriber yet: the relays' are the only pub/sub connections
    wait_until(lambda: len(admin.client_list(_type="pubsub")) == 2, 10.0,
               message="worker 0 of each server to psubscribe")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(
            ws_connect(f"ws://127.0.0.1:{server.port}/feeds/prices", open_timeout=5))
            for server in (a, b, a, b)]
        for attempt in range(100):  # until each worker's subscription reached its master
            admin.publish("feed:prices", f"probe{attempt}")
            if all(received(client, 0.1) for client in clients):
                break
        for client in clients:
            received(client)
        admin.publish("feed:prices", "42")
        for client in clients:
            assert received(client) == ["42"]


def readme_nginx_config(upstreams: list[int], port: int, tmp: Path) -> str:
    """The README's nginx configuration (Deployment: several servers) with the
    servers and the listening address of this test, in a configuration nginx can
    run as this user."""
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("### Deployment: several servers"):]
    block = re.search(r"```nginx\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    block = block.replace("10.0.0.11:8080", f"127.0.0.1:{upstreams[0]}")
    block = block.replace("10.0.0.12:8080", f"127.0.0.1:{upstreams[1]}")
    assert "listen 80;" in block
    block = block.replace("listen 80;", f"listen 127.0.0.1:{port};")
    temp = "".join(f"{kind}_temp_path {tmp}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/error.log;\nevents {{}}\n"
            f"http {{\naccess_log off;\n{temp}{block}}}\n")


def nginx_binary() -> str:
    """nginx's path, or skip."""
    import shutil

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/80.sh installs nginx-light)")
    return nginx


def start_nginx(nginx: str, servers: list[Server], tmp: Path) -> tuple[int, Any]:
    """nginx with the README's configuration in front of ``servers``: its port and process."""
    import subprocess

    from conftest import free_port

    port = free_port()
    (tmp / "nginx.conf").write_text(readme_nginx_config([s.port for s in servers], port, tmp))
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            return False

    wait_until(up, 10.0, message="nginx to listen")
    return port, proc


SESSION_PAGE = '<?lu session.n = (session.n or 0) + 1 write("n=%d on %s", session.n, NODE) ?>'


@pytest.mark.parametrize("store", ["cookie", "redis"])
def test_readme_nginx_deployment_keeps_sessions(start_server: Any, tmp_path: Path,
                                                private_redis: PrivateRedis, store: str) -> None:
    """Two eightys behind the README's nginx configuration: requests alternate
    between the servers and the session goes along (encrypted cookie, or the Redis
    store); with one server stopped, nginx moves the client to the other, session
    and all."""
    import shutil
    import subprocess

    from conftest import free_port

    nginx = nginx_binary()
    root = tmp_path / "public_html"
    root.mkdir()
    (root / "counter.dyn.html").write_text(SESSION_PAGE)
    if store == "redis":
        (tmp_path / "main.lua").write_text(
            'httpd.session_store = require("eightys.redis_sessions"):new({ ttl = 60 })\n')
    env = {"PUBLIC_HTML": str(root), "REDIS_URL": private_redis.url,
           "SECRET_KEY": "the-same-secret-on-both-0123456789"}
    servers = [start_server("server/http.lua", "-n", name, workers=1, env=env)
               for name in ("one", "two")]
    port, proc = start_nginx(nginx, servers, tmp_path)
    try:
        cookie: str | None = None
        seen = []

        def visit() -> str:
            nonlocal cookie
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            with HttpClient(sock) as http:
                response = http.request("GET", "/counter",
                                        headers=[("Cookie", cookie)] if cookie else [])
            assert response.status == 200, response
            cookie = (response.header("Set-Cookie") or "").split(";", 1)[0] or cookie
            return response.body.decode()

        for n in range(1, 7):
            body = visit()
            assert body.startswith(f"n={n} on "), body
            seen.append(body.rsplit(" ", 1)[1])
        assert set(seen) == {"one", "two"}, seen  # the client moved, and its session too
        stored = private_redis.client().keys("eightys:session:*")
        assert len(stored) == (1 if store == "redis" else 0), stored
        servers[0].stop()
        for n in range(7, 10):  # the first may be the one nginx finds down
            assert visit() == f"n={n} on two"
    finally:
        proc.terminate()
        proc.wait(10)


def test_readme_nginx_deployment_rooms_span_the_servers(start_server: Any, tmp_path: Path,
                                                        private_redis: PrivateRedis) -> None:
    """WebSocket clients through the README's nginx land on both servers (round
    robin) and hear each other once."""
    nginx = nginx_binary()
    entry = tmp_path / "rooms.lua"
    entry.write_text(ROOMS_APP + """
aio:websocket("/hall", {  -- says which server the client reached
    open = function(ws) ws:subscribe("hall"); ws:send(tostring(PORT)) end,
    message = function(ws, data) aio:publish("hall", data) end,
})
""")
    env = {"REDIS_URL": private_redis.url}
    servers = [start_server(entry, workers=1, env=env) for _ in range(2)]
    port, proc = start_nginx(nginx, servers, tmp_path)
    try:
        ports = set()
        with contextlib.ExitStack() as stack:
            clients = []
            for _ in range(4):
                client = stack.enter_context(
                    ws_connect(f"ws://127.0.0.1:{port}/hall", open_timeout=5))
                clients.append(client)
                ports.add(client.recv(timeout=5))
            assert ports == {str(s.port) for s in servers}  # nginx used both
            until_everyone_hears(clients[:2], clients, "behind nginx")
            clients[0].send("through nginx")
            for client in clients:
                assert received(client) == ["through nginx"]
    finally:
        proc.terminate()
        proc.wait(10)
