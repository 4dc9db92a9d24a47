"""Logging setup shared by the master and the workers: one line per record on stderr."""

from __future__ import annotations

import logging
import os
import re
import sys

#: The Lua library's directory, as tracebacks may name it (absolute or relative).
_LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
#: Traceback lines that are eightys' own frames or C glue, not the user's code.
_FRAMEWORK_FRAME = re.compile(
    r"^\s+(?:\[C\]: in |\(\.\.\.tail calls\.\.\.\)|\[string \"<python>\"\]"
    r"|(?:\.\.\.)?[^\s:]*eightys/lua/[^:]*:\d*:? ?in )")


def user_traceback(text: str) -> str:
    """``text`` (an error with its Lua traceback) without the frames of eightys'
    own Lua library and C glue (xpcall, error): what a user needs is the trail
    through their code. The header goes too when no frame is left."""
    head, sep, trace = text.partition("\nstack traceback:\n")
    if not sep:
        return text
    lines = [line for line in trace.split("\n")
             if not _FRAMEWORK_FRAME.match(line) and _LUA_DIR not in line]
    if not lines:
        return head
    return head + sep + "\n".join(lines)


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``time level [who] message`` to stderr; ``who`` is the logger name
    (``master``, ``worker 3``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
