"""Command line: ``eightys [ENTRY.lua] [-p PORT] [-h HOST] [-6] [-c N] ...`` -> a Config.

``-h`` is the bind host (as in 80s), so help is ``--help`` only. Every usage
mistake is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import NoReturn, Sequence

from eightys import __version__
from eightys.config import Address, Config, UsageError

DEFAULT_ENTRY = "server/simple_http.lua"
DEFAULT_PORT = 8080
USAGE_EXIT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage + message
        raise UsageError(f"{message} (see eightys --help)")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"${name} must be an integer, got {value!r}") from None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"${name} must be a number, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; exposed for documentation and tests."""
    p = _Parser(
        prog="eightys",
        add_help=False,
        description="Serve a Lua application over HTTP or raw TCP from N worker processes.",
    )
    p.add_argument("entry", nargs="?", default=DEFAULT_ENTRY, metavar="ENTRY.lua",
                   help=f"entry script run in every worker (default {DEFAULT_ENTRY})")
    p.add_argument("-p", dest="port", type=int, default=DEFAULT_PORT, metavar="PORT",
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("-h", dest="host", default=None, metavar="HOST",
                   help="bind address: IPv4 (default 0.0.0.0), IPv6 as v6:ADDR or a bare "
                        "IPv6 literal, or unix:/path/to.sock")
    p.add_argument("-6", dest="ipv6", action="store_true",
                   help="bind IPv6; the default host becomes ::")
    p.add_argument("-c", dest="workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="number of worker processes (default: CPU count)")
    p.add_argument("-m", dest="modules", default="", metavar="MOD.py,...",
                   help="comma-separated Python extension modules loaded in every worker")
    p.add_argument("-n", dest="node", default=None, metavar="NODE",
                   help="node name, the Lua global NODE (default $HOSTNAME or localhost)")
    p.add_argument("--lua", choices=("luajit", "lua54"), default="luajit",
                   help="Lua engine: LuaJIT 2.1 (default) or Lua 5.4")
    p.add_argument("--shared-socket", action="store_true",
                   help="workers share one inherited listening socket instead of one "
                        "SO_REUSEPORT socket each (see README, 'Workers and sockets')")
    p.add_argument("--graceful-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, how long open connections get to finish (default 10)")
    p.add_argument("--max-header-size", type=int, metavar="BYTES",
                   default=_env_int("HTTP_MAX_HEADER_SIZE", 32 * 1024),
                   help="largest HTTP request head; more gets 431 "
                        "(default $HTTP_MAX_HEADER_SIZE or 32768)")
    p.add_argument("--max-body-size", type=int, metavar="BYTES",
                   default=_env_int("HTTP_MAX_BODY_SIZE", 16 * 1024 * 1024),
                   help="largest HTTP request body; more gets 413 "
                        "(default $HTTP_MAX_BODY_SIZE or 16 MiB)")
    p.add_argument("--header-timeout", type=float, metavar="SECONDS",
                   default=_env_float("HTTP_HEADER_TIMEOUT", 10.0),
                   help="time a client gets to send a request head, and between body "
                        "packets; then 408 and close (default $HTTP_HEADER_TIMEOUT or 10)")
    p.add_argument("--keepalive-timeout", type=float, metavar="SECONDS",
                   default=_env_float("HTTP_KEEPALIVE_TIMEOUT", 15.0),
                   help="idle keep-alive connections are closed after this "
                        "(default $HTTP_KEEPALIVE_TIMEOUT or 15)")
    p.add_argument("--handler-timeout", type=float, metavar="SECONDS",
                   default=_env_float("HTTP_HANDLER_TIMEOUT", 30.0),
                   help="a handler that has not started its response after this gets 504 "
                        "and a log line saying where it waits; 0 turns it off "
                        "(default $HTTP_HANDLER_TIMEOUT or 30)")
    p.add_argument("--max-headers", type=int, metavar="N",
                   default=_env_int("HTTP_MAX_HEADERS", 100),
                   help="most header fields in one request; more gets 431 "
                        "(default $HTTP_MAX_HEADERS or 100)")
    p.add_argument("--dev", action="store_true",
                   help="development mode: error pages show the file, line and source")
    p.add_argument("--reload", action="store_true",
                   default=os.environ.get("RELOAD", "").lower() in ("1", "true", "yes"),
                   help="reload mode (also RELOAD=true): watch the code and the site, reload "
                        "workers on change, refresh browsers; implies --dev")
    p.add_argument("--secret-file", metavar="PATH",
                   help="file holding the server secret (sessions, signed cookies); "
                        "default $SECRET_KEY, else a random secret per start")
    p.add_argument("--redis", metavar="URL", default=None,
                   help="Redis server for apps and shared caches/sessions, "
                        "redis://HOST:PORT/DB (default $REDIS_URL); a URL with a password "
                        "belongs in $REDIS_URL, never on the command line")
    p.add_argument("--mysql-driver", choices=("auto", "aiomysql", "asyncmy"),
                   default=os.environ.get("EIGHTYS_MYSQL_DRIVER") or "auto",
                   help="MySQL driver: asyncmy when installed, else aiomysql (auto, the "
                        "default), or force one (default $EIGHTYS_MYSQL_DRIVER or auto)")
    p.add_argument("--access-log", metavar="-|FILE", default="",
                   help="write an access log line per response to FILE (or - for stdout); "
                        "off by default; SIGUSR1 reopens the file (logrotate)")
    p.add_argument("--access-log-format", choices=("combined", "json"), default="combined",
                   help="access log format: combined (Apache/nginx, then the request time "
                        "in microseconds and the worker id; the default) or json")
    p.add_argument("--metrics", metavar="[HOST:]PORT", default=None,
                   help="serve Prometheus metrics (/metrics) and the live dashboard "
                        "(/_eightys/) on this port, from the master; HOST defaults to "
                        "127.0.0.1")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"eightys {__version__}")
    return p


def parse_address(host: str | None, port: int, ipv6: bool) -> Address:
    """Turn ``-h``/``-p``/``-6`` into an Address, validating each part."""
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is out of range 0-65535")
    if host is None:
        return Address("inet6", "::", port) if ipv6 else Address("inet", "0.0.0.0", port)
    if host.startswith("unix:"):
        path = host[len("unix:"):]
        if not path:
            raise UsageError("unix: needs a socket path, e.g. unix:/tmp/eightys.sock")
        return Address("unix", path=path)
    if host.startswith("v6:"):
        host = host[len("v6:"):]
        ipv6 = True
    if ":" in host:
        ipv6 = True
    if ipv6:
        if "." in host and ":" not in host:
            raise UsageError(f"-6 was given with the IPv4 address {host}")
        return Address("inet6", host.strip("[]") or "::", port)
    return Address("inet", host, port)


def server_secret(secret_file: str | None) -> tuple[str, str | None]:
    """The server secret and, when it is a throw-away one, a warning (the content
    server logs it: sessions are what end with the secret).

    From ``--secret-file`` (its text, stripped), else ``$SECRET_KEY``, else random:
    never from the command line itself, where every user of the machine could read it.
    """
    if secret_file:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise UsageError(f"--secret-file {secret_file}: {exc.strerror}") from None
        source = f"--secret-file {secret_file}"
    else:
        secret = os.environ.get("SECRET_KEY", "")
        source = "SECRET_KEY"
        if not secret:
            return secrets.token_hex(32), ("no SECRET_KEY or --secret-file: using a random "
                                           "secret, so sessions end when the server restarts")
    if len(secret) < 16:
        raise UsageError(f"the secret from {source} must be at least 16 characters")
    return secret, None


def redis_url(option: str | None) -> str:
    """The Redis URL from --redis, else $REDIS_URL (validated). A password is refused
    on the command line, where every user of the machine can read it (``ps``)."""
    from urllib.parse import urlsplit

    url = option if option is not None else os.environ.get("REDIS_URL", "")
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise UsageError(f"--redis: bad URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"--redis needs a redis://HOST:PORT/DB URL, got scheme {parts.scheme!r}")
    if option is not None and parts.password:
        raise UsageError("--redis: a password on the command line is visible to every user "
                         "(ps); put the URL in $REDIS_URL instead")
    return url


def config_from_args(argv: Sequence[str]) -> Config:
    """Parse ``argv`` (without the program name) into a validated Config."""
    args = build_parser().parse_args(list(argv))
    if args.workers < 1:
        raise UsageError(f"-c needs at least 1 worker, got {args.workers}")
    if not os.path.isfile(args.entry):
        raise UsageError(f"entry script {args.entry} does not exist")
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    for module in modules:
        if not os.path.isfile(module):
            raise UsageError(f"module {module} does not exist")
    for flag, value in (("--graceful-timeout", args.graceful_timeout),
                        ("--max-header-size", args.max_header_size),
                        ("--max-body-size", args.max_body_size),
                        ("--header-timeout", args.header_timeout),
                        ("--keepalive-timeout", args.keepalive_timeout),
                        ("--handler-timeout", args.handler_timeout),
                        ("--max-headers", args.max_headers)):
        if value < 0:
            raise UsageError(f"{flag} must be >= 0")
    if args.mysql_driver not in ("auto", "aiomysql", "asyncmy"):
        raise UsageError(f"$EIGHTYS_MYSQL_DRIVER must be auto, aiomysql or asyncmy, "
                         f"got {args.mysql_driver!r}")
    if args.mysql_driver == "asyncmy":
        from eightys.mysql import available

        if not available("asyncmy"):
            raise UsageError("--mysql-driver asyncmy: asyncmy is not installed "
                             "(pip install 'eightys[fast]')")
    node = args.node or os.environ.get("HOSTNAME") or "localhost"
    if args.access_log and args.access_log != "-":
        try:  # fail now, in one line, rather than in every worker
            os.close(os.open(args.access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as exc:
            raise UsageError(f"--access-log {args.access_log}: {exc.strerror}") from None
    metrics_host, metrics_port = "127.0.0.1", -1
    if args.metrics is not None:
        from eightys.dashboard import parse_listen

        try:
            metrics_host, metrics_port = parse_listen(args.metrics)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    secret, secret_warning = server_secret(args.secret_file)
    notes = []
    host = args.host
    if args.reload and host is None:
        # reload mode shows source code in error pages: not to the whole network by default
        host = "::1" if args.ipv6 else "127.0.0.1"
        notes.append(f"--reload without -h: listening on {host} only (-h 0.0.0.0 to open it)")
    return Config(
        entry=os.path.abspath(args.entry),
        address=parse_address(host, args.port, args.ipv6),
        workers=args.workers,
        node=node,
        modules=tuple(os.path.abspath(m) for m in modules),
        lua=args.lua,
        reuseport=not args.shared_socket,
        graceful_timeout=args.graceful_timeout,
        max_header_size=args.max_header_size,
        max_body_size=args.max_body_size,
        header_timeout=args.header_timeout,
        keepalive_timeout=args.keepalive_timeout,
        handler_timeout=args.handler_timeout,
        max_headers=args.max_headers,
        dev=args.dev or args.reload,
        reload=args.reload,
        secret=secret,
        secret_random=secret_warning is not None,
        notes=tuple(notes),
        redis=redis_url(args.redis),
        mysql_driver=args.mysql_driver,
        access_log=os.path.abspath(args.access_log) if args.access_log not in ("", "-")
        else args.access_log,
        access_log_format=args.access_log_format,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


def _write_stubs(args: list[str]) -> int:
    """``eightys stubs DIR``: write the LuaLS type stubs of the Lua API into DIR."""
    from eightys.stubs import LUARC_HINT, write_stubs

    if len(args) != 1 or args[0].startswith("-"):
        print("usage: eightys stubs DIR   (writes LuaLS type stubs for the eightys Lua API)",
              file=sys.stderr)
        return USAGE_EXIT
    try:
        written = write_stubs(args[0])
    except OSError as exc:
        print(f"eightys: error: cannot write stubs to {args[0]}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} stub files to {args[0]}; in .luarc.json: "
          + LUARC_HINT % os.path.abspath(args[0]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: parse, then run the master until it stops. Returns the exit code."""
    from eightys import master

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["stubs"]:
        return _write_stubs(args[1:])
    try:
        config = config_from_args(args)
        return master.run(config)
    except UsageError as exc:
        print(f"eightys: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
