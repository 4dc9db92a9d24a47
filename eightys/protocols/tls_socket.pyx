# cython: language_level=3, boundscheck=False, wraparound=False
"""TLS done by OpenSSL on the socket itself, for the HTTPS listener's connections.

uvloop's TLS layer reads the socket into a memory BIO, drives an ``ssl.SSLObject``
over it, copies what it decrypts out again, and does the same the other way, with
several Python calls per record: about 10,000 instructions per keep-alive request
beside OpenSSL's own work (callgrind, ``scripts/profile_worker.sh --tls``). nginx
lets OpenSSL read and write the socket. So does this module:

* :class:`TlsListener` accepts connections on the listening socket
  (:class:`eightys.protocols.listener.Listener`) and makes each a :class:`TlsTransport`;
* the transport's OpenSSL connection (``SSL *``) is the one Python's ``ssl`` module
  makes for the socket (``SSLContext._wrap_socket``): certificates, ALPN, the SNI
  callback that swaps certificates on SIGHUP, TLS versions and ciphers stay
  ``ssl``'s, set on the context as before; only reading, writing, the handshake and
  the close are C calls of libssl (``SSL_read_ex``, ``SSL_write_ex``...), looked up
  with ``dlsym`` in the libssl Python's ``_ssl`` is linked with. With read-ahead on,
  one ``read(2)`` brings a whole record (OpenSSL reads a record's 5-byte header and its
  body with two otherwise);
* the transport is an asyncio transport (write, close, abort, flow control with
  ``pause_writing``/``resume_writing``, ``pause_reading``, ``set_protocol`` for the
  WebSocket switch, ``get_extra_info``), so the HTTP, WebSocket and raw protocols
  run on it unchanged. The protocol is made once the handshake is done, as uvloop
  does.

Two things come from outside an API and are checked before the first connection
(:func:`available`; any doubt means uvloop's TLS, never a crash later): the ``SSL *``
is the second field of ``_ssl``'s socket object (in every CPython 3 so far), checked
by the field after it (the context object itself) and by ``SSL_get_SSL_CTX`` against
the context's own pointer (the first field of ``_ssl``'s context object).

Only built when Cython compiles eightys (``setup.py``); the worker uses it for
``--tls-cert`` when :func:`available` says so, else ``create_server(ssl=...)``.
"""

from collections import deque
import socket
import ssl

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject

from eightys.dlfcn cimport RTLD_NOLOAD, RTLD_NOW, dlopen, dlsym
from eightys.protocols.listener import Listener
from eightys.protocols.sockwrite cimport SocketTransport

cdef extern from *:
    """
    #include <errno.h>
    typedef struct ssl_st SSL;  /* opaque: only pointers cross */
    typedef struct ssl_ctx_st SSL_CTX;
    /* C's errno, set and read from Cython (an assignment there makes a local) */
    static inline void eightys_clear_errno(void) { errno = 0; }
    static inline int eightys_errno(void) { return errno; }
    """
    void clear_errno "eightys_clear_errno"() nogil
    int last_errno "eightys_errno"() nogil
    ctypedef struct SSL
    ctypedef struct SSL_CTX

ctypedef int (*read_ex_f)(SSL *, void *, size_t, size_t *) noexcept nogil
ctypedef int (*write_ex_f)(SSL *, const void *, size_t, size_t *) noexcept nogil
ctypedef int (*get_error_f)(const SSL *, int) noexcept nogil
ctypedef int (*ssl_int_f)(SSL *) noexcept nogil
ctypedef long (*ctrl_f)(SSL *, int, long, void *) noexcept nogil
ctypedef SSL_CTX *(*get_ctx_f)(const SSL *) noexcept nogil
ctypedef void (*clear_f)() noexcept nogil

