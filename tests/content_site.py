"""Fixture sites for tests/test_content.py, written into a temporary directory.

:func:`build_site` writes the main test site::

    <base>/main.lua             beside the root: run at start (globals, hooks, a route)
    <base>/secret.txt           outside the root: no request may ever read it
    <base>/public_html/...      the root (PUBLIC_HTML), files below in SITE_FILES
    <outside>/secret2.txt       a directory outside the root, linked from inside it

:func:`build_error_site` writes a site whose main.lua sits in the root and which
overrides the 404 and 500 error pages.

File contents are exact (no trailing newline unless written), so tests can
compare whole bodies.
"""

from __future__ import annotations

import gzip
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

#: Every secret file starts with this; no response body may contain it.
SECRET_MARK = "TOPSECRET"

MAIN_LUA = """\
-- run once per worker at start, before the site is scanned
MAIN_VALUE = "from-main"
HOOKS = { before = 0, after = 0, last = "" }

function on_before_http(method, endpoint, session)
    HOOKS.before = HOOKS.before + 1
    HOOKS.last = method .. " " .. endpoint
end

function on_after_http(method, endpoint, session)
    HOOKS.after = HOOKS.after + 1
end

httpd.immutable = { "static/vendor/" }

httpd:expose("site", { name = "Test <Site>", tags = { "a", "b" } })

aio:http_get("/lua-jinja", function(fd, query, headers, body)
    local page, err = httpd:render("i.jinja/render.j2.html",
        { title = "From Lua", items = { "x<y", "z" } })
    if not page then return fd:http_response(500, "text/plain; charset=utf-8", err) end
    fd:http_response(200, "text/html; charset=utf-8", page)
end)
"""

