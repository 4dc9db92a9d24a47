"""Browser live reload, in reload mode only (``--reload``).

Each worker keeps the browsers subscribed to ``/__eightys/livereload`` (a
Server-Sent Events stream) and tells them what the master decided after a reload
round: ``reload`` (refresh the page), ``css`` (swap the stylesheets) or ``failed``
(show the error over the page until a later reload works). HTML responses get a
small script that subscribes; nothing is injected or routed when reload mode is off.

``generation`` counts successful reloads and restarts (the master's number): a
page remembers the one it was rendered in, and a browser whose stream reconnects
to a worker of a later generation (a restart happened meanwhile) refreshes too.
"""

from __future__ import annotations

import gzip
import json
import re
from typing import Any, Protocol

from eightys.wire import SERVER_LINE, status_line

PATH = b"/__eightys/livereload"

_STREAM_HEAD = (status_line(200) + SERVER_LINE + b"Content-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")

_SCRIPT = """<script data-eightys-livereload>
(function () {
  var generation = %(generation)s, initial = %(error)s;
  var title = "the last change does not load, the previous code is still serving";
  // an error page of a template or Jinja page carries its error: shown the same way
  var marker = document.querySelector("template[data-eightys-error]");
  if (!initial && marker) {
    initial = marker.content.textContent;
    title = "this page failed; it reloads when you save a fix";
  }
  function overlay(text) {
    var box = document.getElementById("eightys-reload-error");
    if (!text) { if (box) box.remove(); return; }
    if (!box) {
      box = document.createElement("div");
      box.id = "eightys-reload-error";
      box.style.cssText = "position:fixed;inset:0;z-index:2147483647;overflow:auto;" +
        "background:rgba(24,24,27,.94);color:#fecaca;font:14px/1.5 ui-monospace,monospace;" +
        "padding:2rem;white-space:pre-wrap";
      document.body.appendChild(box);
    }
    box.textContent = "eightys: " + title + "\\n\\n" + text;
  }
  function start() {
    overlay(initial);
    var events = new EventSource("%(path)s");
    events.addEventListener("hello", function (e) {
      if (e.data !== String(generation)) location.reload();
    });
    events.addEventListener("reload", function () { location.reload(); });
    events.addEventListener("css", function () {
      overlay("");
      document.querySelectorAll('link[rel="stylesheet"]').forEach(function (link) {
        var url = new URL(link.href);
        url.searchParams.set("eightys", Date.now());
        link.href = url.href;
      });
    });
    events.addEventListener("failed", function (e) {
      title = "the last change does not load, the previous code is still serving";
      overlay(e.data);
    });
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
</script>
"""

# Lines end in CRLF: without \r? only a Content-Length on the head's last line matched,
# and static pages (whose length comes first) got no script.
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)[ \t]*\r?$")
_CONTENT_ENCODING = re.compile(rb"(?i)\r\ncontent-encoding:[^\r\n]*")
_VALIDATORS = re.compile(rb"(?i)\r\n(?:etag|last-modified):[^\r\n]*")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_event(event: str, data: str) -> bytes:
    """One Server-Sent Event (multi-line data becomes several ``data:`` lines)."""
    lines = "".join(f"data: {line}\n" for line in (data.splitlines() or [""]))
    return f"event: {event}\n{lines}\n".encode()


class StreamConnection(Protocol):
    """What live reload needs of an HTTP connection: a way to send (part of) the
    response to one of its requests."""

    def send(self, seq: int, data: bytes, final: bool) -> bool:
        """Send ``data`` for request ``seq`` (``final``: the response ends); False
        once the client is gone."""


class LiveReload:
    """One worker's live-reload state: subscribers, last error, generation."""

    def __init__(self) -> None:
        self.subscribers: list[tuple[StreamConnection, int]] = []
        self.error = ""  # the last reload's error while it is not fixed
        self.generation = "0"

    def script(self) -> bytes:
        """The snippet injected into HTML pages."""
        return (_SCRIPT % {"generation": json.dumps(self.generation),
                           "error": json.dumps(self.error), "path": PATH.decode()}).encode()

    def subscribe(self, conn: StreamConnection, seq: int) -> None:
        """Answer request ``seq`` on ``conn`` with an event stream that stays open."""
        conn.send(seq, _STREAM_HEAD + _chunk(b"retry: 500\n\n" + sse_event("hello", self.generation)),
                  False)
        self.subscribers.append((conn, seq))

    def notify(self, event: str, data: str, generation: Any = None) -> None:
        """Send ``event`` to every subscribed browser (``hello`` only updates state)."""
        if generation is not None:
            self.generation = str(generation)
        if event == "failed":
            self.error = data
        elif event in ("reload", "css"):
            self.error = ""
        if event == "hello":
            return
        payload = _chunk(sse_event(event, data))
        alive = []
        for conn, seq in self.subscribers:
            if conn.send(seq, payload, False):
                alive.append((conn, seq))
        self.subscribers = alive

    def close(self) -> None:
        """End every stream (the worker is stopping). A stream never ends by itself:
        it would hold the drain up for the whole grace period, and keep its browser
        on a worker that no longer gets news; ended, the browser reconnects at once."""
        for conn, seq in self.subscribers:
            conn.send(seq, b"0\r\n\r\n", True)
        self.subscribers = []

    def inject(self, response: bytes | None) -> bytes | None:
        """Add the script to a complete text/html response (Content-Length fixed up);
        anything else (other types, partial, chunked or empty bodies) passes unchanged.

        A gzipped page (a static .html file, for a browser) goes out decompressed, or
        it would never get the script. Its ETag and Last-Modified are dropped: the
        page holds the generation, and a 304 after a reload would bring back a copy
        with an older one, which reloads again, forever."""
        if not response:
            return response
        head_end = response.find(b"\r\n\r\n")
        if head_end == -1:
            return response
        head = response[:head_end]
        lower = head.lower()
        if b"\ncontent-type: text/html" not in lower or lower[9:12] == b"206":
            return response
        match = _CONTENT_LENGTH.search(head)
        if match is None or match.group(1) == b"0":
            return response  # nothing to add to (and a HEAD of an empty page looks the same)
        body = response[head_end + 4:]
        declared = int(match.group(1))
        if b"\ncontent-encoding:" in lower:
            # only a whole gzip body can be opened (a HEAD has none: left as it is)
            if b"\ncontent-encoding: gzip" not in lower or len(body) != declared:
                return response
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):  # a broken .gz sibling: sent as it is
                return response
            declared = len(body)
            head = _CONTENT_ENCODING.sub(b"", head)
        head = _VALIDATORS.sub(b"", head)
        match = _CONTENT_LENGTH.search(head)
        assert match is not None
        script = self.script()
        if len(body) == declared:
            at = body.rfind(b"</body>")
            body = body + script if at == -1 else body[:at] + script + body[at:]
        # else: a HEAD response: no body, but the length the GET body will have
        head = head[:match.start(1)] + b"%d" % (declared + len(script)) + head[match.end(1):]
        return head + b"\r\n\r\n" + body
