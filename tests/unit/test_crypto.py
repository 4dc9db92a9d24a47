"""Tests for eightys.crypto."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eightys import crypto

KEY = b"k" * 32
OTHER_KEY = b"K" * 32
FAILED = (None, b"decryption failed")


# Hashes and MACs ---------------------------------------------------------------


def test_sha1():
    assert crypto.sha1(b"") == bytes.fromhex("da39a3ee5e6b4b0d3255bfef95601890afd80709")
    assert crypto.sha1(b"abc") == bytes.fromhex("a9993e364706816aba3e25717850c26c9cd0d89d")
    assert crypto.sha1("abc") == crypto.sha1(b"abc")


def test_sha256():
    assert crypto.sha256(b"") == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert crypto.sha256(b"abc") == bytes.fromhex(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert len(crypto.sha256(b"x" * 100000)) == 32


def test_hmac_sha256():
    # RFC 4231 test case 2
    assert crypto.hmac_sha256(b"what do ya want for nothing?", b"Jefe") == bytes.fromhex(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )
    assert crypto.hmac_sha256(b"", b"") == hmac.new(b"", b"", hashlib.sha256).digest()
    assert crypto.hmac_sha256(b"data", b"key1") != crypto.hmac_sha256(b"data", b"key2")


def test_rejects_non_bytes():
    with pytest.raises(TypeError):
        crypto.sha256(123)  # type: ignore[arg-type]


# random_bytes ------------------------------------------------------------------


def test_random_bytes():
    assert crypto.random_bytes(0) == b""
    assert len(crypto.random_bytes(1)) == 1
    assert len(crypto.random_bytes(65536)) == 65536
    assert len(crypto.random_bytes(16.0)) == 16  # Lua numbers may be floats
    assert crypto.random_bytes(32) != crypto.random_bytes(32)


@pytest.mark.parametrize("n", [-1, 65537, 1.5, "8", None, True])
def test_random_bytes_bad(n):
    with pytest.raises(ValueError):
        crypto.random_bytes(n)  # type: ignore[arg-type]


# encrypt / decrypt -------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("plaintext", [b"", b"x", b"hello world", bytes(range(256)) * 40])
def test_roundtrip(plaintext, deterministic):
    token = crypto.encrypt(plaintext, KEY, deterministic)
    assert isinstance(token, bytes)
    # a short plaintext can appear in random bytes by chance; a long one cannot
    assert len(plaintext) < 8 or plaintext not in token
    assert crypto.decrypt(token, KEY) == plaintext


def test_str_inputs():
    token = crypto.encrypt("caf\u00e9", "a string key of 16+")
    assert crypto.decrypt(token, b"a string key of 16+") == "caf\u00e9".encode()


def test_token_layout():
    gcm = crypto.encrypt(b"abc", KEY)
    assert gcm[0] == 0x01
    assert len(gcm) == 1 + 12 + 3 + 16
    siv = crypto.encrypt(b"abc", KEY, deterministic=True)
    assert siv[0] == 0x02
    assert len(siv) == 1 + 16 + 3


def test_deterministic_tokens_are_equal():
    a = crypto.encrypt(b"/img/cat.png?w=100", KEY, deterministic=True)
    b = crypto.encrypt(b"/img/cat.png?w=100", KEY, deterministic=True)
    assert a == b
    assert crypto.encrypt(b"/img/cat.png?w=101", KEY, deterministic=True) != a
    assert crypto.encrypt(b"/img/cat.png?w=100", OTHER_KEY, deterministic=True) != a


def test_randomised_tokens_differ():
    tokens = {crypto.encrypt(b"same", KEY) for _ in range(20)}
    assert len(tokens) == 20
    assert all(crypto.decrypt(t, KEY) == b"same" for t in tokens)


def test_modes_use_different_keys():
    # A GCM token re-labelled as another mode must not decrypt.
    token = crypto.encrypt(b"secret", KEY)
    assert crypto.decrypt(b"\x02" + token[1:], KEY) == FAILED
    token = crypto.encrypt(b"secret", KEY, deterministic=True)
    assert crypto.decrypt(b"\x01" + token[1:], KEY) == FAILED


def test_key_is_stretched_not_used_directly():
    token = crypto.encrypt(b"secret", KEY)
    nonce, body = token[1:13], token[13:]
    with pytest.raises(InvalidTag):
        AESGCM(KEY).decrypt(nonce, body, b"\x01")


@pytest.mark.parametrize("deterministic", [False, True])
def test_every_flipped_byte_fails(deterministic):
    token = crypto.encrypt(b"attack at dawn", KEY, deterministic)
    for i in range(len(token)):
        for mask in (0x01, 0x80):
            tampered = bytearray(token)
            tampered[i] ^= mask
            assert crypto.decrypt(bytes(tampered), KEY) == FAILED, (i, mask)


@pytest.mark.parametrize("deterministic", [False, True])
def test_truncated_and_extended_tokens_fail(deterministic):
    token = crypto.encrypt(b"attack at dawn", KEY, deterministic)
    for n in range(len(token)):
        assert crypto.decrypt(token[:n], KEY) == FAILED, n
    assert crypto.decrypt(token + b"\x00", KEY) == FAILED


@pytest.mark.parametrize("deterministic", [False, True])
def test_wrong_key_fails(deterministic):
    token = crypto.encrypt(b"attack at dawn", KEY, deterministic)
    assert crypto.decrypt(token, OTHER_KEY) == FAILED
    assert crypto.decrypt(token, KEY + b"x") == FAILED


@pytest.mark.parametrize("token", [b"", b"\x00", b"\x03" + b"\x00" * 40, b"\xff" * 64, "not a token"])
def test_garbage_tokens_fail(token):
    assert crypto.decrypt(token, KEY) == FAILED


def test_short_key_raises():
    with pytest.raises(ValueError):
        crypto.encrypt(b"x", b"k" * 15)
    with pytest.raises(ValueError):
        crypto.encrypt(b"x", b"", deterministic=True)
    with pytest.raises(ValueError):
        crypto.decrypt(crypto.encrypt(b"x", KEY), b"short")
    # exactly 16 bytes is enough
    assert crypto.decrypt(crypto.encrypt(b"x", b"k" * 16), b"k" * 16) == b"x"


def test_long_keys_work():
    key = bytes(range(256)) * 4
    for deterministic in (False, True):
        assert crypto.decrypt(crypto.encrypt(b"x", key, deterministic), key) == b"x"
