# cython: language_level=3, boundscheck=False, wraparound=False
"""httptools' llhttp, driven from C: the request parser of the compiled HTTP core.

``httptools.HttpRequestParser`` calls each callback of its protocol object as a
Python method (``getattr`` once, then a Python call with a new argument tuple
per callback): about 2,300 instructions per small request on top of llhttp's own
1,400. :class:`RequestParser` runs the same llhttp (the copy inside httptools'
extension module, whose C functions it looks up with ``dlsym``), with the same
rules as httptools (a header field is complete once the next one starts, trailers
included; an upgrade pauses the parse and reports where the head ended; the same
exception classes). It calls
:class:`~eightys.protocols.http_core.HttpConnection`'s callbacks as C functions,
except ``on_header``: the fields are checked here, in C, by the same rules (limits,
``Host``, ``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Expect``),
and joined into the core's ``name\0value`` block without a Python object per field.
An exception raised by a callback comes out of :meth:`RequestParser.feed_data`
as itself (httptools wraps it in ``HttpParserCallbackError``).

The layout of llhttp's structures is llhttp 9.4's, the one httptools 0.9 builds
(``llhttp.h``); :func:`available` says whether the installed httptools is one of
those, and checks the parser against ``httptools.HttpRequestParser`` on a set of
requests before the core uses it. Otherwise the core uses httptools' parser.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from eightys.protocols.http_core cimport HttpConnection
from eightys.protocols.http_core import _Reject

import httptools
from httptools import (HttpParserError, HttpParserInvalidMethodError,
                       HttpParserInvalidURLError, HttpParserUpgrade)

from eightys.dlfcn cimport RTLD_NOLOAD, RTLD_NOW, dlclose, dlopen, dlsym

# -- llhttp.h (9.4) ------------------------------------------------------------------

cdef struct llhttp_t:
    int32_t _index
    void *_span_pos0
    void *_span_cb0
    int32_t error
    const char *reason
    const char *error_pos
    void *data
    void *_current
    uint64_t content_length
    uint8_t type
    uint8_t method
    uint8_t http_major
    uint8_t http_minor
    uint8_t header_state
    uint16_t lenient_flags
    uint8_t upgrade
    uint8_t finish
    uint16_t flags
    uint16_t status_code
    uint8_t initial_message_completed
    void *settings

ctypedef int (*llhttp_cb)(llhttp_t *p) noexcept
ctypedef int (*llhttp_data_cb)(llhttp_t *p, const char *at, size_t length) noexcept

cdef struct llhttp_settings_t:
    llhttp_cb on_message_begin
    llhttp_data_cb on_protocol
    llhttp_data_cb on_url
    llhttp_data_cb on_status
    llhttp_data_cb on_method
    llhttp_data_cb on_version
    llhttp_data_cb on_header_field
    llhttp_data_cb on_header_value
    llhttp_data_cb on_chunk_extension_name
    llhttp_data_cb on_chunk_extension_value
    llhttp_cb on_headers_complete
    llhttp_data_cb on_body
    llhttp_cb on_message_complete
    llhttp_cb on_protocol_complete
    llhttp_cb on_url_complete
    llhttp_cb on_status_complete
    llhttp_cb on_method_complete
    llhttp_cb on_version_complete
    llhttp_cb on_header_field_complete
    llhttp_cb on_header_value_complete
    llhttp_cb on_chunk_extension_name_complete
    llhttp_cb on_chunk_extension_value_complete
    llhttp_cb on_chunk_header
    llhttp_cb on_chunk_complete
    llhttp_cb on_reset

cdef enum:
    HTTP_REQUEST = 1
    HPE_OK = 0
    HPE_INVALID_METHOD = 6
    HPE_INVALID_URL = 7
    HPE_PAUSED_UPGRADE = 22
    HPE_USER = 24

ctypedef void (*init_f)(llhttp_t *p, int type, const llhttp_settings_t *s) noexcept nogil
ctypedef void (*settings_init_f)(llhttp_settings_t *s) noexcept nogil
ctypedef int (*execute_f)(llhttp_t *p, const char *data, size_t len) noexcept
ctypedef int (*parser_int_f)(llhttp_t *p) noexcept nogil
ctypedef const char *(*parser_str_f)(llhttp_t *p) noexcept nogil
ctypedef void (*resume_f)(llhttp_t *p) noexcept nogil
ctypedef void (*set_reason_f)(llhttp_t *p, const char *reason) noexcept nogil
ctypedef const char *(*method_name_f)(int method) noexcept nogil

cdef init_f llhttp_init = NULL
cdef settings_init_f llhttp_settings_init = NULL
cdef execute_f llhttp_execute = NULL
cdef parser_int_f llhttp_should_keep_alive = NULL
cdef parser_str_f llhttp_get_error_reason = NULL
cdef parser_str_f llhttp_get_error_pos = NULL
cdef resume_f llhttp_resume_after_upgrade = NULL
cdef set_reason_f llhttp_set_error_reason = NULL
cdef method_name_f llhttp_method_name = NULL

#: httptools releases whose extension module holds llhttp 9.4 (this layout).
KNOWN_HTTPTOOLS = ("0.9.",)

cdef llhttp_settings_t SETTINGS
cdef tuple METHOD_NAMES = ()  # method number -> bytes, made once
cdef object _checked = None  # None: not yet; then True/False
# The last header block made into bytes, by any connection of this process: a
# keep-alive client sends the same block again and again (so do many clients of
# one kind), and the same bytes object for it lets eightys/lua_call.pyx push it
# to Lua from a registry reference instead of interning it again.
cdef bytes _last_fields = b""


cdef bint _load() except -1:
    global llhttp_init, llhttp_settings_init, llhttp_execute, llhttp_should_keep_alive
    global llhttp_get_error_reason, llhttp_get_error_pos, llhttp_resume_after_upgrade
    global llhttp_set_error_reason, llhttp_method_name, METHOD_NAMES
    if llhttp_execute != NULL:
        return True
    if not httptools.__version__.startswith(KNOWN_HTTPTOOLS):
        return False
    import httptools.parser.parser as module
    cdef void *lib = dlopen(module.__file__.encode(), RTLD_NOW | RTLD_NOLOAD)
    if lib == NULL:
        return False
    try:
        llhttp_init = <init_f>dlsym(lib, b"llhttp_init")
        llhttp_settings_init = <settings_init_f>dlsym(lib, b"llhttp_settings_init")
        llhttp_should_keep_alive = <parser_int_f>dlsym(lib, b"llhttp_should_keep_alive")
        llhttp_get_error_reason = <parser_str_f>dlsym(lib, b"llhttp_get_error_reason")
        llhttp_get_error_pos = <parser_str_f>dlsym(lib, b"llhttp_get_error_pos")
        llhttp_resume_after_upgrade = <resume_f>dlsym(lib, b"llhttp_resume_after_upgrade")
        llhttp_set_error_reason = <set_reason_f>dlsym(lib, b"llhttp_set_error_reason")
        llhttp_method_name = <method_name_f>dlsym(lib, b"llhttp_method_name")
        execute = <execute_f>dlsym(lib, b"llhttp_execute")
    finally:
        dlclose(lib)  # the module stays loaded: httptools holds it
    if (llhttp_init == NULL or llhttp_settings_init == NULL or llhttp_should_keep_alive == NULL
            or llhttp_get_error_reason == NULL or llhttp_get_error_pos == NULL
            or llhttp_resume_after_upgrade == NULL or llhttp_set_error_reason == NULL
            or llhttp_method_name == NULL or execute == NULL):
        return False
    llhttp_settings_init(&SETTINGS)
    SETTINGS.on_message_begin = _on_message_begin
    SETTINGS.on_url = _on_url
    SETTINGS.on_header_field = _on_header_field
    SETTINGS.on_header_value = _on_header_value
    SETTINGS.on_headers_complete = _on_headers_complete
    SETTINGS.on_body = _on_body
    SETTINGS.on_message_complete = _on_message_complete
    SETTINGS.on_chunk_header = _on_chunk_header
    SETTINGS.on_chunk_complete = _on_chunk_complete
    # llhttp 9.4 numbers its methods 0..46 (HTTP_ALL_METHOD_MAP); it aborts on others
    METHOD_NAMES = tuple([<bytes>llhttp_method_name(number) for number in range(47)])
    llhttp_execute = execute
    return True


cdef class RequestParser:
    """llhttp in request mode, feeding one :class:`HttpConnection` (the interface of
    ``httptools.HttpRequestParser`` that the core uses)."""

    cdef llhttp_t *parser
    cdef HttpConnection core
    cdef object error  # a callback's exception, raised by feed_data
    # The request's fields joined as "name\0value\0name\0value" (the core's format),
    # built from llhttp's spans as they come. A field is complete when the next one
    # (or the end of the head, or of the trailers) starts, as httptools decides it.
    cdef char *block
    cdef size_t block_len
    cdef size_t block_cap
    cdef size_t block_at_head  # its length when the head was complete (trailers follow)
    cdef bint has_name  # a field name is being received (httptools: name is not None)
    cdef bint has_value  # ... and its value (httptools: value is not None)
    cdef size_t name_start
    cdef size_t name_end
    cdef size_t value_start

    def __cinit__(self, HttpConnection core):
        if not _load():
            raise ImportError("httptools' llhttp is not the expected one")
        self.parser = <llhttp_t *>PyMem_Malloc(sizeof(llhttp_t))
        if self.parser == NULL:
            raise MemoryError()
        memset(self.parser, 0, sizeof(llhttp_t))
        llhttp_init(self.parser, HTTP_REQUEST, &SETTINGS)
        self.parser.data = <void *>self
        self.core = core
        self.error = None

    def __dealloc__(self):
        PyMem_Free(self.parser)
        PyMem_Free(self.block)

    cdef int _grow(self, size_t need) except -1:
        cdef char *grown
        if need > self.block_cap:
            grown = <char *>PyMem_Realloc(self.block, need * 2)
            if grown == NULL:
                raise MemoryError()
            self.block = grown
            self.block_cap = need * 2
        return 0

    cdef int _append(self, const char *at, size_t size) except -1:
        self._grow(self.block_len + size)
        memcpy(self.block + self.block_len, at, size)
        self.block_len += size
        return 0

    cdef int _separate(self) except -1:
        self._grow(self.block_len + 1)
        self.block[self.block_len] = 0
        self.block_len += 1
        return 0

    cdef int _name_piece(self, const char *at, size_t size) except -1:
        if self.has_value:
            self._field_done()
        if not self.has_name:
            if self.block_len:
                self._separate()
            self.name_start = self.block_len
            self.has_name = True
        return self._append(at, size)

    cdef int _value_piece(self, const char *at, size_t size) except -1:
        if not self.has_value:
            self.name_end = self.block_len
            self._separate()
            self.value_start = self.block_len
            self.has_value = True
        return self._append(at, size)

    cdef int _header_done(self) except -1:
        # the head (or the trailers) ended: the last field is complete; a name without
        # a value is dropped, as httptools drops it
        if self.has_value:
            self._field_done()
        elif self.has_name:
            self.block_len = self.name_start - 1 if self.name_start else 0
            self.has_name = False
        return 0

    cdef int _field_done(self) except -1:
        # HttpConnection.on_header's rules, on the field in the block (kept the same:
        # tests/unit/test_accelerators.py compares both parsers through the core)
        cdef HttpConnection core = self.core
        cdef const char *name = self.block + self.name_start
        cdef size_t size = self.name_end - self.name_start
        cdef const char *value = self.block + self.value_start
        cdef size_t value_size = self.block_len - self.value_start
        cdef size_t i
        cdef long long length
        self.has_name = self.has_value = False
        core.unparsed_head = -1
        core.head_size += size + value_size + 4
        core.nheaders += 1
        if core.head_size > core.limits.max_header or core.nheaders > core.limits.max_headers:
            raise _Reject(431, "too many or too large header fields")
        if size == 4:
            if _named(name, b"host", 4):
                core.hosts += 1
        elif size == 14:
            if _named(name, b"content-length", 14):
                if core.content_length != -1 or value_size == 0:
                    raise _Reject(400, "duplicate or invalid Content-Length")
                length = 0
                for i in range(value_size):
                    if value[i] < 48 or value[i] > 57:  # not an ASCII digit
                        raise _Reject(400, "duplicate or invalid Content-Length")
                    if length < (1LL << 56):  # past that only "too large" matters (413)
                        length = length * 10 + (value[i] - 48)
                core.content_length = length
        elif size == 17:
            if _named(name, b"transfer-encoding", 17):
                core.chunked = True
        elif size == 10:
            if _named(name, b"connection", 10):
                core.has_connection_header = True
        elif size == 6:
            if _named(name, b"expect", 6):
                if value_size != 12 or not _named(value, b"100-continue", 12):
                    raise _Reject(417, "unsupported Expect")
                core.expect_continue = True
        return 0

    cdef bytes _fields(self):
        global _last_fields
        if <size_t>PyBytes_GET_SIZE(_last_fields) == self.block_len \
                and memcmp(PyBytes_AS_STRING(_last_fields), self.block, self.block_len) == 0:
            return _last_fields
        _last_fields = PyBytes_FromStringAndSize(self.block, self.block_len)
        return _last_fields

    def feed_data(self, bytes data) -> None:
        """Parse ``data``; raises what a callback raised, ``HttpParserUpgrade(offset)``
        at an upgrade, or ``HttpParserError`` (or a subclass) for malformed input."""
        cdef const char *start = PyBytes_AS_STRING(data)
        cdef int err = llhttp_execute(self.parser, start, <size_t>PyBytes_GET_SIZE(data))
        if err == HPE_OK:
            return
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if err == HPE_PAUSED_UPGRADE and self.parser.upgrade == 1:
            offset = llhttp_get_error_pos(self.parser) - start
            llhttp_resume_after_upgrade(self.parser)
            raise HttpParserUpgrade(offset)
        reason = (<bytes>llhttp_get_error_reason(self.parser)).decode("latin-1")
        if err == HPE_INVALID_METHOD:
            raise HttpParserInvalidMethodError(reason)
        if err == HPE_INVALID_URL:
            raise HttpParserInvalidURLError(reason)
        raise HttpParserError(reason)

    def get_method(self) -> bytes:
        """The current request's method."""
        return METHOD_NAMES[self.parser.method] if self.parser.method < 47 else b""

    def should_keep_alive(self) -> bool:
        """Whether the connection stays open after the current request."""
        return llhttp_should_keep_alive(self.parser) != 0

    def should_upgrade(self) -> bool:
        """Whether the current request asks to upgrade."""
        return self.parser.upgrade != 0

    def get_http_version(self) -> str:
        """"1.1" or "1.0" (as httptools formats it)."""
        return f"{self.parser.http_major}.{self.parser.http_minor}"


