-- The content server: serves a site directory (PUBLIC_HTML, default public_html/)
-- the 80s way, routes derived from file names:
--
--   x.dyn.html            template (eightys.templates), GET /x
--   index.dyn.html        GET /dir/   (and /dir redirects to /dir/)
--   post.x.dyn.html       POST /x (also put., delete.)
--   x.j2.html             Jinja2 page, GET /x
--   x.priv.html           include-only, never routed
--   static/...            served as is, whatever the name
--   anything else         served as is (x.html as /x, other names unchanged)
--   i.name/ and .hidden   ignored directories; *.lua files are never served
--   main.lua              beside the site root (or in it): run at start and on reload
--
-- Requests can only reach routes built from this scan: a path naming a file
-- outside the site root (.., %2e%2e, NUL, symlinks leading out) matches nothing,
-- and files are checked again (real path inside the root) when next looked at.
--
-- Beyond 80s: sessions (encrypted cookies every worker reads; or a server-side
-- store such as httpd.memory_store), forms
-- (urlencoded and multipart, parsed in Python), MASTER_KEY URL encryption with
-- authenticated encryption (a tampered `e` gets 400), static files with
-- ETag/Range/gzip served by Python (eightys/static.py), Jinja2 pages and error
-- pages (eightys/jinja.py), and a development error page with the source.

local type = type
local next = next
local tonumber = tonumber
local loadfile = loadfile
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local xpcall = xpcall
local traceback = require("eightys.errors").traceback
local str_find = string.find
local str_sub = string.sub
local str_gsub = string.gsub
local str_match = string.match
local str_lower = string.lower
local concat = table.concat

local aio = aio
local net = net
local templates = require("eightys.templates")

local httpd = httpd or {} -- a global, like 80s; its state survives reloads
_G.httpd = httpd

local host = require("eightys.host") -- private host functions (eightys/content.py)
local http_module = require("eightys.http")

httpd.file_routes = httpd.file_routes or {} -- "METHOD path" -> true, routes made by the scan
httpd.jinja_globals = httpd.jinja_globals or {}

local SESSION_COOKIE = "eightys_session"
local SESSION_TTL = 24 * 3600
local MAX_SESSIONS = 10000 -- about 0.5 KB of Lua heap each (a small session)
local HTML = "text/html; charset=utf-8"

---------------------------------------------------------------------------
-- Paths
---------------------------------------------------------------------------

local function join(dir, name)
    if str_sub(dir, -1) == "/" then return dir .. name end
    return dir .. "/" .. name
end

local function dirname(path)
    return str_match(path, "^(.*)/[^/]*$") or "."
end

local function strip_slash(path)
    if #path > 1 and str_sub(path, -1) == "/" then return str_sub(path, 1, -2) end
    return path
end

