"""The Python half of the content server (eightys/lua/eightys/httpd.lua).

Lua scans the site and decides what each file is; this module does what is
better done in Python: static files (eightys.static: ETag, Range, gzip), form
bodies (eightys.forms), Jinja2 pages (eightys.jinja), and path checks.

Static files mounted here are also served by the HTTP protocol directly, before
Lua is called (``ContentHost.static_routes``): a static request costs a dict
lookup and a precomputed response.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

from eightys.wire import CONNECTION_HEADERS, FLAG_LIMIT, FLAG_TLS

if TYPE_CHECKING:
    from eightys.config import Config
    from eightys.jinja import JinjaPages
    from eightys.lua_runtime import LuaRuntime
    from eightys.protocols.host import ConnectionHost
    from eightys.static import StaticFile

BUILTIN_TEMPLATES = str(Path(__file__).parent / "templates")


class StaticSender(Protocol):
    """What serving a static file needs of an HTTP connection."""

    def send(self, seq: int, data: bytes, final: bool, close: Any = None) -> bool:
        """Queue part (``final``: the end) of request ``seq``'s response."""

    async def wait_turn(self, seq: int) -> bool:
        """Wait until ``seq``'s response may go out and the client reads; False if closed."""

    def abort(self) -> None:
        """Cut the connection."""


class ContentOwner(Protocol):
    """What :class:`ContentHost` uses of its owner (the worker): a narrow view, so
    this module never imports the worker."""

    @property
    def config(self) -> "Config":
        """The server's configuration (secret, dev, body limit)."""

    @property
    def live(self) -> object | None:
        """Set in reload mode (browser live reload), else None."""

    @property
    def host(self) -> "ConnectionHost":
        """What protocols see: the coarse clock, open connections, task spawning."""

    @property
    def log(self) -> Any:
        """The worker's logger."""

    @property
    def acl(self) -> Any:
        """The network ACL functions (eightys.acl.AclHost): the client address."""

    @property
    def runtime(self) -> "LuaRuntime":
        """The Lua runtime (value conversion, globals)."""


