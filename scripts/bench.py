#!/usr/bin/env python3
"""Side-by-side HTTP benchmark: eightys against nginx and uvicorn, in one run.

    ./scripts/80.sh bench                 # everything below, default durations
    ./scripts/80.sh bench --duration 10   # longer runs
    ./scripts/80.sh bench --only eightys  # one server
    ./scripts/80.sh bench --listen        # -c 2: SO_REUSEPORT vs one shared socket
    ./scripts/80.sh bench --orm           # the ORM page with each MySQL driver only
    ./scripts/80.sh bench --redis         # pub/sub between two servers through Redis only
    ./scripts/80.sh bench --tls           # the HTTPS rows only
    ./scripts/80.sh bench --s80 DIR       # add 80s (DIR: its checkout, built: DIR/bin/80s)

Each server answers ``GET /echo?name=Abcde`` with ``Hi, Abcde!`` using one worker:
eightys runs ``server/simple_http.lua -c 1``, uvicorn a raw ASGI app (httptools +
uvloop, no framework), nginx ``return 200`` (when installed), and with ``--s80`` the
original 80s (C + Lua, built from its repository) running its own
``server/simple_http.lua -c 1``. Every request carries ``Connection: keep-alive``
(80s closes the connection without it), the same for every server. Servers are pinned to
CPU 0 and the load generators to CPU 1 when the machine has two or more CPUs.

Loads: wrk with keep-alive at 50 and 500 connections, wrk with 16 requests
pipelined per write (a wrk Lua script), and ``ab -k -c 50``. Printed: req/s per
server and load, the ratio to nginx and to uvicorn, and each server's RSS (idle,
and for eightys also with 10,000 idle keep-alive connections).

HTTPS: eightys with ``--tls-cert`` against nginx with ``ssl`` on the same echo route,
with the same self-signed certificate (ECDSA P-256, made here with ``cryptography``),
wrk over https with keep-alive, and with a new connection (a full handshake) per
request.

Then (unless --no-content) the content server: a .dyn. page, a static file, the ORM
page (one primary-key SELECT) with each installed MySQL driver (aiomysql, asyncmy) as
ratios to the echo route; and with a Redis, WebSocket pub/sub across two servers
(subscribers on A, a publisher on B: messages/s, latency p50/p99) and the Lua
client's PUBLISH between two servers.

Ratios from the same run are the figures to compare; absolute numbers move with
the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
PATH = "/echo?name=Abcde"

ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    name = "Nomad"
    for pair in scope["query_string"].decode().split("&"):
        key, _, value = pair.partition("=")
        if key == "name":
            name = value
    body = f"Hi, {name}!".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": body})
'''

NGINX_CONF = '''
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /echo {{ default_type "text/plain; charset=utf-8"; return 200 "Hi, Abcde!"; }}
        location /static/ {{ root {static_root}; }}
    }}
}}
'''

PIPELINE_LUA = '''
init = function(args)
    local r = {}
    for i = 1, 16 do r[i] = wrk.format(nil, "%s") end
    req = table.concat(r)
end
request = function() return req end
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    worker_pids: callable = None  # type: ignore[assignment]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None

    def start(self, pin: list[str]) -> None:
        self.proc = subprocess.Popen(pin + self.command, cwd=self.cwd,
                                     env={**os.environ, **self.env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.port, self.proc)
        time.sleep(0.5)

    def pids(self) -> list[int]:
        assert self.proc is not None
        return self.worker_pids(self.proc.pid) if self.worker_pids else [self.proc.pid]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def run_wrk(pin: list[str], port: int, connections: int, duration: int,
            script: str | None = None, path: str = PATH, scheme: str = "http",
            connection: str = "keep-alive") -> float:
    cmd = pin + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                 "-H", f"Connection: {connection}"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"{scheme}://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"    ! {errors.group(1)} non-2xx responses from {path}: not counted", file=sys.stderr)
        return 0.0
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def run_ab(pin: list[str], port: int, requests: int) -> float:
    cmd = pin + ["ab", "-q", "-k", "-c", "50", "-n", str(requests),
                 f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if failed and failed.group(1) != "0":
        print(f"    ! ab: {failed.group(1)} failed requests", file=sys.stderr)
    match = re.search(r"Requests per second:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def hold_idle_connections(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` keep-alive connections that each made one request."""
    socks = []
    request = f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        socks.append(s)
    for s in socks:
        s.recv(4096)
    return socks