-- The route a file gets: nil for files that are not routed.
-- rel: path below the root, e.g. "posts/post.index.dyn.html"
local function route_of(rel, in_static)
    local dir, name = str_match(rel, "^(.-)([^/]*)$")
    if in_static then
        return "GET", "/" .. rel, "static"
    end
    if str_find(name, "%.lua$") or str_find(name, "%.priv%.") then return nil end
    local method = "GET"
    local prefix = str_match(name, "^(%a+)%.")
    if prefix == "post" or prefix == "put" or prefix == "delete" or prefix == "patch" then
        method = prefix:upper()
        name = str_sub(name, #prefix + 2)
    end
    local kind = "file"
    if str_find(name, "%.dyn%.") or str_find(name, "%.dyn$") then
        kind = "template"
        name = str_gsub(name, "%.dyn", "", 1)
    elseif str_find(name, "%.j2%.html$") then
        kind = "jinja"
        name = str_gsub(name, "%.j2%.html$", ".html")
    end
    name = str_gsub(name, "%.html$", "")
    if name == "index" then name = "" end
    return method, "/" .. dir .. name, kind
end

---------------------------------------------------------------------------
-- Sessions
---------------------------------------------------------------------------

--- The server-side session store (per worker), for sessions too large for a
--- cookie or that must be revoked server-side: `httpd.session_store =
--- httpd.memory_store`. A store is any object with get(id) -> table|nil,
--- set(id, table) and delete(id). Entries form a list in order of last use, so
--- the oldest is the first to expire and the first evicted when the store holds
--- `max_sessions` (10,000): expiry and eviction cost O(1), whatever the size,
--- and a flood of cookie-less clients can never grow it past the bound.
local memory_store = httpd.memory_store or { max_sessions = MAX_SESSIONS }
httpd.memory_store = memory_store
memory_store.index = memory_store.index or {}  -- id -> entry {id, data, expires, prev, next}
memory_store.count = memory_store.count or 0
-- head (least recently used) and tail (most recently used) of the list
memory_store.head = memory_store.head or false
memory_store.tail = memory_store.tail or false

local function unlink(store, entry)
    local prev, nxt = entry.prev, entry.next
    if prev then prev.next = nxt else store.head = nxt end
    if nxt then nxt.prev = prev else store.tail = prev end
    entry.prev, entry.next = false, false
end

local function push_tail(store, entry)
    local tail = store.tail
    entry.prev, entry.next = tail, false
    if tail then tail.next = entry else store.head = entry end
    store.tail = entry
end

local function drop(store, entry)
    unlink(store, entry)
    store.index[entry.id] = nil
    store.count = store.count - 1
end

-- Drop expired entries from the head (the oldest): a few per call, so no call is slow.
local function expire(store, now)
    for _ = 1, 4 do
        local head = store.head
        if not head or head.expires >= now then return end
        drop(store, head)
    end
end

--- The session `id` (its table, now the most recently used), or nil if unknown or expired.
function memory_store:get(id)
    local entry = self.index[id]
    if entry == nil then return nil end
    local now = net.clock()
    if entry.expires < now then
        drop(self, entry)
        return nil
    end
    entry.expires = now + SESSION_TTL -- sliding: it becomes the newest
    unlink(self, entry)
    push_tail(self, entry)
    return entry.data
end

--- Store session `id`; a new one beyond max_sessions evicts the least recently used.
function memory_store:set(id, data)
    local now = net.clock()
    expire(self, now)
    local entry = self.index[id]
    if entry then
        unlink(self, entry)
    else
        entry = { id = id, data = data, expires = 0, prev = false, next = false }
        self.index[id] = entry
        self.count = self.count + 1
        while self.count > self.max_sessions and self.head do drop(self, self.head) end
    end
    entry.data, entry.expires = data, now + SESSION_TTL
    push_tail(self, entry)
end

--- Forget session `id`.
function memory_store:delete(id)
    local entry = self.index[id]
    if entry then drop(self, entry) end
end

-- Sessions without a store live in the cookie: AES-256-GCM under a key derived
-- (HKDF, in crypto.encrypt) from the server secret, the expiry inside the
-- authenticated payload, so every worker (and every server with the same
-- SECRET_KEY) reads them and a client can neither read nor alter nor extend one.
local MAX_COOKIE = 4000 -- browsers keep cookies up to 4096 bytes, name and attributes included
local session_key

local function cookie_header(value, max_age)
    return SESSION_COOKIE .. "=" .. value .. "; Path=/; HttpOnly; SameSite=Lax; Max-Age=" .. max_age
end

local function cookie_value(headers)
    local cookie = headers.cookie
    if cookie == nil then return nil end
    return str_match(cookie, "%f[%w_]" .. SESSION_COOKIE .. "=([%w%.%-_]+)")
end

local function sign(id)
    return str_sub(codec.hex_encode(crypto.hmac_sha256(id, httpd.secret)), 1, 32)
end

-- session, state: state is what save_session needs to know (the store's id, or
-- the cookie's JSON and expiry, to send a cookie only when something changed).
local function session_from(headers)
    local value = cookie_value(headers)
    local store = httpd.session_store
    if store then
        if value then
            local id, signature = str_match(value, "^(%x+)%.(%x+)$")
            if id and signature == sign(id) then
                local data = store:get(id)
                if data then return data, id end
            end
        end
        return {}, nil
    end
    if value then
        local token = codec.base64_decode(value)
        local plain = token and crypto.decrypt(token, session_key)
        local payload = plain and codec.json_decode(plain)
        if type(payload) == "table" and type(payload.x) == "number" and payload.x > os.time()
                and type(payload.d) == "table" then
            return payload.d, { json = codec.json_encode(payload.d), expires = payload.x }
        end
        return {}, { json = "{}", expires = 0, stale = true } -- expired or forged: clear it
    end
    return {}, nil
end

-- Save the session after a page; returns a Set-Cookie value when the client needs one.
local function save_session(session, state)
    local store = httpd.session_store
    if store then
        local id = state
        if id == nil then
            if next(session) == nil then return nil end -- nothing worth a cookie
            id = codec.hex_encode(crypto.random(16))
            store:set(id, session)
            return cookie_header(id .. "." .. sign(id), SESSION_TTL)
        end
        store:set(id, session)
        return nil
    end
    if state == nil and next(session) == nil then return nil end
    local json, err = codec.json_encode(session)
    if not json then
        host.log_error("session not saved: it must hold plain data (" .. tostring(err) .. ")")
        return nil
    end
    local now = os.time()
    if state then
        if json == "{}" then
            if state.stale or state.json ~= "{}" then return cookie_header("", 0) end
            return nil
        end
        -- unchanged and more than half its lifetime left: the cookie the client has is good
        if json == state.json and state.expires - now > SESSION_TTL / 2 then return nil end
    end
    local expires = now + SESSION_TTL
    local value = str_gsub(codec.base64_encode(crypto.encrypt(
        '{"x":' .. expires .. ',"d":' .. json .. '}', session_key)), "[+/=]",
        { ["+"] = "-", ["/"] = "_", ["="] = "" })
    if #value > MAX_COOKIE then
        host.log_error(("session not saved: %d bytes encrypted, more than a cookie holds (%d); "
            .. "keep less in it, or use a server-side store (httpd.session_store)"):format(#value, MAX_COOKIE))
        return nil
    end
    return cookie_header(value, SESSION_TTL)
end

---------------------------------------------------------------------------
-- Encrypted URLs (MASTER_KEY)
---------------------------------------------------------------------------

local function query_string(params)
    local keys = {}
    for key in pairs(params) do
        if key ~= "e" then keys[#keys + 1] = tostring(key) end
    end
    table.sort(keys) -- the same parameters always give the same URL (cacheable)
    local parts = {}
    for i, key in ipairs(keys) do
        parts[i] = codec.url_encode(key) .. "=" .. codec.url_encode(tostring(params[key]))
    end
    return concat(parts, "&")
end

--- A URL for endpoint with params. With a master key, the parameters travel
--- encrypted and authenticated in `e` (key: master key .. endpoint, so a token
--- is valid for one endpoint only); params.e = false sends them in the clear.
function httpd:to_url(endpoint, params)
    params = params or {}
    local qs = query_string(params)
    if qs == "" then return endpoint end
    local key = self.master_key
    if key == nil or params.e == false then
        return endpoint .. "?" .. qs
    end
    local token = crypto.encrypt(qs, key .. endpoint, true)
    return endpoint .. "?e=" .. codec.url_encode(codec.base64_encode(token))
end

-- query table for a request: plain parameters, plus query.e with the decrypted
-- ones (also merged into query where no plain parameter has the name).
-- Returns nil, err when `e` does not decrypt: never a partial result.
local function request_query(endpoint, qs)
    local query = aio:parse_query(qs)
    local e = query.e
    query.e = {}
    if e == nil or e == "" then return query end
    local key = httpd.master_key
    if key == nil then return nil, "encrypted parameters, but no MASTER_KEY is set" end
    local token = codec.base64_decode(e)
    if not token then return nil, "bad encrypted parameters" end
    local plain = crypto.decrypt(token, key .. endpoint)
    if not plain then return nil, "bad encrypted parameters" end
    local decrypted = aio:parse_query(plain)
    query.e = decrypted
    for k, v in pairs(decrypted) do
        if query[k] == nil then query[k] = v end
    end
    return query
end

---------------------------------------------------------------------------
-- Error pages
---------------------------------------------------------------------------

-- A file named in an error: Jinja2 names its templates relative to the site root.
local function read_source(path)
    local text = templates.read_file(path)
    if text == nil and str_sub(path, 1, 1) ~= "/" and httpd.root then
        text = templates.read_file(join(httpd.root, path))
    end
    return text
end

-- The page with the error in a <template data-eightys-error>, which the
-- live-reload script shows as its overlay.
local function with_overlay(body, details)
    local text = {}
    if details.file then
        text[1] = details.file .. (details.line and (":" .. details.line) or "") .. ": "
            .. tostring(details.message)
    else
        text[1] = tostring(details.message)
    end
    for _, src in ipairs(details.source_lines or {}) do
        text[#text + 1] = (src.current and "> " or "  ") .. src.number .. " | " .. src.text
    end
    local marker = "<template data-eightys-error>" .. codec.html_encode(concat(text, "\n"))
        .. "</template>"
    local at = str_find(body, "</body>", 1, true)
    if at then return str_sub(body, 1, at - 1) .. marker .. str_sub(body, at) end
    return body .. marker
end

-- The error page: details (what templates' error_context gives: file, line,
-- message, source_lines) only in --dev and only for a client on this machine;
-- anyone else gets the production page (the error is in the log either way).
local function error_page(status, err, details, fd)
    local dev = httpd.dev and (fd == nil
        or host.is_local(fd.fd, fd.headers and fd.headers["x-forwarded-for"]))
    if err ~= nil and dev then
        details = details or templates.error_context(tostring(err), { read = read_source })
            or { message = tostring(err) }
        details.message = details.message or tostring(err)
        -- error_context numbers source lines `line`; the error page shows `number`
        for _, src in ipairs(details.source_lines or {}) do src.number = src.number or src.line end
    else
        details = nil
    end
    -- the site's error pages see what main.lua exposed (its layout needs it)
    local vars = {}
    for k, v in pairs(httpd.jinja_globals) do vars[k] = v end
    vars.dev, vars.details, vars.message = dev, details, details and details.message
    local body = host.jinja_error_page(status, vars)
    if details and host.reload_mode then
        -- reload mode: the browser shows this error over the page (the overlay Lua
        -- load errors get), whatever the site's error page looks like
        body = with_overlay(body, details)
    end
    return HTML, body
end

-- aio.http_error_page(status, err, req): the pages the HTTP layer sends (404,
-- 500 for a failed route, 504 for a handler that never answered) in the site's
-- layout. A 504's err says what the request was waiting on (req.waiting_on, set
-- e.g. by a <?lua ?> block that has not called done()).
local function http_error_page(status, err, fd)
    local waiting = fd and fd.waiting_on
    if status == 504 and waiting then
        -- a template block: "file:line: message", so the dev page shows its source
        -- (err, the timeout's log line, names the template engine's own handler)
        local file, line = str_match(waiting, "^<%?lua %?> block at (.-):(%d+) never called done%(%)$")
        if file then
            err = file .. ":" .. line .. ": this <?lua ?> block never called done()"
        elseif err == nil then
            err = "waiting on: " .. waiting
        end
    end
    local mime, body = error_page(status, err, nil, fd)
    if (status == 404 or status == 403) and fd then
        -- the router and the ACL guard take a header table: the security headers too
        -- (the 500 and 504 paths want a content type string)
        return httpd.headers_for(fd, mime), body
    end
    return mime, body
end

---------------------------------------------------------------------------
-- Security headers (httpd.security_headers) and path ACLs (httpd.acl)
---------------------------------------------------------------------------

--- The headers every content-server response carries unless main.lua says
--- otherwise: httpd.security_headers = false sends none; a table is merged over
--- these (a name set to false drops that header). Strict-Transport-Security is
--- never a default, and when given it goes out on TLS requests only.
httpd.SECURITY_DEFAULTS = {
    ["X-Content-Type-Options"] = "nosniff",
    ["Referrer-Policy"] = "strict-origin-when-cross-origin",
    ["X-Frame-Options"] = "SAMEORIGIN",
    ["Content-Security-Policy"] = "frame-ancestors 'self'",
}
local HSTS = "strict-transport-security"
local FLAG_TLS = host.wire.flag_tls

-- [tls][mime] -> header table with Content-Type; nil when there are no security headers
local security_sets -- { [false] = {name = value}, [true] = {...} }, built by apply_security
local security_by_mime = { [false] = {}, [true] = {} }

local function is_tls(fd)
    local flags = fd.flags or 0
    return flags % (2 * FLAG_TLS) >= FLAG_TLS
end

local function header_lines(set)
    local out = {}
    for name, value in pairs(set) do out[#out + 1] = name .. ": " .. value .. "\r\n" end
    table.sort(out)
    return concat(out)
end

-- Merge httpd.security_headers over the defaults; tell Python (static files).
local function apply_security(self)
    local config = self.security_headers
    security_by_mime = { [false] = {}, [true] = {} }
    if config == false then
        security_sets = nil
        host.static_headers("", "")
        return
    end
    if config ~= nil and type(config) ~= "table" then
        error("httpd.security_headers must be a table or false", 0)
    end
    local merged = {} -- lower-case name -> { name, value }
    for name, value in pairs(self.SECURITY_DEFAULTS) do merged[str_lower(name)] = { name, value } end
    for name, value in pairs(config or {}) do
        if type(name) ~= "string" or (value ~= false and type(value) ~= "string")
                or str_find(name, "[^%w!#$%%&'*+.^_`|~-]")
                or (value and str_find(value, "[^\t%C]")) then
            error("httpd.security_headers: " .. tostring(name) .. " must name a header and map to "
                .. "a value without control characters (or false to drop it)", 0)
        end
        merged[str_lower(name)] = value and { name, value } or nil
    end
    local plain, tls = {}, {}
    for lower, pair in pairs(merged) do
        tls[pair[1]] = pair[2]
        if lower ~= HSTS then plain[pair[1]] = pair[2] end
    end
    security_sets = next(tls) and { [false] = plain, [true] = tls } or nil
    host.static_headers(header_lines(plain), header_lines(tls))
end

-- The header table for a response of type `mime` to `fd` (security headers and
-- Content-Type), or just `mime` when there are none.
local function headers_for(fd, mime)
    if security_sets == nil then return mime end
    local tls = is_tls(fd)
    local by_mime = security_by_mime[tls]
    local set = by_mime[mime]
    if set == nil then
        set = { ["Content-Type"] = mime }
        for name, value in pairs(security_sets[tls]) do set[name] = value end
        -- rendered once: every response of this type shares the lines
        by_mime[mime] = http_module.freeze_headers(set) -- bounded: types come from the site's files
    end
    return set
end
httpd.headers_for = headers_for

-- Add the security headers a page did not set itself to its header table.
local function add_security(fd, out_headers)
    if security_sets == nil then return end
    for name, value in pairs(security_sets[is_tls(fd)]) do
        if out_headers[name] == nil and out_headers[str_lower(name)] == nil then
            out_headers[name] = value
        end
    end
end

--- httpd.acl = { ["/admin"] = { allow = { "10.0.0.0/8" } }, ... }: ACLs by path
--- prefix ("/admin" covers /admin and /admin/..., "/" the whole site); the
--- longest prefix that covers a route decides. Applied to every route the scan
--- makes (pages, static files, redirects); read again on every scan.
local acl_prefixes = {} -- { {prefix, id}, ... }, longest first

local function compile_acls(self)
    local list = {}
    local config = self.acl
    if config ~= nil then
        if type(config) ~= "table" then error("httpd.acl must be a table: prefix -> {allow, deny}", 0) end
        local acl = require("eightys.acl")
        for prefix, opts in pairs(config) do
            if type(prefix) ~= "string" or str_sub(prefix, 1, 1) ~= "/" then
                error("httpd.acl: keys must be path prefixes starting with /, got " .. tostring(prefix), 0)
            end
            local ok, id = pcall(acl.compile, opts, 1)
            if not ok then error("httpd.acl[" .. prefix .. "]: " .. tostring(id), 0) end
            -- a prefix without lists (false) lifts a shorter prefix's ACL
            list[#list + 1] = { (str_gsub(prefix, "/+$", "")), id or false }
        end
    end
    table.sort(list, function(a, b) return #a[1] > #b[1] end)
    acl_prefixes = list
end

-- The ACL id for a route path, or nil.
local function acl_of(path)
    for i = 1, #acl_prefixes do
        local prefix = acl_prefixes[i][1]
        if prefix == "" or path == prefix or str_sub(path, 1, #prefix + 1) == prefix .. "/" then
            return acl_prefixes[i][2] or nil
        end
    end
    return nil
end

---------------------------------------------------------------------------
-- Dynamic pages
---------------------------------------------------------------------------

-- Context functions that need no per-request state are shared by all requests
-- (a closure per request and name costs more than a small page's rendering).
local function shared_await(p) return aio:await(p) end
local function shared_to_url(endpoint, params) return httpd:to_url(endpoint, params) end
local function shared_render(name, tbl) return httpd:render(name, tbl) end

-- Per-request context shared by templates and Jinja pages, or nil, status, reason.
local function context(fd, entry, qs, headers, body)
    local endpoint = entry.path
    local query, err = request_query(endpoint, qs)
    if not query then return nil, 400, err end
    local form = {}
    local ctype = headers["content-type"]
    if ctype and body ~= "" and (str_find(ctype, "^application/x%-www%-form%-urlencoded")
            or str_find(ctype, "^multipart/form%-data")) then
        local parsed, status, reason
        if body == nil then -- larger than --body-buffer-size: in a temporary file
            parsed, status, reason = host.form_parse_file(ctype, fd.body_file)
        else
            parsed, status, reason = host.form_parse(ctype, body)
        end
        if not parsed then return nil, status, reason end
        form = parsed
    end
    local session, session_state = session_from(headers)
    -- one table per request, handed to the template engine as its ctx too; every
    -- field is set here (a table that grows later is rehashed)
    local ctx = {
        fd = fd, method = fd.method, endpoint = endpoint, query = query, headers = headers,
        body = body, form = form, session = session, session_state = session_state,
        locals = {}, status_code = 200, response_headers = {},
        status = false, header = false,
        await = shared_await, to_url = shared_to_url, render = shared_render,
    }
    ctx.status = function(code)
        ctx.status_code = type(code) == "number" and code or tonumber(str_sub(code, 1, 3))
    end
    ctx.header = function(name, value) ctx.response_headers[name] = value end
    return ctx
end

local function finish(fd, ctx, mime, page)
    local cookie = save_session(ctx.session, ctx.session_state)
    local status = ctx.status_code
    if status == 301 or status == 302 or status == 303 or status == 307 or status == 308 then
        page = "" -- 80s: a redirect has no body
    end
    local out_headers = ctx.response_headers
    if cookie == nil and next(out_headers) == nil then
        return fd:http_response(status, headers_for(fd, mime), page) -- no per-page table
    end
    add_security(fd, out_headers)
    if cookie then -- beside the page's own Set-Cookie, if any (a table: one line each)
        local own = out_headers["Set-Cookie"]
        if own == nil then
            out_headers["Set-Cookie"] = cookie
        elseif type(own) == "table" then
            own[#own + 1] = cookie
        else
            out_headers["Set-Cookie"] = { own, cookie }
        end
    end
    if out_headers["Content-Type"] == nil and out_headers["content-type"] == nil then
        out_headers["Content-Type"] = mime
    end
    fd:http_response(status, out_headers, page)
end

local function fail_page(fd, status, err, details)
    if status >= 500 then
        host.log_error("page " .. fd.method .. " " .. fd.path .. ": " .. tostring(err))
    end
    local mime, body = error_page(status, err, details, fd)
    fd:http_response(status, headers_for(fd, mime), body)
end

local function run_hook(name, ctx)
    local hook = _G[name]
    if type(hook) == "function" then hook(ctx.method, ctx.endpoint, ctx.session) end
end

-- How a template file is named in errors and logs: relative to the working
-- directory (or absolute), like every other file eightys names.
local display_names = {} -- path -> name; one entry per template file
local function chunkname(path)
    local name = display_names[path]
    if name == nil then
        name = host.display_path(path)
        display_names[path] = name
    end
    return name
end

-- Templates and includes are read only from inside the site root: an include
-- of "../../etc/passwd", or of a link leading out, fails like a missing file.
local function read_inside_root(path)
    if not host.inside_root(path) then
        return nil, "outside the site root"
    end
    return templates.read_file(path)
end

-- The template for an entry, recompiled when one of its files changed (checked
-- at most once a second, so a busy page costs no stat per request).
local os_time = os.time
local function template_of(entry)
    local tpl = entry.template
    local now = os_time() -- whole seconds are enough, and no call into Python
    if tpl and now - entry.checked < 1 then return tpl end
    entry.checked = now
    if tpl then
        -- a file replaced by a link out of the site counts as changed: the
        -- recompile below refuses it
        local fresh = true
        for path, mtime in pairs(entry.mtimes) do
            if host.mtime(path) ~= mtime or not host.inside_root(path) then
                fresh = false
                break
            end
        end
        if fresh then return tpl end
        entry.template = nil
    end
    if not host.inside_root(entry.file) then return nil, "not inside the site root", 404 end
    local compiled, err = templates.compile(entry.file, { root = httpd.root,
        chunkname = chunkname, read = read_inside_root })
    if not compiled then return nil, err end
    local mtimes = {}
    for _, dep in ipairs(compiled.deps) do mtimes[dep] = host.mtime(dep) end
    entry.template, entry.mtimes = compiled, mtimes
    return compiled
end

-- A dynamic page (template or Jinja2): context, hooks, render(entry, ctx) -> page
-- or nil, err[, details], then the response (or the error page).
local function page_handler(entry, render)
    -- a function "defined" in the page's file: the handler-timeout log line names
    -- the page (file:1), not this closure in httpd.lua
    local named = load("return function() end", "@" .. chunkname(entry.file), "t")()
    return function(fd, qs, headers, body)
        fd[http_module.HANDLER] = named
        local ctx, status, reason = context(fd, entry, qs, headers, body)
        if not ctx then return fail_page(fd, status, reason) end
        run_hook("on_before_http", ctx)
        local page, err, details = render(entry, ctx)
        run_hook("on_after_http", ctx)
        if not page then
            if details == 404 then return fail_page(fd, 404) end
            return fail_page(fd, 500, err, details)
        end
        finish(fd, ctx, entry.mime, page)
    end
end

local function render_template(entry, ctx)
    local tpl, err, status = template_of(entry)
    if not tpl then return nil, err, status end
    local page
    page, err = tpl:render(ctx)
    if page then return page end
    -- the template knows its files, even when Lua shortened their names
    return nil, err, httpd.dev and tpl:error_context(err) or nil
end

local function render_jinja(entry, ctx)
    if not host.inside_root(entry.file) then return nil, "not inside the site root", 404 end
    return httpd:render(entry.name, {
        query = ctx.query, headers = ctx.headers, session = ctx.session, form = ctx.form,
        endpoint = ctx.endpoint, method = ctx.method,
    })
end

--- Render the Jinja2 template `name` (a path below the site root) with the
--- values of `tbl` plus httpd.jinja_globals. Returns the text, or nil, err.
function httpd:render(name, tbl)
    local vars = {}
    for k, v in pairs(self.jinja_globals) do vars[k] = v end
    for k, v in pairs(tbl or {}) do vars[k] = v end
    vars.dev = self.dev
    return host.jinja_render(name, vars)
end

--- Make `value` (plain data) available to every Jinja2 page as `name`.
function httpd:expose(name, value)
    self.jinja_globals[name] = value
end

local function static_handler(entry)
    return function(fd)
        if not host.static_serve(fd.fd, fd[http_module.SEQ], entry.path, fd.method, fd.flags, fd.headers) then
            fail_page(fd, 404) -- it left the site root since the scan
        end
    end
end

local function redirect_handler(target)
    return function(fd, qs)
        local headers = { ["Location"] = qs ~= "" and (target .. "?" .. qs) or target,
                          ["Content-Type"] = "text/plain; charset=utf-8" }
        add_security(fd, headers)
        fd:http_response(301, headers, "")
    end
end

---------------------------------------------------------------------------
-- Scanning the site
---------------------------------------------------------------------------

local function walk(root, rel, in_static, found, seen)
    local dir = rel == "" and root or join(root, rel)
    local names, err = net.listdir(dir)
    if not names then return nil, err end
    for _, name in ipairs(names) do
        local is_dir = str_sub(name, -1) == "/"
        local bare = is_dir and str_sub(name, 1, -2) or name
        local child = rel == "" and bare or (rel .. "/" .. bare)
        -- dot files (editor swap files are .name.swp), backups (name~), Emacs autosaves (#name#)
        local hidden = str_sub(bare, 1, 1) == "." or str_find(bare, "~$")
            or str_find(bare, "^#.*#$")
        if hidden then
            -- dot files, editor backups and swap files
        elseif is_dir then
            if str_sub(bare, 1, 2) ~= "i." and not (bare == "static" and httpd.no_static)
                    and not (rel == "" and bare == "errors") then
                local real = host.realpath(join(root, child))
                -- a symlink loop, or a link out of the site (unless httpd.follow_symlinks), is not followed
                if real and host.inside_root(join(root, child)) and not seen[real] then
                    seen[real] = true
                    walk(root, child, in_static or bare == "static", found, seen)
                end
            end
        else
            local path = join(root, child)
            if host.inside_root(path) then
                local method, route, kind = route_of(child, in_static)
                if method then
                    found[#found + 1] = { method = method, path = route, kind = kind,
                                          file = path, name = child, in_static = in_static }
                end
            end
        end
    end
    return found
end

local function mime_of(name)
    return host.mime_type(name)
end

local IMMUTABLE = "public, max-age=31536000, immutable"

-- Cache-Control of a file: browsers revalidate (ETag/Last-Modified, a 304 when
-- unchanged), so an edited file is fetched fresh on the next load; only names
-- that change with their content (app.3f2a1c.css: a hex fingerprint of 6+
-- digits) and folders listed in httpd.immutable (e.g. { "static/vendor/" }) are
-- cached for a year without asking.
local function cache_control_of(self, rel)
    local name = str_match(rel, "([^/]*)$")
    if str_find(name, "[%.%-]%x%x%x%x%x%x+%.[^%.]+$") then
        local hash = str_match(name, "[%.%-](%x+)%.[^%.]+$")
        if str_find(hash, "%d") and str_find(hash, "%a") or #hash >= 8 then return IMMUTABLE end
    end
    local dirs = self.immutable
    if type(dirs) == "table" then
        for _, dir in ipairs(dirs) do
            dir = str_gsub(dir, "^/", "")
            if str_sub(dir, -1) ~= "/" then dir = dir .. "/" end
            if str_sub(rel, 1, #dir) == dir then return IMMUTABLE end
        end
    end
    return "no-cache"
end

--- (Re)build the routes from the site root: new files get routes, deleted files
--- lose theirs, changed templates recompile on their next request.
function httpd:scan()
    local found, err = walk(self.root, "", false, {}, { [self.real_root] = true })
    if not found then return nil, err end
    compile_acls(self)
    apply_security(self)
    host.static_clear()
    local old = self.file_routes
    local guard = require("eightys.acl").guard
    local now = {}
    local dirs = {}
    for _, entry in ipairs(found) do
        local key = entry.method .. " " .. entry.path
        local previous = self.entries and self.entries[key]
        if previous and previous.file == entry.file and previous.kind == entry.kind then
            entry = previous -- keep its compiled template, but look at its files again
            entry.checked = 0
        end
        now[key] = entry
        local handler
        if entry.kind == "template" then
            entry.mime = mime_of((str_gsub(entry.name, "%.dyn", "")))
            handler = page_handler(entry, render_template)
        elseif entry.kind == "jinja" then
            entry.mime = HTML
            handler = page_handler(entry, render_jinja)
        else
            -- a file behind an ACL is not on Python's fast path: its Lua route checks first
            local ok, mount_err = host.static_mount(entry.path, entry.file,
                cache_control_of(self, entry.name), acl_of(entry.path) ~= nil)
            if ok then
                handler = static_handler(entry)
            else
                -- no route: Python has nothing to answer with, the request would hang
                host.log_error("cannot serve " .. entry.file .. ": " .. tostring(mount_err))
                now[key] = nil
            end
        end
        if handler then
            local acl_id = acl_of(entry.path)
            if acl_id then handler = guard(handler, acl_id) end
            aio:http_any(entry.method, entry.path, handler)
            local dir = str_match(entry.path, "^(.+)/$")
            if dir then dirs[dir] = entry.path end
        end
    end
    for dir, target in pairs(dirs) do -- /dir -> /dir/
        local key = "GET " .. dir
        if not now[key] then
            now[key] = { method = "GET", path = dir, kind = "redirect" }
            local handler, acl_id = redirect_handler(target), acl_of(dir)
            if acl_id then handler = guard(handler, acl_id) end
            aio:http_any("GET", dir, handler)
        end
    end
    for key in pairs(old) do
        if not now[key] then
            local method, path = str_match(key, "^(%S+) (.*)$")
            aio:http_remove(method, path)
        end
    end
    local routes = {}
    for key in pairs(now) do routes[key] = true end
    self.file_routes, self.entries = routes, now
    return #found
end

--- Run main.lua (beside the site root, or in it) if there is one.
function httpd:run_main()
    for _, path in ipairs({ join(dirname(strip_slash(self.root)), "main.lua"),
                            join(self.root, "main.lua") }) do
        if host.mtime(path) then
            local text, read_err = templates.read_file(path)
            if not text then error(read_err, 0) end
            local chunk, err = load(text, "@" .. host.display_path(path), "t")
            if not chunk then error(err, 0) end
            local ok, run_err = xpcall(chunk, traceback)
            if not ok then error(run_err, 0) end
            self.main = path
            return path
        end
    end
end

--- Serve the site at opts.root (the site root, or as in 80s the folder holding
--- main.lua and public_html/). Options: root (directory), master_key (at least
--- 16 bytes; "b64:" prefix for base64), no_static, dev (show errors with source).
--- Safe to call again (reload): routes are rebuilt, state survives.
function httpd:initialize(opts)
    -- 80s: root may name the folder holding main.lua + public_html/ (content.py resolve_site)
    local root = strip_slash(host.resolve_site(opts.root or "public_html", ENTRYPOINT))
    if opts.header_size then aio:set_max_http_header(opts.header_size) end -- 80s options
    if opts.body_size then aio:set_max_http_body(opts.body_size) end
    local real = host.realpath(root)
    if not real then error("site root " .. root .. " does not exist", 2) end
    self.root, self.real_root = root, real
    self.no_static = opts.no_static
    self.dev = opts.dev or false
    local key = opts.master_key
    if key and key ~= "" then
        if str_sub(key, 1, 4) == "b64:" then key = codec.base64_decode(str_sub(key, 5)) end
        if not key or #key < 16 then error("MASTER_KEY must be at least 16 bytes", 2) end
        self.master_key = key
    else
        self.master_key = nil
    end
    self.secret = host.secret
    if host.secret_random and WORKERID == 0 and not self.warned_secret then
        self.warned_secret = true
        host.log_warning("no SECRET_KEY or --secret-file: sessions use a random secret, "
            .. "so they end when the server restarts")
    end
    session_key = self.secret .. "/session"
    aio.http_error_page = http_error_page
    self.follow_symlinks = opts.follow_symlinks or false
    host.site_root(root, real, self.follow_symlinks)
    self:run_main()
    -- main.lua may say httpd.follow_symlinks = true
    host.site_root(root, real, self.follow_symlinks)
    local count, err = self:scan()
    if not count then error("cannot read " .. root .. ": " .. tostring(err), 2) end
    return self
end

--- Initialize from the environment: PUBLIC_HTML (the folder holding main.lua and
--- public_html/, as in 80s, or the site root itself; default server/www/, else
--- public_html/ next to the entry script's directory), MASTER_KEY, NO_STATIC=true.
function httpd:default_initialize()
    -- 80s: PUBLIC_HTML holds main.lua + public_html/ (eightys/content.py resolve_site)
    local root = host.resolve_site(os.getenv("PUBLIC_HTML"), ENTRYPOINT)
    return self:initialize({
        root = root,
        master_key = os.getenv("MASTER_KEY"),
        no_static = os.getenv("NO_STATIC") == "true",
        follow_symlinks = os.getenv("FOLLOW_SYMLINKS") == "true",
        dev = DEV,
    })
end

return httpd
