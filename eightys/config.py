"""The server's configuration: one frozen value built by the CLI, shipped to every worker,
and the error for a configuration the user must fix."""

from __future__ import annotations

import json
import secrets
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
    #: MySQL driver: "auto" (asyncmy when installed, else aiomysql), "aiomysql" or "asyncmy".
    mysql_driver: str = "auto"
    extra: dict[str, str] = field(default_factory=dict)
    #: Tells this server run apart from every other (random, not secret): made once by
    #: the master's Config, the same in all its workers and their successors. The WAMP
    #: router uses it to know which of the messages it gets from Redis its own server sent.
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
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
        return cls(**data)
