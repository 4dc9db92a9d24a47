"""Framing for the master<->worker control channel (a socketpair per worker).

Sans-IO, like h11: ``encode(message)`` gives bytes to write, ``FrameDecoder.feed``
takes bytes as they arrive and returns the complete messages. A message is a tuple
whose first item names its kind (see ``Kind``); payloads are plain data (bytes,
str, numbers, bools, None, lists, dicts), serialised with ``marshal`` because both
ends are the same Python build and it is several times faster than pickle or JSON
for the nested tables that ``net.mail`` carries.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

_HEADER = struct.Struct("!I")
#: A bound on one frame so a corrupt length cannot make the reader allocate gigabytes.
MAX_FRAME = 64 * 1024 * 1024


class Kind:
    """Message kinds. Worker -> master unless noted."""

    READY = "ready"  # (READY,) the worker serves
    FATAL = "fatal"  # (FATAL, text) the worker cannot start; it exits next
    MAIL = "mail"  # worker->master (MAIL, target, sender_fd, receiver_fd, message)
    #                master->worker (MAIL, sender, sender_fd, receiver_fd, message)
    RELOAD = "reload"  # worker->master: reload every worker
    #                    master->worker (RELOAD, round, kind): reload now, then answer RELOADED
    RELOADED = "reloaded"  # (RELOADED, round, error or None): this worker's reload is done
    NOTIFY = "notify"  # master->worker (NOTIFY, event, data): tell live-reload browsers
    QUIT = "quit"  # worker->master: stop the whole server
    PUBLISH = "publish"  # (PUBLISH, channel, data, binary): worker->master, relayed to
    #                      the other workers with subscribers (WebSocket pub/sub)
    INTEREST = "interest"  # worker->master (INTEREST, channel, bool): this worker's first
    #                        subscriber to channel came (True) or its last one left (False)
    RETIRE = "retire"  # master->worker: a rolling restart replaced you; drain and exit
    STATS = "stats"  # (STATS, snapshot): once a second with --metrics (eightys.metrics)


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame."""


def encode(message: tuple[Any, ...]) -> bytes:
    """Serialise one message into a length-prefixed frame."""
    body = marshal.dumps(message)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes and yields whole messages; remembers partial frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """Add ``data``; return every message completed by it (possibly none)."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes exceeds the limit")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            try:
                message = marshal.loads(bytes(self._buffer[_HEADER.size:end]))
            except (EOFError, ValueError, TypeError) as exc:
                raise FrameError(f"undecodable frame: {exc}") from None
            del self._buffer[:end]
            if not isinstance(message, tuple) or not message:
                raise FrameError("a frame must hold a non-empty tuple")
            messages.append(message)
        return messages
