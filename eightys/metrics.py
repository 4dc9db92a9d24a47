"""Metrics: sampled in each worker, aggregated in the master, rendered for Prometheus.

Worker side, :class:`WorkerSampler`: every 100 ms a timer notes how late it ran
(the event-loop lag); every second it sends one ``STATS`` message to the master
over the control channel with the HTTP counters (``HttpStats.snapshot``), the
open connections by kind, the Lua errors since the last message and the largest
lag of the second. Nothing per request beyond what HttpStats counts.

Master side, :class:`MetricsHub`: keeps each worker process's last snapshot.
Counters stay monotonic across restarts: when a process ends, its last snapshot
is folded into its worker id's base (what it counted in its last second is
lost). RSS is read by the master from ``/proc/PID/statm`` when rendering.
:meth:`MetricsHub.render` gives the Prometheus text format (0.0.4);
:meth:`MetricsHub.tick` the once-a-second summary the dashboard shows.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import Any, Callable

from eightys.protocols.stats import LATENCY_BOUNDS_US

#: How often the worker's lag probe runs.
LAG_TICK = 0.1
#: Probes per STATS message (one a second).
TICKS_PER_REPORT = 10
#: Lua errors and reloads the dashboard keeps.
KEEP_EVENTS = 20
#: Longest Lua error text kept (the first lines carry file:line).
MAX_ERROR_TEXT = 2000
_PAGE = os.sysconf("SC_PAGE_SIZE")

#: Counters summed over a worker id's processes (each a number or a list).
COUNTERS = ("classes", "buckets", "latency_us", "bytes_in", "bytes_out", "lua_errors")


# -- worker side -------------------------------------------------------------------------


class WorkerSampler:
    """Sends this worker's numbers to the master once a second (module docstring)."""

    def __init__(self, stats: Any, connections: dict[int, Any],
                 send: Callable[..., None]) -> None:
        self.stats = stats
        self.connections = connections
        self.send = send
        self.lua_errors = 0
        self.new_errors: list[str] = []
        self.max_lag = 0.0
        self._ticks = 0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the lag probe and the reports."""
        self._loop = loop
        self._due = time.monotonic() + LAG_TICK
        loop.call_later(LAG_TICK, self._tick)

    def lua_error(self, text: str) -> None:
        """A Lua error was logged (shown to the user with its file:line)."""
        self.lua_errors += 1
        if len(self.new_errors) < KEEP_EVENTS:
            self.new_errors.append(text[:MAX_ERROR_TEXT])

    def _tick(self) -> None:
        now = time.monotonic()
        lag = now - self._due
        if lag > self.max_lag:
            self.max_lag = lag
        self._ticks += 1
        if self._ticks >= TICKS_PER_REPORT:
            self._ticks = 0
            self.report()
        self._due = time.monotonic() + LAG_TICK
        assert self._loop is not None
        self._loop.call_later(LAG_TICK, self._tick)

    def report(self) -> None:
        """Send one STATS message now."""
        from eightys import channel

        http = ws = 0
        for conn in self.connections.values():
            name = type(conn).__name__
            if name == "HttpProtocol":
                http += 1
            elif "WebSocket" in name or name.startswith("Ws"):
                ws += 1
        snapshot = self.stats.snapshot()
        snapshot.update(lua_errors=self.lua_errors, errors=self.new_errors,
                        open_http=http, open_ws=ws, lag=max(self.max_lag, 0.0))
        self.new_errors = []
        self.max_lag = 0.0
        self.send(channel.Kind.STATS, snapshot)


# -- master side -------------------------------------------------------------------------


def _empty() -> dict[str, Any]:
    return {"classes": [0] * 6, "buckets": [0] * (len(LATENCY_BOUNDS_US) + 1),
            "latency_us": 0, "bytes_in": 0, "bytes_out": 0, "lua_errors": 0}


def _add(total: dict[str, Any], snap: dict[str, Any]) -> None:
    for key in COUNTERS:
        value = snap.get(key, 0)
        if isinstance(value, list):
            target = total[key]
            for i, v in enumerate(value[:len(target)]):
                target[i] += v
        else:
            total[key] += value


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class MetricsHub:
    """The master's view of every worker's numbers (module docstring)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        #: pid -> (worker id, last snapshot)
        self.live: dict[int, tuple[int, dict[str, Any]]] = {}
        #: worker id -> counters of its processes that ended
        self.base: dict[int, dict[str, Any]] = {i: _empty() for i in range(workers)}
        self.restarts: dict[int, int] = {i: 0 for i in range(workers)}
        self.reloads = {"ok": 0, "failed": 0}
        self.reload_log: deque[dict[str, Any]] = deque(maxlen=KEEP_EVENTS)
        self.errors: deque[dict[str, Any]] = deque(maxlen=KEEP_EVENTS)
        self.started = time.time()
        self._previous: dict[int, tuple[float, dict[str, Any]]] = {}

    # -- events ---------------------------------------------------------------------------

    def update(self, worker_id: int, pid: int, snap: dict[str, Any]) -> None:
        """A STATS message from worker ``worker_id`` (process ``pid``)."""
        for text in snap.get("errors", ()):
            self.errors.append({"time": time.time(), "worker": worker_id, "text": text})
        self.live[pid] = (worker_id, snap)

    def ended(self, pid: int) -> None:
        """Process ``pid`` exited: keep its counters in its worker id's base."""
        entry = self.live.pop(pid, None)
        if entry is not None:
            _add(self.base.setdefault(entry[0], _empty()), entry[1])

    def restarted(self, worker_id: int) -> None:
        """The master restarts worker ``worker_id`` after it died."""
        self.restarts[worker_id] = self.restarts.get(worker_id, 0) + 1

    def reloaded(self, kind: str, error: str | None) -> None:
        """A reload round (or a rolling restart) finished."""
        self.reloads["failed" if error else "ok"] += 1
        self.reload_log.append({"time": time.time(), "kind": kind, "ok": not error,
                                "error": (error or "")[:MAX_ERROR_TEXT]})

    # -- reading --------------------------------------------------------------------------

    def totals(self, worker_id: int) -> dict[str, Any]:
        """Counters of worker ``worker_id`` over all its processes so far."""
        total = _empty()
        _add(total, self.base.get(worker_id, _empty()))
        for wid, snap in self.live.values():
            if wid == worker_id:
                _add(total, snap)
        return total

    def gauges(self, worker_id: int) -> dict[str, Any]:
        """Open connections, lag and RSS of worker ``worker_id``'s live processes."""
        found = {"open_http": 0, "open_ws": 0, "lag": 0.0, "rss": 0, "pids": []}
        for pid, (wid, snap) in self.live.items():
            if wid == worker_id:
                found["open_http"] += snap.get("open_http", 0)
                found["open_ws"] += snap.get("open_ws", 0)
                found["lag"] = max(found["lag"], snap.get("lag", 0.0))
                found["rss"] += rss_bytes(pid)
                found["pids"].append(pid)
        return found

    def render(self) -> str:
        """Everything in the Prometheus text exposition format."""
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        ids = range(self.workers)
        totals = {w: self.totals(w) for w in ids}
        gauges = {w: self.gauges(w) for w in ids}
        family("eightys_http_requests_total", "counter",
               "HTTP responses by worker and status class")
        for w in ids:
            for i, name in enumerate(("other", "1xx", "2xx", "3xx", "4xx", "5xx")):
                out.append(f'eightys_http_requests_total{{worker="{w}",code="{name}"}} '
                           f"{totals[w]['classes'][i]}")
        family("eightys_http_request_duration_seconds", "histogram",
               "Time from dispatch to the last piece of the response")
        for w in ids:
            buckets = totals[w]["buckets"]
            running = 0
            for bound, count in zip(LATENCY_BOUNDS_US, buckets):
                running += count
                out.append(f'eightys_http_request_duration_seconds_bucket{{worker="{w}",'
                           f'le="{bound / 1e6:g}"}} {running}')
            running += buckets[-1]
            out.append(f'eightys_http_request_duration_seconds_bucket{{worker="{w}",le="+Inf"}} '
                       f"{running}")
            out.append(f'eightys_http_request_duration_seconds_sum{{worker="{w}"}} '
                       f"{totals[w]['latency_us'] / 1e6:.6f}")
            out.append(f'eightys_http_request_duration_seconds_count{{worker="{w}"}} {running}')
        for key, name, text in (("bytes_in", "eightys_http_received_bytes_total",
                                 "Bytes read from HTTP clients"),
                                ("bytes_out", "eightys_http_sent_bytes_total",
                                 "Bytes of HTTP responses"),
                                ("lua_errors", "eightys_lua_errors_total",
                                 "Errors raised by Lua code (logged with file:line)")):
            family(name, "counter", text)
            for w in ids:
                out.append(f'{name}{{worker="{w}"}} {totals[w][key]}')
        family("eightys_open_connections", "gauge", "Open client connections by kind")
        for w in ids:
            out.append(f'eightys_open_connections{{worker="{w}",kind="http"}} '
                       f"{gauges[w]['open_http']}")
            out.append(f'eightys_open_connections{{worker="{w}",kind="websocket"}} '
                       f"{gauges[w]['open_ws']}")
        family("eightys_worker_rss_bytes", "gauge", "Resident memory of each worker")
        for w in ids:
            out.append(f'eightys_worker_rss_bytes{{worker="{w}"}} {gauges[w]["rss"]}')
        family("eightys_event_loop_lag_seconds", "gauge",
               "Largest event-loop delay in the last second")
        for w in ids:
            out.append(f'eightys_event_loop_lag_seconds{{worker="{w}"}} {gauges[w]["lag"]:.6f}')
        family("eightys_worker_restarts_total", "counter", "Workers restarted after they died")
        for w in ids:
            out.append(f'eightys_worker_restarts_total{{worker="{w}"}} {self.restarts.get(w, 0)}')
        family("eightys_reloads_total", "counter", "Code reloads by result")
        for result, count in self.reloads.items():
            out.append(f'eightys_reloads_total{{result="{result}"}} {count}')
        family("eightys_workers", "gauge", "Configured worker processes")
        out.append(f"eightys_workers {self.workers}")
        return "\n".join(out) + "\n"

    def tick(self) -> dict[str, Any]:
        """The dashboard's state now: per-worker rates since the previous call."""
        now = time.monotonic()
        workers = []
        for w in range(self.workers):
            total = self.totals(w)
            gauge = self.gauges(w)
            count = sum(total["classes"])
            previous = self._previous.get(w)
            rps = latency_ms = 0.0
            if previous is not None and now > previous[0]:
                dt = now - previous[0]
                before = previous[1]
                done = count - sum(before["classes"])
                rps = max(done, 0) / dt
                if done > 0:
                    latency_ms = (total["latency_us"] - before["latency_us"]) / done / 1000
            self._previous[w] = (now, total)
            workers.append({
                "id": w, "pids": gauge["pids"], "rps": round(rps, 1),
                "latency_ms": round(latency_ms, 3), "requests": count,
                "errors_5xx": total["classes"][5], "lua_errors": total["lua_errors"],
                "open_http": gauge["open_http"], "open_ws": gauge["open_ws"],
                "rss": gauge["rss"], "lag_ms": round(gauge["lag"] * 1000, 2),
                "restarts": self.restarts.get(w, 0),
                "bytes_in": total["bytes_in"], "bytes_out": total["bytes_out"],
            })
        return {"time": time.time(), "uptime": round(time.time() - self.started),
                "workers": workers, "reloads": list(self.reload_log),
                "errors": list(self.errors), "reload_counts": dict(self.reloads)}
