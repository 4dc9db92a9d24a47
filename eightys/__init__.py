"""eightys: serve Lua applications from multi-process uvloop workers, 80s-style."""

__version__ = "0.1.0"
