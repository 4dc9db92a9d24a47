"""Example extension module: ``eightys server/modules_demo.lua -m modules/example.py``.

It gives Lua two functions:

* ``example.upper(text)`` -> the text in upper case (a plain synchronous call);
* ``example.resolve(host)`` -> a promise of a list of the host's IP addresses
  (``nil, err`` if the lookup fails), using the worker's event loop so the
  lookup never blocks Lua::

      aio:async(function()
          local addresses, err = aio:await(example.resolve("localhost"))
      end)
"""

from __future__ import annotations

import socket
from typing import Any

loads = 0


def on_load(ctx: Any, params: dict[str, Any], reload: bool) -> None:
    """Register the module's Lua functions in this worker."""
    global loads
    loads += 1

    def upper(text: bytes) -> bytes:
        return text.upper()

    async def resolve(host: bytes) -> list[bytes]:
        infos = await ctx.loop.getaddrinfo(host.decode(), None, type=socket.SOCK_STREAM)
        return sorted({info[4][0].encode() for info in infos})

    ctx.register("example.upper", upper)
    ctx.register_async("example.resolve", resolve)


def on_unload(ctx: Any, params: dict[str, Any], reload: bool) -> None:
    """Nothing to release: the functions go away with the Lua state."""
