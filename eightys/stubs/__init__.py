"""LuaLS type stubs (``---@meta`` files) for the eightys Lua API, shipped as package
data; ``eightys stubs DIR`` copies them out for an editor's Lua language server."""

from __future__ import annotations

import shutil
from pathlib import Path

STUBS_DIR = Path(__file__).parent

LUARC_HINT = '{ "workspace.library": ["%s"], "runtime.version": "LuaJIT" }'


def stub_files() -> list[Path]:
    """Every stub file shipped with the package."""
    return sorted(STUBS_DIR.glob("*.lua"))


def write_stubs(target: str | Path) -> list[Path]:
    """Copy the stubs into ``target`` (created if needed); returns the files written."""
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in stub_files():
        destination = directory / source.name
        shutil.copyfile(source, destination)
        written.append(destination)
    return written