# -- llhttp's callbacks: each catches what the core raises, for feed_data ---------------

cdef inline bint _named(const char *name, const char *lower, size_t size) noexcept:
    # ASCII case-insensitive equality with a lower-case literal of the same size
    cdef size_t i
    cdef char c
    for i in range(size):
        c = name[i]
        if 65 <= c <= 90:
            c = c + 32
        if c != lower[i]:
            return False
    return True


cdef inline int _fail(RequestParser self, object exc, int code) noexcept:
    self.error = exc
    return code


cdef int _on_message_begin(llhttp_t *p) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    self.block_len = 0
    try:
        self.core.on_message_begin()
    except BaseException as exc:
        return _fail(self, exc, -1)
    return 0


cdef int _on_url(llhttp_t *p, const char *at, size_t length) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    try:
        self.core.on_url(PyBytes_FromStringAndSize(at, length))
    except BaseException as exc:
        llhttp_set_error_reason(p, "`on_url` callback error")
        return _fail(self, exc, HPE_USER)
    return 0


cdef int _on_header_field(llhttp_t *p, const char *at, size_t length) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    try:
        self._name_piece(at, length)
    except BaseException as exc:
        llhttp_set_error_reason(p, "`on_header_field` callback error")
        return _fail(self, exc, HPE_USER)
    return 0