cdef enum:
    SSL_ERROR_SSL = 1
    SSL_ERROR_WANT_READ = 2
    SSL_ERROR_WANT_WRITE = 3
    SSL_ERROR_SYSCALL = 5
    SSL_ERROR_ZERO_RETURN = 6
    SSL_CTRL_SET_READ_AHEAD = 41
    # layouts (see available())
    SSL_OFFSET = sizeof(PyObject) + sizeof(void *)  # PySSLSocket: Socket, then ssl
    CTX_OBJECT_OFFSET = SSL_OFFSET + sizeof(void *)  # then ctx (the context object)
    CTX_OFFSET = sizeof(PyObject)  # PySSLContext: ctx first
    READ_SIZE = 65536

cdef read_ex_f SSL_read_ex = NULL
cdef write_ex_f SSL_write_ex = NULL
cdef get_error_f SSL_get_error = NULL
cdef ssl_int_f SSL_do_handshake = NULL
cdef ssl_int_f SSL_shutdown = NULL
cdef ssl_int_f SSL_has_pending = NULL
cdef ssl_int_f SSL_get_fd = NULL
cdef ctrl_f SSL_ctrl = NULL
cdef get_ctx_f SSL_get_SSL_CTX = NULL
cdef clear_f ERR_clear_error = NULL
cdef int _state = 0  # 0: not checked, 1: usable, -1: not
cdef char READ_BUFFER[READ_SIZE]  # one read's decrypted bytes, copied out at once


cdef bint _load_libssl():
    global SSL_read_ex, SSL_write_ex, SSL_get_error, SSL_do_handshake, SSL_shutdown
    global SSL_has_pending, SSL_get_fd, SSL_ctrl, SSL_get_SSL_CTX, ERR_clear_error
    cdef void *lib = NULL
    # the libssl _ssl was linked with, as this process mapped it
    path = None
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                if b"/libssl.so" in line:
                    fields = line.split()
                    path = fields[len(fields) - 1]
                    break
    except OSError:
        return False
    if path is None:
        return False
    lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if lib == NULL:
        return False
    SSL_read_ex = <read_ex_f>dlsym(lib, b"SSL_read_ex")
    SSL_write_ex = <write_ex_f>dlsym(lib, b"SSL_write_ex")
    SSL_get_error = <get_error_f>dlsym(lib, b"SSL_get_error")
    SSL_do_handshake = <ssl_int_f>dlsym(lib, b"SSL_do_handshake")
    SSL_shutdown = <ssl_int_f>dlsym(lib, b"SSL_shutdown")
    SSL_has_pending = <ssl_int_f>dlsym(lib, b"SSL_has_pending")
    SSL_get_fd = <ssl_int_f>dlsym(lib, b"SSL_get_fd")
    SSL_ctrl = <ctrl_f>dlsym(lib, b"SSL_ctrl")
    SSL_get_SSL_CTX = <get_ctx_f>dlsym(lib, b"SSL_get_SSL_CTX")
    ERR_clear_error = <clear_f>dlsym(lib, b"ERR_clear_error")  # libcrypto's, found through libssl
    return (SSL_read_ex != NULL and SSL_write_ex != NULL and SSL_get_error != NULL
            and SSL_do_handshake != NULL and SSL_shutdown != NULL and SSL_has_pending != NULL
            and SSL_get_fd != NULL and SSL_ctrl != NULL and SSL_get_SSL_CTX != NULL
            and ERR_clear_error != NULL)


cdef SSL *_ssl_of(object sslobj, object context, int fd):
    # the SSL * of _ssl's socket object, or NULL if its layout is not the expected one
    cdef char *obj = <char *><PyObject *>sslobj
    if (<PyObject **>(obj + CTX_OBJECT_OFFSET))[0] != <PyObject *>context:
        return NULL
    cdef SSL *s = (<SSL **>(obj + SSL_OFFSET))[0]
    if s == NULL:
        return NULL
    cdef SSL_CTX *ctx = (<SSL_CTX **>(<char *><PyObject *>context + CTX_OFFSET))[0]
    if SSL_get_SSL_CTX(s) != ctx or SSL_get_fd(s) != fd:
        return NULL
    return s


