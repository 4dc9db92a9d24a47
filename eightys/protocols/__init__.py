"""Connection protocols, one per kind of connection a worker serves.

``http_core`` and ``http`` are compiled by Cython at install when a compiler is
there (see setup.py). With ``EIGHTYS_PURE_PYTHON=1`` in the environment their Python
source is imported instead, compiled or not, and the C-only parts (``llhttp``,
``eightys.lua_call``) are not used: that is how the tests prove the fallback behaves
the same.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

#: The modules setup.py compiles, in import order.
COMPILED = ("http_core", "http")


def _import_sources() -> None:
    for name in COMPILED:
        full = f"{__name__}.{name}"
        spec = importlib.util.spec_from_file_location(full, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)


if os.environ.get("EIGHTYS_PURE_PYTHON"):
    _import_sources()
