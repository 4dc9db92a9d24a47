"""Instructions per request that --metrics and --access-log add to the HTTP adapter,
load-independent (callgrind):

    for n in 2000 22000; do valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \
        .venv/bin/python scripts/stats_cost.py metrics $n; done

MODE is off, metrics or log; the difference between the totals of two request
counts, divided by the difference of the counts, is the cost of one request (the
start-up cancels out). The request goes through httptools, the compiled adapter and
a dispatcher returning a fixed response (no Lua): README, "Metrics", has the figures.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import asyncio
from eightys.protocols.host import ConnectionHost
from eightys.protocols.http_core import HttpLimits
from eightys.protocols.http import HttpProtocol
from eightys.protocols.stats import HttpStats
from eightys.access_log import AccessLog
import logging
mode, n = sys.argv[1], int(sys.argv[2])
loop = asyncio.new_event_loop()
host = ConnectionHost(loop, HttpLimits(), logging.getLogger("x"))
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n\r\nHi, Abcde!"
host.dispatch_http = lambda *a: RESP
if mode in ("metrics", "both"):
    log = AccessLog("/dev/null", "combined", 0) if mode == "both" else None
    host.stats = HttpStats(log.record if log else None, log.forget if log else None)
elif mode == "log":
    log = AccessLog("/dev/null", "combined", 0)
    host.stats = HttpStats(log.record, log.forget)
class T:
    def write(self, d): pass
    def get_extra_info(self, k): return ("127.0.0.1", 5555)
    def close(self): pass
    def set_write_buffer_limits(self, **k): pass
    def get_write_buffer_size(self): return 0
    def is_closing(self): return False
    def pause_reading(self): pass
    def resume_reading(self): pass
p = HttpProtocol(host, 1)
p.connection_made(T())
REQ = b"GET /echo?name=Abcde HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nConnection: keep-alive\r\n\r\n"
for _ in range(n):
    p.data_received(REQ)
