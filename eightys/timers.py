"""Lua timers on the worker's event loop (``aio:set_timeout`` & co. build on these)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable


class Timers:
    """Timers that call Lua functions: ``start`` returns an id that ``cancel`` takes.

    ``call`` runs the Lua callback (the runtime's ``dispatch_call``, which logs
    errors instead of raising them into the loop).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, call: Callable[[Any], Any]) -> None:
        self._loop = loop
        self._call = call
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count(1)

    def start(self, delay: Any, callback: Any) -> int:
        """Call ``callback`` after ``delay`` seconds; returns the timer's id."""
        timer_id = next(self._ids)
        self._handles[timer_id] = self._loop.call_later(float(delay), self._fire,
                                                        timer_id, callback)
        return timer_id

    def _fire(self, timer_id: int, callback: Any) -> None:
        del self._handles[timer_id]
        self._call(callback)

    def pending(self) -> int:
        """How many timers are armed (a --cli script runs while any is)."""
        return len(self._handles)

    def cancel_all(self) -> None:
        """Cancel every pending timer (shutting down)."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def cancel(self, timer_id: Any) -> bool:
        """Cancel a pending timer; False if it already fired or never existed."""
        handle = self._handles.pop(timer_id, None)
        if handle is None:
            return False
        handle.cancel()
        return True
