"""Python extension modules, loaded in every worker with ``-m path/to/module.py``.

A module is a Python file with ``on_load(ctx, params, reload)`` and, optionally,
``on_unload(ctx, params, reload)`` (the 80s C-module contract, in Python).
``ctx`` is a :class:`ModuleContext`: through it the module registers functions
that Lua code can call, synchronous ones and ones returning a promise.
``params`` is a dict with ``worker_id``, ``workers``, ``port``, ``node`` and ``entry``.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    import asyncio

    from eightys.config import Config
    from eightys.lua_runtime import LuaRuntime


class ModuleOwner(Protocol):
    """What modules use of the worker that loads them: a narrow view, so this
    module never imports the worker."""

    @property
    def loop(self) -> "asyncio.AbstractEventLoop":
        """The worker's event loop."""

    @property
    def worker_id(self) -> int:
        """WORKERID."""

    @property
    def config(self) -> "Config":
        """The server's configuration (workers, node, entry)."""

    @property
    def runtime(self) -> "LuaRuntime":
        """The Lua runtime modules register functions in."""

    def listen_port(self) -> int:
        """The port the worker listens on (0 for a Unix socket)."""


class ModuleContext:
    """What a module's ``on_load``/``on_unload`` get as ``ctx``."""

    def __init__(self, worker: ModuleOwner) -> None:
        self._worker = worker
        #: The worker's event loop, for modules that schedule their own work.
        self.loop = worker.loop
        self.worker_id = worker.worker_id

    def register(self, name: str, function: Callable[..., Any]) -> None:
        """Make ``function`` callable from Lua as ``name`` (dotted names such as
        ``example.upper`` create a global table). Lua strings arrive as ``bytes``;
        return bytes, numbers, booleans, None, or a tuple for several values."""
        self._worker.runtime.register_function(name, function)

    def register_async(self, name: str, function: Callable[..., Awaitable[Any]]) -> None:
        """Make the coroutine function ``function`` callable from Lua as ``name``;
        Lua gets a promise that resolves with its result (dicts and lists become
        tables) or with ``nil, "error text"`` if it raises."""
        runtime = self._worker.runtime

        def start(*args: Any) -> Any:
            return runtime.promise_from(function(*args))

        runtime.register_function(name, start)

    def to_python(self, value: Any) -> Any:
        """Copy a Lua table into Python dicts (see LuaRuntime.to_python)."""
        return self._worker.runtime.to_python(value)

    def to_lua(self, value: Any) -> Any:
        """Copy Python dicts/lists into a Lua table."""
        return self._worker.runtime.to_lua(value)


class ExtensionModule:
    """One loaded ``-m`` module in one worker."""

    def __init__(self, path: str, module: ModuleType, worker: ModuleOwner) -> None:
        self.path = path
        self.module = module
        self.context = ModuleContext(worker)
        self.params = {
            "worker_id": worker.worker_id,
            "workers": worker.config.workers,
            "port": worker.listen_port(),
            "node": worker.config.node,
            "entry": worker.config.entry,
        }

    def load(self, reload: bool) -> None:
        """Call the module's ``on_load``."""
        self.module.on_load(self.context, self.params, reload)

    def unload(self, reload: bool) -> None:
        """Call the module's ``on_unload`` if it has one."""
        hook = getattr(self.module, "on_unload", None)
        if hook is not None:
            hook(self.context, self.params, reload)


def load_modules(paths: tuple[str, ...], worker: ModuleOwner) -> list[ExtensionModule]:
    """Import each module file; raise ImportError naming the file if one lacks on_load."""
    loaded = []
    for path in paths:
        name = "eightys_module_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import module {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "on_load", None)):
            raise ImportError(f"module {path} has no on_load(ctx, params, reload)")
        loaded.append(ExtensionModule(path, module, worker))
    return loaded
