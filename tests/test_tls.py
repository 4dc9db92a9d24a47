"""TLS: HTTPS and WSS served by real eightys processes, certificates made here with
``cryptography`` (a test CA and leaf certificates it signs), checked by curl, an
h11 client over ``ssl`` and the ``websockets`` client; the certificate swap on
SIGHUP; the ``--redirect-http`` listener; usage errors; outgoing TLS from Lua
(aio:connect, aio:connect2, the HTTP client) with and without the CA."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import eightys.protocols.http_core as http_core
from conftest import APPS, REPO, free_port
from http_helpers import HttpClient

APP = APPS / "tls_app.lua"


# -- certificates ---------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    """A test certificate authority that issues leaf certificates for localhost."""

    def __init__(self, directory: Path, cn: str = "eightys test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, cert_path: Path, key_path: Path, password: bytes | None = None) -> None:
        """Write a certificate for localhost/127.0.0.1 (subject ``cn``) and its key."""
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        # write to a temporary name and rename: a reload never sees half a file
        for path, data in ((cert_path, cert.public_bytes(serialization.Encoding.PEM)),
                           (key_path, key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        encryption))):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path)


@pytest.fixture
def certs(ca: CA, tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.issue("first", cert, key)
    return cert, key


def client_context(ca: CA) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.path))
    return context


def tls_connect(port: int, context: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="localhost")


def peer_cn(sock: ssl.SSLSocket) -> str:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def tls_server(start_server, certs: tuple[Path, Path], *args: str, entry: Path = APP, **kw):
    cert, key = certs
    server = start_server(entry, "--tls-cert", str(cert), "--tls-key", str(key), *args,
                          wait=False, **kw)
    # the helper's readiness probe is a plain connect: fine, a TLS listener accepts it
    server.wait_ready()
    return server


# -- serving -------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["libssl", "uvloop"])
def test_https_with_curl_and_an_h11_client(start_server, certs, ca, layer):
    # both TLS layers: libssl on the socket (compiled eightys), uvloop's (the fallback,
    # also what EIGHTYS_UVLOOP_TLS=1 asks for)
    env = {"EIGHTYS_UVLOOP_TLS": "1"} if layer == "uvloop" else None
    server = tls_server(start_server, certs, workers=1, env=env)
    used_libssl = "TLS by libssl on each connection's socket" in server.stderr_text()
    assert used_libssl == (layer == "libssl" and http_core.COMPILED)
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca.path), "-w", " %{http_version}",
         f"https://localhost:{server.port}/scheme"],
        capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "https 1.1"

    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(server.port, context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        client = HttpClient(sock)
        for _ in range(2):  # keep-alive over TLS
            response = client.request("GET", "/scheme")
            assert (response.status, response.body) == (200, b"https")
            assert response.header("Connection") is None


def test_tls_1_1_and_weak_ciphers_are_refused(start_server, certs, ca):
    server = tls_server(start_server, certs, workers=1)
    old = client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so it is the server that says no
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(server.port, old).close()
    # (the server closes without an alert, or with protocol_version)
    assert refused.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION",
                                    "UNEXPECTED_EOF_WHILE_READING"), refused.value
    weak = client_context(ca)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA256")  # no forward secrecy: not in the server's list
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(server.port, weak).close()
    assert refused.value.reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE",
                                    "UNEXPECTED_EOF_WHILE_READING"), refused.value
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(server.port, tls12) as sock:
        assert sock.version() == "TLSv1.2"
        assert "GCM" in sock.cipher()[0] or "CHACHA20" in sock.cipher()[0]
    # a failed handshake is the client's business: no traceback in the server's log
    assert "Traceback" not in server.stderr_text(), server.stderr_text()


def test_wss_with_the_websockets_client(start_server, certs, ca):
    from websockets.sync.client import connect

    server = tls_server(start_server, certs, workers=1)
    with connect(f"wss://localhost:{server.port}/ws", ssl=client_context(ca),
                 open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "wss"


def test_big_bodies_pipelining_and_big_messages_over_tls(start_server, certs, ca):
    # many records per read and per write, in both directions, through flow control
    import hashlib
    import os

    from websockets.sync.client import connect

    # the body stays in memory (as `body`, not a spooled file) for the echo
    server = tls_server(start_server, certs, "--body-buffer-size", str(8 << 20), workers=1)
    body = os.urandom(6 << 20)
    with tls_connect(server.port, client_context(ca), timeout=30) as sock:
        client = HttpClient(sock, 30)
        response = client.request("POST", "/echo", body=body)
        assert response.status == 200
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()
        # 20 requests in one write: their records arrive together, answered in order
        sock.sendall(b"GET /scheme HTTP/1.1\r\nHost: localhost\r\n\r\n" * 20)
        for _ in range(20):
            response = client.read_response()
            assert (response.status, response.body) == (200, b"https")
    message = os.urandom(2 << 20)
    with connect(f"wss://localhost:{server.port}/echo-ws", ssl=client_context(ca),
                 open_timeout=5, max_size=None) as ws:
        for _ in range(3):
            ws.send(message)
            assert ws.recv(timeout=30) == message


def test_plain_http_and_ws_say_so(start_server):
    from websockets.sync.client import connect

    server = start_server(APP, workers=1)
    with HttpClient.connect(server) as client:
        assert client.request("GET", "/scheme").body == b"http"
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "ws"


def test_raw_app_over_tls(start_server, certs, ca):
    server = tls_server(start_server, certs, entry=REPO / "server" / "echo.lua", workers=1)
    with tls_connect(server.port, client_context(ca)) as sock:
        sock.sendall(b"hello over tls\n")
        got = b""
        while not got.endswith(b"\n"):
            got += sock.recv(100)
        assert got == b"hello over tls\n"


def test_sighup_swaps_the_certificate_keeping_open_connections(start_server, certs, ca):
    cert, key = certs
    server = tls_server(start_server, certs, workers=2)
    context = client_context(ca)
    before = tls_connect(server.port, context)
    client = HttpClient(before)
    assert client.request("GET", "/scheme").body == b"https"
    assert peer_cn(before) == "first"

    ca.issue("second", cert, key)
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS certificate reloaded", count=2)
    with tls_connect(server.port, context) as fresh:
        assert peer_cn(fresh) == "second"
    # the keep-alive connection opened before the swap still works
    response = client.request("GET", "/scheme")
    assert (response.status, response.body) == (200, b"https")
    assert peer_cn(before) == "first"

    # a bad new certificate is logged; the one loaded before keeps serving
    cert.write_text("not a certificate\n")
    server.send_signal(signal.SIGHUP)
    log = server.wait_for_log("TLS certificate reload failed", count=2)
    assert f"--tls-cert {cert}: no PEM certificate in it" in log
    with tls_connect(server.port, context) as fresh:
        assert peer_cn(fresh) == "second"
        client2 = HttpClient(fresh)
        assert client2.request("GET", "/scheme").body == b"https"
    assert client.request("GET", "/scheme").status == 200
    before.close()


def test_stopping_does_not_wait_for_a_silent_client(start_server, certs, ca):
    # the idle keep-alive client never answers our close_notify: the worker must not
    # wait for it (uvloop's default is 30 s; here the whole grace period, 10 s)
    import time

    server = tls_server(start_server, certs, workers=1)
    sock = tls_connect(server.port, client_context(ca))
    assert HttpClient(sock).request("GET", "/scheme").body == b"https"
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=8) == 0
    assert time.monotonic() - started < 5, server.stderr_text()
    assert "still open after" not in server.stderr_text()
    sock.close()


def test_redirect_http_and_the_80s_environment(start_server, certs, ca):
    cert, key = certs
    redirect = free_port()
    server = start_server(APP, "--redirect-http", str(redirect), workers=1, wait=False,
                          env={"TLS": "true", "TLS_PUBKEY": str(cert), "TLS_PRIVKEY": str(key)})
    server.wait_ready()
    assert "redirecting plain HTTP on port" in server.stderr_text()
    sock = socket.create_connection(("127.0.0.1", redirect), timeout=5)
    with HttpClient(sock) as client:
        client.send_request("GET", "/a/b?x=1&y=%20", headers=[("Host", f"localhost:{redirect}")],
                            host=False)
        response = client.read_response()
        assert response.status == 308
        assert response.header("Location") == f"https://localhost:{server.port}/a/b?x=1&y=%20"
        client.assert_closed()
    sock = socket.create_connection(("127.0.0.1", redirect), timeout=5)
    with HttpClient(sock) as client:
        client.send_request("POST", "/form", headers=[("Host", "[::1]:80")], body=b"a=1",
                            host=False)
        response = client.read_response()
        assert response.status == 308
        assert response.header("Location") == f"https://[::1]:{server.port}/form"
    sock = socket.create_connection(("127.0.0.1", redirect), timeout=5)
    with HttpClient(sock) as client:  # a Host that cannot go into a URL
        client.send_request("GET", "/", headers=[("Host", "evil.com/x?")], host=False)
        assert client.read_response().status == 400
    # curl follows it to the TLS port and gets the https answer
    out = subprocess.run(["curl", "-sS", "-L", "--cacert", str(ca.path),
                          f"http://localhost:{redirect}/scheme"],
                         capture_output=True, text=True, timeout=10)
    assert (out.returncode, out.stdout) == (0, "https"), out.stderr


# -- outgoing TLS from Lua ------------------------------------------------------------


def _get(server, ca: CA, path: str) -> tuple[int, str]:
    context = client_context(ca)
    with tls_connect(server.port, context, timeout=15) as sock:
        client = HttpClient(sock, timeout=15)
        response = client.request("GET", path.replace("CA", str(ca.path)))
        return response.status, response.text


def test_outgoing_tls_verifies_by_default(start_server, certs, ca):
    server = tls_server(start_server, certs, workers=1)
    # the test CA is not in the system store: refused, with the reason
    status, text = _get(server, ca, "/connect")
    assert status == 502 and "certificate verify failed" in text, text
    status, text = _get(server, ca, "/connect2")
    assert status == 502 and "certificate verify failed" in text, text
    status, text = _get(server, ca, "/client")
    assert status == 502 and text.startswith("TLS: certificate verify failed"), text
    # the host name is checked too
    status, text = _get(server, ca, "/connect?ca=CA&name=example.com")
    assert status == 502 and "certificate verify failed" in text, text

    assert _get(server, ca, "/connect?ca=CA") == (200, "https")
    assert _get(server, ca, "/connect2?ca=CA") == (200, "connected")
    assert _get(server, ca, "/client?ca=CA") == (200, "https")
    # turning verification off is explicit
    assert _get(server, ca, "/connect?verify=0") == (200, "https")
    assert _get(server, ca, "/client?verify=0") == (200, "https")


def readme_tls_block() -> str:
    """The ```lua block of the README's TLS section."""
    import re

    text = (REPO / "README.md").read_text()
    start = text.index("### TLS (HTTPS and WSS)")
    section = text[start:text.index("\n## ", start)]
    blocks = re.findall(r"^```lua\n(.*?)^```$", section, re.S | re.M)
    assert len(blocks) == 1
    return blocks[0]


def test_readme_tls_example(start_server, certs, ca, tmp_path):
    from websockets.sync.client import connect

    block = readme_tls_block()
    assert 'local res = aio:await(http_client:GET("https://localhost:" .. PORT .. "/where",' in block
    app = tmp_path / "readme_tls.lua"
    app.write_text(block)
    cert, key = certs
    server = start_server(app, "--tls-cert", str(cert), "--tls-key", str(key), workers=1,
                          env={"CA_FILE": str(ca.path)})
    assert _get(server, ca, "/where") == (200, "you came over https")
    assert _get(server, ca, "/self") == (200, "you came over https")
    with connect(f"wss://localhost:{server.port}/hello", ssl=client_context(ca),
                 open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello over wss"
    assert " ERROR " not in server.stderr_text(), server.stderr_text()


# -- usage errors ----------------------------------------------------------------------


def test_bad_certificate_options_are_usage_errors(run_eightys, certs, ca, tmp_path):
    cert, key = certs
    other_cert, other_key = tmp_path / "other.pem", tmp_path / "other-key.pem"
    ca.issue("other", other_cert, other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    app = str(APP)
    cases = [
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
         f"--tls-cert {tmp_path / 'missing.pem'}: no such file"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)],
         f"--tls-cert {garbage}: no PEM certificate in it"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)],
         f"--tls-key {garbage}: no PEM private key in it"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)],
         "the key does not belong to the certificate"),
        (["--redirect-http", "8081"], "--redirect-http needs TLS"),
    ]
    for args, message in cases:
        result = run_eightys(app, "-p", str(free_port()), *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("eightys: error: "), result.stderr
        assert message in lines[0], (message, lines[0])
    result = run_eightys(app, env={"TLS": "true", "TLS_PUBKEY": str(cert)})
    assert result.returncode == 2 and "TLS=true needs TLS_PUBKEY" in result.stderr


def test_encrypted_key_needs_its_passphrase_from_a_file_or_the_environment(
        ca, tmp_path, monkeypatch):
    from eightys.cli import config_from_args
    from eightys.config import UsageError

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ca.issue("locked", cert, key, password=b"s3cret pass")
    base = [str(APP), "--tls-cert", str(cert), "--tls-key", str(key)]
    monkeypatch.delenv("TLS_KEY_PASSWORD", raising=False)
    with pytest.raises(UsageError, match="is encrypted: give its passphrase"):
        config_from_args(base)
    secret = tmp_path / "pass"
    secret.write_text("wrong\n")
    with pytest.raises(UsageError, match=str(key)):
        config_from_args(base + ["--tls-key-password-file", str(secret)])
    secret.write_text("s3cret pass\n")
    config = config_from_args(base + ["--tls-key-password-file", str(secret)])
    assert config.tls_key_password == "s3cret pass"
    monkeypatch.setenv("TLS_KEY_PASSWORD", "s3cret pass")
    assert config_from_args(base).tls_cert == str(cert)


def test_content_server_sends_hsts_over_tls_only(start_server, certs, ca, tmp_path):
    """httpd.security_headers' Strict-Transport-Security goes out on HTTPS responses
    (pages and static files), never over plain HTTP."""
    base = tmp_path / "site"
    root = base / "public_html"
    root.mkdir(parents=True)
    (base / "main.lua").write_text(
        'httpd.security_headers = { ["Strict-Transport-Security"] = "max-age=600" }\n')
    (root / "index.dyn.html").write_text("home")
    (root / "notes.txt").write_text("notes")
    env = {"PUBLIC_HTML": str(root)}
    server = tls_server(start_server, certs, entry=Path("server/http.lua"), workers=1, env=env)
    with tls_connect(server.port, client_context(ca)) as sock:
        client = HttpClient(sock)
        for target in ("/", "/notes.txt"):
            response = client.request("GET", target)
            assert response.status == 200, (target, response.body)
            assert response.header("Strict-Transport-Security") == "max-age=600", target
            assert response.header("X-Content-Type-Options") == "nosniff", target
    plain = start_server("server/http.lua", workers=1, env=env)
    with HttpClient.connect(plain) as client:
        for target in ("/", "/notes.txt"):
            response = client.request("GET", target)
            assert response.status == 200, target
            assert response.header("Strict-Transport-Security") is None, target
