"""Tests for eightys.jinja."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from eightys.jinja import (BUILTIN_TEMPLATES, JinjaPages, autoescape_for, describe_error,
                           describe_lua_error, lua_callable, lua_to_jinja)

EVIL = "<script>alert('x')</script>"


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pages(tmp_path: Path, dev: bool = False, **files: str) -> JinjaPages:
    for name, text in files.items():
        write(tmp_path, name.replace("__", "/"), text)
    return JinjaPages(str(tmp_path), dev=dev)


# -- rendering -------------------------------------------------------------------------


def test_render_context_to_utf8_bytes(tmp_path: Path) -> None:
    p = pages(tmp_path, **{"hello.j2.html": "Hi {{ name }}, {{ items|length }} items\n"})
    out = p.render("hello.j2.html", {"name": "Zoë", "items": [1, 2, 3]})
    assert out == "Hi Zoë, 3 items\n".encode()


@pytest.mark.parametrize("name, escaped", [
    ("page.html", True), ("page.htm", True), ("page.j2.html", True), ("page.html.j2", True),
    ("feed.xml", True), ("PAGE.HTML", True), ("notes.txt", False), ("data.json.j2", False),
])
def test_autoescape(tmp_path: Path, name: str, escaped: bool) -> None:
    p = pages(tmp_path, **{name: "{{ x }}|{{ x|safe }}"})
    out = p.render(name, {"x": EVIL}).decode()
    plain, safe = out.split("|")
    assert safe == EVIL
    assert (plain == "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") is escaped
    assert (plain == EVIL) is not escaped


def test_autoescape_for() -> None:
    assert autoescape_for(None) and autoescape_for("a/b.j2.html") and not autoescape_for("x.css")


def test_templates_reload_when_changed(tmp_path: Path) -> None:
    path = write(tmp_path, "page.j2.html", "one")
    p = JinjaPages(str(tmp_path), dev=False)
    assert p.render("page.j2.html", {}) == b"one"
    path.write_text("two")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # a visible mtime change
    assert p.render("page.j2.html", {}) == b"two"


def test_includes_and_inheritance_from_root(tmp_path: Path) -> None:
    p = pages(tmp_path, **{
        "base.j2.html": "<title>{% block title %}{% endblock %}</title>"
                        "{% include 'partials/nav.j2.html' %}",
        "partials__nav.j2.html": "<nav>{{ who }}</nav>",  # partials/nav.j2.html
        "page.j2.html": "{% extends 'base.j2.html' %}{% block title %}T{% endblock %}",
    })
    assert p.render("page.j2.html", {"who": "<b>"}) == b"<title>T</title><nav>&lt;b&gt;</nav>"


def test_undefined_in_production_is_empty(tmp_path: Path) -> None:
    p = pages(tmp_path, **{"p.j2.html": "[{{ missing }}|{{ user.address.city }}|{% if nope %}x{% endif %}]"})
    assert p.render("p.j2.html", {"user": {}}) == b"[||]"


def test_undefined_in_dev_raises_when_printed(tmp_path: Path) -> None:
    p = pages(tmp_path, dev=True, **{
        "lenient.j2.html": "{% if a %}x{% endif %}{% for i in b %}{{ i }}{% endfor %}"
                           "{{ c|default('d') }}{{ 'e' if f is defined else 'g' }}{{ h.i or 'j' }}",
        "strict.j2.html": "Hello {{ usr.name }}",
    })
    assert p.render("lenient.j2.html", {}) == b"dgj"
    with pytest.raises(jinja2.UndefinedError):
        p.render("strict.j2.html", {"user": {"name": "x"}})


def test_template_not_found(tmp_path: Path) -> None:
    with pytest.raises(jinja2.TemplateNotFound):
        pages(tmp_path).render("nope.j2.html", {})


# -- values from Lua -----------------------------------------------------------------------


def test_lua_to_jinja_shapes() -> None:
    value = {
        b"title": b"caf\xc3\xa9 \xff",
        b"items": {1: b"a", 2: {b"n": 1}, 3: {1: True, 2: 2.5}},
        b"holes": {1: b"a", 3: b"c"},
        b"zero": {0: b"z", 1: b"a"},
        b"gap": {0: b"z", 2: b"b"},
        b"empty": {},
        b"floaty": {1.0: b"x", 2.5: b"y"},
        7: None,
    }
    assert lua_to_jinja(value) == {
        "title": "café \ufffd",
        "items": ["a", {"n": 1}, [True, 2.5]],
        "holes": {1: "a", 3: "c"},
        "zero": {0: "z", 1: "a"},
        "gap": {0: "z", 2: "b"},
        "empty": [],
        "floaty": {1: "x", 2.5: "y"},
        7: None,
    }
    assert lua_to_jinja({True: b"t"}) == {True: "t"}  # a boolean key is not index 1


@pytest.mark.parametrize("engine", ["luajit", "lua54"])
def test_lua_table_into_a_template(tmp_path: Path, engine: str) -> None:
    from luahost import LuaHost

    p = pages(tmp_path, **{"list.j2.html": "{{ title }}:{% for it in items %}<{{ it.name }}>{% endfor %}"
                                         ":{{ meta.count }}"})
    with LuaHost(engine) as host:
        rt = host.runtime
        table = rt.execute("return {title = 'T&C', items = {{name = 'a'}, {name = 'b'}}, meta = {count = 2}}")
        out = p.render("list.j2.html", lua_to_jinja(rt.to_python(table)))
    assert out == b"T&amp;C:<a><b>:2"  # the value escaped, the template text not


def test_lua_callable(tmp_path: Path) -> None:
    from luahost import LuaHost

    p = pages(tmp_path, **{"f.j2.html": "{{ up('abc') }} {{ pair('x')|join(',') }}"})
    with LuaHost("lua54") as host:
        rt = host.runtime
        up = rt.execute("return function(s) return s:upper(), 'ignored' end")
        pair = rt.execute("return function(s) return {s, s .. s} end")
        ctx = {"up": lua_callable(up, rt.to_python), "pair": lua_callable(pair, rt.to_python)}
        assert p.render("f.j2.html", ctx) == b"ABC x,xx"


# -- error pages ------------------------------------------------------------------------------


def test_builtin_templates_are_shipped() -> None:
    for name in ("404.j2.html", "500.j2.html", "error.j2.html"):
        assert (Path(BUILTIN_TEMPLATES) / "errors" / name).is_file()


def test_builtin_404(tmp_path: Path) -> None:
    out = pages(tmp_path).render_error(404, {"path": "/a<b>"}).decode()
    assert "<!doctype html>" in out and "404" in out and "Not Found" in out
    assert "/a&lt;b&gt;" in out


def test_builtin_generic_error(tmp_path: Path) -> None:
    out = pages(tmp_path).render_error(503, {"message": "back <soon>"}).decode()
    assert "503" in out and "Service Unavailable" in out and "back &lt;soon&gt;" in out
    assert "I&#39;m a Teapot" in pages(tmp_path).render_error(418, {}).decode()


def test_site_error_page_overrides(tmp_path: Path) -> None:
    p = pages(tmp_path, **{"errors__404.j2.html": "site 404 {{ status }} {{ reason }} {{ path }}"})
    assert p.render_error(404, {"path": "/x"}) == b"site 404 404 Not Found /x"
    assert b"site" not in p.render_error(500, {})


def test_site_generic_error_page_before_builtin_specific(tmp_path: Path) -> None:
    p = pages(tmp_path, **{"errors__error.j2.html": "site generic {{ status }}"})
    assert p.render_error(404, {}) == b"site generic 404"
    assert p.render_error(500, {}) == b"site generic 500"


def test_broken_site_error_page_falls_back(tmp_path: Path) -> None:
    p = pages(tmp_path, dev=True, **{"errors__404.j2.html": "{% if %}",
                                     "errors__500.j2.html": "{{ nothing.here }}"})
    assert b"Not Found" in p.render_error(404, {})
    assert b"Internal Server Error" in p.render_error(500, {})


def _failing(tmp_path: Path) -> tuple[JinjaPages, BaseException]:
    p = pages(tmp_path, dev=True, **{"bad.j2.html": "line 1\nline 2\n{{ user.nmae }}\nline 4\n"})
    with pytest.raises(jinja2.UndefinedError) as info:
        p.render("bad.j2.html", {"user": {"name": "x"}})
    return p, info.value


def test_500_details_only_in_dev(tmp_path: Path) -> None:
    p, exc = _failing(tmp_path)
    details = describe_error(exc, p.root)
    dev = p.render_error(500, {"dev": True, "details": details}).decode()
    assert "bad.j2.html:3" in dev and "nmae" in dev
    assert '<span class="current"><b>3 &gt;</b>{{ user.nmae }}</span>' in dev
    assert "<b>2</b>line 2" in dev
    prod = p.render_error(500, {"dev": False, "details": details}).decode()
    assert "bad.j2.html" not in prod and "nmae" not in prod and "line 2" not in prod
    # without "dev" in the context, the JinjaPages' own flag decides
    assert "bad.j2.html" in p.render_error(500, {"details": details}).decode()
    assert "bad.j2.html" not in JinjaPages(p.root, dev=False).render_error(
        500, {"details": details}).decode()


# -- describe_error -------------------------------------------------------------------------------


def test_describe_undefined_error(tmp_path: Path) -> None:
    p, exc = _failing(tmp_path)
    d = describe_error(exc, p.root)
    assert (d["file"], d["line"]) == ("bad.j2.html", 3)
    assert "nmae" in d["message"]
    assert [(l["number"], l["current"]) for l in d["source_lines"]] == [
        (1, False), (2, False), (3, True), (4, False)]
    assert d["source_lines"][2]["text"] == "{{ user.nmae }}"


def test_describe_syntax_error(tmp_path: Path) -> None:
    text = "\n".join(f"line {n}" for n in range(1, 12)) + "\n{% for x in %}\n" + "tail\n" * 10
    p = pages(tmp_path, **{"syn.j2.html": text})
    with pytest.raises(jinja2.TemplateSyntaxError) as info:
        p.render("syn.j2.html", {})
    d = describe_error(info.value, p.root)
    assert (d["file"], d["line"]) == ("syn.j2.html", 12)
    numbers = [l["number"] for l in d["source_lines"]]
    assert numbers == list(range(7, 18))  # five lines either side
    assert [l["text"] for l in d["source_lines"] if l["current"]] == ["{% for x in %}"]


def test_describe_error_in_an_included_template(tmp_path: Path) -> None:
    p = pages(tmp_path, **{"outer.j2.html": "a\n{% include 'inner.j2.html' %}\n",
                           "inner.j2.html": "x\ny\n{{ 1 // zero }}\n"})
    with pytest.raises(ZeroDivisionError) as info:
        p.render("outer.j2.html", {"zero": 0})
    d = describe_error(info.value, p.root)
    assert (d["file"], d["line"]) == ("inner.j2.html", 3)
    assert d["message"].startswith("ZeroDivisionError")


def test_describe_template_not_found(tmp_path: Path) -> None:
    with pytest.raises(jinja2.TemplateNotFound) as info:
        pages(tmp_path).render("missing.j2.html", {})
    d = describe_error(info.value)
    assert d["line"] is None and "missing.j2.html" in d["message"] and d["source_lines"] == []


def test_describe_lua_error(tmp_path: Path) -> None:
    write(tmp_path, "app/main.lua", "local a = 1\nlocal b = 2\nerror('boom')\n")
    d = describe_lua_error("app/main.lua:3: boom\nstack traceback:\n...", str(tmp_path))
    assert (d["file"], d["line"]) == ("app/main.lua", 3)
    assert [l["text"] for l in d["source_lines"] if l["current"]] == ["error('boom')"]
    assert describe_lua_error("just a message")["line"] is None
