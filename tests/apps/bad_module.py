"""Test extension module (``-m tests/apps/bad_module.py``): its on_load raises, so
every worker fails to start and the server must exit non-zero, saying why."""

from typing import Any


def on_load(ctx: Any, params: dict[str, Any], reload: bool) -> None:
    raise RuntimeError("bad module on purpose")