#: path below the root -> content (str written as UTF-8, bytes as is)
SITE_FILES: dict[str, str | bytes] = {
    # -- routing ------------------------------------------------------------------------
    "index.dyn.html": '<?lu write("root index %s", MAIN_VALUE) ?>',
    "about.html": "<p>about page</p>",
    "data.json": '{"ok": true}',
    "notes.txt": "plain notes",
    "report.dyn.csv": '<?lu write("a,b\\n") for i = 1, 2 do write("%d,%d\\n", i, i * i) end ?>',
    "part.priv.html": "root part",
    "helper.lua": "return 'lua source must never be served'",
    ".hidden.html": "hidden file",
    ".hiddendir/page.html": "hidden dir page",
    "notes.html~": "editor backup",
    ".notes.html.swp": "vim swap",
    "#notes.html#": "emacs autosave",
    "i.ignored/page.dyn.html": "ignored dir",
    "i.ignored/plain.html": "ignored dir plain",
    "i.jinja/render.j2.html": ("<h1>{{ title }}</h1>{% for item in items %}<li>{{ item }}</li>"
                               "{% endfor %}<p>{{ site.name }}</p>"),
    "docs/index.html": "docs index",
    "docs/guide.dyn.html": '<?lu write("guide %s", endpoint) ?>',
    "post.submit.dyn.html": '<?lu write("submitted %s", form.x) ?>',
    "put.item.dyn.html": '<?lu status(201) write("put %s", body) ?>',
    "delete.item.dyn.html": '<?lu write("deleted") ?>',
    "post.echo.dyn.html": '<?lu write("len=%d body=%s", #body, body) ?>',
    "post.create.dyn.html": ('<?lu status(201) header("Location", "/items/7") '
                             'header("X-Custom", "yes") write("created %s", form.name) ?>'),
    "post.form.dyn.html": """\
<?lu
| x=#[[form.x]];
local f = form.upload
if type(f) == "table" then
    | file=#[[f.filename]];type=#[[f.content_type]];size=#[[f.size]];sha=#[[codec.hex_encode(crypto.sha256(f.data))]]
end
?>""",
    "cookie.dyn.html": ('<?lu header("Set-Cookie", "theme=dark; Path=/") '
                        'session.user = "bob" write("user=%s", session.user) ?>'),
    "counter.dyn.html": '<?lu session.n = (session.n or 0) + 1 write("n=%d", session.n) ?>',
    "hooks.dyn.html": '<?lu write("%d/%d/%s", HOOKS.before, HOOKS.after, HOOKS.last) ?>',
    "hello.j2.html": ("<p>name={{ query.name }}</p><p>n={{ session.n }}</p>"
                      "<p>site={{ site.name }}</p><p>tags={{ site.tags | join(',') }}</p>"
                      "<p>method={{ method }}</p>"),
    "bad.j2.html": "<p>{{ 1 // 0 }}</p>",
    "edit.dyn.html": "v1 <?include edit_part.priv.html ?>",
    "edit_part.priv.html": "p1",
    # -- static -------------------------------------------------------------------------
    "static/raw.dyn.html": '<?lu write("never run") ?>',
    "static/ten.txt": "0123456789abcdefghij",
    "static/pre.css": "/* the identity version of pre.css */",
    # static/app.css, static/pre.css.gz and static/big.bin are written by build_site
    # -- templates ----------------------------------------------------------------------
    "t/lu.dyn.html": 'A<?lu write("B") ?>C<?lu local n = 2 * 21 write("%d", n) ?>',
    "t/lua.dyn.html": """\
<?lua
local t0 = net.clock()
await(aio:sleep(0.05))
write("slept=%s", tostring(net.clock() - t0 >= 0.04))
done()
?>;<?lu write("next") ?>""",
    "t/seq.dyn.html": (
        '<?lu locals.order = {} ?>'
        '<?lua await(aio:sleep(0.15)) locals.order[#locals.order + 1] = "slow" write("S") done() ?>'
        '<?lua await(aio:sleep(0.01)) locals.order[#locals.order + 1] = "fast" write("F") done() ?>'
        '<?lu post_render(function(page) return page .. "|" .. table.concat(locals.order, ",") end) ?>'
    ),
    "t/pipe.dyn.html": """\
<?lu
local name = "<World>"
| Hello, #[[name]]!
| pi=#[[math.pi:.2f]] n=#[[42:5d]] raw=#[[7]]
?>""",
    "t/span.dyn.html": """\
<?lu
local items = { "a&b", "c" }
```
<ul>
  <li>#[[items[1]]]</li>
  <li>#[[#items]] items, third=#[[1/3:.3f]]</li>
</ul>
```
?>""",
    "t/write.dyn.html": ('<?lu write("<b>raw</b>") write("[%s]", "<b>esc</b>") '
                         'write(escape("<i>&</i>")) write("[%d|%s]", 5, nil) ?>'),
    "t/ctx.dyn.html": """\
<?lu
| endpoint=#[[endpoint]];method=#[[method]];q=#[[query.q]];x=#[[headers["x-test"]]];
| e=#[[type(query.e)]];session=#[[type(session)]];locals=#[[type(locals)]];main=#[[MAIN_VALUE]]
?>""",
    "t/notfound.dyn.html": '<?lu status(404) write("custom missing") ?>',
    "t/redirect.dyn.html": '<?lu status("302 Found") header("Location", "/about") write("not shown") ?>',
    "t/post_render.dyn.html": ('<?lu post_render(function(page) return (page:gsub("world", "WORLD")) end) ?>'
                               "hello world"),
    "t/tourl.dyn.html": ('<?lu write(to_url("/t/secret", { msg = "hi there", n = 7 })) write(" ") '
                         'write(to_url("/t/secret", { msg = "plain", e = false })) ?>'),
    "t/secret.dyn.html": "<?lu | e.msg=#[[query.e.msg]];e.n=#[[query.e.n]];msg=#[[query.msg]] ?>",
    "t/other.dyn.html": "<?lu | other e.msg=#[[query.e.msg]] ?>",
    "t/inc.dyn.html": "[<?include parts/a.priv.html ?>]",
    "t/parts/a.priv.html": "A(<?include b.priv.html ?>)",
    "t/parts/b.priv.html": 'B<?lu write("%d", 1 + 1) ?>',
    "t/up.dyn.html": ('<?include ../part.priv.html ?>|<?include /part.priv.html ?>|'
                      '<?include "parts/b.priv.html" ?>'),
    "t/loop.dyn.html": "<?include loop_a.priv.html ?>",
    "t/loop_a.priv.html": "a<?include loop_b.priv.html ?>",
    "t/loop_b.priv.html": "b<?include loop_a.priv.html ?>",
    "t/missing_include.dyn.html": "<?include nothere.priv.html ?>",
    "t/runtime_error.dyn.html": """\
<p>before</p>
<?lu
local x = nil
local y = x.field -- MARK_RUNTIME
?>
""",
    "t/syntax_error.dyn.html": """\
<p>before</p>
<?lu
local = 1 -- MARK_SYNTAX
?>
""",
    "t/async_error.dyn.html": '<?lua await(aio:sleep(0.01)) error("late failure MARK_ASYNC") ?>',
}
SITE_FILES["t/parallel.dyn.html"] = "#! parallel\n" + str(SITE_FILES["t/seq.dyn.html"])

