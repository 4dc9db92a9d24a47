"""Build step: compile the HTTP connection core with Cython when a compiler is there.

The typed Python in ``eightys/protocols/http_core.py`` and ``http.py`` stays the
source (Cython's pure-Python mode). Compiled, the per-request path runs as C; without
a compiler (or with ``EIGHTYS_PURE_PYTHON=1`` at install time) the same modules run
as plain Python and pass the same tests, only slower. Everything else is in
pyproject.toml.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The modules on the per-request hot path.
COMPILED = ["eightys/protocols/http_core.py", "eightys/protocols/stats.py",
            "eightys/lua_call.pyx", "eightys/protocols/llhttp.pyx",
            "eightys/protocols/sockwrite.pyx", "eightys/protocols/tcp_socket.pyx",
            "eightys/protocols/tls_socket.pyx",
            "eightys/protocols/http.py"]


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "run as Python"
            print(f"eightys: not compiling the HTTP core ({exc}); it runs as Python", file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"eightys: not compiling {ext.name} ({exc}); it runs as Python", file=sys.stderr)


def extensions() -> list:
    if os.environ.get("EIGHTYS_PURE_PYTHON"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    try:
        # annotations in the .py are for readers and mypy; the C types are in the .pxd
        return cythonize(COMPILED, language_level=3, quiet=True,
                         compiler_directives={"binding": False, "boundscheck": False,
                                              "wraparound": False, "annotation_typing": False})
    except Exception as exc:  # noqa: BLE001 - a Cython failure means "run as Python"
        print(f"eightys: not compiling the HTTP core ({exc}); it runs as Python", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
