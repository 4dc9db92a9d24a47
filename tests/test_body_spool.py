"""Request bodies off the heap (--body-buffer-size): real uploads to a real worker.

A body larger than the buffer is written to a file in the worker's private
directory; Lua reads it with fd:read_body (64 KiB pieces) or at fd.body_file.
The worker's peak RSS (VmHWM in /proc/PID/status) through 20 concurrent 16 MiB
uploads stays under 100 MB, and every body arrives intact (hashed in Lua).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import socket
import tempfile
import threading
from pathlib import Path

from conftest import REPO, Server, wait_until
from http_helpers import HttpClient

APP = REPO / "tests" / "apps" / "body_app.lua"
MIB = 1024 * 1024
PIECE = 65536


def chain_hash(data: bytes) -> str:
    """What body_app.lua computes over fd:read_body's pieces."""
    h = b""
    for i in range(0, len(data), PIECE):
        h = hashlib.sha256(h + hashlib.sha256(data[i:i + PIECE]).digest()).digest()
    return h.hex()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def body_dirs(pid: int) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"eightys-body-{pid}-*"))


def upload(server: Server, target: str, body: bytes, timeout: float = 60.0) -> str:
    with HttpClient.connect(server, timeout=timeout) as c:
        c.send(f"POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        view = memoryview(body)
        for i in range(0, len(body), 256 * 1024):
            c.sock.sendall(view[i:i + 256 * 1024])
        response = c.read_response("POST")
        assert response.status == 200, response.text
        return response.text


def test_concurrent_large_uploads_stay_off_the_heap(start_server) -> None:
    server = start_server(APP, workers=1)
    (worker,) = server.wait_workers(1)
    base = os.urandom(16 * MIB)
    bodies = [bytes([i]) + base[1:] for i in range(20)]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = upload(server, "/upload", bodies[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i, body in enumerate(bodies):
        assert results[i] == f"{len(body)} {chain_hash(body)} file", i
    peak_mb = status_kb(worker, "VmHWM") / 1024
    assert peak_mb < 100, f"worker peak RSS {peak_mb:.0f} MB"
    # every body file is gone once its response was sent; the directory stays
    (directory,) = body_dirs(worker)
    assert os.listdir(directory) == []


def test_small_bodies_stay_in_memory_and_read_body_works_for_both(start_server) -> None:
    server = start_server(APP, "--body-buffer-size", "1000", workers=1)
    small = b"x" * 1000
    assert upload(server, "/upload", small) == f"1000 {chain_hash(small)} memory"
    big = os.urandom(200_000)
    assert upload(server, "/upload", big) == f"200000 {chain_hash(big)} file"
    # the whole body as a string, after an await: the file lives until the answer
    size, digest, path = upload(server, "/whole", big).split(" ")
    assert (int(size), digest) == (len(big), hashlib.sha256(big).hexdigest())
    (worker,) = server.wait_workers(1)
    assert path.startswith(body_dirs(worker)[0] + "/")
    wait_until(lambda: not os.path.exists(path), 2.0, message="the body file removed")


def test_a_refused_or_cut_off_body_leaves_no_file(start_server) -> None:
    server = start_server(APP, "--body-buffer-size", "1000", "--max-body-size", "100000",
                          workers=1)
    (worker,) = server.wait_workers(1)
    (directory,) = body_dirs(worker)
    # cut off half-way: the client leaves
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n"
                     + b"y" * 20000)
        wait_until(lambda: len(os.listdir(directory)) == 1, 3.0, message="a body file")
    wait_until(lambda: os.listdir(directory) == [], 3.0, message="the file removed")
    # chunked past --max-body-size: 413, and no file left
    with HttpClient.connect(server) as c:
        chunk = b"z" * 30000
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 4 + b"0\r\n\r\n")
        assert c.read_response("POST").status == 413
    assert os.listdir(directory) == []


def test_the_worker_removes_its_directory_when_it_exits(start_server) -> None:
    server = start_server(APP, workers=1)
    (worker,) = server.wait_workers(1)
    assert len(body_dirs(worker)) == 1
    server.stop()
    assert body_dirs(worker) == []


README_MARKER = "-- uploads of any size: a large body arrives in a temporary file, read in pieces"


def test_readme_body_example(start_server, tmp_path: Path) -> None:
    """The README's example (README.md, "Request bodies")."""
    blocks = re.findall(r"^```lua\n(.*?)^```$", (REPO / "README.md").read_text(), re.S | re.M)
    (block,) = [b for b in blocks if README_MARKER in b]
    entry = tmp_path / "app.lua"
    entry.write_text(block)
    server = start_server(entry, "--body-buffer-size", "1000", workers=1)
    assert upload(server, "/upload", b"x" * 10) == "10 bytes in memory"
    assert upload(server, "/upload", os.urandom(5000)) == "5000 bytes from a file"
    assert " ERROR " not in server.stderr_text()
