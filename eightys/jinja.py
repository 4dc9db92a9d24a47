"""Jinja2 pages for Lua apps: rendering, error pages, and Lua-to-Jinja values.

:class:`JinjaPages` owns one Jinja ``Environment`` per site: templates come from
the site root first, then from eightys' built-in directory (which holds the
error pages). Output is ``bytes`` (UTF-8), ready to be a response body.

Undefined values (the ``dev`` switch):

* production: ``ChainableUndefined``: a missing variable or attribute, however
  deep (``user.address.city``), renders as an empty string, so a page with a
  missing value still renders instead of becoming a 500;
* dev: :class:`DevUndefined`: the same, except that *printing* an undefined value
  (``{{ usr.name }}``) raises ``UndefinedError`` naming it, so typos show up on the
  dev error page. Tests stay lenient in both modes: ``{% if x %}``, ``{% for a in
  x %}``, ``x is defined`` and ``x | default(..)`` never raise, so templates need no
  dev-only guards (Jinja's ``StrictUndefined`` would make every ``{% if x %}`` on
  an optional value fail).

Data from Lua: ``LuaRuntime.to_python`` copies tables as dicts keyed exactly as in
Lua; :func:`lua_to_jinja` turns those into what templates expect (arrays ->
lists, bytes -> str). Lua *functions* cannot be copied (``to_python`` raises
TypeError): a main.lua should expose data, not closures, to templates. When a
template really needs to call into Lua, the glue can pass functions separately,
wrapped with :func:`lua_callable` (called synchronously, on the worker's thread).
"""

from __future__ import annotations

import http
import os
from pathlib import Path
from typing import Any, Callable

import jinja2
from jinja2 import ChainableUndefined, Environment, FileSystemLoader, TemplateError
from markupsafe import escape

__all__ = [
    "BUILTIN_TEMPLATES",
    "DevUndefined",
    "JinjaPages",
    "autoescape_for",
    "describe_error",
    "describe_lua_error",
    "lua_callable",
    "lua_to_jinja",
]

#: eightys' own templates (the error pages).
BUILTIN_TEMPLATES = str(Path(__file__).parent / "templates")
#: Lines shown before and after the failing one on the dev error page.
CONTEXT_LINES = 5

# Extensions autoescaped, also under a trailing template suffix (page.html.j2);
# "page.j2.html" already ends in .html.
_ESCAPED_EXTENSIONS = (".html", ".htm", ".xhtml", ".xml", ".svg")
_TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2")


def autoescape_for(name: str | None) -> bool:
    """Whether a template is autoescaped: HTML/XML/SVG files (``x.html``,
    ``x.j2.html``, ``x.html.j2``...) and templates made from strings (no name) are;
    others (``.txt``, ``.json``, ``.css``...) are not, since HTML escaping would
    corrupt them."""
    if name is None:
        return True
    lower = name.lower()
    for suffix in _TEMPLATE_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return lower.endswith(_ESCAPED_EXTENSIONS)


class DevUndefined(ChainableUndefined):
    """Dev-mode undefined: chainable and falsy like ``ChainableUndefined``, but
    printing it raises ``UndefinedError`` (see the module docstring)."""

    __slots__ = ()

    def __str__(self) -> str:
        self._fail_with_undefined_error()
        return ""  # not reached; keeps type checkers content
    # (ChainableUndefined.__html__, used by autoescaped output, calls __str__.)


def _environment(loader: jinja2.BaseLoader, undefined: type[jinja2.Undefined]) -> Environment:
    # auto_reload: each get_template() checks the file's mtime, so an edited
    # template is recompiled on the next request without a reload.
    return Environment(loader=loader, autoescape=autoescape_for, auto_reload=True,
                       undefined=undefined, keep_trailing_newline=True)