BENCH_PAGE = """<?lu locals.title = "bench" ?>
<?include header.priv.html ?>
<table>
<?lu
for i = 1, 10 do
    | <tr><td>#[[i]]</td><td>row #[[i]]</td><td>#[[i * i]]</td></tr>
end
?>
</table>
</body></html>
"""
BENCH_HEADER = """<!doctype html><html><head><title><?lu write("%s", locals.title) ?></title></head><body>
"""


def make_site(tmp: Path) -> Path:
    """The content-server benchmark site: a .dyn. page with a 10-row loop and one
    include, and a 1 KiB static file (nginx serves the same file)."""
    site = tmp / "site"
    (site / "static").mkdir(parents=True)
    (site / "bench.dyn.html").write_text(BENCH_PAGE)
    (site / "header.priv.html").write_text(BENCH_HEADER)
    (site / "static" / "1k.txt").write_bytes(bytes(65 + i % 26 for i in range(1024)))
    return site


ORM_MAIN = """
local mysql, orm = require("mysql"), require("orm")
SQL = SQL or mysql:new({ pool_size = tonumber(os.getenv("DB_POOL_SIZE") or "8") })
SQL_READY = SQL_READY or SQL:connect("root", "", "eightys_bench", "127.0.0.1", 3306)
Posts = orm:create(SQL, { source = "posts", index = "id", findById = true, entity = {
    id = { field = "id", type = orm.t.int }, author = { field = "author", type = orm.t.text },
    text = { field = "text", type = orm.t.text } } })
"""
ORM_PAGE = """<?lua
local post = await(Posts.one:byId(1))
| <p>#[[post and post.author]]: #[[post and post.text]]</p>
done()
?>
"""


def make_orm_site(tmp: Path) -> Path | None:
    """A site whose /orm page does one primary-key SELECT through the ORM, and the
    database it reads (MariaDB at 127.0.0.1, root); None if there is no server."""
    setup = ("CREATE DATABASE IF NOT EXISTS eightys_bench; USE eightys_bench; "
             "CREATE TABLE IF NOT EXISTS posts (id INT PRIMARY KEY, author TEXT, text TEXT); "
             "REPLACE INTO posts VALUES (1, 'ann', 'hello from MariaDB');")
    done = subprocess.run(["mysql", "-h127.0.0.1", "-uroot", "-e", setup], capture_output=True)
    if done.returncode != 0:
        print(f"MariaDB not usable, ORM page skipped: {done.stderr.decode().strip()}")
        return None
    site = tmp / "orm-site"
    site.mkdir(exist_ok=True)
    (site / "main.lua").write_text(ORM_MAIN)
    (site / "orm.dyn.html").write_text(ORM_PAGE)  # not post.*: that prefix means POST
    return site


def mariadb_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def content_server(port: int, site: Path, mysql_driver: str = "auto") -> Server:
    cmd = [sys.executable, "-m", "eightys", "server/http.lua", "-p", str(port),
           "-h", "127.0.0.1", "-c", "1", "--mysql-driver", mysql_driver]
    return Server("eightys http.lua", cmd, port, worker_pids=children,
                  env={"PUBLIC_HTML": str(site)})


def mysql_drivers() -> list[str]:
    """The MySQL drivers installed here (the ORM row is measured with each)."""
    sys.path.insert(0, str(ROOT))
    from eightys.mysql import DRIVERS, available

    return [d for d in sorted(DRIVERS) if available(d)]


#: nginx with TLS on the same routes: NGINX_CONF with an ssl listener, and a pid file
#: and error log of its own (the plain nginx may still be stopping).
NGINX_TLS_CONF = (NGINX_CONF
                  .replace("nginx.pid", "nginx-tls.pid").replace("error.log", "error-tls.log")
                  .replace("listen 127.0.0.1:{port};",
                           "listen 127.0.0.1:{port} ssl;\n"
                           "        ssl_certificate {cert};\n"
                           "        ssl_certificate_key {key};\n"
                           "        ssl_protocols TLSv1.2 TLSv1.3;"))
