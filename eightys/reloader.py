"""Reload mode (``--reload`` / ``RELOAD=true``): watch the code and the site.

The master runs one :class:`Reloader`. It watches, with watchfiles, the entry
script's directory, the site root and its ``main.lua``, the Lua library shipped
in this package, and the ``-m`` modules. watchfiles' default filter drops editor
swap and backup files and VCS directories, and its ``step`` groups the events of
one save. Then:

* a Python module changed -> rolling restart of the workers (their Python state
  cannot be reloaded in place);
* only stylesheets changed -> every worker reloads, browsers swap stylesheets;
* anything else -> every worker reloads in place, browsers refresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import aclosing
from typing import Awaitable, Callable

from watchfiles import Change, DefaultFilter, awatch

from eightys.config import Config
from eightys.lua_runtime import LUA_LIBRARY_DIR, display_path

log = logging.getLogger("master")
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log the changes ourselves

#: watchfiles: a save is "done" after this many quiet milliseconds.
STEP_MS = 50


def site_root(config: Config) -> str:
    """The content server's site root, resolved the way httpd.lua does."""
    from eightys.content import site_root as resolve

    return os.path.abspath(resolve(os.environ.get("PUBLIC_HTML"), config.entry))


def watched_paths(config: Config) -> list[str]:
    """Every existing path reload mode watches."""
    root = site_root(config)
    candidates = [os.path.dirname(config.entry), root,
                  os.path.join(os.path.dirname(root.rstrip("/")), "main.lua"),
                  str(LUA_LIBRARY_DIR), *config.modules]
    paths: list[str] = []
    for path in candidates:
        if os.path.exists(path) and path not in paths:
            paths.append(path)
    return paths


class Reloader:
    """Watches files and calls back: ``reload_all(kind)`` or ``rolling_restart()``."""

    def __init__(self, config: Config, reload_all: Callable[[str], None],
                 rolling_restart: Callable[[], Awaitable[None]]) -> None:
        self.config = config
        self.paths = watched_paths(config)
        self.modules = {os.path.realpath(m) for m in config.modules}
        self.reload_all = reload_all
        self.rolling_restart = rolling_restart
        self._stop = asyncio.Event()
        #: temporary files seen created and gone, whose deletion has not come yet
        self._vanished: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching on ``loop``."""
        self._task = loop.create_task(self._run())
        log.info("reload mode: watching %s", ", ".join(display_path(p) for p in self.paths))

    async def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def classify(self, changed: set[str]) -> str:
        """"restart", "css" or "reload" for a set of changed paths."""
        real = {os.path.realpath(p) for p in changed}
        if real & self.modules or any(p.endswith(".py") for p in real):
            return "restart"
        if real and all(p.endswith(".css") for p in real):
            return "css"
        return "reload"

    async def _run(self) -> None:
        try:
            pending = None
            while not self._stop.is_set():
                pending = await self._watch(pending)
        except Exception:  # noqa: BLE001 - a broken watcher must not take the server down
            log.exception("the file watcher stopped; reload mode is off")

    async def _watch(self, pending: str | None) -> str | None:
        # A file watched by itself (a -m module, main.lua beside the site) is watched by
        # its inode: once an editor saves it by renaming a new file over it, that watch
        # sees nothing more. So a change to one ends this watch, and what the change
        # calls for (`pending`) starts once the next watch is in place: nothing saved
        # meanwhile is missed.
        files = {p for p in self.paths if os.path.isfile(p)}
        batches = awatch(*self.paths, watch_filter=DefaultFilter(), step=STEP_MS,
                         stop_event=self._stop)
        # first runs when awatch waits for changes, i.e. with its watches set up
        task = asyncio.ensure_future(self._act(pending)) if pending else None
        async with aclosing(batches):
            async for changes in batches:
                if task is not None:
                    await task  # one reload or restart at a time
                    task = None
                changed = {path for _, path in changes}
                relevant = changed - _transient(changes, self._vanished)
                if not relevant:
                    continue  # only an editor's temporary file came and went
                kind = self.classify(relevant)
                log.info("changed: %s -> %s", ", ".join(sorted(display_path(p) for p in changed)),
                         kind)
                if changed & files:
                    self.paths = watched_paths(self.config)
                    return kind
                await self._act(kind)
        if task is not None:
            await task
        return None

    async def _act(self, kind: str) -> None:
        if kind == "restart":
            await self.rolling_restart()
        else:
            self.reload_all(kind)


#: Temporary files remembered until their deletion is seen (bounded: a watcher that
#: never reports one deletion must not grow).
MAX_VANISHED = 1024


def _transient(changes: set[tuple[Change, str]], vanished: set[str]) -> set[str]:
    """An editor's (or sed -i's) temporary file, renamed over the file saved: created
    and already gone when the batch is read. Its deletion may come in the next batch
    (a loaded machine splits them), so such files are kept in ``vanished`` until then.
    Left in, they made a stylesheet saved that way a full reload instead of a
    stylesheet swap."""
    added = {path for change, path in changes if change == Change.added}
    deleted = {path for change, path in changes if change == Change.deleted}
    gone = {path for path in added if not os.path.lexists(path)}
    transient = gone | (deleted & vanished)
    vanished -= deleted
    vanished |= gone - deleted
    if len(vanished) > MAX_VANISHED:
        vanished.clear()
    return transient
