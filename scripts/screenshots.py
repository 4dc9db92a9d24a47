"""Screenshots of the default site (public_html/) in headless Chromium, for docs/.

    .venv/bin/python scripts/screenshots.py [--out docs] [--seed]

Starts ``server/http.lua`` on a free port (127.0.0.1), optionally seeds the posts
demo's database (``--seed``: creates ``eightys_demo`` as MariaDB root on
127.0.0.1:3306 with a few posts), and saves desktop (1280 px) and phone (390 px)
screenshots of the home page, two demos and the 404 page as PNG files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [("index", "/"), ("loop", "/loop"), ("posts", "/posts/"), ("secret", "/secret"),
         ("404", "/no/such/page")]
SIZES = [("desktop", 1280, 1000), ("phone", 390, 1100)]
POSTS = [("Ann", "Hot reload works: I saved the template and the browser refreshed itself."),
         ("Bob", "Sessions now live in an encrypted cookie, so every worker sees the same count."),
         ("Chloé", "The ORM binds every value as a parameter: no string building, no injection.")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed() -> None:
    """The posts demo's database with a few posts (MariaDB root, no password)."""
    import pymysql

    with pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True) as conn, \
            conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS eightys_demo CHARACTER SET utf8mb4")
        cur.execute("CREATE TABLE IF NOT EXISTS eightys_demo.posts (id INT AUTO_INCREMENT "
                    "PRIMARY KEY, author VARCHAR(64) NOT NULL, text TEXT NOT NULL, "
                    "created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        cur.execute("SELECT COUNT(*) FROM eightys_demo.posts")
        if cur.fetchone()[0] == 0:
            cur.executemany("INSERT INTO eightys_demo.posts (author, text) VALUES (%s, %s)", POSTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--seed", action="store_true", help="create the posts database")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 1
    if args.seed:
        seed()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, PUBLIC_HTML="", SECRET_KEY="screenshots-secret-0123456789")
    server = subprocess.Popen([sys.executable, "-m", "eightys", "server/http.lua", "-p", str(port),
                               "-h", "127.0.0.1", "-c", "1"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            for name, path in PAGES:
                for size, width, height in SIZES:
                    target = out / f"site-{name}-{size}.png"
                    subprocess.run(
                        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                         "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-proxy-server", "--disable-extensions",
                         f"--user-data-dir={profile}", f"--window-size={width},{height}",
                         f"--screenshot={target}", f"http://127.0.0.1:{port}{path}"],
                        check=True, capture_output=True, timeout=60)
                    print(target)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
