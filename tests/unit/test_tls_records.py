"""eightys.tls.DirectSSLObject: the SSLObject uvloop gets from our contexts.

Its per-record methods must be ``_ssl``'s own (no Python frame per record), and it
must behave as ``ssl.SSLObject`` does: a handshake and records both ways through
memory BIOs, ``SSLWantReadError`` when a record is incomplete, ``pending``, the SNI
callback's context switch. HTTPS and WSS end to end are in tests/test_tls.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from certs import self_signed

from eightys import tls


@pytest.fixture
def cert_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


def _pair(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> tuple:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    for _ in range(10):  # handshake: pass the BIOs' bytes back and forth
        done = 0
        for obj in (client, server):
            try:
                obj.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            break
    return server, client, (s_in, s_out, c_in, c_out)


def test_records_go_straight_to_the_c_object_and_behave_as_ssl_objects_do(cert_files) -> None:
    cert, key = cert_files
    server_context = tls.server_context(str(cert), str(key))
    client_context = tls.client_context(str(cert))
    assert server_context.sslobject_class is tls.DirectSSLObject
    assert client_context.sslobject_class is tls.DirectSSLObject
    server, client, (s_in, s_out, c_in, c_out) = _pair(server_context, client_context)
    for obj in (server, client):
        assert isinstance(obj, tls.DirectSSLObject)
        # bound methods of _ssl's object: C calls, no Python frame
        assert obj.read.__self__ is obj._sslobj
        assert obj.write.__self__ is obj._sslobj
        assert obj.pending.__self__ is obj._sslobj
    assert server.selected_alpn_protocol() is None  # the client offered none
    assert client.version() in ("TLSv1.2", "TLSv1.3")

    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    assert client.write(request) == len(request)
    record = c_out.read()
    s_in.write(record[:5])  # a record cut short: nothing to read yet
    with pytest.raises(ssl.SSLWantReadError):
        server.read(65536)
    s_in.write(record[5:])
    assert server.read(10) == request[:10]
    assert server.pending() == len(request) - 10
    assert server.read(65536) == request[10:]
    assert server.pending() == 0

    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server.write(response)
    c_in.write(s_out.read())
    buffer = bytearray(1024)
    count = client.read(1024, buffer)  # the (len, buffer) form uvloop's reader uses
    assert bytes(buffer[:count]) == response


def test_the_sni_callback_still_switches_the_context(cert_files, tmp_path: Path) -> None:
    cert, key = cert_files
    served = tls.ServerTLS(str(cert), str(key))
    newer = tls.server_context(str(cert), str(key))
    served.current = newer  # what reload() does once the new files load
    server, client, _ = _pair(served.context, tls.client_context(str(cert)))
    assert server.context is newer
    assert client.version() is not None
