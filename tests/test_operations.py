"""Production operations, with real processes: the access log (combined and JSON
lines, one per request, flushed within about a second, reopened on SIGUSR1 after
a rename), the Prometheus metrics served by the master (parsed with
prometheus_client's parser: counts across two workers, status classes, Lua
errors, restarts after a worker is killed) and the live dashboard in headless
Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import free_port, wait_until
from test_reload import chromium  # noqa: F401 - the headless Chromium fixture

APP = "tests/apps/http_app.lua"
#: Combined log format, then the request time (µs) and the worker id.
COMBINED = re.compile(
    r'^(?P<addr>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<method>[A-Z]+) (?P<url>\S+) (?P<proto>HTTP/1\.[01])" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" (?P<us>\d+) (?P<worker>\d+)$')


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection (so SO_REUSEPORT spreads them over workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- access log ------------------------------------------------------------------------------


def test_combined_access_log_one_line_per_request_flushed_within_a_second(start_server, tmp_path):
    log = tmp_path / "access.log"
    server = start_server(APP, "--access-log", str(log), workers=2)
    sent = []
    for i in range(20):
        path = f"/hello?i={i}" if i % 4 else "/nope"
        status, _ = get(server.port, path, {"User-Agent": 'test "agent"', "Referer": "http://x/"})
        sent.append((path, status))
    started = time.monotonic()
    wait_until(lambda: len(log_lines(log)) == 20, 3.0,
               message=lambda: f"20 lines in {log_lines(log)}")
    assert time.monotonic() - started < 2.5  # flushed once a second, not at exit
    parsed = []
    for line in log_lines(log):
        match = COMBINED.match(line)
        assert match, f"not a combined line: {line!r}"
        parsed.append(match)
    assert sorted((m["url"], int(m["status"])) for m in parsed) == sorted(sent)
    for m in parsed:
        assert m["addr"] == "127.0.0.1" and m["method"] == "GET" and m["proto"] == "HTTP/1.1"
        assert m["agent"] == r"test \x22agent\x22"  # quotes escaped as nginx does
        assert m["referer"] == "http://x/"
        assert int(m["us"]) < 5_000_000
        if m["status"] == "200":
            assert int(m["bytes"]) == len(b"world")  # body bytes, as %b
    assert {m["worker"] for m in parsed} <= {"0", "1"}
    # nothing more: one line per request
    time.sleep(1.2)
    assert len(log_lines(log)) == 20


def test_json_access_log_and_async_and_error_responses(start_server, tmp_path):
    log = tmp_path / "access.json"
    server = start_server(APP, "--access-log", str(log), "--access-log-format", "json",
                          workers=1)
    assert get(server.port, "/async")[0] == 200
    assert get(server.port, "/boom")[0] == 500
    wait_until(lambda: len(log_lines(log)) == 2, 3.0, message="two JSON lines")
    first, second = (json.loads(line) for line in log_lines(log))
    assert first["uri"] == "/async" and first["status"] == 200 and first["worker"] == 0
    assert first["request_time_us"] >= 10_000  # the handler sleeps before answering
    assert first["bytes_sent"] > first["body_bytes_sent"] > 0
    assert second["uri"] == "/boom" and second["status"] == 500
    assert set(first) >= {"time", "remote_addr", "method", "protocol", "user_agent", "referer"}


def test_sigusr1_reopens_the_log_after_a_rename(start_server, tmp_path):
    log = tmp_path / "access.log"
    server = start_server(APP, "--access-log", str(log), workers=2)
    get(server.port, "/hello?before")
    wait_until(lambda: len(log_lines(log)) == 1, 3.0, message="the first line")
    rotated = tmp_path / "access.log.1"
    os.rename(log, rotated)
    server.send_signal(signal.SIGUSR1)  # what logrotate's postrotate does
    wait_until(log.exists, 3.0, message="the reopened log file")
    for _ in range(6):
        get(server.port, "/hello?after")
    wait_until(lambda: len(log_lines(log)) == 6, 3.0, message="six lines in the new file")
    assert all("after" in line for line in log_lines(log))
    assert [line for line in log_lines(rotated)] and "before" in log_lines(rotated)[0]
    assert server.alive() and len(server.worker_pids()) == 2


def test_access_log_off_by_default_and_bad_path_is_a_usage_error(start_server, run_eightys,
                                                                  tmp_path):
    result = run_eightys(APP, "--access-log", str(tmp_path / "no" / "such" / "dir.log"))
    assert result.returncode == 2 and "--access-log" in result.stderr
    result = run_eightys(APP, "--metrics", "nope")
    assert result.returncode == 2 and "--metrics" in result.stderr


# -- metrics -----------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, list]:
    """name -> samples of /metrics, parsed by prometheus_client's reference parser."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = get(port, "/metrics")
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def total(families: dict[str, list], sample: str, **labels: str) -> float:
    name = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    for family in (name, sample):
        if family in families:
            break
    return sum(s.value for s in families.get(family, ()) if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def metrics_server(start_server):
    port = free_port()
    server = start_server(APP, "--metrics", str(port), workers=2)
    server.metrics_port = port
    return server


def test_metrics_count_the_requests_of_both_workers_by_status_class(metrics_server):
    server = metrics_server
    workers = set()
    for i in range(30):
        status, body = get(server.port, "/hello")
        assert status == 200
    for i in range(7):
        assert get(server.port, "/nope")[0] == 404
    for i in range(3):
        assert get(server.port, "/boom")[0] == 500

    def counted() -> dict | None:
        families = scrape(server.metrics_port)
        return families if total(families, "eightys_http_requests_total") == 40 else None

    families = wait_until(counted, 5.0, interval=0.3, message="40 requests counted")
    assert total(families, "eightys_http_requests_total", code="2xx") == 30
    assert total(families, "eightys_http_requests_total", code="4xx") == 7
    assert total(families, "eightys_http_requests_total", code="5xx") == 3
    for sample in families["eightys_http_requests"]:
        if sample.value:
            workers.add(sample.labels["worker"])
    assert workers == {"0", "1"}, "SO_REUSEPORT should spread 40 connections over both"
    assert total(families, "eightys_http_request_duration_seconds_count") == 40
    assert total(families, "eightys_http_request_duration_seconds_bucket", le="+Inf") == 40
    assert total(families, "eightys_lua_errors_total") == 3
    assert total(families, "eightys_http_sent_bytes_total") > 40 * 50
    assert total(families, "eightys_http_received_bytes_total") > 40 * 30
    rss = [s.value for s in families["eightys_worker_rss_bytes"]]
    assert len(rss) == 2 and all(v > 1_000_000 for v in rss)
    assert len(families["eightys_event_loop_lag_seconds"]) == 2
    assert total(families, "eightys_worker_restarts_total") == 0


def test_metrics_count_open_connections_and_restarts_and_stay_monotonic(metrics_server):
    server = metrics_server
    for _ in range(10):
        get(server.port, "/hello")
    wait_until(lambda: total(scrape(server.metrics_port), "eightys_http_requests_total") == 10,
               5.0, interval=0.3, message="10 requests counted")
    held = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=5) for _ in range(3)]
    try:
        for conn in held:
            conn.request("GET", "/hello")
            conn.getresponse().read()  # keep-alive: stays open
        wait_until(lambda: total(scrape(server.metrics_port), "eightys_open_connections",
                                 kind="http") >= 3, 5.0, interval=0.3, message="3 open")
    finally:
        for conn in held:
            conn.close()
    before = server.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(set(server.worker_pids()) - set(before)) == 1, 10.0,
               message="the replacement worker")

    def restarted() -> dict | None:
        families = scrape(server.metrics_port)
        return families if total(families, "eightys_worker_restarts_total") == 1 else None

    families = wait_until(restarted, 10.0, interval=0.3, message="the restart counted")
    # the dead worker's requests are still counted (at most its last second is lost,
    # and these were all counted before it was killed)
    assert total(families, "eightys_http_requests_total") == 13


