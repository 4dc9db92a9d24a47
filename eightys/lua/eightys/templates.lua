-- eightys.templates: the `.dyn.` template engine (80s aio/lib/templates.lua,
-- reworked). It knows nothing about HTTP, sockets or files: files are read
-- through an injected reader, and everything a block can call besides write,
-- escape, await, post_render and done comes from the caller's render context.
--
--     local templates = require("eightys.templates")
--     local tpl, err = templates.compile("site/public_html/index.dyn.html",
--                                        { root = "site/public_html" })
--     -- inside a coroutine (aio:async, an HTTP handler):
--     local page, err = tpl:render({ session = s, query = q, status = ..., header = ... })
--
-- Syntax (README "Templating syntax"):
--   <?lu CODE ?>          synchronous block: done() is implied when CODE returns
--   <?lua CODE ?>         asynchronous block: CODE must call done(); it may await
--   <?include path ?>     the file's text, resolved when compiling (quotes optional;
--                         relative to the including file, "/x" below opts.root)
--   #! parallel           as the page's first line: blocks run concurrently
-- Inside CODE, a line `| text` and a span ```text``` each become one
-- write(format, args...): #[[expr]] is a %s argument, #[[expr:fmt]] a %fmt one.
--
-- Blocks are compiled once, each into a function whose parameters are the
-- block's context (no setfenv, so LuaJIT and Lua 5.4 alike; globals stay
-- reachable): session, locals, endpoint, query, headers, body, form, method,
-- status, header, to_url, render come from render's ctx as they are; write,
-- escape, await, post_render, done are this module's:
--   write(text, ...)   with arguments string.format(text, ...) with strings
--                      HTML-escaped, numbers and booleans as they are, nil as "",
--                      tables as escaped JSON; a lone text is written AS IS (a
--                      table as raw JSON): never write(user_data), use
--                      write("%s", user_data) or `| #[[user_data]]`
--   escape(v)          HTML-escaped string (codec.html_encode)
--   await(p)           aio:await(p)
--   post_render(fn)    fn(page, locals) -> new page, after all blocks
--   done()             ends the block: its later writes are dropped; twice is fine
-- Blocks run one after another (a <?lua ?> block in a coroutine of its own, the
-- next block starting at its done()); <?lu ?> blocks run right in render's
-- coroutine, so a sync-only page costs no coroutine switch. A <?lu ?> block may
-- await, but holds up the blocks after it, also with `#! parallel`.
--
-- Errors are "file:line: message\n    line | source line", the file being
-- opts.chunkname(path) of the template file or include the line is in.
--
-- Differences from 80s, all deliberate:
--   * #[[expr:fmt]] applies the format (80s drops it): #[[math.pi:.3f]] -> 3.142;
--   * `%` in | and ``` text is kept (80s only escapes it when there are args);
--     text is quoted with escapes, never as [[...]], so `]]` in it is fine;
--   * #[[expr]] may contain brackets and quoted strings: #[[t[k[1]]]] is
--     t[k[1]], #[[ "]]" ]] the string "]]";
--   * post_render handlers get (page, locals), as the README says; 80s calls
--     them (locals, page), so 80s-style `function(locals, page)` handlers break;
--   * a failed include, an include loop or deeper nesting than opts.max_depth
--     (64, as the README says; 80s stops silently at 32) is a compile error,
--     not the text "failed to include ...";
--   * an error in a block (compile or run time, also after an await) makes
--     render return nil, "file:line: message" with the template's real file
--     and line, instead of rendering the error text into the page;
--   * `<?include` inside a block's code is not expanded.
-- Kept from 80s: write(text) with no further argument writes text as is, NOT
-- escaped (use write("%s", x) or `| #[[x]]` for user data); newlines in a ```
-- span are dropped together with the indentation around them, and the span is
-- trimmed; a `| ` line writes no newline and drops the blanks after `|`.

local type = type
local select = select
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local xpcall = xpcall
local load = load
local pairs = pairs
local unpack = unpack or table.unpack
local str_find = string.find
local str_sub = string.sub
local str_gsub = string.gsub
local str_match = string.match
local str_format = string.format
local str_rep = string.rep
local str_byte = string.byte
local concat = table.concat
local tbl_remove = table.remove
local getinfo = debug.getinfo
local co_running = coroutine.running
local io_open = io.open

