"""``eightys --cli SCRIPT.lua``: run a Lua script once, as a program (80s's ``--cli``).

The script gets what a worker's Lua gets (the aio library, timers, ``aio:connect``,
MySQL, Redis, the HTTP client, ``aio:cached``...) from the same runtime, built by
the same code (:class:`~eightys.worker.Worker`), minus what serving needs: no
listening socket, no master, no other workers. It is one process.

It ends when

* the script calls ``aio:quit([code])``: exit status ``code`` (default 0); or
* nothing is left to wait for: no timer armed, no socket open (``aio:connect``,
  ``net.popen``), no task in flight (a MySQL or Redis query, an HTTP request, a DNS
  lookup): exit status 0, or 1 when a callback raised an error along the way (each
  error is logged with its file:line when it happens; the script goes on). An open
  Redis subscription is something to wait for; idle pooled database connections
  are not.

A Lua error in the script's top level (or a syntax error) prints the error with
file:line on stderr and exits 1. SIGINT/SIGTERM stop it with 130/143.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from eightys.config import Config
from eightys.log import setup_logging, user_traceback
from eightys.lua_runtime import LuaLoadError
from eightys.worker import Worker, _describe

#: How often the script checks whether anything is left to wait for (seconds).
IDLE_POLL = 0.01
#: Exit status of a script whose top level failed or whose callbacks raised errors.
EXIT_ERROR = 1


class Script(Worker):
    """A worker without a listener or a master: runs the entry script to its end."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, 0, None, None)
        self.log = logging.getLogger("script")
        #: Set by aio:quit(code) (and by signals): the exit status.
        self.exit_code: int | None = None
        #: Errors raised in callbacks (timers, coroutines, socket hooks) so far.
        self.errors = 0

    async def run(self) -> int:
        """Run the script and everything it started; return the exit status."""
        self._start_services()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._signalled, sig)
        try:
            try:
                self._load()
            except LuaLoadError as exc:
                print(f"eightys: error: {user_traceback(str(exc))}", file=sys.stderr)
                return EXIT_ERROR
            except Exception as exc:  # noqa: BLE001 - a failing -m module, reported as the server does
                print(f"eightys: error: {_describe(exc)}", file=sys.stderr)
                return EXIT_ERROR
            await self._until_done()
        finally:
            await self._close()
        if self.exit_code is not None:
            return self.exit_code
        return EXIT_ERROR if self.errors else 0

    async def _until_done(self) -> None:
        assert self.stopping is not None
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), IDLE_POLL)
                return
            except asyncio.TimeoutError:
                pass
            if self._idle():
                # a task that finished just now may still have its done-callbacks
                # queued (resolving a promise, which may start more work): let them run
                await asyncio.sleep(0)
                if self._idle():
                    return

    def _idle(self) -> bool:
        """Nothing left that could call back into Lua."""
        if self.timers.pending() or self.connections:
            return False
        me = asyncio.current_task()
        waiting = self.redis.idle_tasks() if self.redis is not None else set()
        if self.bus is not None:
            waiting |= self.bus.idle_tasks()
        return all(task is me or task in waiting for task in asyncio.all_tasks())

    async def _close(self) -> None:
        self.timers.cancel_all()
        for conn in list(self.connections.values()):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        for module in self.modules:
            module.unload(reload=False)
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.close_all(), 1.0)
            except asyncio.TimeoutError:
                self.log.warning("Redis connections still closing after 1 s; leaving them")
        if self.bus is not None:
            try:
                await asyncio.wait_for(self.bus.close(), 1.0)
            except asyncio.TimeoutError:
                self.log.warning("the Redis bus still closing after 1 s; leaving it")
        if self.mysql is not None:
            self.mysql.close_all()

    def _signalled(self, sig: int) -> None:
        if self.exit_code is None:
            self.exit_code = 128 + sig
        self.begin_shutdown()

    # -- what differs from a worker's net.* ---------------------------------------------

    def quit(self, code: Any = None, *args: Any) -> bool:
        """``aio:quit([code])``: end the script with exit status ``code`` (default 0;
        80s's ``net.quit(S80_RELOAD)`` is 0 too)."""
        if self.exit_code is None:
            # (LuaJIT numbers may arrive as floats; aio:quit checked the range)
            self.exit_code = int(code) if isinstance(code, (int, float)) \
                and not isinstance(code, bool) and 0 <= code <= 255 else 0
        self.begin_shutdown()
        return True

    def reload_all(self) -> Any:
        """``aio:reload()`` has nothing to reload in a script."""
        return False, b"a --cli script has no workers to reload"

    def mail(self, target: Any, message: Any = None, receiver_fd: Any = None,
             sender_fd: Any = None) -> Any:
        """``net.mail``: the script is worker 0 of 1, so mail to 0 or ``"*"`` comes
        back to it (on the next turn of the loop, as between workers)."""
        if target != b"*" and target != 0:
            return None, f"no worker {target!r} (a --cli script is worker 0 of 1)".encode()
        try:
            payload = self.runtime.to_python(message)
        except TypeError as exc:
            return None, f"cannot mail this value: {exc}".encode()
        runtime = self.runtime
        self.loop.call_soon(lambda: runtime.dispatch_message(
            0, sender_fd, receiver_fd, runtime.to_lua(payload)))
        return True

    def log_error(self, text: bytes) -> None:
        """A Lua error in a callback: logged with file:line; the exit status becomes 1."""
        self.errors += 1
        super().log_error(text)


def run(config: Config) -> int:
    """Run ``config.entry`` as a script; returns its exit status."""
    import uvloop

    setup_logging()
    return uvloop.run(Script(config).run())