#: Larger than 1 KiB and compressible: gzipped on the fly.
APP_CSS = "".join(f".rule-{i} {{ color: #{i:06x}; margin: {i % 17}px; }}\n" for i in range(200))
#: What the pre-compressed sibling of static/pre.css decompresses to (distinguishable).
PRE_GZ_TEXT = "/* the PRE-COMPRESSED version of pre.css */"
#: Size of static/big.bin: more than 1 MiB, so it is streamed from disk.
BIG_SIZE = 1536 * 1024 + 7


@dataclass
class Site:
    base: Path  # the directory holding main.lua and the root
    root: Path  # PUBLIC_HTML
    secret: str  # content of the secret files outside the root
    secret_path: Path
    outside: Path  # a directory outside the root
    big: bytes  # static/big.bin


def _write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def build_site(base: Path) -> Site:
    """Write the main test site below ``base``."""
    root = base / "public_html"
    for rel, content in SITE_FILES.items():
        _write(root / rel, content)
    _write(base / "main.lua", MAIN_LUA)
    secret = f"{SECRET_MARK}-{secrets.token_hex(8)}"
    secret_path = base / "secret.txt"
    _write(secret_path, secret)
    outside = base.parent / f"{base.name}-outside"
    _write(outside / "secret2.txt", secret)
    _write(outside / "page.html", secret)
    _write(root / "static/app.css", APP_CSS)
    _write(root / "static/app.3f2a1c.css", "/* fingerprinted */")
    _write(root / "static/vendor/lib.js", "/* vendored */")
    _write(root / "static/edit.css", "body { color: red }")
    _write(root / "static/pre.css.gz", gzip.compress(PRE_GZ_TEXT.encode()))
    big = os.urandom(BIG_SIZE)
    _write(root / "static/big.bin", big)
    # symlinks from inside the root to outside it: a file and a directory, both
    # relative and absolute, in and out of static/
    os.symlink("../secret.txt", root / "leak.txt")
    os.symlink("../secret.txt", root / "leak.html")
    os.symlink(outside, root / "leakdir")
    os.symlink("../../secret.txt", root / "static/leak.css")
    os.symlink(outside, root / "static/leakdir")
    return Site(base, root, secret, secret_path, outside, big)


ERROR_SITE_FILES: dict[str, str] = {
    "main.lua": 'ROOT_MAIN = "main in root"\n',
    "index.dyn.html": "<?lu write(ROOT_MAIN) ?>",
    "boom.dyn.html": '<?lu error("kaboom") ?>',
    "errors/404.j2.html": "custom 404: {{ status }} {{ reason }}",
    "errors/500.j2.html": "custom 500: {{ status }} {{ reason }}",
}


def build_error_site(root: Path) -> Path:
    """Write the error-page site (main.lua in the root itself) into ``root``."""
    for rel, content in ERROR_SITE_FILES.items():
        _write(root / rel, content)
    return root
