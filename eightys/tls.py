"""TLS contexts: the server's (HTTPS, WSS, raw apps over TLS) and the clients'
(``aio:connect`` with ``tls``, the HTTP client).

Server: TLS 1.2 and 1.3 only, ECDHE with AES-GCM or ChaCha20-Poly1305 for 1.2
(Mozilla's "intermediate" list without DHE, which needs parameters of its own),
OpenSSL's TLS 1.3 suites, ALPN ``http/1.1``, no compression, no renegotiation.

Re-reading certificates without dropping connections: the listener keeps the
context it was created with (uvloop holds it), and every handshake's SNI callback,
which OpenSSL calls for every ClientHello (with or without a server name), points
the new connection at the *current* context. :meth:`ServerTLS.reload` builds a
complete new context first, so a bad certificate leaves the old one serving, and
open connections keep the certificate they were made with.

Clients verify by default (the system CA store, or a CA file) and send SNI.

The compiled server does TLS on each socket with libssl
(:mod:`eightys.protocols.tls_socket`). Where uvloop's TLS layer does it (outgoing
connections; the server uncompiled or with ``EIGHTYS_UVLOOP_TLS=1``), every context
made here gives it a :class:`DirectSSLObject` (``wrap_bio``): its per-record calls go
straight to OpenSSL's binding, without a Python frame.
"""

from __future__ import annotations

import ssl
from typing import Any

#: TLS 1.2 ciphers (TLS 1.3 suites are OpenSSL's defaults, all of them AEAD).
SERVER_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
ALPN = ["http/1.1"]
#: How long a client gets to finish its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: After our close_notify, how long a connection waits for the peer's before it is
#: cut. uvloop waits for it (30 s by default): a client that never answers would hold
#: the connection, and a stopping worker, that long. RFC 8446 6.1 does not require
#: waiting at all.
SHUTDOWN_TIMEOUT = 1.0


class TLSError(Exception):
    """A certificate or key that cannot be used; the message says which file and why."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in ("KEY_VALUES_MISMATCH", "X509_CHECK_PRIVATE_KEY"):
            return "the key does not belong to the certificate"
        return reason.replace("_", " ").lower() if reason else str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class DirectSSLObject(ssl.SSLObject):
    """An ``ssl.SSLObject`` whose ``read``, ``write`` and ``pending`` are those of the
    C object inside it.

    uvloop's TLS layer calls these for every record it reads or writes (three calls
    for a keep-alive request and its response). ``ssl.SSLObject``'s are Python
    methods that only pass the call on to the same method of ``_ssl``'s object, and
    each is a Python frame: about 1,700 instructions per request together (callgrind,
    HTTPS echo route through uvloop's TLS layer). Here the instance holds that object's bound methods, so the
    calls are C to C. Same arguments, results and errors (``SSLWantReadError`` and
    the rest come from the C object either way). Set as the ``sslobject_class`` of
    the contexts made here, as the ``ssl`` documentation allows.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> "DirectSSLObject":
        obj = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = getattr(obj, "_sslobj", None)
        if inner is not None:  # (a Python without it keeps the Python methods)
            obj.read = inner.read
            obj.write = inner.write
            obj.pending = inner.pending
        return obj


def server_context(cert: str, key: str, password: str = "") -> ssl.SSLContext:
    """A server context for the PEM certificate chain ``cert`` and private key ``key``
    (``password`` decrypts an encrypted key). Raises TLSError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = DirectSSLObject
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.set_alpn_protocols(ALPN)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # a client that closes the socket without close_notify (most do, after their
    # last response) ends the connection like one that sends it: no error logged
    context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    # OpenSSL says "PEM lib" for any unreadable file: name the file and what is missing
    for path, what, marker in ((cert, "--tls-cert", b"-----BEGIN CERTIFICATE-----"),
                               (key, "--tls-key", b"PRIVATE KEY-----")):
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise TLSError(f"{what} {path}: {_describe(exc)}") from None
        if marker not in text:
            kind = "certificate" if what == "--tls-cert" else "private key"
            raise TLSError(f"{what} {path}: no PEM {kind} in it")
    try:
        context.load_cert_chain(cert, key, password=(lambda: password.encode()) if password
                                else _no_password(key))
    except (ssl.SSLError, OSError, ValueError, TypeError) as exc:
        raise TLSError(f"--tls-cert {cert} / --tls-key {key}: {_describe(exc)}") from None
    return context


def _no_password(key: str) -> Any:
    def ask() -> bytes:
        # OpenSSL would prompt on the terminal (and block a worker) for an encrypted key
        raise TLSError(f"--tls-key {key} is encrypted: give its passphrase with "
                       "--tls-key-password-file FILE or $TLS_KEY_PASSWORD")
    return ask


class ServerTLS:
    """The listener's TLS: ``context`` for ``create_server(ssl=...)``, and
    :meth:`reload` to serve a new certificate from the next handshake on."""

    def __init__(self, cert: str, key: str, password: str = "") -> None:
        self.cert = cert
        self.key = key
        self.password = password
        self._files = self._read_files()
        self.current = server_context(cert, key, password)
        #: Given to uvloop once; its SNI callback hands each handshake ``current``.
        self.context = self.current
        self.context.sni_callback = self._pick

    def _read_files(self) -> tuple[bytes, bytes]:
        try:
            with open(self.cert, "rb") as c, open(self.key, "rb") as k:
                return c.read(), k.read()
        except OSError:
            return b"", b""

    def _pick(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            connection.context = current
        return None

    def reload(self) -> str | None:
        """Re-read the certificate and key. Returns None when the new ones serve from
        now on (or nothing changed), else the error (the old ones keep serving)."""
        files = self._read_files()
        if files == self._files:
            return None
        try:
            context = server_context(self.cert, self.key, self.password)
        except TLSError as exc:
            return str(exc)
        self.current = context
        self._files = files
        return None


_client_contexts: dict[tuple[str, bool], ssl.SSLContext] = {}


def client_context(ca_file: str = "", verify: bool = True) -> ssl.SSLContext:
    """A client context (cached): the system CAs or ``ca_file``, the host name checked;
    with ``verify`` False, no check at all (an explicit choice of the caller)."""
    key = (ca_file, verify)
    context = _client_contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=ca_file or None)
        context.sslobject_class = DirectSSLObject
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _client_contexts[key] = context
    return context


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed client handshake (``certificate verify failed:
    self-signed certificate``) instead of OpenSSL's bracketed form."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {(exc.reason or str(exc)).replace('_', ' ').lower()}"
    return str(exc) or type(exc).__name__