def available(context: ssl.SSLContext) -> bool:
    """Whether connections of ``context`` can be served here (libssl found, layouts as
    expected on a throwaway connection); else the caller uses uvloop's TLS."""
    global _state
    if _state == 0:
        _state = 1 if _load_libssl() else -1
    if _state != 1:
        return False
    a, b = socket.socketpair()
    try:
        sslobj = context._wrap_socket(a, server_side=True)
        return _ssl_of(sslobj, context, a.fileno()) != NULL
    except Exception:  # noqa: BLE001 - any doubt means uvloop's TLS
        return False
    finally:
        a.close()
        b.close()


cdef class TlsTransport(SocketTransport):
    """One accepted connection, TLS on its socket by libssl: an asyncio transport.

    ``protocol_factory()`` is called once the handshake is done; a handshake that
    fails or takes longer than ``handshake_timeout`` closes the socket without a
    protocol (a scanner or a plain-HTTP client costs no Lua)."""

    cdef object __weakref__  # _ssl holds its owner weakly
    cdef object sslobj
    cdef object factory
    cdef object timer
    cdef SSL *ssl
    cdef int fd
    cdef bint handshaking
    cdef bint reader_on
    cdef bint writer_on
    cdef bint write_wants_read  # a queued write needs the peer's data first (WANT_READ)
    cdef bint protocol_paused

    def __init__(self, loop: object, sock: socket.socket, context: ssl.SSLContext,
                 protocol_factory: object, handshake_timeout: float) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = protocol_factory
        self.fd = sock.fileno()
        self.sslobj = context._wrap_socket(sock, server_side=True)
        # what the SNI callback gets as its connection: it sets .context (ServerTLS)
        self.sslobj.owner = self
        self.ssl = _ssl_of(self.sslobj, context, self.fd)
        if self.ssl == NULL:  # checked by available(): cannot happen for this context
            raise RuntimeError("unexpected layout of the ssl module's objects")
        SSL_ctrl(self.ssl, SSL_CTRL_SET_READ_AHEAD, 1, NULL)
        self.peername = sock.getpeername()
        self.sockname = sock.getsockname()
        self.protocol = None
        self.handshaking = True
        self.reading = True
        self.pending = deque()
        self.pending_size = 0
        self.high = 65536
        self.low = 16384
        loop.add_reader(self.fd, self._readable)
        self.reader_on = True
        self.timer = loop.call_later(handshake_timeout, self._handshake_timeout)
        self._handshake()

    # -- the handshake ------------------------------------------------------------------

    cdef void _handshake(self) except *:
        cdef int result = SSL_do_handshake(self.ssl)
        cdef int err
        if result == 1:
            self.handshaking = False
            self.timer.cancel()
            self.timer = None
            self._want_write(False)
            self.protocol = self.factory()
            try:
                self.protocol.connection_made(self)
            except Exception as exc:  # as uvloop does: report it, end the connection
                self._protocol_failed(exc, "connection_made")
                return
            if not self.closing and SSL_has_pending(self.ssl):
                self._read_records()  # the client's first request came with its Finished
            return
        err = SSL_get_error(self.ssl, result)
        if err == SSL_ERROR_WANT_READ:
            self._want_write(False)
        elif err == SSL_ERROR_WANT_WRITE:
            self._want_write(True)
        else:  # a client that does not speak TLS 1.2+, or a certificate it refuses
            ERR_clear_error()
            self._drop()

    def _handshake_timeout(self) -> None:
        self.timer = None
        if self.handshaking and not self.closed:
            self._drop()

    cdef void _drop(self) except *:
        # close a connection that never got a protocol
        self.closing = True
        self._release()

    # -- reading ------------------------------------------------------------------------

    def _readable(self) -> None:
        if self.closed:
            return
        if self.handshaking:
            self._handshake()
            return
        if self.write_wants_read:
            self._flush_pending()
            if self.closed:
                return
        if self.reading and not self.closing:
            self._read_records()
        else:
            self._sync_reader()  # watched only for that write: not any more

    cdef void _sync_reader(self) except *:
        # The socket is watched for reading while the handshake runs, while the
        # protocol reads, and while a queued write waits for the peer's data; not
        # otherwise (readiness is level-triggered: it would call us again and again).
        cdef bint want = not self.closed and (self.handshaking or self.write_wants_read
                                              or (self.reading and not self.closing))
        if want and not self.reader_on:
            self.loop.add_reader(self.fd, self._readable)
            self.reader_on = True
        elif not want and self.reader_on:
            self.loop.remove_reader(self.fd)
            self.reader_on = False

    cdef void _read_records(self) except *:
        cdef size_t count = 0
        cdef int result, err
        while self.reading and not self.closing:
            clear_errno()  # libssl leaves it as it was when the socket simply ended
            result = SSL_read_ex(self.ssl, READ_BUFFER, READ_SIZE, &count)
            if result == 1:
                try:
                    self.protocol.data_received(PyBytes_FromStringAndSize(READ_BUFFER, count))
                except Exception as exc:
                    self._protocol_failed(exc, "data_received")
                    return
                if self.closed or not SSL_has_pending(self.ssl):
                    return  # nothing left inside OpenSSL: the socket says when there is
                continue
            err = SSL_get_error(self.ssl, result)
            if err == SSL_ERROR_WANT_READ:
                return
            if err == SSL_ERROR_WANT_WRITE:  # a handshake message to send first
                self._want_write(True)
                return
            if err == SSL_ERROR_ZERO_RETURN or (err == SSL_ERROR_SYSCALL and last_errno() == 0):
                ERR_clear_error()
                self._eof()  # close_notify, or the socket's end
                return
            code = last_errno()
            ERR_clear_error()
            if err == SSL_ERROR_SYSCALL:
                self._fatal(ConnectionResetError(code, "connection lost") if code else None)
            else:
                self._fatal(ssl.SSLError(err, "TLS error while reading"))
            return

    cdef void _eof(self) except *:
        self.reading = False
        self._sync_reader()
        keep_open = self.protocol.eof_received()
        if not keep_open:
            self.close()

    # -- writing ------------------------------------------------------------------------

    cpdef void write(self, object data) except *:
        """Encrypt and send ``data`` now if the socket takes it, else keep it (in
        order) until it does; ``pause_writing`` past the high-water mark."""
        if self.closing or self.handshaking:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if PyBytes_GET_SIZE(data) == 0:
            return
        if not self.pending:
            if self._send(data) or self.closed:
                return  # all of it went out, or the connection failed
        self.pending.append(data)
        self.pending_size += PyBytes_GET_SIZE(data)
        if self.pending_size > self.high and not self.protocol_paused and not self.closed:
            self.protocol_paused = True
            self.protocol.pause_writing()

    cdef bint _send(self, bytes data) except -1:
        # True if all of it went out; False: retry this same buffer when the socket
        # lets us (OpenSSL keeps what it encrypted of it; _ssl sets
        # SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the retry may come from another bytes)
        cdef size_t count = 0
        cdef int result, err
        clear_errno()
        result = SSL_write_ex(self.ssl, PyBytes_AS_STRING(data),
                              <size_t>PyBytes_GET_SIZE(data), &count)
        if result == 1:
            self.write_wants_read = False
            return True
        err = SSL_get_error(self.ssl, result)
        if err == SSL_ERROR_WANT_WRITE:
            self.write_wants_read = False
            self._want_write(True)
            return False
        if err == SSL_ERROR_WANT_READ:  # _readable retries it
            self.write_wants_read = True
            self._want_write(False)
            self._sync_reader()
            return False
        code = last_errno()
        ERR_clear_error()
        self._fatal(ConnectionResetError(code, "connection lost") if code
                    else ssl.SSLError(err, "TLS error while writing"))
        return False

    def _writable(self) -> None:
        if self.closed:
            return
        if self.handshaking:
            self._handshake()
            return
        self._flush_pending()

    cdef void _flush_pending(self) except *:
        cdef bytes head
        while self.pending:
            head = self.pending[0]
            if not self._send(head):
                return  # still blocked (or failed: closed)
            self.pending.popleft()
            self.pending_size -= PyBytes_GET_SIZE(head)
        self._want_write(False)
        self._sync_reader()
        if self.protocol_paused and self.pending_size <= self.low:
            self.protocol_paused = False
            self.protocol.resume_writing()
        if self.closing and not self.closed:
            self._finish_close()

    cdef void _want_write(self, bint on) except *:
        if on and not self.writer_on and not self.closed:
            self.loop.add_writer(self.fd, self._writable)
            self.writer_on = True
        elif not on and self.writer_on:
            self.loop.remove_writer(self.fd)
            self.writer_on = False

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, then close_notify, then close the socket;
        ``connection_lost(None)`` follows."""
        if self.closing:
            return
        self.closing = True
        self.reading = False
        if not self.pending:
            self._finish_close()
        else:
            self._sync_reader()  # (kept while a queued write waits for the peer's data)

    cdef void _finish_close(self) except *:
        SSL_shutdown(self.ssl)  # our close_notify; the peer's is not waited for (RFC 8446 6.1)
        ERR_clear_error()
        self._lost(None)

    cdef void _release(self) except *:
        self.closed = True
        self.reading = False
        self._sync_reader()
        self._want_write(False)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ssl = NULL  # not to be used once the socket is closed (sslobj frees it)
        self.sock.close()

    # -- the rest of asyncio's transport --------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading the socket until resume_reading()."""
        if not self.closing and not self.handshaking:
            self.reading = False
            self._sync_reader()

    def resume_reading(self) -> None:
        """Read again; records OpenSSL already holds are delivered soon."""
        if self.closing or self.reading:
            return
        self.reading = True
        if not self.handshaking:
            self._sync_reader()
            if SSL_has_pending(self.ssl):
                self.loop.call_soon(self._readable)  # epoll does not know about those

    def set_protocol(self, protocol: object) -> None:
        """Hand the connection to another protocol (the WebSocket switch)."""
        self.protocol = protocol

    def can_write_eof(self) -> bool:
        """False: TLS has no half-close of our side but close_notify (close())."""
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close: use close()")

    @property
    def context(self) -> ssl.SSLContext:
        """The connection's context; the SNI callback sets it to serve another
        certificate (eightys.tls.ServerTLS after a SIGHUP)."""
        return self.sslobj.context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self.sslobj.context = context

    def get_extra_info(self, name: str, default: object = None) -> object:
        """``peername``, ``sockname``, ``socket``, ``sslcontext``, ``ssl_object``,
        ``peercert``, ``cipher``, ``compression``, as asyncio's TLS transport has them."""
        if name == "peername":
            return self.peername
        if name == "sockname":
            return self.sockname
        if name == "socket":
            return self.sock
        if name == "sslcontext":
            return self.sslobj.context
        if self.closed or self.handshaking:
            return default
        if name == "ssl_object":
            return self.sslobj
        if name == "peercert":
            return self.sslobj.getpeercert()
        if name == "cipher":
            return self.sslobj.cipher()
        if name == "compression":
            return self.sslobj.compression()
        return default


class TlsListener(Listener):
    """Accepts connections on a listening socket and serves each through a
    :class:`TlsTransport`: what ``loop.create_server(ssl=...)`` would do."""

    def __init__(self, loop: object, sock: socket.socket, context: ssl.SSLContext,
                 protocol_factory: object, handshake_timeout: float) -> None:
        self.context = context
        super().__init__(loop, sock, lambda conn: TlsTransport(
            loop, conn, context, protocol_factory, handshake_timeout))