class ContentHost:
    """Functions the content server calls through the private host table."""

    def __init__(self, worker: ContentOwner) -> None:
        self.worker = worker
        #: decoded URL path -> StaticFile, consulted by HttpProtocol before Lua
        self.static_routes: dict[bytes, StaticFile] = {}
        #: files behind an httpd.acl prefix: served only through their Lua route,
        #: which checks the client first (never on the fast path)
        self.guarded_static: dict[bytes, StaticFile] = {}
        #: per request flags: the Connection line plus the security headers
        #: (httpd.security_headers; Strict-Transport-Security on TLS only)
        self.static_lines: tuple[bytes, ...] = CONNECTION_HEADERS
        self._jinja: "JinjaPages | None" = None
        self._jinja_root: str | None = None
        self._error_pages: dict[tuple[int, bool], bytes] = {}
        self._checked: dict[bytes, float] = {}  # url path -> when its file was last stat'ed
        #: the site root, symlinks resolved; files whose real path is elsewhere are refused
        self.real_root: bytes | None = None
        self.site_dir = b""  # the root as named (absolute), symlinks not resolved
        #: httpd.follow_symlinks: links out of the root are served (the site owner said so)
        self.follow_symlinks = False

    def functions(self) -> dict[bytes, Any]:
        """The entries this adds to the private host table."""
        return {
            b"static_mount": self.static_mount, b"static_clear": self.static_clear,
            b"static_serve": self.static_serve, b"form_parse": self.form_parse,
            b"static_headers": self.static_headers, b"form_parse_file": self.form_parse_file,
            b"jinja_render": self.jinja_render, b"jinja_error_page": self.jinja_error_page,
            b"mtime": mtime, b"realpath": realpath, b"is_within": is_within,
            b"mime_type": mime_type, b"site_root": self.site_root,
            b"resolve_site": lambda public_html, entry: os.fsencode(
                site_root(os.fsdecode(public_html) if public_html else None, os.fsdecode(entry))),
            b"inside_root": self.inside_root, b"is_local": self.is_local,
            b"log_warning": self.log_warning, b"display_path": display_path,
            b"reload_mode": self.worker.live is not None,
            b"secret_random": self.worker.config.secret_random, b"secret": self.worker.config.secret.encode(),
        }

    def log_warning(self, text: bytes) -> None:
        """A warning from the content server (configuration, not a request's error)."""
        self.worker.log.warning("%s", text.decode("utf-8", "replace"))

    # -- the site root ------------------------------------------------------------

    def site_root(self, root: bytes, real_root: bytes, follow_symlinks: bool) -> None:
        """Set the root every served file, template and include must be inside."""
        self.site_dir = os.path.abspath(root)
        self.real_root = real_root
        self.follow_symlinks = bool(follow_symlinks)
        self._jinja_root = None

    def inside_root(self, path: bytes) -> bool:
        """Whether ``path`` may be served: it exists and its real path (symlinks
        resolved) is inside the site root, unless the site follows symlinks."""
        root = self.real_root
        if root is None or b"\0" in path:
            return False
        if self.follow_symlinks:
            # links may lead out, ".." may not: the path itself must name a file below the root
            return os.path.exists(path) and (
                is_within(os.path.abspath(path), self.site_dir) or
                is_within(os.path.realpath(path), root))
        real = realpath(path)
        return real is not None and is_within(real, root)

    def is_local(self, fd: int, forwarded: bytes | None = None) -> bool:
        """Whether connection ``fd`` comes from this machine (a loopback address or
        a Unix socket): --dev error details are shown to those clients only. Behind
        a trusted proxy (--proxy-from) the forwarded client is asked about."""
        conn = self.worker.host.connections.get(fd)
        transport = getattr(conn, "transport", None)
        if transport is None:
            return False
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple):
            return True  # a Unix socket: only this machine can connect
        host = peer[0]
        if forwarded and self.worker.acl is not None:
            client = self.worker.acl.client_address(fd, forwarded)
            host = client.decode() if client else host
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback

    # -- static files -------------------------------------------------------------

    def static_headers(self, plain: bytes, tls: bytes) -> None:
        """The security header lines static files carry (``tls``: on TLS requests)."""
        self.static_lines = tuple(
            CONNECTION_HEADERS[flags] + (tls if flags & FLAG_TLS else plain)
            for flags in range(FLAG_LIMIT))

    def static_mount(self, url_path: bytes, file_path: bytes, cache_control: bytes | None,
                     guarded: Any = False) -> Any:
        """Serve ``file_path`` at ``url_path`` (``guarded``: through its Lua route
        only, behind an ACL). Returns true, or nil, err."""
        from eightys.static import StaticFile

        path = os.fsdecode(file_path)  # names are bytes, not always UTF-8
        if self.worker.live is not None:
            # Reload mode: files change under the browser, which must revalidate them
            # each time, fingerprinted names and httpd.immutable folders included.
            cache_control = b"no-cache"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                # open() would block on a FIFO for good, and fails on a socket
                return None, b"not a regular file"
            static = StaticFile.load(path,
                                     cache_control=cache_control.decode() if cache_control else None)
        except OSError as exc:
            return None, str(exc).encode()
        (self.guarded_static if guarded else self.static_routes)[url_path] = static
        self._jinja_root = None  # the site may have changed
        return True

    def fresh(self, url_path: bytes, static: "StaticFile",
              routes: "dict[bytes, StaticFile] | None" = None) -> "StaticFile | None":
        """``static``, or a reloaded copy if its file changed on disk, or None if
        it left the site root (a symlink out of it now; the route is dropped). Looked at
        most once per second per file (the worker's coarse clock), so serving
        from memory stays cheap and an edited file is served within a second."""
        if routes is None:
            routes = self.static_routes
        now = self.worker.host.now
        if self._checked.get(url_path) == now:
            return static
        self._checked[url_path] = now
        if not self.inside_root(os.fsencode(static.path)):
            # replaced by a link out of the site (or gone): no longer served
            routes.pop(url_path, None)
            return None
        if not static.is_stale():
            return static
        from eightys.static import StaticFile

        cache_control = static.cache_control.decode("latin-1") if static.cache_control else None
        try:
            static = StaticFile.load(static.path, cache_control=cache_control)
        except (OSError, ValueError):
            return static  # gone or unreadable: keep the last good copy until a rescan
        routes[url_path] = static
        return static

    def static_clear(self) -> None:
        """Forget every mounted file (before a rescan)."""
        self.static_routes.clear()  # in place: HttpProtocol holds a reference
        self.guarded_static.clear()
        self._error_pages = {}  # a rescan may bring new error pages
        self._checked.clear()

    def static_serve(self, fd: int, seq: int, url_path: bytes, method: bytes, flags: int,
                     headers: Any) -> Any:
        """Answer request ``seq`` on connection ``fd`` with a mounted file (the Lua
        route of a static file; the HTTP protocol usually serves them itself)."""
        conn = self.worker.host.connections.get(fd)
        routes = self.static_routes
        static = routes.get(url_path)
        if static is None:
            routes = self.guarded_static
            static = routes.get(url_path)
        if static is not None:
            static = self.fresh(url_path, static, routes)
        if conn is None or static is None:
            return False
        flat: list[bytes] = []
        for name, value in self.worker.runtime.to_python(headers).items():
            flat += (name, value)
        self.send_static(conn, seq, static, method, flat, self.static_lines[int(flags) % FLAG_LIMIT])
        return True

    def static_hook(self, conn: Any, request: tuple) -> bool:
        """The HTTP protocol's static fast path: answer a GET/HEAD for a mounted file
        before Lua runs (a dict lookup and a precomputed response). False: not ours."""
        statics = self.static_routes
        if not statics:
            return False
        url = request[2]
        query_at = url.find(b"?")
        path = url if query_at == -1 else url[:query_at]
        if b"%" in path:
            path = unquote_to_bytes(path)
        static = statics.get(path)
        if static is not None:
            static = self.fresh(path, static)
        if static is None:  # not mounted, or it left the site root: Lua answers (404)
            return False
        headers = request[5].split(b"\0") if request[5] else []
        self.send_static(conn, request[0], static, request[1], headers,
                         self.static_lines[request[4]])
        return True

    def send_static(self, conn: Any, seq: int, static: "StaticFile", method: bytes,
                    headers: list[bytes], connection: bytes) -> None:
        """Answer request ``seq`` on ``conn`` with a static file: from memory at once,
        or, for a large file, streamed in chunks no faster than the client reads."""
        response = static.respond(method, headers, connection)
        if response.file_range is None:
            conn.send(seq, response.head + response.body if response.body else response.head,
                      True)
        else:
            conn.send(seq, response.head, False)
            self.worker.host.spawn(_stream_file(conn, seq, response.file_range, self.worker.log))

    # -- forms --------------------------------------------------------------------

    def form_parse(self, content_type: bytes, body: bytes) -> Any:
        """Parse a form body into a Lua table: fields as strings, uploaded files as
        tables {filename, content_type, data, size}. Or nil, status, reason."""
        from eightys.forms import FormError, parse_form

        config = self.worker.config
        result = parse_form(content_type, body, max_file_size=config.max_body_size)
        if isinstance(result, FormError):
            return None, result.status, result.reason.encode()
        data = result.to_lua_data()
        fields = dict(data[b"fields"])
        fields.update(data[b"files"])
        return self.worker.runtime.to_lua(fields)

    def form_parse_file(self, content_type: bytes, path: bytes) -> Any:
        """:meth:`form_parse` for a body written to a temporary file (larger than
        --body-buffer-size): read for the parse, released after."""
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError as exc:
            return None, 500, str(exc).encode()
        return self.form_parse(content_type, body)

    # -- Jinja2 -------------------------------------------------------------------

    def _pages(self) -> "JinjaPages":
        root = self.worker.runtime.lua.globals()[b"httpd"][b"root"].decode()
        if self._jinja is None or self._jinja_root != root:
            from eightys.jinja import JinjaPages  # jinja2 loads only for sites that use it

            self._jinja = JinjaPages(root, dev=self.worker.config.dev,
                                     builtin_dir=BUILTIN_TEMPLATES,
                                     allow=lambda path: self.inside_root(os.fsencode(path)))
            self._jinja_root = root
            self._error_pages = {}
        return self._jinja

    def jinja_render(self, name: bytes, context: Any) -> Any:
        """Render a Jinja2 template of the site. Returns the text, or nil, err."""
        from eightys.jinja import describe_error, lua_to_jinja

        try:
            values = lua_to_jinja(self.worker.runtime.to_python(context))
        except TypeError as exc:  # a Lua function or userdata in the context
            return None, f"cannot pass this to a Jinja2 template: {exc}".encode()
        pages = self._pages()
        try:
            return pages.render(name.decode(), values)
        except Exception as exc:  # noqa: BLE001 - any template failure is a 500, never a crash
            info = describe_error(exc, root=os.getcwd())
            return None, f"{info.get('file')}:{info.get('line')}: {info.get('message')}".encode()

    def jinja_error_page(self, status: int, context: Any) -> bytes:
        """The site's (or the built-in) error page for ``status``."""
        from eightys.jinja import lua_to_jinja

        values = lua_to_jinja(self.worker.runtime.to_python(context))
        # Pages without details (all of them in production) are the same every time:
        # keep them, so a flood of 404s costs a dict lookup, not a Jinja render.
        cacheable = not values.get("details") and not values.get("message")
        key = (int(status), bool(values.get("dev")))
        if cacheable and key in self._error_pages:
            return self._error_pages[key]
        try:
            page = self._pages().render_error(int(status), values)
        except Exception:  # noqa: BLE001 - a broken error page must not hide the error
            return b"<!doctype html><title>Error</title><h1>Error %d</h1>" % int(status)
        if cacheable:
            self._error_pages[key] = page
        return page


