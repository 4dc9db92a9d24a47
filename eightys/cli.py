"""Command line: ``eightys [ENTRY.lua] [-p PORT] [-h HOST] [-6] [-c N] ...`` -> a Config.

``-h`` is the bind host (as in 80s), so help is ``--help`` only. Every usage
mistake is one line on stderr and exit code 2, never a traceback. ``--config
FILE.toml`` supplies any option from a file (eightys/config_file.py: built from
this parser, so a new option works there with no extra code).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from typing import NoReturn, Sequence

from eightys import __version__, config_file
from eightys.acl import parse_networks
from eightys.config import Address, Config, UsageError
from eightys.config_file import Merged

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
    p.add_argument("--allow", action="append", default=[], metavar="CIDR,...",
                   help="server-wide ACL: only clients in these networks (IPv4/IPv6 CIDRs or "
                        "addresses) may connect; repeatable. --deny wins over --allow "
                        "(README, 'Network ACLs')")
    p.add_argument("--deny", action="append", default=[], metavar="CIDR,...",
                   help="server-wide ACL: clients in these networks are disconnected right "
                        "after accept, before any Lua runs; repeatable")
    p.add_argument("--proxy-from", action="append", default=[], metavar="CIDR,...",
                   help="trust X-Forwarded-For from these proxies: its rightmost untrusted "
                        "hop is the client address ACLs check and Lua sees; repeatable")
    p.add_argument("--body-buffer-size", type=int, metavar="BYTES",
                   default=_env_int("HTTP_BODY_BUFFER_SIZE", 1024 * 1024),
                   help="request bodies larger than this are written to a temporary file "
                        "instead of memory (default $HTTP_BODY_BUFFER_SIZE or 1 MiB)")
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
    p.add_argument("--cli", action="store_true",
                   help="run ENTRY.lua once as a script (migrations, cron jobs): the whole "
                        "aio library, no listener, one process; exits when it calls "
                        "aio:quit([code]) or has nothing left to wait for")
    p.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read options from a TOML file (keys are the long option names, "
                        "e.g. max-body-size = 1048576; workers, port, host, entry); "
                        "command-line flags override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the merged configuration as TOML (secrets redacted) and exit")
    p.add_argument("--tls-cert", metavar="FILE", default=None,
                   help="serve HTTPS/WSS (or raw TLS) with this PEM certificate chain; "
                        "needs --tls-key; re-read on SIGHUP (also TLS=true TLS_PUBKEY=FILE)")
    p.add_argument("--tls-key", metavar="FILE", default=None,
                   help="the PEM private key of --tls-cert (also TLS_PRIVKEY=FILE)")
    p.add_argument("--tls-key-password-file", metavar="FILE", default=None,
                   help="file holding the passphrase of an encrypted --tls-key "
                        "(or $TLS_KEY_PASSWORD; never on the command line)")
    p.add_argument("--redirect-http", type=int, metavar="PORT", default=None,
                   help="with TLS: also listen for plain HTTP on PORT and answer every "
                        "request with 308 to the https:// URL")
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


def server_secret(secret_file: str | None, name: str = "--secret-file") -> tuple[str, str | None]:
    """The server secret and, when it is a throw-away one, a warning (the content
    server logs it: sessions are what end with the secret).

    From ``--secret-file`` (its text, stripped), else ``$SECRET_KEY``, else random:
    never from the command line itself, where every user of the machine could read it.
    ``name`` is how errors name the option (``FILE: secret-file`` from a config file).
    """
    if secret_file:
        try:
            with open(secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise UsageError(f"{name} {secret_file}: {exc.strerror}") from None
        source = f"{name} {secret_file}"
    else:
        secret = os.environ.get("SECRET_KEY", "")
        source = "SECRET_KEY"
        if not secret:
            return secrets.token_hex(32), ("no SECRET_KEY or --secret-file: using a random "
                                           "secret, so sessions end when the server restarts")
    if len(secret) < 16:
        raise UsageError(f"the secret from {source} must be at least 16 characters")
    return secret, None


def redis_url(option: str | None, name: str = "--redis", on_command_line: bool = True) -> str:
    """The Redis URL from --redis (or the config file), else $REDIS_URL (validated).
    A password is refused on the command line, where every user of the machine can
    read it (``ps``); a config file or $REDIS_URL may hold one."""
    from urllib.parse import urlsplit

    url = option if option is not None else os.environ.get("REDIS_URL", "")
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as exc:
        raise UsageError(f"{name}: bad URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"{name} needs a redis://HOST:PORT/DB URL, got scheme {parts.scheme!r}")
    if option is not None and on_command_line and parts.password:
        raise UsageError(f"{name}: a password on the command line is visible to every user "
                         "(ps); put the URL in $REDIS_URL or a --config file instead")
    return url


def parse_options(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, Merged]:
    """The parser and the option values of ``argv`` (without the program name), with
    the ``--config`` file applied under the command line (not yet validated)."""
    parser = build_parser()
    return parser, config_file.parse(parser, argv)
def tls_options(args: argparse.Namespace) -> tuple[str, str, str]:
    """(certificate, key, passphrase) from --tls-cert/--tls-key, else 80s's
    ``TLS=true TLS_PUBKEY=cert.pem TLS_PRIVKEY=key.pem``; ``("", "", "")`` without TLS.
    The files are loaded once here, so a bad one is a usage error, not a worker
    that fails to start."""
    from eightys.tls import TLSError, server_context

    cert, key = args.tls_cert, args.tls_key
    if cert is None and key is None and os.environ.get("TLS", "").lower() in ("1", "true", "yes"):
        cert, key = os.environ.get("TLS_PUBKEY") or None, os.environ.get("TLS_PRIVKEY") or None
        if cert is None or key is None:
            raise UsageError("TLS=true needs TLS_PUBKEY (certificate file) and "
                             "TLS_PRIVKEY (key file)")
    if cert is None and key is None:
        if args.tls_key_password_file:
            raise UsageError("--tls-key-password-file needs --tls-cert and --tls-key")
        return "", "", ""
    if cert is None or key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    password = os.environ.get("TLS_KEY_PASSWORD", "")
    if args.tls_key_password_file:
        try:
            with open(args.tls_key_password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--tls-key-password-file {args.tls_key_password_file}: "
                             f"{exc.strerror}") from None
    try:
        server_context(cert, key, password)
    except TLSError as exc:
        raise UsageError(str(exc)) from None
    return os.path.abspath(cert), os.path.abspath(key), password


def config_from_args(argv: Sequence[str]) -> Config:
    """Parse ``argv`` (without the program name) into a validated Config."""
    return build_config(parse_options(argv)[1])


def build_config(merged: Merged) -> Config:
    """Validate the merged options into a Config. Errors about a value from the
    config file name the file and its key; others name the flag."""
    args = merged.values
    name, where = merged.name, merged.where
    if args.workers < 1:
        raise UsageError(f"{name('workers', '-c')} needs at least 1 worker, got {args.workers}")
    if not os.path.isfile(args.entry):
        raise UsageError(f"{where('entry')}entry script {args.entry} does not exist")
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    for module in modules:
        if not os.path.isfile(module):
            raise UsageError(f"{where('modules')}module {module} does not exist")
    for dest, flag in (("graceful_timeout", "--graceful-timeout"),
                       ("max_header_size", "--max-header-size"),
                       ("max_body_size", "--max-body-size"),
                       ("header_timeout", "--header-timeout"),
                       ("keepalive_timeout", "--keepalive-timeout"),
                       ("handler_timeout", "--handler-timeout"),
                       ("max_headers", "--max-headers"),
                       ("body_buffer_size", "--body-buffer-size")):
        if getattr(args, dest) < 0:
            raise UsageError(f"{name(dest, flag)} must be >= 0")
    if args.mysql_driver not in ("auto", "aiomysql", "asyncmy"):
        raise UsageError(f"$EIGHTYS_MYSQL_DRIVER must be auto, aiomysql or asyncmy, "
                         f"got {args.mysql_driver!r}")
    if args.mysql_driver == "asyncmy":
        from eightys.mysql import available

        if not available("asyncmy"):
            raise UsageError(f"{name('mysql_driver', '--mysql-driver')} asyncmy: asyncmy is "
                             "not installed (pip install 'eightys[fast]')")
    if args.cli and args.reload:
        raise UsageError(f"{name('reload', '--reload')}: a --cli script runs once; "
                         "there is nothing to reload")
    acl_lists = {}  # validated here: a bad network is a usage error, not a worker crash
    for key, flag, values in (("allow", "--allow", args.allow), ("deny", "--deny", args.deny),
                               ("proxy_from", "--proxy-from", args.proxy_from)):
        try:
            acl_lists[key] = tuple(str(n) for n in parse_networks(values,
                                                                  f"{name(key, flag)} entry"))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    node = args.node or os.environ.get("HOSTNAME") or "localhost"
    tls_cert, tls_key, tls_password = tls_options(args)
    if args.redirect_http is not None:
        if not tls_cert:
            raise UsageError("--redirect-http needs TLS (--tls-cert and --tls-key)")
        if not 0 <= args.redirect_http <= 65535:
            raise UsageError(f"--redirect-http port {args.redirect_http} is out of range 0-65535")
    if args.access_log and args.access_log != "-":
        try:  # fail now, in one line, rather than in every worker
            os.close(os.open(args.access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as exc:
            raise UsageError(f"{name('access_log', '--access-log')} {args.access_log}: {exc.strerror}") from None
    metrics_host, metrics_port = "127.0.0.1", -1
    if args.metrics is not None:
        from eightys.dashboard import parse_listen

        try:
            metrics_host, metrics_port = parse_listen(args.metrics)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    secret, secret_warning = server_secret(args.secret_file,
                                           name("secret_file", "--secret-file"))
    notes = []
    host = args.host
    if args.reload and host is None:
        # reload mode shows source code in error pages: not to the whole network by default
        host = "::1" if args.ipv6 else "127.0.0.1"
        notes.append(f"--reload without -h: listening on {host} only (-h 0.0.0.0 to open it)")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"{where('port')}port {args.port} is out of range 0-65535")
    try:
        address = parse_address(host, args.port, args.ipv6)
    except UsageError as exc:
        raise UsageError(f"{where('host')}{exc}") from None
    return Config(
        entry=os.path.abspath(args.entry),
        address=address,
        workers=1 if args.cli else args.workers,
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
        allow=acl_lists["allow"],
        deny=acl_lists["deny"],
        proxy_from=acl_lists["proxy_from"],
        body_buffer_size=args.body_buffer_size,
        dev=args.dev or args.reload,
        reload=args.reload,
        secret=secret,
        secret_random=secret_warning is not None,
        notes=tuple(notes),
        redis=redis_url(args.redis, name("redis", "--redis"),
                        on_command_line="redis" not in merged.from_file),
        mysql_driver=args.mysql_driver,
        cli=args.cli,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_key_password=tls_password,
        redirect_http=args.redirect_http,
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
    """Console entry point: parse, then run the master until it stops (or, with
    ``--cli``, the script until it ends). Returns the exit code."""
    from eightys import master

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["stubs"]:
        return _write_stubs(args[1:])
    try:
        parser, merged = parse_options(args)
        config = build_config(merged)
        if merged.values.print_config:
            sys.stdout.write(config_file.dump(parser, merged))
            return 0
        if config.cli:
            from eightys import script

            return script.run(config)
        return master.run(config)
    except UsageError as exc:
        print(f"eightys: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