class SiteLoader(FileSystemLoader):
    """FileSystemLoader that refuses a site file ``allow(path)`` rejects (a symlink
    out of the site root), as if it did not exist; the built-in templates are
    always allowed."""

    def __init__(self, searchpath: list[str], allow: Callable[[str], bool] | None,
                 site_dir: str) -> None:
        super().__init__(searchpath)
        self.allow = allow
        self.site_dir = site_dir

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        source, filename, uptodate = super().get_source(environment, template)
        if self.allow is not None and filename.startswith(self.site_dir + os.sep) \
                and not self.allow(filename):
            raise jinja2.TemplateNotFound(template)
        return source, filename, uptodate


class JinjaPages:
    """The templates of one site.

    ``root`` is the site's template directory, searched before ``builtin_dir``
    (so a site can override ``errors/404.j2.html`` and friends); ``dev`` selects
    :class:`DevUndefined` and the default for the error pages' ``dev`` flag.
    """

    def __init__(self, root: str, *, dev: bool, builtin_dir: str = BUILTIN_TEMPLATES,
                 allow: Callable[[str], bool] | None = None) -> None:
        self.root = os.path.abspath(root)
        self.dev = dev
        self.builtin_dir = os.path.abspath(builtin_dir)
        self.env = _environment(SiteLoader([self.root, self.builtin_dir], allow, self.root),
                                DevUndefined if dev else ChainableUndefined)
        # Built-in error pages render in an environment of their own: a broken
        # site template (say errors/_layout.j2.html) can never break them, and a
        # missing context value never fails them.
        self.builtin_env = _environment(FileSystemLoader(self.builtin_dir), ChainableUndefined)

    def render(self, name: str, context: dict[str, Any]) -> bytes:
        """Render template ``name`` (a path below the root, ``/``-separated) as UTF-8.

        Raises ``jinja2.TemplateNotFound``, ``TemplateSyntaxError`` and
        ``UndefinedError`` (all ``jinja2.TemplateError``), or whatever a filter or
        call inside the template raises; :func:`describe_error` explains any of them.
        """
        return self.env.get_template(name).render(context).encode("utf-8")

    def render_error(self, status: int, context: dict[str, Any]) -> bytes:
        """The error page for ``status``; never raises.

        Looks for, in order: the site's ``errors/<status>.j2.html``, the site's
        ``errors/error.j2.html``, the built-in ``errors/<status>.j2.html``, the
        built-in ``errors/error.j2.html``. If a site page fails to render, the
        built-in one is used. The context gets ``status``, ``reason`` (the standard
        phrase) and ``dev`` (``self.dev``) unless it has them; the built-in 500 page
        shows ``details`` (a :func:`describe_error` dict) only when ``dev`` is true.
        """
        ctx: dict[str, Any] = {"status": status, "reason": _reason(status), "dev": self.dev}
        ctx.update(context)
        for name in (f"errors/{status}.j2.html", "errors/error.j2.html"):
            if os.path.isfile(os.path.join(self.root, name)):
                try:
                    return self.env.get_template(name).render(ctx).encode("utf-8")
                except Exception:
                    break  # a broken site error page: fall back to ours
        try:
            template = self.builtin_env.select_template(
                [f"errors/{status}.j2.html", "errors/error.j2.html"])
            return template.render(ctx).encode("utf-8")
        except Exception:
            # Only if the package's own templates are missing or broken.
            return b"<!doctype html><title>%d</title><h1>%d %s</h1>\n" % (
                status, status, str(escape(ctx["reason"])).encode("utf-8"))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# -- values from Lua ------------------------------------------------------------------


