"""Static files as ready-made HTTP/1.1 responses (sans-IO).

A :class:`StaticFile` is loaded once (one ``stat``, one read) and then answers
requests with a :class:`Response`: the complete response head as bytes, plus
either the body bytes (small files, kept in memory) or a ``file_range`` the
caller streams with :func:`iter_chunks` (large files). Nothing here touches a
socket; the glue writes ``head + body`` with one ``HttpProtocol.send``.

What a response honours:

* ``GET`` and ``HEAD`` (``HEAD``: the same head, no body); others get 405;
* ``If-None-Match`` (weak comparison, ``*``, lists) and, when that is absent,
  ``If-Modified-Since`` -> 304;
* one ``Range: bytes=a-b | a- | -n`` -> 206, unsatisfiable -> 416; several ranges,
  other units or malformed ranges are ignored (a 200, as RFC 9110 14.2 allows);
  ``If-Range`` with a non-matching validator also means a 200;
* gzip when ``Accept-Encoding`` allows it and no range is served: a pre-compressed
  ``path + ".gz"`` sibling if there is one, else (compressible types of at least
  :data:`GZIP_MIN_SIZE` bytes held in memory) compressed once, on first use, and
  kept. Ranges always address the identity representation.

Speed: everything that does not depend on the request (status lines, header
blocks for 200/304, ETags, dates) is built at load time. A request with none of
the headers above costs one pass over the flat header list, the cached ``Date``
and a few concatenations.

Large files: uvloop implements no ``loop.sendfile`` (asyncio would fall back to
read-and-write in Python anyway), so they are streamed by reading chunks of
:data:`CHUNK_SIZE` and writing them with back-pressure (``HttpProtocol.drain``).
Those reads block the loop briefly; from the page cache that is microseconds.
"""

from __future__ import annotations

import gzip
import mimetypes
import os
import re
import stat as stat_module
import time
from dataclasses import dataclass
from email.utils import formatdate, mktime_tz, parsedate_tz
from typing import Iterator

from eightys.wire import SERVER_LINE, date_line, status_line

__all__ = [
    "CHUNK_SIZE",
    "GZIP_MIN_SIZE",
    "Response",
    "StaticFile",
    "TruncatedFile",
    "content_type_for",
    "date_header",
    "accepts_gzip",
    "iter_chunks",
]

#: Default read size when streaming a large file.
CHUNK_SIZE = 256 * 1024
#: Smaller files are never compressed on the fly (the gzip header and the extra
#: header lines eat most of the gain).
GZIP_MIN_SIZE = 1024
#: Level for on-the-fly compression: done once per file, so favour size.
GZIP_LEVEL = 9

_SERVER = SERVER_LINE
_STATUS = {code: status_line(code) for code in (200, 206, 304, 405, 416)}
_405_BODY = b"Method Not Allowed\n"

# Names of the request headers respond() looks at, by length: most request
# headers (Host, User-Agent, Accept, Cookie...) are skipped without lower-casing.
_IF_NONE_MATCH = b"if-none-match"
_IF_MODIFIED_SINCE = b"if-modified-since"
_RANGE = b"range"
_IF_RANGE = b"if-range"
_ACCEPT_ENCODING = b"accept-encoding"
_WATCHED_LENGTHS = frozenset(len(n) for n in (
    _IF_NONE_MATCH, _IF_MODIFIED_SINCE, _RANGE, _IF_RANGE, _ACCEPT_ENCODING))

# Web types pinned here so that responses do not depend on the host's
# /etc/mime.types (which, for instance, may call .js application/javascript or
# not know .woff2); everything else goes to the mimetypes module.
_PINNED_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".css": "text/css",
    ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
    ".map": "application/json", ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml", ".xml": "application/xml", ".txt": "text/plain",
    ".md": "text/markdown", ".csv": "text/csv", ".wasm": "application/wasm",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".gif": "image/gif", ".webp": "image/webp", ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon", ".woff": "font/woff", ".woff2": "font/woff2",
    ".pdf": "application/pdf", ".xhtml": "application/xhtml+xml",
    ".atom": "application/atom+xml", ".rss": "application/rss+xml",
    ".jsonld": "application/ld+json",
}
# mimetypes reports .gz/.bz2/.xz as an *encoding* of the inner type; served as a
# file of its own, such a file is an archive, not a transparently encoded page.
_ENCODING_TYPES = {
    "gzip": "application/gzip", "bzip2": "application/x-bzip2",
    "xz": "application/x-xz", "compress": "application/x-compress",
    "br": "application/octet-stream",
}
_CHARSET_TYPES = frozenset({
    "application/javascript", "application/json", "application/xml",
    "application/manifest+json", "image/svg+xml",
})
_QUOTED = re.compile(rb'"[^"]*"')