local aio = aio
local html_encode = codec.html_encode
local json_encode = codec.json_encode

local _M = {}

_M.DEFAULT_MAX_DEPTH = 64

-- Names of the parameters every block function gets, in order. render() passes
-- the values positionally (see call_block), so the two must change together.
local PARAMS = {
    "session", "locals", "endpoint", "query", "headers", "body", "form", "method",
    "status", "header", "write", "escape", "await", "post_render", "done",
    "to_url", "render",
}
local RESERVED = {}
for i = 1, #PARAMS do RESERVED[PARAMS[i]] = true end

---------------------------------------------------------------------------
-- Paths and files
---------------------------------------------------------------------------

--- The default reader: the whole file, or nil, err.
---@param path string
---@return string|nil text
---@return string|nil err
local function read_file(path)
    local f, err = io_open(path, "rb")
    if not f then return nil, err end
    local text, rerr = f:read("*a") -- "*a": LuaJIT wants the star, Lua 5.4 ignores it
    f:close()
    if text == nil then return nil, path .. ": " .. tostring(rerr or "cannot read") end
    return text
end
_M.read_file = read_file

local function default_chunkname(path)
    return path
end

--- Drop "." and "dir/.." segments so one file has one name: include loops are
--- found by comparing names, and deps should not list a file twice.
---@param path string
---@return string
local function normalize(path)
    local absolute = str_sub(path, 1, 1) == "/"
    local parts, n = {}, 0
    local pos, len = 1, #path
    while pos <= len do
        local slash = str_find(path, "/", pos, true) or len + 1
        local seg = str_sub(path, pos, slash - 1)
        if seg == ".." then
            if n > 0 and parts[n] ~= ".." then
                parts[n] = nil
                n = n - 1
            elseif not absolute then -- "/.." is "/"
                n = n + 1
                parts[n] = ".."
            end
        elseif seg ~= "." and seg ~= "" then
            n = n + 1
            parts[n] = seg
        end
        pos = slash + 1
    end
    local out = concat(parts, "/", 1, n)
    if absolute then return "/" .. out end
    return out == "" and "." or out
end
_M.normalize = normalize

--- The path an include names, seen from the file that includes it.
local function resolve(from, rel, root)
    if str_sub(rel, 1, 1) == "/" then
        -- normalised as an absolute path first, so "/../x" cannot climb above root
        rel = normalize(rel)
        if root then return normalize(root .. rel) end
        return rel
    end
    local dir = str_match(from, "^(.*/)") or ""
    return normalize(dir .. rel)
end

---------------------------------------------------------------------------
-- Source lines (error messages, error_context)
---------------------------------------------------------------------------

local function count_newlines(s, i, j)
    local n = 0
    while true do
        i = str_find(s, "\n", i, true)
        if i == nil or i > j then return n end
        n = n + 1
        i = i + 1
    end
end

--- Line `line` of text (without its line break), or nil.
local function line_of(text, line)
    local pos = 1
    for _ = 2, line do
        pos = str_find(text, "\n", pos, true)
        if pos == nil then return nil end
        pos = pos + 1
    end
    if pos > #text then return nil end
    local stop = str_find(text, "\n", pos, true) or #text + 1
    return (str_gsub(str_sub(text, pos, stop - 1), "\r$", ""))
end

-- An error message ends with the offending source line in this form, which
-- error_context() strips again.
local SOURCE_SUFFIX = "\n%s*%d+ | [^\n]*$"

local function with_source(msg, text, line)
    local src = text and line_of(text, line)
    if src == nil then return msg end
    return msg .. "\n    " .. line .. " | " .. src
end