def test_metrics_listener_refuses_what_it_does_not_serve(metrics_server):
    port = metrics_server.metrics_port
    assert get(port, "/nothing")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", "/metrics", body=b"x")
    assert conn.getresponse().status == 405
    conn.close()


# -- dashboard ---------------------------------------------------------------------------------


class Load:
    """Requests in a background thread until stopped."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stopped.is_set():
            try:
                conn.request("GET", "/hello")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            time.sleep(0.002)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def test_dashboard_in_chromium_shows_live_numbers(metrics_server, chromium, tmp_path):
    server = metrics_server
    get(server.port, "/boom")  # a Lua error for the page to show
    load = Load(server.port)
    try:
        chromium.call("Page.navigate", url=f"http://127.0.0.1:{server.metrics_port}/_eightys/")
        read = ("window.eightysState ? JSON.stringify([document.getElementById('total-rps')"
                ".textContent, [...document.querySelectorAll('#workers tbody tr')].map(r => "
                "r.children[4].textContent)]) : null")
        first = json.loads(wait_until(lambda: chromium.evaluate(read), 10.0,
                                      message="the dashboard's first state"))
        time.sleep(2.5)
        second = json.loads(chromium.evaluate(read))
        assert len(second[1]) == 2  # a row per worker
        assert second[1] != first[1], "the request counts should move while load runs"
        assert float(second[0].rstrip("k")) > 0
        errors = chromium.evaluate("document.getElementById('errors').textContent")
        assert "http_app.lua:" in errors and "boom from the handler" in errors
        shot = chromium.call("Page.captureScreenshot", format="png")
        assert len(shot["data"]) > 1000
    finally:
        load.stop()


def test_reloads_are_counted_and_logged_for_the_dashboard(metrics_server):
    server = metrics_server
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded", count=2)
    wait_until(lambda: total(scrape(server.metrics_port), "eightys_reloads_total",
                             result="ok") == 1, 5.0, interval=0.3, message="one reload counted")
    conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=5)
    conn.request("GET", "/_eightys/events")
    response = conn.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    state: dict = {}
    for _ in range(4):  # the first state may predate the reload by up to a second
        line = b""
        while not line.startswith(b"data: {"):
            line = response.fp.readline()
        state = json.loads(line[len(b"data: "):])
        if state["reloads"]:
            break
    conn.close()
    assert [r["kind"] for r in state["reloads"]] == ["reload"] and state["reloads"][0]["ok"]
    assert [w["id"] for w in state["workers"]] == [0, 1]