class TruncatedFile(OSError):
    """The file ended before the promised length (it shrank while being served).

    An ``OSError`` so that one ``except OSError`` in the glue covers it and a
    vanished file; either way the response cannot be completed and the only
    honest signal left in HTTP/1.1 is closing the connection."""


@dataclass(slots=True)
class Response:
    """A ready-to-write response.

    ``head`` is the status line and headers including the final blank line.
    Exactly one of ``body`` (possibly empty) or ``file_range`` carries the
    content: ``file_range`` is ``(path, offset, length)`` to stream with
    :func:`iter_chunks` after writing ``head``.
    """

    status: int
    head: bytes
    body: bytes = b""
    file_range: tuple[str, int, int] | None = None


# -- shared helpers -------------------------------------------------------------------

#: ``b"Date: ...\r\n"`` (kept under this name for the module's callers).
date_header = date_line


_gzip_cache: dict[bytes, bool] = {}
_GZIP_CACHE_MAX = 512


def accepts_gzip(value: bytes) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip.

    ``gzip``/``x-gzip`` with q > 0 does; an explicit ``gzip;q=0`` does not, even
    with ``*`` present; otherwise ``*`` with q > 0 does. An unreadable q-value
    counts as 0 (better an uncompressed response than one the client cannot
    read). Results are cached per distinct header value (browsers send a handful).
    """
    cached = _gzip_cache.get(value)
    if cached is not None:
        return cached
    gzip_q: float | None = None
    star_q: float | None = None
    for item in value.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip().lower()
        if coding not in (b"gzip", b"x-gzip", b"*"):
            continue
        q = 1.0
        for param in params.split(b";"):
            key, eq, qvalue = param.partition(b"=")
            if eq and key.strip().lower() == b"q":
                try:
                    q = float(qvalue.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also rejects nan
                    q = 0.0
        if coding == b"*":
            star_q = q if star_q is None else max(star_q, q)
        else:
            gzip_q = q if gzip_q is None else max(gzip_q, q)
    result = gzip_q > 0 if gzip_q is not None else (star_q is not None and star_q > 0)
    if len(_gzip_cache) >= _GZIP_CACHE_MAX:
        _gzip_cache.clear()  # bounded: arbitrary client values cannot grow it
    _gzip_cache[value] = result
    return result


def content_type_for(path: str) -> str:
    """The ``Content-Type`` value for a file name: pinned web types first, then
    ``mimetypes``, else ``application/octet-stream``; ``; charset=utf-8`` is added
    for text types, JavaScript, JSON, XML and SVG."""
    ext = os.path.splitext(path)[1].lower()
    ctype = _PINNED_TYPES.get(ext)
    if ctype is None:
        guessed, encoding = mimetypes.guess_type(path, strict=False)
        if encoding is not None:
            ctype = _ENCODING_TYPES.get(encoding, "application/octet-stream")
        else:
            ctype = guessed or "application/octet-stream"
    if ctype.startswith("text/") or ctype in _CHARSET_TYPES or ctype.endswith("+xml") \
            or ctype.endswith("+json"):
        return ctype + "; charset=utf-8"
    return ctype


def _compressible(ctype: str) -> bool:
    """Types worth gzipping on the fly (images, fonts and archives are already
    compressed)."""
    return ctype.startswith("text/") or any(
        word in ctype for word in ("javascript", "json", "xml", "svg"))


def _parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch for an HTTP date (IMF-fixdate or the obsolete
    forms), or None when it is not one."""
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
        if parsed is None:
            return None
        return mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _parse_range(value: bytes, size: int) -> tuple[int, int] | None | bool:
    """One ``bytes=`` range against a representation of ``size`` bytes.

    Returns ``(first, last)`` (inclusive) for a satisfiable range, ``False`` for an
    unsatisfiable one (416), ``None`` for anything to ignore: other units, several
    ranges, malformed syntax."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition(b"-")
    first_s, last_s = first_s.strip(), last_s.strip()
    # isdigit() on bytes is ASCII-only; the length bound keeps int() cheap.
    if not dash or len(first_s) > 20 or len(last_s) > 20:
        return None
    if not first_s:  # suffix range: the last n bytes
        if not last_s.isdigit():
            return None
        n = int(last_s)
        if n == 0 or size == 0:
            return False
        return (max(size - n, 0), size - 1)
    if not first_s.isdigit() or (last_s and not last_s.isdigit()):
        return None
    first = int(first_s)
    if last_s:
        last = int(last_s)
        if last < first:
            return None  # invalid syntax per RFC 9110 14.1.1: ignored, not 416
    else:
        last = size - 1
    if first >= size:
        return False
    return (first, min(last, size - 1))


def iter_chunks(path: str, offset: int, length: int, chunk: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield ``length`` bytes of ``path`` from ``offset`` in pieces of at most ``chunk``.

    The glue writes each piece and waits for ``drain`` before asking for the next,
    so a slow client holds at most one chunk in memory. Raises ``OSError`` if the
    file cannot be read and :class:`TruncatedFile` if it ends early; the response
    head promised ``length`` bytes, so the caller must close the connection then.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining > 0:
            data = f.read(min(chunk, remaining))
            if not data:
                raise TruncatedFile(f"{path}: {remaining} of {length} bytes missing")
            remaining -= len(data)
            yield data


# -- the file --------------------------------------------------------------------------


def _etag(size: int, mtime_ns: int, suffix: str = "") -> bytes:
    return f'"{size:x}-{mtime_ns:x}{suffix}"'.encode()


class StaticFile:
    """One file on disk, ready to answer requests. Build it with :meth:`load`."""

    __slots__ = (
        "path", "size", "mtime_ns", "data", "content_type", "cache_control",
        "etag", "last_modified", "mtime_s", "gz_path", "gz_size", "gz_mtime_ns",
        "gz_data", "gz_etag", "gz_on_the_fly", "vary", "_tail_200", "_tail_304",
        "_gz_tail_200", "_gz_tail_304", "_common",
    )

    def __init__(self) -> None:
        # Filled in by load(); a bare constructor keeps __slots__ simple.
        self.path = ""
        self.size = 0
        self.mtime_ns = 0
        self.mtime_s = 0
        self.data: bytes | None = None
        self.content_type = b""
        self.cache_control: bytes | None = None
        self.etag = b""
        self.last_modified = b""
        self.gz_path: str | None = None
        self.gz_size = 0
        self.gz_mtime_ns = 0
        self.gz_data: bytes | None = None
        self.gz_etag = b""
        self.gz_on_the_fly = False
        self.vary = False
        self._tail_200 = b""
        self._tail_304 = b""
        self._gz_tail_200: bytes | None = None
        self._gz_tail_304: bytes | None = None
        self._common = b""

    @classmethod
    def load(cls, path: str, *, cache_control: str | None,
             memory_limit: int = 1 << 20) -> StaticFile:
        """Stat and (when at most ``memory_limit`` bytes) read ``path``, and its
        ``path + ".gz"`` sibling if one exists.

        Raises ``OSError`` when ``path`` is missing or not a regular file (the
        caller answers 404) and ``ValueError`` for a ``cache_control`` that is not
        a valid header value (configuration, not client input)."""
        self = cls()
        self.path = path
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat_module.S_ISREG(st.st_mode):
                raise IsADirectoryError(f"{path}: not a regular file")
            self.mtime_ns = st.st_mtime_ns
            if st.st_size <= memory_limit:
                # The length of what was read is the truth: a file being written
                # may not match its stat. is_stale() then notices the difference.
                self.data = f.read()
                self.size = len(self.data)
            else:
                self.size = st.st_size
        self.mtime_s = self.mtime_ns // 1_000_000_000
        ctype = content_type_for(path)
        self.content_type = ctype.encode("latin-1")
        if cache_control is not None:
            if any(c in cache_control for c in "\r\n\0"):
                raise ValueError("cache_control must not contain CR, LF or NUL")
            self.cache_control = cache_control.encode("latin-1")
        self.etag = _etag(self.size, self.mtime_ns)
        self.last_modified = formatdate(self.mtime_s, usegmt=True).encode()

        gz_path = path + ".gz"
        try:
            with open(gz_path, "rb") as f:
                gst = os.fstat(f.fileno())
                if stat_module.S_ISREG(gst.st_mode):
                    self.gz_path = gz_path
                    self.gz_mtime_ns = gst.st_mtime_ns
                    if gst.st_size <= memory_limit:
                        self.gz_data = f.read()
                        self.gz_size = len(self.gz_data)
                    else:
                        self.gz_size = gst.st_size
        except OSError:
            pass  # no sibling (or unreadable): serve identity only
        if self.gz_path is not None:
            self.gz_etag = _etag(self.gz_size, self.gz_mtime_ns, "-gz")
        else:
            self.gz_on_the_fly = (self.data is not None and self.size >= GZIP_MIN_SIZE
                                  and _compressible(ctype))
            self.gz_etag = self.etag[:-1] + b'-gz"'
        self.vary = self.gz_path is not None or self.gz_on_the_fly

        # Header blocks that never change (Date and Connection are added per request).
        common = [b"ETag: ", self.etag, b"\r\nLast-Modified: ", self.last_modified, b"\r\n"]
        if self.cache_control is not None:
            common += (b"Cache-Control: ", self.cache_control, b"\r\n")
        if self.vary:
            common.append(b"Vary: Accept-Encoding\r\n")
        self._tail_304 = b"".join(common)
        self._common = b"Content-Type: %s\r\nAccept-Ranges: bytes\r\n" % self.content_type
        self._tail_200 = (b"Content-Length: %d\r\n" % self.size) + self._common + self._tail_304
        if self.gz_path is not None:
            self._build_gz_tails(self.gz_size)
        return self

    def _build_gz_tails(self, gz_size: int) -> None:
        tail_304 = self._tail_304.replace(self.etag, self.gz_etag, 1)
        self._gz_tail_304 = tail_304
        self._gz_tail_200 = (b"Content-Length: %d\r\nContent-Encoding: gzip\r\n" % gz_size) \
            + self._common + tail_304

    def _gzip_ready(self) -> bool:
        """Make sure a gzip representation exists; compress on the fly the first time.
        False when there is none (or compressing did not make it smaller)."""
        if self._gz_tail_200 is not None:
            return True
        if not self.gz_on_the_fly:
            return False
        assert self.data is not None
        # mtime=0: the same bytes every time (and in every worker) for the same file.
        compressed = gzip.compress(self.data, GZIP_LEVEL, mtime=0)
        if len(compressed) >= self.size:
            self.gz_on_the_fly = False  # incompressible: never try again
            return False
        self.gz_data = compressed
        self.gz_size = len(compressed)
        self._build_gz_tails(self.gz_size)
        return True

    def is_stale(self) -> bool:
        """Whether the file (or its ``.gz`` sibling) vanished, appeared, or changed
        size or mtime since :meth:`load`: one or two ``stat`` calls, for the caller
        to decide when to reload."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        if st.st_mtime_ns != self.mtime_ns or st.st_size != self.size:
            return True
        try:
            gst = os.stat(self.path + ".gz")
        except OSError:
            return self.gz_path is not None
        return self.gz_path is None or gst.st_mtime_ns != self.gz_mtime_ns \
            or gst.st_size != self.gz_size

    # -- answering -------------------------------------------------------------

    def respond(self, method: bytes, headers: list[bytes], keep_alive_header: bytes) -> Response:
        """The response to a request for this file.

        ``headers`` is the flat ``[name, value, ...]`` list as received (any case);
        ``keep_alive_header`` is the complete connection header line(s) to include,
        e.g. ``b""`` or ``b"Connection: close\\r\\n"``. Never raises for anything
        the client sent: malformed conditional or range headers are ignored."""
        head_only = method == b"HEAD"
        if not head_only and method != b"GET":
            return Response(405, b"".join((
                _STATUS[405], _SERVER, date_header(),
                b"Allow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n" % len(_405_BODY), keep_alive_header, b"\r\n")),
                _405_BODY)

        # One pass over the names; only five lengths are worth a lower().
        # Repeated fields are joined with "," (RFC 9110 5.3), which also makes two
        # Range or If-Modified-Since fields read as invalid, i.e. ignored.
        inm = ims = rng = if_range = ae = None
        watched = _WATCHED_LENGTHS
        for i in range(0, len(headers), 2):
            name = headers[i]
            if len(name) not in watched:
                continue
            lname = name.lower()
            value = headers[i + 1]
            if lname == _ACCEPT_ENCODING:
                ae = value if ae is None else ae + b"," + value
            elif lname == _IF_NONE_MATCH:
                inm = value if inm is None else inm + b"," + value
            elif lname == _IF_MODIFIED_SINCE:
                ims = value if ims is None else ims + b"," + value
            elif lname == _RANGE:
                rng = value if rng is None else rng + b"," + value
            elif lname == _IF_RANGE:
                if_range = value if if_range is None else if_range + b"," + value

        # Which range, if any (ranges come from the identity representation).
        byte_range: tuple[int, int] | None | bool = None
        if rng is not None:
            byte_range = _parse_range(rng, self.size)
            if byte_range is not None and if_range is not None \
                    and not self._if_range_matches(if_range):
                byte_range = None

        # Which representation.
        use_gz = byte_range is None and ae is not None and self.vary \
            and accepts_gzip(ae) and self._gzip_ready()

        # Conditionals before ranges (RFC 9110 13.2.2); If-Modified-Since only
        # counts without If-None-Match.
        if inm is not None:
            not_modified = self._none_match_fails(inm, self.gz_etag if use_gz else self.etag)
        elif ims is not None:
            not_modified = ims == self.last_modified or self._not_modified_since(ims)
        else:
            not_modified = False
        if not_modified:
            return Response(304, b"".join((
                _STATUS[304], _SERVER, date_header(),
                self._gz_tail_304 if use_gz else self._tail_304,  # type: ignore[arg-type]
                keep_alive_header, b"\r\n")))

        if byte_range is False:
            return Response(416, b"".join((
                _STATUS[416], _SERVER, date_header(),
                b"Content-Range: bytes */%d\r\nContent-Length: 0\r\n" % self.size,
                self._tail_304, keep_alive_header, b"\r\n")))

        if byte_range is not None:
            first, last = byte_range  # type: ignore[misc]
            length = last - first + 1
            head = b"".join((
                _STATUS[206], _SERVER, date_header(),
                b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n"
                % (first, last, self.size, length),
                self._common, self._tail_304, keep_alive_header, b"\r\n"))
            if head_only:
                return Response(206, head)
            if self.data is not None:
                return Response(206, head, self.data[first:last + 1])
            return Response(206, head, file_range=(self.path, first, length))

        if use_gz:
            head = b"".join((_STATUS[200], _SERVER, date_header(),
                             self._gz_tail_200, keep_alive_header, b"\r\n"))  # type: ignore[arg-type]
            if head_only:
                return Response(200, head)
            if self.gz_data is not None:
                return Response(200, head, self.gz_data)
            return Response(200, head, file_range=(self.gz_path, 0, self.gz_size))  # type: ignore[arg-type]

        head = b"".join((_STATUS[200], _SERVER, date_header(),
                         self._tail_200, keep_alive_header, b"\r\n"))
        if head_only:
            return Response(200, head)
        if self.data is not None:
            return Response(200, head, self.data)
        return Response(200, head, file_range=(self.path, 0, self.size))

    def _if_range_matches(self, value: bytes) -> bool:
        """If-Range: a strong ETag match against the identity representation, or
        a date equal to Last-Modified (RFC 9110 13.1.5)."""
        value = value.strip()
        if value.startswith(b'"') or value.startswith(b"W/"):
            return value == self.etag  # weak tags never match here
        return value == self.last_modified or _parse_http_date(value) == self.mtime_s

    @staticmethod
    def _none_match_fails(value: bytes, etag: bytes) -> bool:
        """If-None-Match: True (-> 304) when ``*`` or any listed tag matches
        ``etag`` by weak comparison (``W/`` prefixes ignored)."""
        if value.strip() == b"*":
            return True
        if etag not in value:  # cheap rejection before the real parse
            return False
        return etag in _QUOTED.findall(value)

    def _not_modified_since(self, value: bytes) -> bool:
        since = _parse_http_date(value)
        return since is not None and since >= self.mtime_s