---------------------------------------------------------------------------
-- Block code: `| ` lines and ``` spans
---------------------------------------------------------------------------

local QUOTED = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }

--- A Lua string literal for s on one source line (no raw line breaks, so the
--- generated code keeps the template's line numbers), whatever s contains.
local function quote(s)
    return '"' .. str_gsub(s, '[%c"\\]', function(c)
        return QUOTED[c] or str_format("\\%03d", str_byte(c))
    end) .. '"'
end

-- Conversions string.format knows (Lua 5.4 and LuaJIT alike).
local CONVERSIONS = {}
for c in ("cdiouxXaAeEfgGqs"):gmatch(".") do CONVERSIONS[c] = true end

--- Position of the "]]" closing a #[[ that ends at `pos - 1`, skipping
--- brackets the expression itself opens and closes (t[k[1]]) and quoted
--- strings (#[[ "]]" ]]).
local function closing(text, pos)
    local depth, len = 0, #text
    while pos < len do
        local b = str_byte(text, pos)
        if b == 93 then -- ]
            if depth == 0 and str_byte(text, pos + 1) == 93 then return pos end
            if depth > 0 then depth = depth - 1 end
        elseif b == 91 then -- [
            depth = depth + 1
        elseif b == 34 or b == 39 then -- " or ': up to the same unescaped quote
            pos = pos + 1
            while pos <= len do
                local c = str_byte(text, pos)
                if c == b then break end
                if c == 92 then pos = pos + 1 end -- backslash
                pos = pos + 1
            end
        end
        pos = pos + 1
    end
    return nil
end

--- Lua code for one write of `text` (the body of a `| ` line or a ``` span).
--- The code has exactly as many line breaks as text, and each #[[expr]] sits
--- on its own line, so errors in the expressions point at the right line.
---@param text string
---@param span boolean a ``` span: trimmed, newlines and the blanks around them dropped
---@return string
local function write_call(text, span)
    local chunks, args, lines = {}, {}, {}
    local pos = 1
    while true do
        local s = str_find(text, "#[[", pos, true)
        local e = s and closing(text, s + 3)
        if e == nil then break end -- no (closed) #[[: the rest is text
        chunks[#chunks + 1] = str_sub(text, pos, s - 1)
        local inner = str_sub(text, s + 3, e - 1)
        local expr, fmt = str_match(inner, "^(.+):([-+ #0]*%d*%.?%d*%a)%s*$")
        if expr == nil or not CONVERSIONS[str_sub(fmt, -1)] then
            expr, fmt = inner, "s" -- obj:method() is an expression, not a format
        end
        args[#args + 1] = { expr = expr, fmt = fmt }
        lines[#lines + 1] = count_newlines(text, 1, s)
        pos = e + 2
    end
    chunks[#chunks + 1] = str_sub(text, pos)
    local n = #chunks
    if span then
        chunks[1] = str_gsub(chunks[1], "^%s+", "")
        chunks[n] = str_gsub(chunks[n], "%s+$", "")
        for i = 1, n do chunks[i] = str_gsub(chunks[i], "%s*[\r\n]%s*", "") end
    end
    local breaks = count_newlines(text, 1, #text)
    if #args == 0 then
        -- write(text) writes text as is: no format, so `%` stays single
        local code = chunks[1] == "" and "" or "write(" .. quote(chunks[1]) .. ")"
        return code .. str_rep("\n", breaks)
    end
    -- One write of a concatenation: LuaJIT compiles `..`, but not string.format,
    -- and this runs for every row of every page. escape() gives an argument the
    -- same treatment write(fmt, ...) would (strings escaped, nil as "", tables as
    -- JSON); an explicit #[[x:fmt]] is formatted first.
    local code, at = { "write(" }, 0
    for i = 1, #args do
        if chunks[i] ~= "" then code[#code + 1] = quote(chunks[i]) .. " .. " end
        local expr, fmt = args[i].expr, args[i].fmt
        code[#code + 1] = str_rep("\n", lines[i] - at)
        if fmt == "s" then
            code[#code + 1] = "escape((" .. expr .. "))"
        else
            code[#code + 1] = "escape(string.format(" .. quote("%" .. fmt) .. ", (" .. expr .. ")))"
        end
        at = lines[i] + count_newlines(expr, 1, #expr)
        if i < #args or chunks[n] ~= "" then code[#code + 1] = " .. " end
    end
    if chunks[n] ~= "" then code[#code + 1] = quote(chunks[n]) end
    code[#code + 1] = str_rep("\n", breaks - at) .. ")"
    return concat(code)
end

--- Expand ``` spans and `| ` lines in a block's code, keeping its line breaks.
---@return string|nil code
---@return string|nil err
local function expand_code(code, name, line)
    local out, pos = {}, 1
    while true do
        local s = str_find(code, "```", pos, true)
        if s == nil then break end
        local e = str_find(code, "```", s + 3, true)
        if e == nil then
            return nil, str_format("%s:%d: unclosed ``` span", name, line + count_newlines(code, 1, s))
        end
        out[#out + 1] = str_sub(code, pos, s - 1)
        out[#out + 1] = write_call(str_sub(code, s + 3, e - 1), true)
        pos = e + 3
    end
    out[#out + 1] = str_sub(code, pos)
    code = concat(out)

    -- Then line by line (by hand: gsub's empty matches differ between engines).
    out, pos = {}, 1
    local len = #code
    while pos <= len + 1 do
        local stop = str_find(code, "\n", pos, true) or len + 1
        local text = str_sub(code, pos, stop - 1)
        local indent, rest = str_match(text, "^([ \t]*)|[ \t]+(.-)\r?$")
        if indent then text = indent .. write_call(rest, false) end
        out[#out + 1] = text
        pos = stop + 1
    end
    return concat(out, "\n")
end

---------------------------------------------------------------------------
-- Compiling
---------------------------------------------------------------------------

--- One block, compiled once: { fn, async, name, line } or { err, ... }.
local function compile_block(state, code, async, name, line, text)
    -- 80s trims the code's trailing blanks (`| text ?>` writes "text")
    local last = #code
    while last > 0 and str_find(" \t\r\n\f\v", str_sub(code, last, last), 1, true) do last = last - 1 end
    code = str_sub(code, 1, last)
    local block = { async = async, name = name, line = line, waiting = false }
    if async then
        -- what a request stuck in this block is waiting on (the handler timeout's log line and 504 page)
        block.waiting = "<?lua ?> block at " .. name .. ":" .. line .. " never called done()"
    end
    local src, err = expand_code(code, name, line)
    if src then
        -- The header sits on the block's own line, after line - 1 empty lines, so
        -- Lua's line numbers are the template file's.
        local chunk
        chunk, err = load(str_rep("\n", line - 1) .. state.header .. src .. "\nend", "@" .. name, "t")
        if chunk then
            block.fn = chunk()
            return block
        end
    end
    local at = tonumber(str_match(err, "^[^\n]-:(%d+): "))
    block.err = at and with_source(err, text, at) or err
    return block
end

--- Split a file into text, blocks and includes (each include as
--- { include = path, line = n }).
---@return table|nil items
---@return string|nil err
local function parse(state, text, name)
    local items = {}
    local lit, pos, line = 1, 1, 1 -- literal text starts at lit, whose line is `line`
    while true do
        local s = str_find(text, "<?", pos, true)
        if s == nil then break end
        local kind, body
        if str_find(text, "^lua%s", s + 2) then
            kind, body = "lua", s + 5
        elseif str_find(text, "^lu%s", s + 2) then
            kind, body = "lu", s + 4
        else
            local _, e = str_find(text, "^%s*include%s", s + 2)
            if e then kind, body = "include", e end
        end
        if kind == nil then
            pos = s + 2 -- "<?xml", "<?lu?>": plain text
        else
            local close = str_find(text, "?>", body, true)
            line = line + count_newlines(text, lit, s - 1)
            if close == nil then
                return nil, str_format("%s:%d: <?%s without ?>", name, line, kind)
            end
            if s > lit then items[#items + 1] = str_sub(text, lit, s - 1) end
            local inner = str_sub(text, body, close - 1)
            if kind == "include" then
                local path = str_match(inner, "^%s*(.-)%s*$")
                path = str_match(path, '^"(.*)"$') or str_match(path, "^'(.*)'$") or path
                if path == "" then
                    return nil, str_format("%s:%d: <?include ?> without a path", name, line)
                end
                items[#items + 1] = { include = path, line = line }
            else
                items[#items + 1] = compile_block(state, inner, kind == "lua", name, line, text)
            end
            line = line + count_newlines(text, s, close)
            lit, pos = close + 2, close + 2
        end
    end
    if lit <= #text then items[#items + 1] = str_sub(text, lit) end
    return items
end

--- Read (once per compile) the file at path.
local function read_once(state, path)
    local text = state.texts[path]
    if text then return text end
    local err
    text, err = state.read(path)
    if type(text) ~= "string" then
        return nil, tostring(err or ("cannot read " .. path))
    end
    state.texts[path] = text
    state.deps[#state.deps + 1] = path
    local name = state.chunkname(path)
    state.sources[name] = text
    state.files[name] = path
    return text
end

--- Append the pieces of the file at path (includes expanded) to state.pieces.
local function expand(state, path, depth)
    local items = state.parsed[path]
    if items == nil then
        local err
        items, err = parse(state, state.texts[path], state.chunkname(path))
        if items == nil then return nil, err end
        state.parsed[path] = items
    end
    local pieces, stack = state.pieces, state.stack
    for i = 1, #items do
        local item = items[i]
        if type(item) == "string" then
            local n = #pieces
            if type(pieces[n]) == "string" then -- text across include boundaries: one piece
                pieces[n] = pieces[n] .. item
            else
                pieces[n + 1] = item
            end
        elseif item.include == nil then
            pieces[#pieces + 1] = item
        else
            local where = state.chunkname(path) .. ":" .. item.line
            local target = resolve(path, item.include, state.root)
            for j = 1, #stack do
                if stack[j] == target then
                    local chain = {}
                    for k = j, #stack do chain[#chain + 1] = state.chunkname(stack[k]) end
                    chain[#chain + 1] = state.chunkname(target)
                    return nil, where .. ": include loop: " .. concat(chain, " -> ")
                end
            end
            if depth + 1 > state.max_depth then
                return nil, str_format('%s: includes nested deeper than %d levels (including "%s")',
                    where, state.max_depth, item.include)
            end
            local _, err = read_once(state, target)
            if err then
                return nil, str_format('%s: cannot include "%s": %s', where, item.include, err)
            end
            stack[#stack + 1] = target
            local ok
            ok, err = expand(state, target, depth + 1)
            if not ok then return nil, err end
            stack[#stack] = nil
        end
    end
    return true
end

--- @class eightys.template
--- @field path string the file compiled
--- @field deps string[] every file it was built from (the file first), for change detection
--- @field parallel boolean whether the page starts with `#! parallel`
--- @field async boolean whether it has <?lua ?> blocks (render must then run in a coroutine)
--- @field error string|nil the first block that does not compile ("file:line: ..."); render returns it
local Template = {}
Template.__index = Template

--- Compile the template file at path, its includes resolved.
---@param path string
---@param opts? {read?: fun(path: string): string|nil, string|nil, max_depth?: integer, chunkname?: fun(path: string): string, root?: string, params?: string[]}
---   read: file reader (default: io.open); max_depth: deepest include nesting (64);
---   chunkname: how a file appears in error messages (default: its path);
---   root: directory an include "/x" is relative to (default: the file system root);
---   params: extra block parameter names, their values taken from ctx.extra[name]
---@return eightys.template|nil
---@return string|nil err
function _M.compile(path, opts)
    if type(path) ~= "string" then error("templates.compile: path must be a string", 2) end
    if opts ~= nil and type(opts) ~= "table" then error("templates.compile: opts must be a table", 2) end
    opts = opts or {}
    local read = opts.read or read_file
    local chunkname = opts.chunkname or default_chunkname
    local max_depth = opts.max_depth or _M.DEFAULT_MAX_DEPTH
    local root = opts.root
    if type(read) ~= "function" or type(chunkname) ~= "function" then
        error("templates.compile: opts.read and opts.chunkname must be functions", 2)
    end
    if type(max_depth) ~= "number" or max_depth < 0 then
        error("templates.compile: opts.max_depth must be a number >= 0", 2)
    end
    if root ~= nil and type(root) ~= "string" then error("templates.compile: opts.root must be a string", 2) end
    local names = { unpack(PARAMS) }
    local extra = opts.params or {}
    for i = 1, #extra do
        local p = extra[i]
        if type(p) ~= "string" or not str_find(p, "^[%a_][%w_]*$") or RESERVED[p] then
            error("templates.compile: bad extra parameter name " .. tostring(p), 2)
        end
        names[#names + 1] = p
    end

    path = normalize(path)
    local state = {
        read = read, chunkname = chunkname, max_depth = max_depth, root = root,
        header = "return function(" .. concat(names, ", ") .. ") ",
        texts = {}, parsed = {}, deps = {}, sources = {}, files = {},
        pieces = {}, stack = { path },
    }
    local _, err = read_once(state, path)
    if err then return nil, err end
    local ok
    ok, err = expand(state, path, 0)
    if not ok then return nil, err end

    local pieces = state.pieces
    local parallel = false
    if type(pieces[1]) == "string" then
        local first = pieces[1]
        local _, e = str_find(first, "^#![ \t]*parallel[ \t]*\r?\n")
        if e == nil then _, e = str_find(first, "^#![ \t]*parallel[ \t]*$") end
        if e then
            parallel = true
            first = str_sub(first, e + 1) -- the marker line is not output
            if first == "" then tbl_remove(pieces, 1) else pieces[1] = first end
        end
    end

    local tpl = setmetatable({
        path = path, deps = state.deps, parallel = parallel, async = false, error = nil,
        pieces = pieces, nblocks = 0, extra = extra, read = read,
        sources = state.sources, files = state.files,
    }, Template)
    for i = 1, #pieces do
        local piece = pieces[i]
        if type(piece) ~= "string" then
            tpl.nblocks = tpl.nblocks + 1
            if piece.async then tpl.async = true end
            if piece.err and not tpl.error then tpl.error = piece.err end
        end
    end
    tpl.on_error = _M.error_handler(tpl.sources)
    return tpl
end

---------------------------------------------------------------------------
-- Rendering
---------------------------------------------------------------------------

--- An xpcall handler for errors in template code: "file:line: message" with
--- the template's file and line (the innermost template frame, unless the
--- message already names a line of the template), then that source line.
---@param sources table<string, string> chunk name -> file text
---@return fun(err: any): string
function _M.error_handler(sources)
    return function(err)
        local msg = tostring(err)
        local file, at = str_match(msg, "^([^\n]-):(%d+): ")
        if file and sources[file] then
            return with_source(msg, sources[file], tonumber(at))
        end
        -- Lua shortens long chunk names ("...end/of/path.html"), so a message
        -- may name a template file without matching its chunk name: compare
        -- with the names Lua shows for the template frames on the stack.
        local level, inner_text, inner_info = 2, nil, nil
        while true do
            local info = getinfo(level, "Sl")
            if info == nil then break end
            local text = str_byte(info.source, 1) == 64 and sources[str_sub(info.source, 2)] -- "@"
            if text and (info.currentline or 0) > 0 then
                if file == info.short_src then
                    return with_source(msg, text, tonumber(at))
                end
                if inner_text == nil then inner_text, inner_info = text, info end
            end
            level = level + 1
        end
        if inner_text == nil then return msg end
        local line = inner_info.currentline
        return with_source(inner_info.short_src .. ":" .. line .. ": " .. msg, inner_text, line)
    end
end

--- HTML-escape v for a page: strings escaped, nil as "", tables as JSON.
---@param v any
---@return string
local function escape(v)
    local t = type(v)
    if t == "string" then
        -- most values need nothing: skip the call into the host
        if str_find(v, "[&<>\"']") then return html_encode(v) end
        return v
    elseif t == "number" then
        return tostring(v) -- digits, signs, dots: nothing to escape
    elseif t == "nil" then
        return ""
    elseif t == "table" then
        return escape(json_encode(v))
    end
    return escape(tostring(v))
end
_M.escape = escape

-- write()'s arguments: strings escaped, numbers as they are (for %d, %.3f),
-- nil as "", booleans as "true"/"false", tables as escaped JSON.
local function arg(v)
    local t = type(v)
    if t == "string" then
        if str_find(v, "[&<>\"']") then return html_encode(v) end
        return v
    elseif t == "number" or t == "cdata" then -- cdata: LuaJIT 64-bit integers
        return v
    elseif t == "nil" then
        return ""
    elseif t == "boolean" then
        return v and "true" or "false"
    end
    return escape(v)
end

local function format_args(text, n, a, b, c, d, ...)
    -- fixed arities first: a table per write would cost more than the format itself
    if n == 1 then return str_format(text, arg(a)) end
    if n == 2 then return str_format(text, arg(a), arg(b)) end
    if n == 3 then return str_format(text, arg(a), arg(b), arg(c)) end
    if n == 4 then return str_format(text, arg(a), arg(b), arg(c), arg(d)) end
    local args = { a, b, c, d, ... }
    for i = 1, n do args[i] = arg(args[i]) end
    return str_format(text, unpack(args, 1, n))
end

--- A block's output buffer and its write().
local function new_output()
    local out = { n = 0, closed = false }
    local function write(text, ...)
        if out.closed then return end -- after done(): the block's text is already in the page
        local n = select("#", ...)
        if n > 0 then
            text = format_args(text, n, ...)
        elseif type(text) ~= "string" then
            if text == nil then return end
            text = type(text) == "table" and json_encode(text) or tostring(text)
        end
        local i = out.n + 1
        out.n = i
        out[i] = text
    end
    return out, write
end

local function await(promise)
    return aio:await(promise)
end

local function call_block(block, st, write, done)
    local ctx = st.ctx
    return xpcall(block.fn, st.on_error, ctx.session, st.locals, ctx.endpoint, ctx.query,
        ctx.headers, ctx.body, ctx.form, ctx.method, ctx.status, ctx.header, write, escape,
        await, st.post_render, done, ctx.to_url, ctx.render, unpack(st.extra, 1, st.nextra))
end

--- Run a <?lu ?> block right here (no coroutine of its own); its text, or nil, err.
local function run_sync(block, st)
    local out, write = new_output()
    local function done() out.closed = true end
    local ok, err = call_block(block, st, write, done)
    out.closed = true
    if not ok then return nil, err end
    return concat(out, "", 1, out.n)
end

--- Start a <?lua ?> block in a coroutine of its own: it finishes when it calls
--- done(), maybe long after it returned. finish(text) or finish(nil, err) once.
local function start_async(block, st, finish)
    local out, write = new_output()
    local req = st.ctx.fd -- the HTTP request, when rendering for one
    if req then req.waiting_on = block.waiting end
    local function done()
        if out.closed then return end
        out.closed = true
        if req and req.waiting_on == block.waiting then req.waiting_on = nil end
        finish(concat(out, "", 1, out.n))
    end
    aio:async(function()
        local ok, err = call_block(block, st, write, done)
        if not ok then
            -- after done() nobody waits for this block: raise, so aio logs it
            if out.closed then error(err, 0) end
            out.closed = true
            if req and req.waiting_on == block.waiting then req.waiting_on = nil end
            finish(nil, err)
        end
    end)
end

local EMPTY = {}

--- Render the page. Call it inside a coroutine (aio:async, an aio-driven HTTP
--- handler) if the template has <?lua ?> blocks: it waits for them.
--- ctx: session, locals, endpoint, query, headers, body, form, method, status,
--- header, to_url, render are handed to every block as they are (locals defaults
--- to a new table, shared by the blocks of this render); ctx.extra[name] gives
--- the opts.params ones.
---@param ctx? table
---@return string|nil page
---@return string|nil err "file:line: message" (then the offending source line)
function Template:render(ctx)
    if ctx ~= nil and type(ctx) ~= "table" then error("template:render: ctx must be a table", 2) end
    ctx = ctx or EMPTY
    if self.error then return nil, self.error end
    if self.async then
        local co, is_main = co_running()
        if co == nil or is_main then
            error("template:render must run inside a coroutine (aio:async or an aio-driven handler)", 2)
        end
    end
    local pieces = self.pieces
    local st = { ctx = ctx, locals = ctx.locals or {}, on_error = self.on_error,
                 post = nil, over = false, extra = EMPTY, nextra = #self.extra }
    if st.nextra > 0 then
        local values, from = {}, ctx.extra or EMPTY
        for i = 1, st.nextra do values[i] = from[self.extra[i]] end
        st.extra = values
    end
    st.post_render = function(fn)
        if type(fn) ~= "function" then error("post_render expects a function", 2) end
        local post = st.post
        if post == nil then
            post = {}
            st.post = post
        end
        post[#post + 1] = fn
    end

    local page, err
    if self.parallel and self.nblocks > 1 then
        page, err = self:_render_parallel(st)
    else
        -- one block after another: block n+1 starts once block n is done, so
        -- literal text and the <?lu ?> blocks write straight into one buffer
        local out, write = new_output()
        local function done() out.closed = true end
        for i = 1, #pieces do
            local piece = pieces[i]
            if type(piece) == "string" then
                local k = out.n + 1
                out.n = k
                out[k] = piece
            elseif piece.async then
                local resolve, promise = aio:prepare_promise()
                start_async(piece, st, resolve)
                local text
                text, err = aio:await(promise)
                if text == nil then
                    st.over = true
                    return nil, err
                end
                local k = out.n + 1
                out.n = k
                out[k] = text
            else
                out.closed = false
                local ok
                ok, err = call_block(piece, st, write, done)
                out.closed = true
                if not ok then
                    st.over = true
                    return nil, err
                end
            end
        end
        page = concat(out, "", 1, out.n)
    end
    st.over = true
    if page == nil then return nil, err end

    local post = st.post
    if post then
        for i = 1, #post do
            local fn = post[i]
            local ok, res = xpcall(fn, st.on_error, page, st.locals)
            if not ok then return nil, res end
            if type(res) ~= "string" then
                local info = getinfo(fn, "S")
                return nil, str_format("%s:%d: post_render handler returned %s instead of the page",
                    info.short_src, info.linedefined, type(res))
            end
            page = res
        end
    end
    return page, nil
end

--- `#! parallel`: start every block, then wait for all (the first error ends
--- the wait; blocks still running finish on their own, their text dropped).
function Template:_render_parallel(st)
    local pieces = self.pieces
    local results, left = {}, self.nblocks
    local finished, failure = false, nil
    local resolve, all = nil, nil
    for i = 1, #pieces do
        local piece = pieces[i]
        if type(piece) == "string" then
            results[i] = piece
        else
            local function finish(text, err)
                if st.over then return end
                if text == nil then
                    st.over, finished, failure = true, true, err
                elseif results[i] == nil then
                    results[i] = text
                    left = left - 1
                    finished = left == 0
                end
                if finished and resolve then resolve() end
            end
            if piece.async then
                start_async(piece, st, finish)
            else
                finish(run_sync(piece, st))
            end
            if failure then return nil, failure end
        end
    end
    if not finished then
        resolve, all = aio:prepare_promise()
        aio:await(all)
    end
    if failure then return nil, failure end
    return concat(results, "", 1, #pieces)
end

---------------------------------------------------------------------------
-- Developer error pages
---------------------------------------------------------------------------

--- Parse a "file:line: message" error (as compile and render return them) and
--- read the lines around it, for a developer error page.
---@param err any
---@param opts? {read?: fun(path: string): string|nil, files?: table<string, string>, radius?: integer}
---   read: reader (default: io.open); files: file name in messages -> path to
---   read (template.files); radius: lines shown before and after (3)
---@return {file: string, line: integer, message: string, source_lines: {line: integer, text: string, current: boolean}[]}|nil
function _M.error_context(err, opts)
    opts = opts or EMPTY
    local s = tostring(err)
    local file, line, message = str_match(s, "^([^\n]-):(%d+): (.*)$")
    if file == nil or file == "" then return nil end
    line = tonumber(line)
    message = str_gsub(message, SOURCE_SUFFIX, "")
    local lines = {}
    local files = opts.files
    local path = files and files[file]
    if path == nil and files and str_sub(file, 1, 3) == "..." then
        -- a chunk name Lua shortened: the file whose name ends the same way
        local tail = str_sub(file, 4)
        for name, p in pairs(files) do
            if str_sub(name, -#tail) == tail then path = p break end
        end
    end
    path = path or file
    local text = (opts.read or read_file)(path)
    if type(text) == "string" then
        local radius = opts.radius or 3
        for n = line - radius > 1 and line - radius or 1, line + radius do
            local src = line_of(text, n)
            if src == nil then break end
            lines[#lines + 1] = { line = n, text = src, current = n == line }
        end
    end
    return { file = file, line = line, message = message, source_lines = lines }
end

--- error_context with this template's reader and file names.
---@param err any
---@param radius? integer
function Template:error_context(err, radius)
    return _M.error_context(err, { read = self.read, files = self.files, radius = radius })
end

return _M
