"""Hashing, MACs, randomness and authenticated encryption behind Lua's
``crypto.*`` table.

Inputs are bytes (``str`` is accepted and UTF-8 encoded); outputs are raw
bytes. ``decrypt`` reports bad tokens as ``(None, b"decryption failed")``,
which the Lua runtime unpacks into ``nil, err``; misuse (short keys, bad
sizes) raises ``ValueError``.

Token layout: one version byte, then

* ``0x01`` (randomised): 12-byte nonce + AES-256-GCM ciphertext + 16-byte tag
* ``0x02`` (deterministic): AES-SIV output (16-byte synthetic IV + ciphertext)

The version byte is also authenticated as associated data.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache
from typing import Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from eightys.codec import BytesLike, as_bytes

__all__ = [
    "sha1",
    "sha256",
    "hmac_sha256",
    "random_bytes",
    "encrypt",
    "decrypt",
    "cipher",
]

MIN_KEY_LENGTH = 16
MAX_RANDOM_BYTES = 65536

_GCM = b"\x01"
_SIV = b"\x02"
_NONCE_SIZE = 12
_TAG_SIZE = 16
_FAILED = (None, b"decryption failed")


def sha1(data: BytesLike) -> bytes:
    """Return the raw 20-byte SHA-1 digest of ``data``."""
    return hashlib.sha1(as_bytes(data)).digest()


def sha256(data: BytesLike) -> bytes:
    """Return the raw 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(as_bytes(data)).digest()


def hmac_sha256(data: BytesLike, key: BytesLike) -> bytes:
    """Return the raw 32-byte HMAC-SHA256 of ``data`` under ``key``."""
    return hmac.digest(as_bytes(key), as_bytes(data), "sha256")


def random_bytes(n: Union[int, float]) -> bytes:
    """Return ``n`` (0..65536) cryptographically secure random bytes.

    Integral floats are accepted because Lua numbers may arrive as floats.
    """
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if type(n) is not int or not 0 <= n <= MAX_RANDOM_BYTES:
        raise ValueError(f"random_bytes: n must be an integer in 0..{MAX_RANDOM_BYTES}")
    return secrets.token_bytes(n)


# Encrypted URLs decrypt on every request, so HKDF and cipher setup are cached
# per (key, mode). Bounded so that many distinct keys cannot grow memory.
@lru_cache(maxsize=256)
def _cipher(key: bytes, mode: bytes) -> Union[AESGCM, AESSIV]:
    if mode == _GCM:
        length, info, cls = 32, b"eightys aes-256-gcm", AESGCM
    else:
        length, info, cls = 64, b"eightys aes-siv", AESSIV
    derived = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)
    return cls(derived)


def _key(key: BytesLike) -> bytes:
    key = as_bytes(key)
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"encryption key must be at least {MIN_KEY_LENGTH} bytes")
    return key


def encrypt(plaintext: BytesLike, key: BytesLike, deterministic: bool = False) -> bytes:
    """Encrypt and authenticate ``plaintext`` under ``key`` (>= 16 bytes).

    By default each call uses a fresh random nonce (AES-256-GCM), so equal
    plaintexts give different tokens. With ``deterministic=True`` the same
    plaintext and key always give the same token (AES-SIV), which makes
    encrypted URLs cacheable but reveals when two plaintexts are equal.
    Raises ``ValueError`` for a short key.
    """
    plaintext = as_bytes(plaintext)
    key = _key(key)
    if deterministic:
        return _SIV + _cipher(key, _SIV).encrypt(plaintext, [_SIV])
    nonce = secrets.token_bytes(_NONCE_SIZE)
    return _GCM + nonce + _cipher(key, _GCM).encrypt(nonce, plaintext, _GCM)