cdef int _on_header_value(llhttp_t *p, const char *at, size_t length) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    try:
        self._value_piece(at, length)
    except BaseException as exc:
        llhttp_set_error_reason(p, "`on_header_value` callback error")
        return _fail(self, exc, HPE_USER)
    return 0


cdef int _on_headers_complete(llhttp_t *p) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    cdef HttpConnection core = self.core
    try:
        self._header_done()
        core.parsed_http10 = 1 if p.http_major == 1 and p.http_minor == 0 else 0
        core.fields = self._fields()
        self.block_at_head = self.block_len
        core.on_headers_complete()
    except BaseException as exc:
        return _fail(self, exc, -1)
    return 1 if p.upgrade else 0  # an upgrade has no body here: what follows is not HTTP


cdef int _on_body(llhttp_t *p, const char *at, size_t length) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    try:
        self.core.on_body(PyBytes_FromStringAndSize(at, length))
    except BaseException as exc:
        llhttp_set_error_reason(p, "`on_body` callback error")
        return _fail(self, exc, HPE_USER)
    return 0


cdef int _on_message_complete(llhttp_t *p) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    cdef HttpConnection core = self.core
    try:
        if self.block_len != self.block_at_head:  # trailer fields came after the head
            core.fields = self._fields()
        core.parsed_keep_alive = 1 if llhttp_should_keep_alive(p) != 0 else 0
        core.parsed_method = <bytes>METHOD_NAMES[p.method] if p.method < 47 else b""
        core.on_message_complete()
    except BaseException as exc:
        return _fail(self, exc, -1)
    return 0


