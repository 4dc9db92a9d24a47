"""Request bodies off the heap: large bodies go to a temporary file.

Like nginx's ``client_body_buffer_size``: a body up to ``--body-buffer-size``
bytes stays in memory; once it grows past that, what arrived so far and the rest
are written to a file in the worker's private directory (mode 0700, named after
the worker's pid), so 20 concurrent 16 MiB uploads cost the worker a buffer
each, not 320 MiB. The file is removed when the response to its request has
gone out (or the connection ends); the directory when the worker exits, and by
the master when a worker dies without cleaning up (:func:`remove_dirs_of`).

Writes are plain blocking ``write(2)``s of what one read brought (at most a
read's worth, 256 KiB), into the page cache: what nginx does too.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

PREFIX = "eightys-body-"


def make_dir(pid: int | None = None) -> str:
    """A private directory for one worker's body files (``eightys-body-PID-*``
    under ``$TMPDIR``, else /tmp)."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid() if pid is None else pid}-")


def remove_dir(path: str) -> None:
    """Remove a worker's body directory and whatever is left in it."""
    shutil.rmtree(path, ignore_errors=True)


def remove_dirs_of(pid: int) -> None:
    """Remove the body directories a worker ``pid`` left (it died without its
    clean-up). Called by the master after the worker's exit."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}{pid}-*")):
        remove_dir(path)


class SpoolFile:
    """One request body being written to (then read from) a temporary file."""

    __slots__ = ("path", "fd", "size")

    def __init__(self, directory: str) -> None:
        self.fd, self.path = tempfile.mkstemp(dir=directory, prefix="body-")
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` (raises OSError, e.g. a full disk)."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def finish(self) -> None:
        """The body is complete: close the writing end (the file stays)."""
        if self.fd != -1:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the file (the request ended). Never raises: an app may
        have moved the file away (os.rename) to keep it."""
        try:
            self.finish()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