def decrypt(token: BytesLike, key: BytesLike) -> Union[bytes, tuple[None, bytes]]:
    """Verify and decrypt a token made by :func:`encrypt`.

    Returns the plaintext, or ``(None, b"decryption failed")`` if the token is
    tampered with, truncated, of an unknown version or made with another key.
    Raises ``ValueError`` only for a short key.
    """
    key = _key(key)
    token = as_bytes(token)
    mode = token[:1]
    try:
        if mode == _GCM:
            if len(token) < 1 + _NONCE_SIZE + _TAG_SIZE:
                return _FAILED
            nonce = token[1 : 1 + _NONCE_SIZE]
            return _cipher(key, _GCM).decrypt(nonce, token[1 + _NONCE_SIZE :], _GCM)
        if mode == _SIV:
            if len(token) < 1 + _TAG_SIZE:
                return _FAILED
            return _cipher(key, _SIV).decrypt(token[1:], [_SIV])
    except (InvalidTag, ValueError):
        pass
    return _FAILED


# -- 80s's crypto.cipher --------------------------------------------------------

_CIPHER_HMAC = 32
_CIPHER_HEAD = _CIPHER_HMAC + 4  # hmac + plaintext length (int32, little-endian)
_CIPHER_FAILED = (None, b"failed to cipher")


def _fold_key(key: bytes) -> bytes:
    """80s's key schedule: the first 16 bytes, with every later byte XORed in at i % 16."""
    folded = bytearray(key[:16])
    for i in range(16, len(key)):
        folded[i & 15] ^= key[i]
    return bytes(folded)


def cipher(data: BytesLike, key: BytesLike, use_iv: bool = True,
           encrypt_: bool = True) -> Union[bytes, tuple[None, bytes]]:
    """``crypto.cipher(data, key, use_iv, encrypt)``: 80s's authenticated
    AES-128-CBC, byte-compatible with it, so values 80s encrypted decrypt here and
    the other way round.

    Layout: ``HMAC-SHA256(key, rest)[32] | len(data) int32 LE | iv[16] (only with
    use_iv; else the IV is zero) | AES-128-CBC-PKCS7(data)``. A key over 16 bytes
    is folded to 16 by XOR (80s's schedule); under 16 is refused. Decryption
    detects the IV from the lengths and ignores ``use_iv``. Returns the result, or
    ``nil, err`` for a short key or a token that is truncated or tampered with.
    """
    data = as_bytes(data)
    key = as_bytes(key)
    if len(key) < MIN_KEY_LENGTH:
        return None, b"key must be 16 at least bytes long"
    key = _fold_key(key)
    if encrypt_:
        iv = secrets.token_bytes(16) if use_iv else bytes(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data) + padder.finalize()
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        body = len(data).to_bytes(4, "little", signed=True) + (iv if use_iv else b"") \
            + encryptor.update(padded) + encryptor.finalize()
        return hmac.digest(key, body, "sha256") + body
    if len(data) < _CIPHER_HEAD:
        return None, b"decrypt payload is too short"
    length = int.from_bytes(data[_CIPHER_HMAC:_CIPHER_HEAD], "little", signed=True)
    # 80s tells the two layouts apart by size: without an IV the ciphertext is at
    # most one block longer than the plaintext
    iv_len = 0 if len(data) - (length + _CIPHER_HEAD) <= 16 else 16
    if len(data) < _CIPHER_HEAD + iv_len:
        return None, b"decrypt payload is too short"
    if not hmac.compare_digest(hmac.digest(key, data[_CIPHER_HMAC:], "sha256"),
                               data[:_CIPHER_HMAC]):
        return _CIPHER_FAILED
    iv = data[_CIPHER_HEAD:_CIPHER_HEAD + iv_len] if iv_len else bytes(16)
    body = data[_CIPHER_HEAD + iv_len:]
    if not body or len(body) % 16:
        return _CIPHER_FAILED
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(decryptor.update(body) + decryptor.finalize()) \
            + unpadder.finalize()
    except ValueError:
        return _CIPHER_FAILED
    if not 0 <= length <= len(plain):
        return _CIPHER_FAILED
    return plain[:length]