def lua_to_jinja(value: Any) -> Any:
    """Convert what ``LuaRuntime.to_python`` returns into template-friendly values.

    * a table whose keys are exactly the integers 1..n -> ``list`` (in order); an
      empty table -> ``[]`` (Lua cannot tell ``{}`` arrays and maps apart, and an
      empty list behaves like an empty map in templates: falsy, no iterations);
    * other tables -> ``dict``, bytes keys decoded to ``str`` (so ``user.name``
      works), integer-valued float keys -> ``int``;
    * ``bytes`` -> ``str`` (UTF-8, invalid bytes replaced);
    * numbers, booleans and None unchanged.

    Nesting is bounded by ``to_python`` (cycles cannot reach here).
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        if not value:
            return []
        n = len(value)
        keys = value.keys()
        if all(type(k) is int for k in keys) and min(keys) == 1 and max(keys) == n:
            # n distinct ints within 1..n: exactly 1..n
            return [lua_to_jinja(value[i]) for i in range(1, n + 1)]
        return {_key(k): lua_to_jinja(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [lua_to_jinja(v) for v in value]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    if type(key) is float and key.is_integer():
        return int(key)
    return key


def lua_callable(function: Any, to_python: Callable[[Any], Any]) -> Callable[..., Any]:
    """Wrap a Lua function so templates can call it: ``str`` arguments become
    bytes (the runtime uses ``encoding=None``), the first result comes back through
    ``to_python`` and :func:`lua_to_jinja`. The call runs synchronously; a Lua
    error surfaces as an exception from the template (and so on the error page)."""
    def call(*args: Any) -> Any:
        result = function(*(a.encode("utf-8") if isinstance(a, str) else a for a in args))
        if isinstance(result, tuple):  # several Lua results: keep the first
            result = result[0] if result else None
        return lua_to_jinja(to_python(result))

    return call


# -- describing errors ------------------------------------------------------------------


def _source_lines(source: str | None, line: int | None) -> list[dict[str, Any]]:
    """``{number, text, current}`` for the lines around ``line``."""
    if source is None or line is None:
        return []
    lines = source.splitlines()
    first = max(line - CONTEXT_LINES, 1)
    last = min(line + CONTEXT_LINES, len(lines))
    return [{"number": n, "text": lines[n - 1], "current": n == line}
            for n in range(first, last + 1)]


def _read_text(path: str | None) -> str | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _display(path: str | None, root: str | None) -> str | None:
    if path is None or root is None:
        return path
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def describe_error(exc: BaseException, root: str | None = None) -> dict[str, Any]:
    """What the dev error page shows about an exception raised by :meth:`JinjaPages.render`.

    Returns ``{"file", "line", "message", "source_lines"}``: for a syntax error the
    position Jinja reports; for an error while rendering (undefined values,
    exceptions from filters or calls) the innermost template frame of the
    traceback (Jinja rewrites frames to template file and line). ``file`` is shown
    relative to ``root`` when given and below it; ``source_lines`` holds
    ``{"number", "text", "current"}`` dicts around the line (empty when unknown).
    """
    if isinstance(exc, jinja2.TemplateSyntaxError):
        path = exc.filename
        source = exc.source if exc.source is not None else _read_text(path)
        return {"file": _display(path or exc.name, root), "line": exc.lineno,
                "message": exc.message or str(exc), "source_lines": _source_lines(source, exc.lineno)}
    if isinstance(exc, jinja2.TemplateNotFound):
        return {"file": exc.name, "line": None,
                "message": f"template not found: {exc.message or exc.name}", "source_lines": []}
    path: str | None = None
    line: int | None = None
    tb = exc.__traceback__
    while tb is not None:
        # Jinja's rewritten frames carry the exception in their globals.
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            path, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    message = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
    return {"file": _display(path, root), "line": line, "message": message,
            "source_lines": _source_lines(_read_text(path), line)}


def describe_lua_error(message: str, root: str | None = None) -> dict[str, Any]:
    """The same dict for a Lua error message (``path/file.lua:12: text``, as Lua
    and ``LuaLoadError`` report them): the first ``file:line:`` found locates the
    source lines; otherwise just the message."""
    head = message.splitlines()[0] if message else ""
    parts = head.split(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        path, line = parts[0].strip(), int(parts[1])
        full = path if root is None or os.path.isabs(path) else os.path.join(root, path)
        source = _read_text(full) if os.path.isfile(full) else _read_text(path)
        return {"file": path, "line": line, "message": message,
                "source_lines": _source_lines(source, line)}
    return {"file": None, "line": None, "message": message, "source_lines": []}