def display_path(path: bytes) -> bytes:
    """How errors and logs name a file: relative to the working directory when it
    is below it, else absolute (one name per file, whatever PUBLIC_HTML said)."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith(b"..") else rel


async def _stream_file(conn: Any, seq: int, file_range: tuple[str, int, int],
                       log: Any) -> None:
    # uvloop has no sendfile: read chunks and write them, waiting while the client is
    # behind (and while earlier responses are still going out, so a pipelined file is
    # never held in memory whole).
    from eightys.static import iter_chunks

    try:
        for chunk in iter_chunks(*file_range):
            if not await conn.wait_turn(seq):
                return
            conn.send(seq, chunk, False)
        conn.send(seq, b"", True)
    except OSError as exc:  # the file went away mid-way: the response cannot be completed
        log.error("static file %s: %s", file_range[0], exc)
        conn.abort()


#: 80s's default PUBLIC_HTML, relative to the working directory.
DEFAULT_SITE = "server/www/"


def site_root(public_html: str | None, entry: str) -> str:
    """The directory the content server serves, from ``$PUBLIC_HTML`` and the entry script.

    As in 80s, ``PUBLIC_HTML`` names the folder that holds ``main.lua`` and
    ``public_html/`` (trailing ``/`` optional): the site root is its ``public_html/``.
    A folder without ``public_html/`` inside is the site root itself (eightys'
    older form). Unset: 80s's ``server/www/`` if it holds ``public_html/``, else
    ``public_html/`` beside the entry script's folder (eightys' layout:
    ``server/http.lua`` next to ``public_html/``). ``main.lua`` is looked for
    beside the site root, then in it.
    """
    if public_html:
        folder = public_html.rstrip("/") or "/"
        inner = os.path.join(folder, "public_html")
        return inner if os.path.isdir(inner) else folder
    inner = os.path.join(DEFAULT_SITE, "public_html")
    if os.path.isdir(inner):
        return inner
    return os.path.join(os.path.dirname(os.path.dirname(entry)), "public_html")


def mtime(path: bytes) -> int | None:
    """Modification time (ns) of a file, or nil if it does not exist."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def realpath(path: bytes) -> bytes | None:
    """The canonical path (symlinks resolved), or nil if it does not exist."""
    if b"\0" in path:
        return None
    real = os.path.realpath(path)
    return real if os.path.exists(real) else None


def is_within(path: bytes, root: bytes) -> bool:
    """Whether canonical ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def mime_type(name: bytes) -> bytes:
    """Content-Type for a file name (the static server's table: text types with charset)."""
    from eightys.static import content_type_for

    return content_type_for(name.decode("utf-8", "replace")).encode()
