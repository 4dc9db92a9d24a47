"""The server's configuration: one frozen value built by the CLI, shipped to every worker,
and the error for a configuration the user must fix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


class UsageError(Exception):
    """A command-line or start-up mistake the user can fix; reported in one line, exit 2.

    Raised by the CLI and by the master (an address that cannot be bound); defined
    here, beside the configuration both read, so neither imports the other."""


@dataclass(frozen=True)
class Address:
    """Where the server listens: a TCP host/port (IPv4 or IPv6) or a Unix socket path."""

    family: str  # "inet", "inet6" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def describe(self) -> str:
        """Human-readable form for log lines, e.g. ``0.0.0.0:8080`` or ``[::1]:80``."""
        if self.family == "unix":
            return f"unix:{self.path}"
        if self.family == "inet6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """Everything a master needs to start workers, and a worker needs to run one.

    The master sends it to each worker as JSON (``to_json``/``from_json``) through
    an inherited file descriptor, so every field must be plain data.
    """

    entry: str
    address: Address
    workers: int
    node: str = "localhost"
    modules: tuple[str, ...] = ()
    lua: str = "luajit"
    reuseport: bool = True
    graceful_timeout: float = 10.0
    max_header_size: int = 32 * 1024
    max_body_size: int = 16 * 1024 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    handler_timeout: float = 30.0
    max_headers: int = 100
    #: Server-wide network ACL and trusted proxies (CIDR strings; eightys.acl).
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    proxy_from: tuple[str, ...] = ()
    #: Request bodies larger than this go to a temporary file (--body-buffer-size).
    body_buffer_size: int = 1024 * 1024
    dev: bool = False
    #: Watch the code and the site, reload on change, live-reload browsers (--reload).
    reload: bool = False
    #: Signs session cookies when no MASTER_KEY is set; one per server run, shared by its workers.
    secret: str = ""
    #: No SECRET_KEY/--secret-file: the secret is random, sessions end at restart.
    secret_random: bool = False
    #: Redis for apps (``require("redis")``'s default) and shared caches/sessions:
    #: ``redis://[user:password@]host:port/db`` (--redis, or REDIS_URL for one with a password).
    redis: str = ""
    #: This server run among the servers sharing a Redis (random, set by the master;
    #: the same in all its workers): messages on the Redis bus carry it, and the WAMP
    #: router (Lua `host.run_id`) tells its own server's messages from Redis by it.
    server_id: str = ""
    #: MySQL driver: "auto" (asyncmy when installed, else aiomysql), "aiomysql" or "asyncmy".
    mysql_driver: str = "auto"
    #: Run the entry script once, without a listener or workers (--cli).
    cli: bool = False
    #: TLS on the listener (--tls-cert/--tls-key, or TLS=true TLS_PUBKEY=... TLS_PRIVKEY=...):
    #: PEM certificate chain and key files, re-read on SIGHUP.
    tls_cert: str = ""
    tls_key: str = ""
    #: The key's passphrase (from --tls-key-password-file or $TLS_KEY_PASSWORD, never argv).
    tls_key_password: str = ""
    #: A second, plain listener on this port that answers everything with 308 to https.
    redirect_http: int | None = None
    #: Access log: "" (off), "-" (stdout) or a file path; its format "combined" or "json".
    access_log: str = ""
    access_log_format: str = "combined"
    #: The master's metrics/dashboard listener (--metrics [HOST:]PORT); port -1: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1
    extra: dict[str, str] = field(default_factory=dict)
    #: Warnings about the configuration, logged once by the master at start.
    notes: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Serialise for a worker (read back with :meth:`from_json`)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["address"] = Address(**data["address"])
        data["modules"] = tuple(data["modules"])
        data["notes"] = tuple(data.get("notes", ()))
        for name in ("allow", "deny", "proxy_from"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)
