"""Pure functions behind 80s's ``net.partscan`` and ``net.mkdir`` (no worker needed)."""

from __future__ import annotations

import os
from typing import Any

#: Longest needle net.partscan takes (80s's limit).
MAX_NEEDLE = 256


def partscan(haystack: bytes, needle: bytes, offset: Any = 1) -> tuple[int, int]:
    """``net.partscan(haystack, needle, offset)``: the first occurrence of ``needle``
    at or after 1-based ``offset``, as ``(position, len(needle))``; failing that,
    the longest prefix of ``needle`` that ends the haystack (a delimiter split
    across reads), as ``(position, matched_length)``; failing that
    ``(len(haystack) + 1, 0)``. Positions are 1-based. A needle over 256 bytes
    gives ``(0, 0)`` (80s's limit); an offset below 1 counts as 1."""
    size = len(haystack)
    if not haystack or not needle:
        return size + 1, 0
    if len(needle) > MAX_NEEDLE:
        return 0, 0
    start = int(offset) - 1 if isinstance(offset, (int, float)) else 0
    start = min(max(start, 0), size)
    found = haystack.find(needle, start)
    if found != -1:
        return found + 1, len(needle)
    for k in range(min(len(needle) - 1, size - start), 0, -1):
        if haystack.endswith(needle[:k]):
            return size - k + 1, k
    return size + 1, 0


def mkdir(path: bytes, permissions: Any = 0o777) -> bool:
    """``net.mkdir(path[, permissions])``: true if the directory exists afterwards."""
    try:
        os.mkdir(path, int(permissions) if isinstance(permissions, (int, float)) else 0o777)
    except FileExistsError:
        return True
    except (OSError, ValueError):
        return os.path.isdir(path)
    return True