cdef int _on_chunk_header(llhttp_t *p) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    if self.has_name or self.has_value:
        return _fail(self, HttpParserError("invalid headers state"), -1)
    return 0


cdef int _on_chunk_complete(llhttp_t *p) noexcept:
    cdef RequestParser self = <RequestParser>p.data
    try:
        self._header_done()  # trailer fields, after the last chunk
    except BaseException as exc:
        return _fail(self, exc, -1)
    return 0


# -- the check before use ------------------------------------------------------------------

#: Reads whose outcome through the core must be the same with either parser: keep-alive
#: and pipelined requests, a body, chunks with a trailer, an upgrade with bytes after
#: it, HTTP/1.0, malformed input.
_PROBES = (
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nrest",
    b"GET /old HTTP/1.0\r\nX: y\r\n\r\n",
    b"POST /e HTTP/1.1\r\nhOsT: x\r\nX-Empty:\r\ncontent-LENGTH: 2\r\n\r\nok",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"BREW / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
)


def _outcome(parser: object, data: bytes, size: int) -> list:
    from eightys.protocols.http_core import Clock, HttpConnection, HttpLimits

    core = HttpConnection(HttpLimits(), Clock(), 0, parser)
    seen = []
    for i in range(0, len(data), size):
        for event in core.receive_data(data[i:i + size]):
            seen.append(event if type(event) is tuple else (event.status, event.reason))
    return seen + [core.state, core.trailing, core.data_to_send()]


def _same_as_httptools() -> bool:
    for data in _PROBES:
        for size in (1, 3, 7, len(data)):
            if _outcome(RequestParser, data, size) != _outcome(None, data, size):
                return False
    return True


def available() -> bool:
    """Whether :class:`RequestParser` can be used: the installed httptools is one
    whose llhttp has the layout declared here, and the core fed
    :data:`_PROBES` in pieces of 1, 3, 7 bytes and whole gives the same results as
    with ``httptools.HttpRequestParser`` (checked once per process)."""
    global _checked
    if _checked is None:
        _checked = False
        if _load():
            _checked = _same_as_httptools()
    return _checked