assert "ssl_certificate_key" in NGINX_TLS_CONF and "nginx-tls.pid" in NGINX_TLS_CONF


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (both servers use it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "bench-cert.pem", tmp / "bench-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o644)  # nginx's master reads it as root, but keep it simple
    return cert_path, key_path


def tls_rates(args: argparse.Namespace, client_pin: list[str], server_pin: list[str],
              tmp: Path) -> None:
    """HTTPS: eightys --tls-cert against nginx ssl, same certificate, alternating
    rounds, medians; keep-alive and a handshake per request."""
    cert, key = make_certificate(tmp)
    servers = [eightys_server(free_port(), tls=(cert, key))]
    if shutil.which("nginx"):
        port = free_port()
        conf = tmp / "nginx-tls.conf"
        conf.write_text(NGINX_TLS_CONF.format(tmp=tmp, port=port, cert=cert, key=key,
                                              static_root=tmp))
        servers.append(Server("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], port))
    else:
        print("nginx is not installed: the HTTPS row has no peer (apt-get install nginx-light)")
    loads = [("keep-alive, c=50", "keep-alive"), ("new connection per request, c=50", "close")]
    med: dict[tuple[str, str], float] = {}
    try:
        for server in servers:
            server.start(server_pin)
            run_wrk(client_pin, server.port, 50, 1, scheme="https")  # warm-up (and JIT)
        for label, connection in loads:
            samples: dict[str, list[float]] = {s.name: [] for s in servers}
            for _ in range(args.rounds):
                for server in servers:
                    samples[server.name].append(run_wrk(client_pin, server.port, 50,
                                                        args.duration, scheme="https",
                                                        connection=connection))
            for name, values in samples.items():
                med[(name, label)] = sorted(values)[len(values) // 2]
    finally:
        for server in servers:
            server.stop()
    print()
    print("| HTTPS (TLS 1.3, ECDSA P-256), wrk | eightys | nginx | eightys/nginx |")
    print("|---|---|---|---|")
    for label, _ in loads:
        e, n = med[("eightys", label)], med.get(("nginx", label), 0.0)
        print(f"| {label} | {e:,.0f} | {n:,.0f} | " + (f"{e / n:.2f} |" if n else "- |"))
    print()


def main_tls(args: argparse.Namespace) -> None:
    """--tls: the HTTPS rows only."""
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    server_pin = ["taskset", "-c", "0"] if two_cpus else []
    client_pin = ["taskset", "-c", "1"] if two_cpus else []
    tmp = Path(tempfile.mkdtemp(prefix="eightys-bench-"))
    tmp.chmod(0o755)
    raise_fd_limit()
    tls_rates(args, client_pin, server_pin, tmp)


def eightys_server(port: int, workers: int = 1, shared: bool = False,
                   tls: tuple[Path, Path] | None = None, extra: Sequence[str] = ()) -> Server:
    cmd = [sys.executable, "-m", "eightys", "server/simple_http.lua", "-p", str(port),
           "-h", "127.0.0.1", "-c", str(workers), *extra]
    if shared:
        cmd.append("--shared-socket")
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    # 10,000 idle connections must outlive the measurement
    return Server("eightys", cmd, port, worker_pids=children,
                  env={"HTTP_KEEPALIVE_TIMEOUT": "300"})


def raise_fd_limit() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main_benchmark(args: argparse.Namespace) -> None:
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    server_pin = ["taskset", "-c", "0"] if two_cpus else []
    client_pin = ["taskset", "-c", "1"] if two_cpus else []
    tmp = Path(tempfile.mkdtemp(prefix="eightys-bench-"))
    tmp.chmod(0o755)  # nginx's workers run as another user and must read the site
    servers: list[Server] = []
    wanted = set(args.only.split(",")) if args.only else {"eightys", "uvicorn", "nginx", "80s"}
    site = make_site(tmp)
    if "nginx" in wanted:
        if shutil.which("nginx"):
            port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, static_root=site))
            servers.append(Server("nginx", ["nginx", "-c", str(conf), "-p", str(tmp)], port))
        else:
            print("nginx is not installed: skipped (apt-get install nginx-light)")
    if "eightys" in wanted:
        servers.append(eightys_server(free_port()))
    if "uvicorn" in wanted:
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            print("uvicorn is not installed: skipped (pip install uvicorn)")
        else:
            (tmp / "asgi_app.py").write_text(ASGI_APP)
            port = free_port()
            servers.append(Server("uvicorn", [
                sys.executable, "-m", "uvicorn", "asgi_app:app", "--port", str(port),
                "--host", "127.0.0.1", "--workers", "1", "--loop", "uvloop",
                "--http", "httptools", "--no-access-log", "--log-level", "warning",
                "--app-dir", str(tmp)], port))
    if "80s" in wanted and args.s80:
        s80 = Path(args.s80).resolve()
        binary = s80 / "bin" / "80s"
        if binary.is_file():
            port = free_port()
            servers.append(Server("80s", [str(binary), "server/simple_http.lua", "-p", str(port),
                                          "-c", "1"], port, cwd=s80))
        else:
            print(f"no 80s binary at {binary}: skipped (build it with JIT=true ./80s.sh)")
    pipeline = tmp / "pipeline.lua"
    pipeline.write_text(PIPELINE_LUA % PATH)
    loads = [("wrk c=50", lambda p: run_wrk(client_pin, p, 50, args.duration)),
             ("wrk c=500", lambda p: run_wrk(client_pin, p, 500, args.duration)),
             ("wrk c=50 pipeline 16", lambda p: run_wrk(client_pin, p, 50, args.duration,
                                                         str(pipeline))),
             ("ab -k -c 50", lambda p: run_ab(client_pin, p, args.ab_requests))]
    results: dict[str, dict[str, float]] = {s.name: {} for s in servers}
    rss: dict[str, str] = {}
    raise_fd_limit()
    # All servers run at once (pinned to the same CPU; an idle one costs nothing) and
    # each load alternates between them for several rounds, the median kept: the
    # speed of a shared machine drifts by tens of percent within a minute, which
    # would otherwise land on whichever server ran at the bad moment.
    try:
        for server in servers:
            server.start(server_pin)
            rss[server.name] = f"{rss_mb(server.pids()):.1f} MB idle"
            run_wrk(client_pin, server.port, 50, 1)  # warm-up (and JIT)
        for label, load in loads:
            samples: dict[str, list[float]] = {s.name: [] for s in servers}
            for _ in range(args.rounds):
                for server in servers:
                    samples[server.name].append(load(server.port))
            for server in servers:
                values = sorted(samples[server.name])
                results[server.name][label] = values[len(values) // 2]
            print(f"   {label:<22} " + "  ".join(
                f"{name} {results[name][label]:,.0f}" for name in results), flush=True)
        if "eightys" in results and not args.no_content:
            content_rates(args, client_pin, server_pin, servers, site, results)
        if "eightys" in results and not args.no_tls:
            tls_rates(args, client_pin, server_pin, tmp)
        for server in servers:
            if server.name == "eightys":
                socks = hold_idle_connections(server.port, 10_000)
                time.sleep(1)
                rss[server.name] += (f", {rss_mb(server.pids()):.1f} MB with 10,000 idle "
                                     "keep-alive connections")
                for sock in socks:
                    sock.close()
    finally:
        for server in servers:
            server.stop()
    print_table(results, rss, [label for label, _ in loads])
    if "eightys" in wanted and not args.no_ops:
        ops_rates(args, client_pin, server_pin, tmp)


def ops_rates(args: argparse.Namespace, client_pin: list[str], server_pin: list[str],
              tmp: Path) -> None:
    """The cost of --access-log and --metrics on the echo route: eightys with both
    off, the access log to a file, metrics, both; alternating rounds, medians."""
    variants = [("both off", []),
                ("--access-log FILE", ["--access-log", str(tmp / "access.log")]),
                ("--access-log FILE --access-log-format json",
                 ["--access-log", str(tmp / "access.json"), "--access-log-format", "json"]),
                ("--metrics", ["--metrics", str(free_port())]),
                ("--access-log FILE --metrics", ["--access-log", str(tmp / "both.log"),
                                                 "--metrics", str(free_port())])]
    servers = [(label, eightys_server(free_port(), extra=extra)) for label, extra in variants]
    samples: dict[str, list[float]] = {label: [] for label, _ in variants}
    try:
        for _, server in servers:
            server.start(server_pin)
            run_wrk(client_pin, server.port, 50, 1)  # warm-up (and JIT)
        for _ in range(args.rounds):
            for label, server in servers:
                samples[label].append(run_wrk(client_pin, server.port, 50, args.duration))
    finally:
        for _, server in servers:
            server.stop()
    medians = {label: sorted(v)[len(v) // 2] for label, v in samples.items()}
    base = medians["both off"] or 1.0
    print()
    print("| echo route, wrk c=50, 1 worker | req/s | vs both off |")
    print("|---|---|---|")
    for label, _ in variants:
        print(f"| eightys {label} | {medians[label]:,.0f} | {medians[label] / base:.3f} |")


def content_rates(args: argparse.Namespace, client_pin: list[str], server_pin: list[str],
                  servers: list[Server], site: Path, results: dict[str, dict[str, float]]) -> None:
    """The content server: a .dyn. page against the echo route, and a 1 KiB static
    file against nginx serving the same file (alternating rounds, medians)."""
    content = content_server(free_port(), site)
    content.start(server_pin)
    try:
        echo = next(s for s in servers if s.name == "eightys")
        nginx = next((s for s in servers if s.name == "nginx"), None)
        runs: dict[str, list[float]] = {"echo": [], "dyn": [], "static": [], "nginx static": []}
        run_wrk(client_pin, content.port, 50, 1, path="/bench")  # warm-up (and JIT)
        for _ in range(args.rounds):
            runs["echo"].append(run_wrk(client_pin, echo.port, 50, args.duration))
            runs["dyn"].append(run_wrk(client_pin, content.port, 50, args.duration, path="/bench"))
            runs["static"].append(run_wrk(client_pin, content.port, 50, args.duration,
                                          path="/static/1k.txt"))
            if nginx:
                runs["nginx static"].append(run_wrk(client_pin, nginx.port, 50, args.duration,
                                                    path="/static/1k.txt"))
        med = {k: sorted(v)[len(v) // 2] if v else 0.0 for k, v in runs.items()}
        orm_lines = [(driver, orm_rate(args, client_pin, server_pin, site.parent, driver))
                     for driver in mysql_drivers()]
        print()
        print(f"| content server, wrk c=50 | req/s | ratio |")
        print("|---|---|---|")
        print(f"| echo route (simple_http.lua) | {med['echo']:,.0f} | 1.00 |")
        print(f"| .dyn. page, 10-row loop + include | {med['dyn']:,.0f} | "
              f"{med['dyn'] / med['echo']:.2f} x echo |")
        if nginx:
            print(f"| static 1 KiB file | {med['static']:,.0f} | "
                  f"{med['static'] / med['nginx static']:.2f} x nginx |")
            print(f"| nginx, same file | {med['nginx static']:,.0f} | 1.00 |")
        else:
            print(f"| static 1 KiB file | {med['static']:,.0f} | - |")
        cpus = []
        for driver, orm_line in orm_lines:
            if orm_line:
                rate, cpu = orm_line
                print(f"| ORM page: one primary-key SELECT, {driver} | {rate:,.0f} | "
                      f"{rate / med['echo']:.2f} x echo |")
                cpus.append(f"During the ORM run with {driver}: {cpu}")
        if cpus:
            print()
            print("\n".join(cpus))
        print()
    finally:
        content.stop()


def orm_rate(args: argparse.Namespace, client_pin: list[str], server_pin: list[str],
             tmp: Path, mysql_driver: str = "auto") -> tuple[float, str] | None:
    """req/s of the ORM page (median of the rounds) with ``mysql_driver`` and the CPU
    used by the eightys worker and by MariaDB during the last round: which one is
    the limit."""
    site = make_orm_site(tmp)
    db_pid = mariadb_pid()
    if site is None or db_pid is None:
        return None
    server = content_server(free_port(), site, mysql_driver)
    server.start(server_pin)
    try:
        run_wrk(client_pin, server.port, 50, 1, path="/orm")
        rates, cpu = [], ""
        for _ in range(args.rounds):
            worker = server.pids()[0]
            before = (cpu_seconds(worker), cpu_seconds(db_pid), time.monotonic())
            rates.append(run_wrk(client_pin, server.port, 50, args.duration, path="/orm"))
            wall = time.monotonic() - before[2]
            cpu = (f"eightys worker {(cpu_seconds(worker) - before[0]) / wall:.0%} of a CPU, "
                   f"MariaDB {(cpu_seconds(db_pid) - before[1]) / wall:.0%} of a CPU")
        return sorted(rates)[len(rates) // 2], cpu
    finally:
        server.stop()


REDIS_PUBSUB_APP = """
-- bench --redis: /pub publishes the sender's clock; every server's subscriber
-- records how long each message took; /stats reports them.
local redis = require("redis")
CLIENT = CLIENT or assert(redis:new())
LATENCIES = LATENCIES or {}
if not SUBSCRIBED then
    SUBSCRIBED = true
    CLIENT:subscribe("eightys-bench", function(message)
        LATENCIES[#LATENCIES + 1] = net.clock() - tonumber(message)
    end)
end
aio:http_get("/pub", function(fd)
    local n, err = aio:await(CLIENT:publish("eightys-bench", string.format("%.6f", net.clock())))
    fd:http_response(n and 200 or 503, "text/plain", tostring(n or err))
end)
aio:http_get("/stats", function(fd)
    local t = LATENCIES
    LATENCIES = {}
    table.sort(t)
    local function at(q) return t[math.max(1, math.ceil(#t * q))] or 0 end
    fd:http_response(200, "text/plain", string.format("%d %.6f %.6f", #t, at(0.5), at(0.99)))
end)
"""


async def cross_server_rates(sub_port: int, pub_port: int, subscribers: int, burst: int,
                             duration: float) -> tuple[float, float, float, float, int]:
    """``subscribers`` WebSockets on ``/sub/bench`` of server A, one publisher on
    ``/pub/bench`` of server B sending bursts of ``burst`` messages (each its send
    time), waiting until every subscriber has the burst: messages published per
    second, delivered per second, p50 and p99 latency from B's client to A's
    clients (one clock: this process), messages lost (0 expected)."""
    import asyncio

    sys.path.insert(0, str(ROOT / "scripts"))
    import ws_bench

    class Timed(ws_bench.Client):
        """Records the latency of every message (its payload is its send time)."""

        def __init__(self, path: str) -> None:
            super().__init__(path)
            self.latencies: list[float] = []

        def data_received(self, data: bytes) -> None:
            now = time.perf_counter()
            if not self.upgraded:
                super().data_received(data)  # the handshake (and any first frames)
                return
            buf = self.buf
            buf += data
            pos, size = 0, len(buf)
            while size - pos >= 2:
                n, at = buf[pos + 1] & 0x7F, 2
                if n == 126:
                    if size - pos < 4:
                        break
                    n, at = (buf[pos + 2] << 8) | buf[pos + 3], 4
                if size - pos < at + n:
                    break
                payload = bytes(buf[pos + at:pos + at + n])
                pos += at + n
                self.count += 1
                if payload[:1] == b"t":
                    self.latencies.append(now - float(payload[1:]))
            del buf[:pos]

    loop = asyncio.get_running_loop()
    subs = []
    for _ in range(subscribers):
        _, client = await loop.create_connection(lambda: Timed("/sub/bench"), "127.0.0.1", sub_port)
        await asyncio.wait_for(client.open, 10)
        subs.append(client)
    publisher = (await ws_bench.open_clients(pub_port, 1, "/pub/bench"))[0]

    async def delivered(target: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while sum(len(c.latencies) for c in subs) < target:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    try:
        # until A's subscription is on Redis: a probe that arrives
        for _ in range(200):
            publisher.transport.write(ws_bench.client_frame(b"t%.9f" % time.perf_counter()))
            if await delivered(subscribers, 0.05):
                break
        else:
            raise RuntimeError("server A never received what B published")
        await asyncio.sleep(0.2)
        for c in subs:
            c.latencies.clear()
        sent, lost, t0 = 0, 0, time.monotonic()
        while time.monotonic() - t0 < duration:
            stamp = time.perf_counter()
            publisher.transport.write(b"".join(
                ws_bench.client_frame(b"t%.9f" % (stamp + i * 1e-9)) for i in range(burst)))
            sent += burst
            if not await delivered(sent * subscribers, 10.0):
                lost = sent * subscribers - sum(len(c.latencies) for c in subs)
                break
        elapsed = time.monotonic() - t0
        latencies = sorted(x for c in subs for x in c.latencies)
        at = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] if latencies else 0.0  # noqa: E731
        return sent / elapsed, len(latencies) / elapsed, at(0.5), at(0.99), lost
    finally:
        ws_bench.close_clients(subs + [publisher])


def redis_reachable() -> bool:
    """Whether the Redis of REDIS_URL (default 127.0.0.1:6379) answers a PING."""
    import redis

    try:
        return bool(redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                                         socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def main_redis(args: argparse.Namespace) -> None:
    """--redis: WebSocket pub/sub between two servers through Redis (the built-in
    ``aio:publish`` path: subscribers on A, a publisher on B), then the Lua Redis
    client's PUBLISH between two servers (A publishes under wrk; B's subscriber
    measures)."""
    import asyncio
    import urllib.request

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    server_pin = ["taskset", "-c", "0"] if two_cpus else []
    client_pin = ["taskset", "-c", "1"] if two_cpus else []
    tmp = Path(tempfile.mkdtemp(prefix="eightys-bench-"))
    ws_servers = []
    for name in ("A", "B"):
        port = free_port()
        ws_servers.append(Server(f"eightys {name}", [
            sys.executable, "-m", "eightys", "server/ws_echo.lua", "-p", str(port),
            "-h", "127.0.0.1", "-c", "1"], port, worker_pids=children, env={"REDIS_URL": url}))
    for server in ws_servers:
        server.start(server_pin)
    try:
        import uvloop

        figures = uvloop.run(cross_server_rates(ws_servers[0].port, ws_servers[1].port,
                                                args.subscribers, args.burst, args.duration))
    finally:
        for server in ws_servers:
            server.stop()
    published, delivered, p50, p99, lost = figures
    print()
    print(f"| WebSocket pub/sub across two servers through Redis (aio:publish, -c 1 each): "
          f"{args.subscribers} subscribers on A, 1 publisher on B, bursts of {args.burst} | value |")
    print("|---|---|")
    print(f"| messages published on B per second | {published:,.0f} |")
    print(f"| messages delivered on A per second | {delivered:,.0f} |")
    print(f"| latency B client -> A client, p50 | {p50 * 1000:.2f} ms |")
    print(f"| latency B client -> A client, p99 | {p99 * 1000:.2f} ms |")
    if lost:
        print(f"| messages not delivered within 10 s | {lost:,} |")

    entry = tmp / "pubsub.lua"
    entry.write_text(REDIS_PUBSUB_APP)
    servers = []
    for name in ("A", "B"):
        port = free_port()
        servers.append(Server(f"eightys {name}", [sys.executable, "-m", "eightys", str(entry),
                                                  "-p", str(port), "-h", "127.0.0.1", "-c", "1"],
                              port, worker_pids=children, env={"REDIS_URL": url}))
    for server in servers:
        server.start(server_pin)
    try:
        a, b = servers

        def stats() -> tuple[int, float, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{b.port}/stats", timeout=10) as r:
                count, p50, p99 = r.read().decode().split()
            return int(count), float(p50), float(p99)

        run_wrk(client_pin, a.port, 50, 1, path="/pub")
        time.sleep(0.5)
        stats()  # drop the warm-up's
        rate = run_wrk(client_pin, a.port, 50, args.duration, path="/pub")
        time.sleep(0.5)  # the last messages arrive
        count, p50, p99 = stats()
        print()
        print("| Redis pub/sub between two servers (Lua client), wrk c=50 on A | value |")
        print("|---|---|")
        print(f"| publishes/s (one PUBLISH per request, reply awaited) | {rate:,.0f} |")
        print(f"| messages received on B | {count:,} |")
        print(f"| latency A publish -> B callback, p50 | {p50 * 1000:.2f} ms |")
        print(f"| latency A publish -> B callback, p99 | {p99 * 1000:.2f} ms |")
    finally:
        for server in servers:
            server.stop()


def main_orm(args: argparse.Namespace) -> None:
    """--orm: the echo route and the ORM page with each installed MySQL driver only."""
    two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    server_pin = ["taskset", "-c", "0"] if two_cpus else []
    client_pin = ["taskset", "-c", "1"] if two_cpus else []
    tmp = Path(tempfile.mkdtemp(prefix="eightys-bench-"))
    echo = eightys_server(free_port())
    echo.start(server_pin)
    try:
        run_wrk(client_pin, echo.port, 50, 1)
        rate = sorted(run_wrk(client_pin, echo.port, 50, args.duration)
                      for _ in range(args.rounds))[args.rounds // 2]
    finally:
        echo.stop()
    print()
    print("| ORM page, wrk c=50 | req/s | ratio |")
    print("|---|---|---|")
    print(f"| echo route (simple_http.lua) | {rate:,.0f} | 1.00 |")
    cpus = []
    for driver in mysql_drivers():
        line = orm_rate(args, client_pin, server_pin, tmp, driver)
        if line:
            print(f"| ORM page: one primary-key SELECT, {driver} | {line[0]:,.0f} | "
                  f"{line[0] / rate:.2f} x echo |")
            cpus.append(f"During the ORM run with {driver}: {line[1]}")
    print()
    print("\n".join(cpus))


def print_table(results: dict[str, dict[str, float]], rss: dict[str, str],
                labels: list[str]) -> None:
    print()
    header = f"| {'load':<22} | " + " | ".join(f"{name:>10}" for name in results)
    peers = [p for p in ("nginx", "uvicorn", "80s") if p in results]
    if "eightys" in results:
        header += "".join(f" | eightys/{peer}" for peer in peers)
    print(header + " |")
    print("|" + "---|" * (header.count("|")))
    for label in labels:
        row = f"| {label:<22} | " + " | ".join(f"{results[n][label]:>10,.0f}" for n in results)
        if "eightys" in results:
            e = results["eightys"][label]
            for peer in peers:
                base = results.get(peer, {}).get(label)
                row += f" | {e / base:>13.2f}" if base else f" | {'-':>13}"
        print(row + " |")
    print()
    for name, text in rss.items():
        print(f"RSS {name}: {text}")


def main_listen(args: argparse.Namespace) -> None:
    """-c 2 with SO_REUSEPORT sockets vs one shared socket: throughput and how
    evenly the two workers share the load (their CPU time)."""
    raise_fd_limit()
    print("eightys -c 2, wrk -t2 c=50 and c=500 (no pinning: 2 workers + wrk share the CPUs)")
    for shared in (False, True):
        mode = "shared socket" if shared else "SO_REUSEPORT"
        server = eightys_server(free_port(), workers=2, shared=shared)
        server.start([])
        try:
            for connections, close in ((50, False), (500, False), (50, True)):
                pids = server.pids()
                before = [cpu_seconds(p) for p in pids]
                extra = ["-H", "Connection: close"] if close else []
                out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{args.duration}s",
                                      *extra, f"http://127.0.0.1:{server.port}{PATH}"],
                                     capture_output=True, text=True, check=True).stdout
                rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                used = [cpu_seconds(p) - b for p, b in zip(pids, before)]
                share = ", ".join(f"{u / max(sum(used), 1e-9):.0%}" for u in used)
                load = f"c={connections}" + (" new connection per request" if close else " keep-alive")
                print(f"  {mode:<14} {load:<34} {rate:>10,.0f} req/s   "
                      f"worker CPU share: {share}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs per server and load, alternating; the median is kept")
    parser.add_argument("--ab-requests", type=int, default=150_000)
    parser.add_argument("--only", help="comma-separated subset: eightys,uvicorn,nginx,80s")
    parser.add_argument("--s80", metavar="DIR",
                        help="80s checkout with bin/80s built (JIT=true ./80s.sh): adds its column")
    parser.add_argument("--no-content", action="store_true",
                        help="skip the content-server, static and ORM rows")
    parser.add_argument("--orm", action="store_true",
                        help="only the echo route and the ORM page with each MySQL driver")
    parser.add_argument("--redis", action="store_true",
                        help="only the Redis pub/sub rate and latency between two servers: "
                             "WebSocket aio:publish, then the Lua client "
                             "(REDIS_URL, default redis://127.0.0.1:6379/0)")
    parser.add_argument("--tls", action="store_true",
                        help="only the HTTPS rows: eightys --tls-cert vs nginx ssl")
    parser.add_argument("--no-tls", action="store_true", help="skip the HTTPS rows")
    parser.add_argument("--subscribers", type=int, default=100,
                        help="--redis: WebSocket subscribers on server A")
    parser.add_argument("--burst", type=int, default=20,
                        help="--redis: messages the publisher on B sends before waiting")
    parser.add_argument("--no-ops", action="store_true",
                        help="skip the access log / metrics cost table")
    parser.add_argument("--ops", action="store_true",
                        help="only the cost of --access-log and --metrics on the echo route")
    parser.add_argument("--listen", action="store_true",
                        help="compare SO_REUSEPORT with a shared socket (-c 2)")
    args = parser.parse_args()
    if args.ops:
        two_cpus = (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
        ops_rates(args, ["taskset", "-c", "1"] if two_cpus else [],
                  ["taskset", "-c", "0"] if two_cpus else [],
                  Path(tempfile.mkdtemp(prefix="eightys-bench-")))
    elif args.listen:
        main_listen(args)
    elif args.orm:
        main_orm(args)
    elif args.redis:
        main_redis(args)
    elif args.tls:
        main_tls(args)
    else:
        main_benchmark(args)
        if not args.no_content and (args.only is None or "eightys" in args.only):
            if redis_reachable():
                main_redis(args)
            else:
                print("\nNo Redis at REDIS_URL (default 127.0.0.1:6379): cross-server rows skipped")


if __name__ == "__main__":
    main()
