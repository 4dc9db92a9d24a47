-- eightys/lua/eightys/templates.lua: the `.dyn.` template engine.
--
-- Fixture files are under tests/templates/ (read through the default reader);
-- short templates are given inline through an injected reader (`page`). Error
-- messages name fixture files relative to tests/templates/ (opts.chunkname),
-- so the expected strings do not depend on where the tests run from.

local templates = require("eightys.templates")

local T = {}

local HERE = debug.getinfo(1, "S").source:match("^@(.-)lua/[^/]*$") -- ".../tests/"
local DIR = HERE .. "templates/"
local LUAJIT = jit ~= nil

local function short(path)
    return path:sub(#DIR + 1)
end

local function read(path)
    local f = assert(io.open(path, "rb"))
    local text = f:read("*a")
    f:close()
    return text
end

--- Compile the fixture tests/templates/<name>.
local function fixture(name, opts)
    opts = opts or {}
    opts.chunkname = opts.chunkname or short
    return templates.compile(DIR .. name, opts)
end

--- Compile `text` as "page.html" (plus any other virtual files).
local function page(text, files, opts)
    files = files or {}
    files["page.html"] = text
    opts = opts or {}
    opts.read = function(path)
        if files[path] then return files[path] end
        return nil, "no file " .. path
    end
    return templates.compile("page.html", opts)
end

--- Compile and render `text`; returns render's results.
local function render(text, ctx, files, opts)
    local tpl, err = page(text, files, opts)
    if not tpl then return nil, "compile: " .. err end
    return tpl:render(ctx)
end

---------------------------------------------------------------------------
-- Text and blocks
---------------------------------------------------------------------------

function T.literal_text_passes_through_byte_for_byte(t)
    local tpl = assert(fixture("literal.html"))
    local body, err = tpl:render()
    t.eq(err, nil, "error")
    t.eq(body, read(DIR .. "literal.html"), "same bytes as the file")
    t.eq(body, '<?xml version="1.0"?>\n<!-- <?lu?> <?luax x ?> <?lua?> <?php echo 1; ?> -->\n'
        .. "%d %% 100% ]] [[ ]=] #[[x]] ``` | not code\r\n\ttab  trailing  \n\n"
        .. "\\n \"quoted\" 'single'\n?> no end", "exact text")
    t.eq(tpl.deps, { DIR .. "literal.html" }, "deps")
    t.eq(tpl.parallel, false, "not parallel")
    tpl = assert(fixture("errors/./../literal.html"))
    t.eq(tpl.deps, { DIR .. "literal.html" }, "a normalised path")
end

function T.text_around_blocks_is_kept_exactly(t)
    t.eq(render(" a \n\t<?lu write('x') ?> \n <?lua\nwrite('y')\ndone()\n?>\r\n\n end "),
        " a \n\tx \n y\r\n\n end ")
    t.eq(render("<?lu ?><?lua done() ?>"), "", "empty blocks")
    t.eq(render("<?lu\twrite(1)\n?><?lu\nwrite(2)?><?lua\r\nwrite(3) done()?>"), "123", "any whitespace after lu/lua")
end

function T.lu_is_synchronous_and_lua_waits_for_done(t)
    local start = net.clock()
    local body, err = render(
        "<?lu write('sync') ?>|" ..
        "<?lua aio:set_timeout(function() write('timer') done() end, 0.03) ?>|" ..
        "<?lua write('now') done() ?>")
    t.eq(err, nil, "error")
    t.eq(body, "sync|timer|now", "the lua block's text, written from a timer after it returned")
    t.ok(net.clock() - start >= 0.025, "render waited for done()")
end

function T.done_semantics(t)
    local body = render(
        "<?lu write('a') done() write('b') done() ?>|" ..      -- early done in lu: the rest is dropped
        "<?lua write('c') done() write('d') done() ?>|" ..     -- second done is harmless
        "<?lua aio:set_timeout(function() write('e') done() write('f') done() end, 0.01) ?>|" ..
        "<?lu write('g') ?>")
    t.eq(body, "a|c|e|g")
end

function T.blocks_run_sequentially_in_document_order(t)
    local locals = { order = {} }
    local body, err = render([==[
<?lua
  locals.order[#locals.order + 1] = "async start"
  await(aio:sleep(0.02))
  write("A")
  locals.order[#locals.order + 1] = "async done"
  done()
?>|<?lu locals.order[#locals.order + 1] = "sync"; write("S") ?>|<?lua
  locals.order[#locals.order + 1] = "second async"
  write("B") done()
?>]==], { locals = locals })
    t.eq(err, nil, "error")
    t.eq(body, "A|S|B")
    t.eq(locals.order, { "async start", "async done", "sync", "second async" }, "order of execution")
end

function T.next_block_starts_at_done_not_at_return(t)
    local locals = { order = {} }
    local body = render([==[
<?lua write("1") done()
  await(aio:sleep(0.02))
  locals.order[#locals.order + 1] = "first block, after done"
  write("ignored")
?><?lu locals.order[#locals.order + 1] = "second block" write("2") ?>]==], { locals = locals })
    t.eq(body, "12", "page")
    t.eq(locals.order, { "second block" }, "second block ran while the first still awaited")
    aio:await(aio:sleep(0.04))
    t.eq(locals.order, { "second block", "first block, after done" }, "first block finished later")
end

function T.a_pending_async_block_says_what_the_request_waits_on(t)
    local req = {}
    local seen = {}
    local tpl = assert(page("a\n<?lu locals.x = 1 ?>\n<?lua\n"
        .. "seen[1] = req.waiting_on await(aio:sleep(0.01)) seen[2] = req.waiting_on done()\n"
        .. "seen[3] = req.waiting_on ?>b", nil, { params = { "seen", "req" } }))
    local body, err = tpl:render({ fd = req, extra = { seen = seen, req = req } })
    t.eq(err, nil, "error")
    t.eq(body, "a\n\nb")
    t.eq(seen[1], "<?lua ?> block at page.html:3 never called done()", "while the block runs")
    t.eq(seen[2], seen[1], "after an await")
    t.eq(seen[3], nil, "after done()")
    t.eq(req.waiting_on, nil, "after the page")
    -- a synchronous page never touches the request
    req.waiting_on = "something else"
    t.eq(render("<?lu write(1) ?>", { fd = req }), "1")
    t.eq(req.waiting_on, "something else")
end

---------------------------------------------------------------------------
-- #! parallel
---------------------------------------------------------------------------

local SLOW_BLOCKS = '<?lua await(aio:sleep(0.1)) write("A") done() ?>|<?lua await(aio:sleep(0.1)) write("B") done() ?>'

function T.parallel_blocks_run_concurrently(t)
    local tpl = assert(page("#! parallel\n" .. SLOW_BLOCKS))
    t.eq(tpl.parallel, true, "parallel")
    local start = net.clock()
    local body, err = tpl:render()
    local elapsed = net.clock() - start
    t.eq(err, nil, "error")
    t.eq(body, "A|B", "page without the #! parallel line")
    t.ok(elapsed < 0.18, "two 0.1 s blocks in " .. elapsed .. " s")
end

function T.without_parallel_the_same_blocks_take_twice_as_long(t)
    local tpl = assert(page(SLOW_BLOCKS))
    t.eq(tpl.parallel, false, "sequential")
    local start = net.clock()
    t.eq(tpl:render(), "A|B", "page")
    local elapsed = net.clock() - start
    t.ok(elapsed >= 0.19, "two 0.1 s blocks in " .. elapsed .. " s")
end

function T.parallel_from_an_include_at_the_top(t)
    local tpl = assert(fixture("parallel_top.html"))
    t.eq(tpl.parallel, true, "parallel after include resolution")
    local start = net.clock()
    local body, err = tpl:render()
    t.eq(err, nil, "error")
    t.eq(body, "<title>x</title>\nA|B\n", "page")
    t.ok(net.clock() - start < 0.18, "concurrent")
end

function T.parallel_output_keeps_document_order(t)
    local locals = { order = {} }
    local body = render([==[
#! parallel
<?lua await(aio:sleep(0.03)) locals.order[#locals.order + 1] = 1 write("1") done() ?>,<?lua
locals.order[#locals.order + 1] = 2 write("2") done() ?>,<?lu locals.order[#locals.order + 1] = 3 write("3") ?>]==],
        { locals = locals })
    t.eq(body, "1,2,3", "page")
    t.eq(locals.order, { 2, 3, 1 }, "completion order")
end

function T.parallel_marker_only_counts_on_the_first_line(t)
    local tpl = assert(page("\n#! parallel\n<?lu write('x') ?>"))
    t.eq(tpl.parallel, false, "not parallel")
    t.eq(tpl:render(), "\n#! parallel\nx", "the line is text")
    tpl = assert(page("#!  parallel  \r\n<?lu write('x') ?>"))
    t.eq(tpl.parallel, true, "blanks and CRLF")
    t.eq(tpl:render(), "x", "marker line dropped")
end

function T.error_in_a_parallel_block_ends_the_render(t)
    local start = net.clock()
    local body, err = render([==[
#! parallel
<?lua await(aio:sleep(0.01)) error("parallel failure") ?>
<?lua write("this block never calls done") ?>
<?lua await(aio:sleep(0.5)) done() ?>]==])
    t.eq(body, nil, "no page")
    t.eq(err, 'page.html:2: parallel failure\n    2 | <?lua await(aio:sleep(0.01)) error("parallel failure") ?>')
    t.ok(net.clock() - start < 0.3, "did not wait for the slow block")
    body, err = render('#! parallel\n<?lua await(aio:sleep(0.01)) done() ?><?lu error("sync failure") ?>')
    t.eq(err, 'page.html:2: sync failure\n    2 | <?lua await(aio:sleep(0.01)) done() ?><?lu error("sync failure") ?>',
        "a failing lu block")
end

---------------------------------------------------------------------------
-- `| ` lines, ``` spans, #[[...]]
---------------------------------------------------------------------------

function T.pipe_lines_write_their_text(t)
    local body, err = render([==[
<?lu
  | <b>
|   #[[locals.a]] and #[[locals.b]]
	|	</b>
  local x = "a | b"
  | after code #[[x]]
?>]==], { locals = { a = "x", b = 2 } })
    t.eq(err, nil, "error")
    t.eq(body, "<b>x and 2</b>after code a | b")
    t.eq(render("<?lu | one-liner #[[1]] ?>"), "one-liner 1", "| on the block's first line; trailing blanks trimmed")
end

function T.backtick_spans_across_lines(t)
    local body, err = render([==[
<?lu
  ```
    <p>
      #[[ "<i>" ]]   and
      #[[ 1 +
          1 ]]
    </p>
  ```
  for i = 1, 3 do ```<li>#[[i]]</li>``` end
  ```no args```
?>]==])
    t.eq(err, nil, "error")
    t.eq(body, "<p>&lt;i&gt;   and2</p><li>1</li><li>2</li><li>3</li>no args")
end

function T.argument_formats_are_applied(t)
    local locals = { obj = { name = function(self) return self.n end, n = "N" }, t = { "one", "two" }, k = { 2 } }
    local body, err = render([==[
<?lu
| #[[math.pi:.3f]] #[[42:05d]] #[[255:x]] #[[ -3.14159:+.1f ]] #[["a<b":s]] #[[ "]]:" .. "x" ]]
```
#[[locals.obj:name()]] #[[locals.t[locals.k[1]]]] #[[ 7 :3d ]]
```
?>]==], { locals = locals })
    t.eq(err, nil, "error")
    t.eq(body, "3.142 00042 ff -3.1 a&lt;b ]]:xN two   7")
end

function T.percent_signs_survive(t)
    local body, err = render([==[
<?lu
| 100% sure, #[[5]]% done;
| 50% plain;
write("%d%%;", 5)
```10% #[[5]]%%```
?>]==])
    t.eq(err, nil, "error")
    t.eq(body, "100% sure, 5% done;50% plain;5%;10% 5%%")
end

function T.any_text_is_emitted_safely(t)
    local body, err = render([==[
<?lu
| a ]] b "q" \ 'c' [[ x ]=] \n	#[[5]] ]]
| "); error("injected") --
```]]
"\"
[=[ %s #[[ "]]" ]] ]=]```
?>]==])
    t.eq(err, nil, "error")
    t.eq(body, 'a ]] b "q" \\ \'c\' [[ x ]=] \\n\t5 ]]"); error("injected") --]]"\\"[=[ %s ]] ]=]')
end

---------------------------------------------------------------------------
-- write and escape
---------------------------------------------------------------------------

function T.write_escapes_arguments_but_not_a_lone_text(t)
    local body, err = render([==[
<?lu
write("%s|%s|%s|%s|%s|%s|", "<a href='x'>&\"", 42, true, nil, { "<" }, 1.5)
write("<b>raw</b>|")
write({ 1, "<" })
write(nil)
write(7)
| |#[[ "<i>" ]]|#[[ { a = 1 } ]]|
write(escape("<&>") .. "|" .. escape(nil) .. "|" .. escape(3) .. "|" .. escape({ "'" }))
?>]==])
    t.eq(err, nil, "error")
    t.eq(body, "&lt;a href=&#39;x&#39;&gt;&amp;&quot;|42|true||[&quot;&lt;&quot;]|1.5|"
        .. '<b>raw</b>|[1,"<"]7|&lt;i&gt;|{&quot;a&quot;:1}|'
        .. "&lt;&amp;&gt;||3|[&quot;&#39;&quot;]")
end

---------------------------------------------------------------------------
-- Includes
---------------------------------------------------------------------------

function T.includes_relative_nested_and_from_root(t)
    local tpl, err = fixture("includes/page.html", { root = DIR })
    t.eq(err, nil, "compile error")
    local body
    body, err = tpl:render({ endpoint = "/x" })
    t.eq(err, nil, "render error")
    t.eq(body, "<h1>Title /x</h1>\n<ul><li>1</li><li>2</li></ul>|abs|Title /x\n")
    t.eq(tpl.deps, {
        DIR .. "includes/page.html", DIR .. "includes/parts/title.html",
        DIR .. "includes/parts/list.html", DIR .. "includes/shared/item.html",
        DIR .. "includes/parts/abs.html",
    }, "deps")
end

function T.absolute_includes_without_and_with_root(t)
    local asked = {}
    local function reader(path)
        asked[#asked + 1] = path
        if path == "/site/page.html" then return "<?include /x/b.html ?>|<?include /../../etc/c.html ?>" end
        return "(" .. path .. ")"
    end
    local tpl = assert(templates.compile("/site/page.html", { read = reader }))
    t.eq(tpl:render(), "(/x/b.html)|(/etc/c.html)", "absolute file system paths")
    asked = {}
    tpl = assert(templates.compile("/site/page.html", { read = reader, root = "/srv/www" }))
    t.eq(tpl:render(), "(/srv/www/x/b.html)|(/srv/www/etc/c.html)", "below root, never above it")
    t.eq(asked, { "/site/page.html", "/srv/www/x/b.html", "/srv/www/etc/c.html" }, "reads")
end

function T.included_blocks_use_the_including_renders_context(t)
    local body = render('<?lu locals.n = 1 ?><?include part.html ?><?lu write(locals.n) ?>',
        nil, { ["part.html"] = "<?lua locals.n = locals.n + 1 write(endpoint) done() ?>" })
    -- (no ctx: endpoint is nil, and write(nil) writes nothing)
    t.eq(body, "2")
end

function T.include_loop_names_the_chain(t)
    local tpl, err = fixture("loop/a.html")
    t.eq(tpl, nil, "no template")
    t.eq(err, "loop/b.html:3: include loop: loop/a.html -> loop/b.html -> loop/a.html")
    tpl, err = page("x\n<?include page.html ?>")
    t.eq(err, "page.html:2: include loop: page.html -> page.html", "a file including itself")
end

local function chain_reader(levels)
    return function(path)
        local n = tonumber(path:match("^d/(%d+)%.html$"))
        if n == nil then return nil, "no " .. path end
        if n < levels then return n .. ",<?include " .. (n + 1) .. ".html ?>" end
        return "end"
    end
end

function T.include_depth_limit(t)
    local tpl, err = templates.compile("d/0.html", { read = chain_reader(64) })
    t.eq(err, nil, "64 nested includes are fine")
    local want = {}
    for i = 0, 63 do want[#want + 1] = i .. "," end
    t.eq(tpl:render(), table.concat(want) .. "end", "page")
    t.eq(#tpl.deps, 65, "deps")
    tpl, err = templates.compile("d/0.html", { read = chain_reader(65) })
    t.eq(err, 'd/64.html:1: includes nested deeper than 64 levels (including "65.html")', "65 are not")
    tpl, err = templates.compile("d/0.html", { read = chain_reader(3), max_depth = 2 })
    t.eq(err, 'd/2.html:1: includes nested deeper than 2 levels (including "3.html")', "opts.max_depth")
end

function T.missing_include_names_the_including_line(t)
    local tpl, err = fixture("missing.html")
    t.eq(tpl, nil, "no template")
    t.eq(err, 'missing.html:3: cannot include "nope/missing.html": '
        .. DIR .. "nope/missing.html: No such file or directory")
    tpl, err = templates.compile(DIR .. "nope.html")
    t.eq(err, DIR .. "nope.html: No such file or directory", "missing template file")
end

function T.malformed_tags(t)
    local tpl, err = page("ok\n<?lu write(1)")
    t.eq(err, "page.html:2: <?lu without ?>", "unclosed block")
    tpl, err = page("<?include ?>")
    t.eq(err, "page.html:1: <?include ?> without a path", "include without a path")
    tpl, err = page("<?lu\n  write(1)\n  ```text\n?>")
    t.eq(err, nil, "an unclosed ``` span is a block error")
    t.eq(tpl.error, "page.html:3: unclosed ``` span\n    3 |   ```text", "template.error")
    local body, rerr = tpl:render()
    t.eq({ body, rerr }, { nil, tpl.error }, "render")
end

---------------------------------------------------------------------------
-- Errors
---------------------------------------------------------------------------

local SYNTAX_ERROR = "errors/syntax.html:6: unexpected symbol near '='\n    6 |   local x = = 1"

function T.compile_error_has_the_files_line(t)
    local tpl, err = fixture("errors/syntax.html")
    t.eq(err, nil, "compile() returns the template")
    t.eq(tpl.error, SYNTAX_ERROR, "template.error")
    local body
    body, err = tpl:render()
    t.eq(body, nil, "no page")
    t.eq(err, SYNTAX_ERROR, "render error")
end

function T.compile_error_in_an_included_file(t)
    local tpl = assert(fixture("errors/includes_syntax.html"))
    local locals = {}
    local body, err = tpl:render({ locals = locals })
    t.eq(err, SYNTAX_ERROR, "the included file's line")
    t.eq(locals.ran, nil, "no block ran")
end

function T.runtime_error_has_the_files_line(t)
    local tpl = assert(fixture("errors/runtime.html"))
    local body, err = tpl:render()
    t.eq(body, nil, "no page")
    t.eq(err, 'errors/runtime.html:6: boom at 2\n    6 |       error("boom at " .. i)')
end

function T.runtime_error_in_a_pipe_expression(t)
    local tpl = assert(fixture("errors/in_pipe.html"))
    local _, err = tpl:render({ locals = {} })
    local message = LUAJIT and "attempt to index field 'missing' (a nil value)"
        or "attempt to index a nil value (field 'missing')"
    t.eq(err, "errors/in_pipe.html:3: " .. message .. "\n    3 | | bad #[[ locals.missing.field ]]")
end

function T.error_after_await_has_the_files_line(t)
    local tpl = assert(fixture("errors/after_await.html"))
    local body, err = tpl:render()
    t.eq(body, nil, "no page")
    t.eq(err, 'errors/after_await.html:6: late failure\n    6 |   error("late failure")')
end

function T.error_raised_outside_the_template_gets_the_templates_line(t)
    TEMPLATE_TEST_HELPER = function() error("helper failed", 0) end
    local body, err = render("x\n<?lu\n  TEMPLATE_TEST_HELPER()\n?>")
    TEMPLATE_TEST_HELPER = nil
    t.eq(err, "page.html:3: helper failed\n    3 |   TEMPLATE_TEST_HELPER()")
end

function T.long_file_names_shortened_by_lua(t)
    local long = string.rep("long/", 16) .. "page.html"
    local shown = select(2, pcall(assert(load("error('x')", "@" .. long)))):match("^(.-):1: x$")
    t.eq(shown:sub(1, 3), "...", "Lua shortens the name")
    local tpl = assert(page("\n<?lu local function f() error('bad', 2) end\nerror('boom') ?>", nil,
        { chunkname = function(path) return string.rep("long/", 16) .. path end }))
    local _, err = tpl:render()
    t.eq(err, shown .. ":3: boom\n    3 | error('boom') ?>", "no second file:line prefix")
    local ctx = tpl:error_context(err, 0)
    t.eq({ ctx.file, ctx.line, ctx.source_lines }, { shown, 3, { { line = 3, text = "error('boom') ?>", current = true } } },
        "error_context finds the file")
    tpl = assert(page("<?lu local function f() error('bad', 2) end\n f() ?>"))
    _, err = tpl:render()
    t.eq(err, "page.html:2: bad\n    2 |  f() ?>", "error(msg, 2) keeps its line")
end

function T.error_after_done_is_logged(t)
    local body, err = render('<?lua write("ok") done() error("too late") ?>')
    t.eq({ body, err }, { "ok", nil }, "the page is complete")
    t.ok(t.logged("page.html:1: too late"), "logged by aio")
end

---------------------------------------------------------------------------
-- Context
---------------------------------------------------------------------------

function T.post_render_rewrites_the_page(t)
    local body, err = render([==[
<?lu post_render(function(page, locals) return page:upper() .. locals.tag end) locals.tag = "!" ?>x<?lua
post_render(function(page) return "[" .. page .. "]" end) done() ?>y]==])
    t.eq(err, nil, "error")
    t.eq(body, "[XY!]")
end

function T.post_render_failures(t)
    local _, err = render("<?lu\npost_render(function(page)\nend) ?>")
    t.eq(err, "page.html:2: post_render handler returned nil instead of the page", "nil result")
    _, err = render("<?lu post_render(function() error('pr failed') end) ?>")
    t.eq(err, "page.html:1: pr failed\n    1 | <?lu post_render(function() error('pr failed') end) ?>", "error")
    _, err = render("<?lu post_render('x') ?>")
    t.eq(err, "page.html:1: post_render expects a function\n    1 | <?lu post_render('x') ?>", "misuse")
end

function T.locals_are_shared_by_the_blocks_of_one_render(t)
    local tpl = assert(page([==[
<?lu locals.n = (locals.n or 0) + 1 ?><?lua await(aio:sleep(0.001)) locals.n = locals.n + 10 done() ?><?lu write(locals.n) ?>]==]))
    t.eq(tpl:render(), "11", "one render")
    t.eq(tpl:render(), "11", "a fresh table per render")
    local mine = { n = 100 }
    t.eq(tpl:render({ locals = mine }), "111", "ctx.locals")
    t.eq(mine.n, 111, "the caller's table")
end

function T.context_params_reach_every_block(t)
    local calls = {}
    local ctx = {
        session = { user = "ann" }, endpoint = "/e", query = { q = "1" }, headers = { h = "v" },
        body = "B", form = { f = "F" }, method = "POST", locals = { pre = "L" },
        status = function(s) calls.status = s end,
        header = function(k, v) calls[k] = v end,
        to_url = function(e, p) return e .. "?id=" .. p.id end,
        render = function(name, tbl) return "R:" .. name .. tbl.x end,
        extra = { fd = "FD" },
    }
    local body, err = render([==[
<?lu
| #[[session.user]] #[[endpoint]] #[[query.q]] #[[headers.h]] #[[body]] #[[form.f]] #[[method]] #[[locals.pre]] #[[fd]]
status(201) header("x-a", "b")
?>
<?lua
| #[[to_url("/p", { id = 3 })]] #[[render("n", { x = 1 })]] #[[type(write)]] #[[type(escape)]] #[[type(await)]] #[[type(post_render)]] #[[type(done)]]
done() ?>]==], ctx, nil, { params = { "fd" } })
    t.eq(err, nil, "error")
    t.eq(body, "ann /e 1 v B F POST L FD\n/p?id=3 R:n1 function function function function function")
    t.eq(calls, { status = 201, ["x-a"] = "b" }, "status and header")
end

function T.globals_are_reachable(t)
    TEMPLATE_TEST_GLOBAL = "g"
    local body, err = render([==[<?lu
| #[[TEMPLATE_TEST_GLOBAL]] #[[string.upper("x")]] #[[type(aio)]]
TEMPLATE_TEST_SET = "set" ?>]==])
    t.eq(err, nil, "error")
    t.eq(body, "g X table", "reads")
    t.eq(TEMPLATE_TEST_SET, "set", "writes")
    TEMPLATE_TEST_GLOBAL, TEMPLATE_TEST_SET = nil, nil
end

---------------------------------------------------------------------------
-- API edges
---------------------------------------------------------------------------

function T.error_context_for_a_developer_page(t)
    local tpl = assert(fixture("errors/runtime.html"))
    local _, err = tpl:render()
    local want = {
        file = "errors/runtime.html", line = 6, message = "boom at 2",
        source_lines = {
            { line = 3, text = "  for i = 1, 3 do" },
            { line = 4, text = "    | <li>#[[i]]</li>" },
            { line = 5, text = "    if i == 2 then" },
            { line = 6, text = '      error("boom at " .. i)', current = true },
            { line = 7, text = "    end" },
            { line = 8, text = "  end" },
            { line = 9, text = "?>" },
        },
    }
    for _, l in ipairs(want.source_lines) do l.current = l.current or false end
    t.eq(tpl:error_context(err), want, "template:error_context")
    t.eq(templates.error_context(err, { files = tpl.files }), want, "templates.error_context with files")

    -- default chunk names are paths: no mapping needed
    tpl = assert(templates.compile(DIR .. "errors/runtime.html"))
    _, err = tpl:render()
    local ctx = templates.error_context(err, { radius = 1 })
    t.eq({ ctx.file, ctx.line, ctx.message, #ctx.source_lines, ctx.source_lines[1].line },
        { DIR .. "errors/runtime.html", 6, "boom at 2", 3, 5 }, "default reader")

    ctx = templates.error_context("page.html:2: nope", { read = function() return "one\ntwo\n" end })
    t.eq(ctx, { file = "page.html", line = 2, message = "nope",
                source_lines = { { line = 1, text = "one", current = false },
                                 { line = 2, text = "two", current = true } } }, "injected reader")
    t.eq(templates.error_context("no location here"), nil, "unparseable")
    ctx = templates.error_context("gone.html:1: x", { read = function() return nil, "missing" end })
    t.eq(ctx, { file = "gone.html", line = 1, message = "x", source_lines = {} }, "unreadable file")
end

function T.misuse_raises(t)
    local ok, err = pcall(templates.compile, 42)
    t.eq(ok, false, "bad path")
    t.ok(tostring(err):find("path must be a string", 1, true), err)
    ok, err = pcall(templates.compile, "x", { params = { "write" } })
    t.ok(not ok and tostring(err):find("bad extra parameter name write", 1, true), err)
    local tpl = assert(page("<?lua done() ?>"))
    local resolve, promise = aio:prepare_promise()
    aio:set_timeout(function() resolve(pcall(tpl.render, tpl)) end, 0) -- the main thread
    ok, err = aio:await(promise)
    t.eq(ok, false, "render outside a coroutine")
    t.ok(tostring(err):find("must run inside a coroutine", 1, true), err)
    local sync = assert(page("<?lu write(1) ?>"))
    resolve, promise = aio:prepare_promise()
    aio:set_timeout(function() resolve(sync:render()) end, 0)
    t.eq(aio:await(promise), "1", "a sync-only template renders anywhere")
end

function T.rendering_is_cheap(t)
    local reads = 0
    local tpl = assert(fixture("perf.html", { read = function(path)
        reads = reads + 1
        return templates.read_file(path)
    end }))
    t.eq(reads, 2, "compile read the page and its include")
    local names = {}
    for i = 1, 10 do names[i] = "n" .. i end
    local want = "<table>\n<tr><th>#</th><th>name</th></tr>\n"
    for i = 1, 10 do want = want .. "<tr><td>" .. i .. "</td><td>n" .. i .. "</td></tr>" end
    want = want .. "\n</table>\n"

    -- count load() calls and coroutine switches of the renders
    local loads = 0
    debug.sethook(function()
        if debug.getinfo(2, "f").func == load then loads = loads + 1 end
    end, "c")
    assert(load("return 1"))
    local sanity = loads
    local me = coroutine.running()
    local body = tpl:render({ locals = { names = names } })
    for _ = 1, 100 do tpl:render({ locals = { names = names } }) end
    debug.sethook()
    t.eq(sanity, 1, "the hook sees load()")
    t.eq(loads, 1, "no load() while rendering")
    t.eq(body, want, "page")
    t.eq(reads, 2, "no file read while rendering")

    local probe = assert(page("<?lu locals.co = coroutine.running() ?>"))
    local locals = {}
    probe:render({ locals = locals })
    t.eq(locals.co, me, "a sync block runs in the caller's coroutine")

    local start = os.clock()
    for _ = 1, 2000 do tpl:render({ locals = { names = names } }) end
    local per_render = (os.clock() - start) / 2000
    t.ok(per_render < 0.0005, "a render costs " .. per_render * 1e6 .. " us")
end

return T
