"""Byte codecs behind Lua's ``codec.*`` table.

The Lua runtime passes Lua strings in as ``bytes`` (``encoding=None``), so
every function here takes bytes (``str`` is accepted and UTF-8 encoded) and
returns bytes. Decoders that can fail return the tuple ``(None, b"message")``
instead of raising; the runtime unpacks it into Lua's ``nil, err``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Union
from urllib.parse import quote_from_bytes, unquote_to_bytes

__all__ = [
    "url_encode",
    "url_decode",
    "html_escape",
    "hex_encode",
    "hex_decode",
    "base64_encode",
    "base64_decode",
    "mysql_encode",
]

BytesLike = Union[bytes, bytearray, memoryview, str]
Result = Union[bytes, tuple[None, bytes]]

_WHITESPACE = b" \t\r\n\v\f"
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def as_bytes(value: BytesLike) -> bytes:
    """``value`` as bytes: str is UTF-8 encoded; other types raise TypeError."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


def url_encode(data: BytesLike) -> bytes:
    """Percent-encode everything except RFC 3986 unreserved characters.

    ``A-Z a-z 0-9 - . _ ~`` are kept; every other byte becomes ``%XX`` with
    upper-case hex digits (so a space is ``%20``, never ``+``).
    """
    return quote_from_bytes(as_bytes(data), safe="").encode("ascii")


def url_decode(data: BytesLike) -> bytes:
    """Decode a percent-encoded (form or URL) string.

    ``+`` becomes a space and ``%XX`` its byte. Malformed ``%`` sequences are
    kept literally, so this never fails.
    """
    return unquote_to_bytes(as_bytes(data).replace(b"+", b" "))


def html_escape(data: BytesLike) -> bytes:
    """Escape ``& < > " '`` for use in HTML text and quoted attributes."""
    return (
        as_bytes(data)
        .replace(b"&", b"&amp;")
        .replace(b"<", b"&lt;")
        .replace(b">", b"&gt;")
        .replace(b'"', b"&quot;")
        .replace(b"'", b"&#39;")
    )


def hex_encode(data: BytesLike) -> bytes:
    """Return the lower-case hexadecimal form of ``data``."""
    return binascii.hexlify(as_bytes(data))


def hex_decode(data: BytesLike) -> Result:
    """Decode hexadecimal (either case, no separators).

    Returns the bytes, or ``(None, b"invalid hex")`` on odd length or a
    non-hex character.
    """
    try:
        return binascii.unhexlify(as_bytes(data))
    except (binascii.Error, ValueError):
        return None, b"invalid hex"


def base64_encode(data: BytesLike) -> bytes:
    """Encode with the standard base64 alphabet, padded."""
    return base64.b64encode(as_bytes(data))


def base64_decode(data: BytesLike) -> Result:
    """Decode standard or URL-safe base64, padded or not.

    ASCII whitespace is ignored. Returns the bytes, or
    ``(None, b"invalid base64")`` for any other malformed input.
    """
    raw = as_bytes(data).translate(_URLSAFE_TO_STD, _WHITESPACE)
    body = raw.rstrip(b"=")
    padding = len(raw) - len(body)
    # Padding, when present, must be the canonical amount; a single leftover
    # character can never encode a whole byte.
    if (padding and len(raw) % 4) or padding > 2 or len(body) % 4 == 1:
        return None, b"invalid base64"
    try:
        return base64.b64decode(body + b"=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None, b"invalid base64"


_MYSQL_ESCAPES = {0: b"\\0", 1: b"\\1", 8: b"\\b", 10: b"\\n", 13: b"\\r",
                  34: b'\\"', 39: b"\\'", 92: b"\\\\"}
_MYSQL_SPECIAL = bytes(_MYSQL_ESCAPES)


def mysql_encode(data: BytesLike) -> bytes:
    r"""Escape a string for a quoted MySQL literal, as 80s's ``codec.mysql_encode``:
    CR, LF, ``"``, ``'``, backspace, backslash, NUL and byte 1 become ``\r``,
    ``\n``, ``\"``, ``\'``, ``\b``, ``\\``, ``\0`` and ``\1``."""
    raw = as_bytes(data)
    if not any(b in raw for b in _MYSQL_SPECIAL):
        return raw
    return b"".join(_MYSQL_ESCAPES.get(b, raw[i:i + 1]) for i, b in enumerate(raw))
