-- HTTP handlers for eightys: routes (80s API plus path parameters, 405 and
-- HEAD), response formatting and streaming responses.
--
-- eightys/protocols/http.py parses requests (httptools) and calls
-- http.dispatch once per request. The handler answers through the request
-- object it gets as `fd`:
--   fd:http_response(status, headers_or_mime, body)   -- one complete response
--   local s = fd:http_stream(status, headers_or_mime)  -- chunked, then
--   s:write(chunk) ... s:close()
-- A response produced before the handler returns goes back to Python as
-- dispatch's return value (no extra call); later ones through host.http_send.
-- Python keeps responses in request order on each connection.

local setmetatable = setmetatable
local next = next
local select = select
local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local error = error
local traceback = require("eightys.errors").traceback -- describes error(table) too
local str_find = string.find
local str_sub = string.sub
local str_lower = string.lower
local str_format = string.format
local str_gsub = string.gsub
local str_char = string.char
local concat = table.concat

local aio = aio
local json_encode = codec.json_encode

local _M = {}

local host -- private host functions (http_send, http_drain), set by _M.attach
local url_decode_path -- defined with the query helpers below

---------------------------------------------------------------------------
-- Status lines, dates, headers
---------------------------------------------------------------------------

-- Reason phrases come from eightys/wire.py (the one source), through _M.attach.
local REASONS = {}
_M.reasons = REASONS

-- "HTTP/1.1 200 OK\r\n" per status, built on first use
local status_lines = setmetatable({}, { __index = function(t, status)
    local line
    if type(status) == "number" then
        if status < 100 or status > 999 or status % 1 ~= 0 then
            error("bad HTTP status " .. tostring(status), 3) -- 1: here, 2: http_response, 3: its caller
        end
        line = str_format("HTTP/1.1 %d %s\r\n", status, REASONS[status] or "Unknown")
    else
        -- 80s style: "404 Not found". The status line needs a space after the
        -- code, so "404" alone gets the standard reason and "404Oops" is refused.
        if str_find(status, "^%d%d%d$") then
            line = str_format("HTTP/1.1 %s %s\r\n", status, REASONS[tonumber(status)] or "Unknown")
        elseif str_find(status, "^%d%d%d [^\r\n]*$") then
            line = "HTTP/1.1 " .. status .. "\r\n"
        else
            error("bad HTTP status " .. tostring(status), 3)
        end
    end
    t[status] = line
    return line
end })

local function status_code(status)
    if type(status) == "number" then return status end
    return tonumber(str_sub(status, 1, 3))
end

-- The Server line and the Connection header per request flags; both derived in
-- _M.attach from eightys/wire.py's flag bits (keep-alive, HTTP/1.0, TLS, ...).
local SERVER -- set by _M.attach
local CONNECTION = {}
local SCHEME = {} -- flags -> "https" or "http" (fd.scheme)
local FLAG_HTTP10 = 2
local FLAG_BODY_FILE = 8 -- the highest flag bit (wire.py): flags >= it means it is set
local draining = false -- the worker is stopping: every response closes its connection

-- "Server: ...\r\nDate: ...\r\n", rebuilt once a second
-- The worker sets it once a second (_M.set_date): no clock call per response.
local server_date = ""
local function server_date_headers()
    return server_date
end

--- "Server: ...\r\nDate: ...\r\n" from now on (the worker calls this every second).
function _M.set_date(date_line)
    server_date = SERVER .. date_line
end

local DEFAULT_TYPE = "text/plain; charset=utf-8"
local JSON_TYPE = "application/json; charset=utf-8"

-- Headers the server writes itself; a handler's own values are dropped.
local MANAGED = { ["content-length"] = true, ["transfer-encoding"] = true,
                  ["connection"] = true, ["date"] = true, ["server"] = true }

-- A header value may hold no control byte but HTAB (RFC 9110 5.5): CR/LF would
-- split the response, NUL and the rest are refused by clients and proxies.
-- "[^\t%C]": any byte that is neither a tab nor a non-control one, in one find.
local function header_value(name, value)
    value = tostring(value)
    if str_find(value, "[^\t%C]") or str_find(name, "[^%w!#$%%&'*+.^_`|~-]") then
        error("bad header " .. str_format("%q", name) .. ": names must be tokens and "
            .. "values must not contain control characters (CR, LF, NUL...) but tab", 4)
    end
    return value
end

-- "Content-Type: x\r\n" per content type, validated once (bounded: types come from code)
local type_lines_count = 0
local type_lines = setmetatable({}, { __index = function(t, mime)
    local line = "Content-Type: " .. header_value("Content-Type", mime) .. "\r\n"
    if type_lines_count < 1024 then
        type_lines_count = type_lines_count + 1
        t[mime] = line
    end
    return line
end })
local DEFAULT_TYPE_LINE = type_lines[DEFAULT_TYPE]
local JSON_TYPE_LINE = type_lines[JSON_TYPE]

-- Header tables rendered once (_M.freeze_headers): table -> { lines, has_type, close }
local frozen = setmetatable({}, { __mode = "k" })

-- Render a handler's headers table (or mime string); returns lines, has_type, wants_close
local function render_headers(headers)
    local kind = type(headers)
    if kind == "string" then
        return type_lines[headers], true, false
    elseif headers == nil then
        return "", false, false
    elseif kind ~= "table" then
        error("headers must be a table or a content type string", 3)
    end
    local done = frozen[headers]
    if done then return done[1], done[2], done[3] end
    local out, n = {}, 0
    local has_type, close = false, false
    for name, value in pairs(headers) do
        local lower = str_lower(name)
        if lower == "content-type" then has_type = true end
        if lower == "connection" and str_lower(tostring(value)) == "close" then close = true end
        if not MANAGED[lower] then
            if type(value) == "table" then -- several values: one line each (Set-Cookie)
                for i = 1, #value do
                    n = n + 1
                    out[n] = name .. ": " .. header_value(name, value[i]) .. "\r\n"
                end
            else
                n = n + 1
                out[n] = name .. ": " .. header_value(name, value) .. "\r\n"
            end
        end
    end
    return concat(out), has_type, close
end

--- Mark a header table that many responses share (and nobody changes afterwards):
--- it is validated and rendered once, here, instead of on every response.
--- @param headers table
--- @return table headers
function _M.freeze_headers(headers)
    if type(headers) ~= "table" then error("freeze_headers: headers must be a table", 2) end
    local lines, has_type, close = render_headers(headers)
    frozen[headers] = { lines, has_type, close }
    return headers
end

---------------------------------------------------------------------------
-- The request object handlers get as `fd`
---------------------------------------------------------------------------

--- @class httprequest
--- @field method string
--- @field path string
--- @field scheme string "https" over TLS, else "http"
--- @field params table path parameters (`/users/:id` -> params.id)
local Request = {}
Request.__index = Request

-- A request's own state, in the array part of its table (req[SEQ]...): its hash
-- part then holds only the fields handlers read (fd, method, path, flags, scheme,
-- headers, params, body), 8 slots instead of 16, and the table takes 320 bytes
-- instead of 448, which LuaJIT's collector sweeps after every request.
--   SEQ: its number on the connection; SYNC: the handler has not returned or
--   waited yet; OUT: the response it produced meanwhile (returned by dispatch);
--   STARTED/FINISHED: a response began/ended; HANDLER: the route's function (for
--   the handler-timeout report); CO: the thread it waits on (weak), or false.
local SEQ, SYNC, OUT, STARTED, FINISHED, HANDLER, CO = 1, 2, 3, 4, 5, 6, 7
_M.SEQ, _M.STARTED, _M.FINISHED, _M.HANDLER = SEQ, STARTED, FINISHED, HANDLER
-- set on few requests (a close asked for, a client gone): defaults here keep them
-- out of every request table (see _M.dispatch)
Request.closing = false
Request.gone = false
local EMPTY = setmetatable({}, { __newindex = function() error("fd.params is read-only", 2) end })
_M.Request = Request

local waiting -- fd -> {seq -> request} for handlers still working (defined below)

local function send(req, data, final)
    if req.gone then return false end -- timed out or the client left: nobody to tell
    if final then
        req[FINISHED] = true
        if req[SYNC] then
            if not req[OUT] then
                req[OUT] = data -- returned by dispatch: saves a call into Python
                return true
            end
        else
            local by_fd = waiting[req.fd]
            if by_fd then
                by_fd[req[SEQ]] = nil
                if next(by_fd) == nil then waiting[req.fd] = nil end
            end
        end
    end
    return host.http_send(req.fd, req[SEQ], data, final, req.closing or draining)
end

--- Send a complete response.
--- @param status integer|string 200, or 80s style "200 OK"
--- @param headers? table|string header table, or just the Content-Type
--- @param body? string|table a table is sent as JSON
function Request:http_response(status, headers, body)
    if self[STARTED] then error("a response was already sent for this request", 2) end
    local lines, has_type
    if type(headers) == "string" then -- the common case: just a content type
        lines, has_type = type_lines[headers], true
    else
        local close
        lines, has_type, close = render_headers(headers)
        if close then self.closing = true end
    end
    local body_type = type(body)
    if body_type == "table" then
        local encoded, err = json_encode(body)
        if encoded == nil then error("cannot encode the response body as JSON: " .. err, 2) end
        body = encoded
        if not has_type then lines = lines .. JSON_TYPE_LINE end
    else
        if body_type ~= "string" then
            if body_type == "number" or body_type == "boolean" then
                body = tostring(body)
            elseif body == nil then
                body = ""
            else -- a function, userdata, thread: its address is no answer for a client
                error("the response body must be a string or a table (JSON), got a " .. body_type, 2)
            end
        end
        if not has_type then lines = lines .. DEFAULT_TYPE_LINE end
    end
    local flags = (self.closing or draining) and 0 or self.flags
    local code = type(status) == "number" and status or status_code(status)
    local status_line = status_lines[status]
    -- Only now: if anything above raised (bad status, header or body), nothing
    -- was sent and the error handler can still answer 500.
    self[STARTED] = true
    if code == 204 or code == 304 or code < 200 then
        return send(self, status_line .. server_date_headers() .. lines
            .. CONNECTION[flags] .. "\r\n", true)
    end
    local length = #body
    if self.method == "HEAD" then body = "" end
    return send(self, status_line .. server_date_headers() .. lines .. "Content-Length: "
        .. length .. "\r\n" .. CONNECTION[flags] .. "\r\n" .. body, true)
end

--- @class httpstream
local Stream = {}
Stream.__index = Stream

--- Start a streaming response: the status and headers go out now, the body
--- follows in chunks (chunked encoding; for HTTP/1.0 clients the connection
--- closes at the end instead).
--- @return httpstream
function Request:http_stream(status, headers)
    if self[STARTED] then error("a response was already sent for this request", 2) end
    local lines, has_type, close = render_headers(headers)
    if not has_type then lines = lines .. "Content-Type: " .. DEFAULT_TYPE .. "\r\n" end
    local http10 = self.flags % (2 * FLAG_HTTP10) >= FLAG_HTTP10
    if close or http10 then self.closing = true end
    local framing = http10 and "" or "Transfer-Encoding: chunked\r\n"
    local head = status_lines[status] .. server_date_headers() .. lines .. framing
        .. CONNECTION[(self.closing or draining) and 0 or self.flags] .. "\r\n"
    local stream = setmetatable({ req = self, chunked = not http10,
                                  head_only = self.method == "HEAD" }, Stream)
    self[STARTED] = true -- not before: a bad status or header above still gets a 500
    send(self, head, false)
    return stream
end

--- Send one chunk of the body. Returns true, or false, "closed" if the client left.
function Stream:write(data)
    if self.closed then return false, "closed" end
    data = tostring(data)
    if data == "" or self.head_only then return true end
    if self.chunked then
        data = str_format("%x\r\n", #data) .. data .. "\r\n"
    end
    return send(self.req, data, false)
end

--- Finish the response.
function Stream:close()
    if self.closed then return false end
    self.closed = true
    return send(self.req, (self.chunked and not self.head_only) and "0\r\n\r\n" or "", true)
end
Stream.finish = Stream.close

--- A promise resolved once the client has taken what was sent so far: await it
--- between chunks to produce no faster than the client reads.
--- @return aiopromise
function Stream:drain()
    local resolve, promise = aio:prepare_promise()
    host.http_drain(self.req.fd, resolve)
    return promise
end

local BODY_CHUNK = 65536
local io_open = io and io.open
local pcall = pcall

-- Feed `fn` the pieces of `data` (at most BODY_CHUNK bytes each).
local function feed(data, fn)
    for i = 1, #data, BODY_CHUNK do fn(str_sub(data, i, i + BODY_CHUNK - 1)) end
end

--- The request body, whatever its size. With `fn`, it is called with each piece
--- in order (at most 64 KiB each; fn may aio:await) and read_body returns true;
--- without, the whole body is returned as one string (for a body written to a
--- file, that reads it into memory). A body larger than --body-buffer-size is
--- in a temporary file (fd.body_file, removed once the response is sent): fd.body
--- and the handler's `body` argument are then nil. Returns nil, err if the file
--- cannot be read.
--- @param fn? fun(chunk: string)
--- @return string|boolean|nil, string?
function Request:read_body(fn)
    local path = self.body_file
    if path == nil then
        local body = self.body or ""
        if fn == nil then return body end
        feed(body, fn)
        return true
    end
    local file, err = io_open(path, "rb")
    if not file then return nil, err end
    if fn == nil then
        local data = file:read("*a")
        file:close()
        return data
    end
    local ok, failure = pcall(function()
        while true do
            local chunk = file:read(BODY_CHUNK)
            if chunk == nil then return end
            fn(chunk)
        end
    end)
    file:close()
    if not ok then error(failure, 0) end
    return true
end

--- Ask for the connection to close after this response.
function Request:close()
    self.closing = true
end

-- Called when the handler raised: answer 500 if nothing was sent, else cut the connection.
local function fail(req, err)
    if req[FINISHED] then return end
    if not req[STARTED] then
        req[STARTED] = true
        local mime, body = DEFAULT_TYPE, "Internal Server Error"
        local page = aio.http_error_page
        if page then
            local ok, page_mime, page_body = pcall(page, 500, err, req)
            if ok and page_body then mime, body = page_mime, page_body end
        end
        local out = status_lines[500] .. server_date_headers() .. "Content-Type: "
            .. mime .. "\r\nContent-Length: " .. #body .. "\r\n"
            .. CONNECTION[(req.closing or draining) and 0 or req.flags] .. "\r\n"
            .. (req.method == "HEAD" and "" or body)
        send(req, out, true)
    else
        req.closing = true
        send(req, "", true)
    end
end

---------------------------------------------------------------------------
-- Routes
---------------------------------------------------------------------------

aio.http_routes = aio.http_routes or { exact = {}, patterns = {} }
local routes = aio.http_routes

-- "/users/:id/posts/:post" -> Lua pattern and parameter names
local function compile_pattern(path)
    local names = {}
    local pattern = str_gsub(path, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
    pattern = str_gsub(pattern, ":([%a_][%w_]*)", function(name)
        names[#names + 1] = name
        return "([^/]+)"
    end)
    return "^" .. pattern .. "$", names
end

--- Register handler h(fd, query, headers, body) for `method` and `path`.
--- Paths may hold parameters: "/users/:id" matches "/users/42" with fd.params.id == "42".
--- Registering the same method and path again replaces the handler (reloads do this).
--- Options (a table): allow/deny network lists (README, "Network ACLs"); a
--- client they refuse gets 403 and the handler does not run.
function aio:http_any(method, path, handler, options)
    if type(method) ~= "string" or type(path) ~= "string" or type(handler) ~= "function" then
        error("aio:http_any(method, path, handler) expects two strings and a function", 2)
    end
    if options ~= nil then
        local acl = require("eightys.acl")
        local id = acl.compile(options, 2)
        if id ~= nil then handler = acl.guard(handler, id) end
    end
    method = method:upper()
    if str_find(path, "/:[%a_]") then
        local pattern, names = compile_pattern(path)
        local list = routes.patterns
        for i = 1, #list do
            local r = list[i]
            if r.path == path and r.method == method then
                r.handler = handler
                return
            end
        end
        list[#list + 1] = { method = method, path = path, pattern = pattern,
                            names = names, handler = handler }
    else
        local by_path = routes.exact[path]
        if by_path == nil then
            by_path = {}
            routes.exact[path] = by_path
        end
        by_path[method] = handler
    end
end

--- GET handler (also answers HEAD, without the body). `options`: see http_any.
function aio:http_get(path, handler, options) return self:http_any("GET", path, handler, options) end
--- POST handler.
function aio:http_post(path, handler, options) return self:http_any("POST", path, handler, options) end
--- PUT handler.
function aio:http_put(path, handler, options) return self:http_any("PUT", path, handler, options) end
--- DELETE handler.
function aio:http_delete(path, handler, options) return self:http_any("DELETE", path, handler, options) end
--- PATCH handler.
function aio:http_patch(path, handler, options) return self:http_any("PATCH", path, handler, options) end

--- Remove every registered route (e.g. before re-registering on reload).
function aio:http_clear()
    routes.exact = {}
    routes.patterns = {}
end

--- Remove the handler for `method` and `path` (the content server does this for
--- files deleted between reloads). Returns true if there was one.
function aio:http_remove(method, path)
    method = method:upper()
    local by_path = routes.exact[path]
    if by_path and by_path[method] then
        by_path[method] = nil
        if next(by_path) == nil then routes.exact[path] = nil end
        return true
    end
    local list = routes.patterns
    for i = 1, #list do
        if list[i].path == path and list[i].method == method then
            table.remove(list, i)
            return true
        end
    end
    return false
end

--- Optional hook: aio.http_error_page = function(status, err, fd) -> mime, body
--- renders the built-in 404 and 500 answers (the content server sets it).
aio.http_error_page = aio.http_error_page

-- The handler table for a path: method -> handler, and for pattern routes
-- method -> path parameters, each from the route that matched that method
-- (GET /u/:id and POST /u/:name give params.id and params.name respectively).
local function lookup(path)
    local by_path = routes.exact[path]
    if by_path then return by_path, nil end
    local list = routes.patterns
    local found, params
    for i = 1, #list do
        local r = list[i]
        local captures = { path:match(r.pattern) }
        if captures[1] ~= nil then
            if found == nil then found, params = {}, {} end
            if found[r.method] == nil then
                found[r.method] = r.handler
                local values = {}
                for j = 1, #r.names do values[r.names[j]] = captures[j] end
                params[r.method] = values
            end
        end
    end
    return found, params
end

local function allow_header(by_path)
    local methods = {}
    for method in pairs(by_path) do methods[#methods + 1] = method end
    if by_path.GET and not by_path.HEAD then methods[#methods + 1] = "HEAD" end
    table.sort(methods)
    return concat(methods, ", ")
end

--- The default dispatcher: route lookup, HEAD via GET, 405 with Allow, 404.
--- Override it to route differently (80s API); call aio:route(...) from yours
--- to fall back to the routes.
function aio:route(fd, method, path, query, headers, body)
    local by_path, params = lookup(path)
    if by_path == nil and str_find(path, "%", 1, true) then
        -- routes are registered decoded: "/a%20b" is "/a b" (and "%2e%2e" is "..",
        -- which never names a route)
        by_path, params = lookup(url_decode_path(path))
    end
    if by_path then
        local handler = by_path[method]
        if handler == nil and method == "HEAD" then
            handler, method = by_path.GET, "GET"
        end
        if handler then
            if params then fd.params = params[method] end
            fd[HANDLER] = handler -- for the handler-timeout report
            -- not a tail call: returning into a Lua frame keeps the handler's
            -- compiled trace (a return into xpcall's C frame is NYI in LuaJIT)
            handler(fd, query, headers, body)
            return
        end
        return fd:http_response(405, { ["Allow"] = allow_header(by_path),
                                       ["Content-Type"] = DEFAULT_TYPE }, "Method Not Allowed")
    end
    local page = aio.http_error_page
    if page then
        local mime, page_body = page(404, nil, fd)
        if page_body then return fd:http_response(404, mime, page_body) end
    end
    return fd:http_response(404, DEFAULT_TYPE, "Not Found")
end

--- 80s: aio:on_http(fd, method, path, query, headers, body) handles every
--- request; override it to take over dispatching.
--- (By default it is aio.route itself: one call less per request.)
aio.on_http = aio.route

---------------------------------------------------------------------------
-- Query strings
---------------------------------------------------------------------------

local function hex_char(h) return str_char(tonumber(h, 16)) end

-- %XX only ('+' is a space in query strings, not in paths)
url_decode_path = function(s)
    return (str_gsub(s, "%%(%x%x)", hex_char))
end

--- Decode %XX and '+' (form encoding).
local function url_decode(s)
    -- plain finds: LuaJIT compiles them, pattern finds it does not
    if not str_find(s, "%", 1, true) and not str_find(s, "+", 1, true) then return s end
    s = str_gsub(s, "+", " ")
    return (str_gsub(s, "%%(%x%x)", hex_char))
end

--- Parse "a=1&b=x+y" into {a="1", b="x y"}; the first occurrence of a key wins.
--- With private_key (80s), parameters encrypted in `e` by aio:to_url /
--- aio:create_query are decrypted into the result (and into result.e).
--- @param qs string|nil
--- @param private_key? string
--- @return table
function aio:parse_query(qs, private_key)
    if qs == nil then return {} end
    local len = #qs
    if len > 0 and not str_find(qs, "&", 1, true) then
        -- one parameter (the usual case): no loop, so that LuaJIT compiles the
        -- handler that calls this (a loop inside a function's trace aborts it); the
        -- table is made with its one slot (no resize on the first insert)
        local eq = str_find(qs, "=", 1, true)
        local out
        if eq then
            out = { [url_decode(str_sub(qs, 1, eq - 1))] = url_decode(str_sub(qs, eq + 1)) }
        else
            out = { [url_decode(qs)] = "" }
        end
        if private_key ~= nil then return self:_decrypt_query(out, private_key) end
        return out
    end
    local out = {}
    local pos = 1
    while pos <= len do
        local amp = str_find(qs, "&", pos, true)
        local stop = amp and amp - 1 or len
        if stop >= pos then
            local eq = str_find(qs, "=", pos, true)
            local key, value
            if eq and eq <= stop then
                key, value = url_decode(str_sub(qs, pos, eq - 1)), url_decode(str_sub(qs, eq + 1, stop))
            else
                key, value = url_decode(str_sub(qs, pos, stop)), ""
            end
            if out[key] == nil then out[key] = value end
        end
        pos = stop + 2
    end
    if private_key ~= nil then return self:_decrypt_query(out, private_key) end
    return out
end

---------------------------------------------------------------------------
-- Dispatch (called from Python once per request)
---------------------------------------------------------------------------

-- Each request runs in a pooled coroutine (handlers may aio:await); the loop
-- has fixed arguments and one xpcall, because it runs for every request.
local IDLE = aio.IDLE
local co_yield = coroutine.yield
local on_http_error

-- aio.on_http is called from this Lua function, not by xpcall directly, for the
-- same reason (aio:route and what it calls get compiled traces)
local function on_http(...)
    aio.on_http(aio, ...)
end

local function serve_loop(req, method, path, query, headers, body)
    while true do
        local ok, err = xpcall(on_http, traceback, req, method, path, query, headers, body)
        if not ok then on_http_error(req, err) end
        req, method, path, query, headers, body = co_yield(IDLE)
    end
end
local start_request = aio:coroutine_pool(serve_loop)

on_http_error = function(req, err)
    host.log_error("HTTP handler for " .. req.method .. " " .. req.path .. ": " .. tostring(err))
    fail(req, err)
end

-- Inputs that repeat (a keep-alive client's header block) are parsed once they are
-- seen twice; later calls get a copy of the kept result
-- (one table insert per field instead of new strings). Bounded: inputs up to
-- max_bytes, max_kept of them (and as many seen once), forgotten all at once when
-- full. parse(raw, into) fills `into` and returns how many fields it set.
local table_new = (pcall(require, "table.new")) and require("table.new")
    or function() return {} end

local load = loadstring or load
local unpack = table.unpack or unpack -- Lua 5.4 / LuaJIT

-- A function that returns a new copy of `template` (a table of strings or numbers):
-- a table constructor made with load(), whose values are upvalues. LuaJIT compiles
-- it into the caller's trace, where a copy loop would abort that trace (an inner
-- loop): the request path would run in the interpreter. nil if too big for
-- upvalues (LuaJIT allows 60).
local function constructor(template)
    local keys, values, n = {}, {}, 0
    for k, v in next, template do
        n = n + 1
        keys[n], values[n] = k, v
    end
    if n > 48 then return nil end
    local names, fields = {}, {}
    for i = 1, n do
        names[i] = "v" .. i
        fields[i] = "[" .. str_format("%q", keys[i]) .. "] = v" .. i
    end
    local source = (n > 0 and ("local " .. table.concat(names, ", ") .. " = ...\n") or "")
        .. "return function() return { " .. table.concat(fields, ", ") .. " } end"
    local chunk = load(source, "=header table")
    return chunk and chunk(unpack(values, 1, n))
end

-- a kept input is copied this many times before it gets its constructor (load() is
-- not free: inputs that do not repeat never pay for it)
local HITS_BEFORE_CONSTRUCTOR = 16

local function memo_parser(parse, max_kept, max_bytes)
    local kept, kept_count = {}, 0
    local seen, seen_count = {}, 0
    local function parse_memo(raw)
        local entry = kept[raw]
        if entry then
            local make = entry.make
            if make then return make() end
            local template = entry.template
            local hits = entry.hits + 1
            entry.hits = hits
            if hits >= HITS_BEFORE_CONSTRUCTOR then
                entry.make = constructor(template) or false
                entry.hits = -1e9 -- never again, made or not
            end
            local size = entry.size
            -- presized when big enough to be worth a C call (growing rehashes)
            local out = size > 4 and table_new(0, size) or {}
            for k, v in next, template do out[k] = v end
            return out
        end
        local out = {}
        local count = parse(raw, out)
        if #raw <= max_bytes then
            if seen[raw] then -- the second time: keep it parsed
                if kept_count >= max_kept then kept, kept_count = {}, 0 end
                local template = {}
                for k, v in next, out do template[k] = v end
                kept[raw] = { template = template, size = count, hits = 0, make = false }
                kept_count = kept_count + 1
            else
                if seen_count >= max_kept then seen, seen_count = {}, 0 end
                seen[raw] = true
                seen_count = seen_count + 1
            end
        end
        return out
    end
    return parse_memo, function() return kept_count, seen_count end
end

-- "name\0value\0name\0value" as received -> {lower-case name = value}; a
-- repeated field's values are joined with ", " (RFC 9110 5.3). One string from
-- Python instead of one argument per field: O(n), whatever the count.
local function parse_fields(raw, headers)
    if raw == "" then return 0 end
    local pos, count = 1, 0
    while true do
        local sep = str_find(raw, "\0", pos, true)
        local name = str_lower(str_sub(raw, pos, sep - 1))
        local stop = str_find(raw, "\0", sep + 1, true)
        local value = str_sub(raw, sep + 1, stop and stop - 1 or -1)
        local prev = headers[name]
        if prev == nil then count = count + 1 end
        headers[name] = prev and (prev .. ", " .. value) or value
        if stop == nil then return count end
        pos = stop + 1
    end
end

-- a keep-alive client mostly sends the same block again and again
local parse_headers, header_cache_sizes = memo_parser(parse_fields, 256, 4096)
_M.parse_headers = parse_headers

--- Internal (tests): how many header blocks are kept parsed, and seen once.
_M.header_cache_sizes = header_cache_sizes

waiting = {}

-- The request table a handler gets as `fd`, and the handler's arguments.
local function new_request(fd, seq, method, path, query, body, flags, raw_headers)
    local headers = parse_headers(raw_headers)
    local body_file
    if body == nil then
        body = ""
    elseif flags >= FLAG_BODY_FILE then -- over --body-buffer-size: `body` is its file
        body_file, body = body, nil
    end
    -- every field a usual request gets is set here: adding keys later would
    -- grow (rehash) the table, which costs more than the rest of a small request.
    -- The hash part has the eight fields handlers read (LuaJIT sizes it in powers
    -- of two: a ninth doubles it), the request's own state is in the array part
    -- (see SEQ); the rarely set `closing` and `gone` default to false in Request.
    local req = setmetatable({ seq, true, false, false, false, false, false,
                               fd = fd, method = method, path = path, flags = flags,
                               scheme = SCHEME[flags], headers = headers, params = EMPTY,
                               body = body }, Request)
    if body_file then req.body_file = body_file end
    return req, method, path, query, headers, body
end

-- The handler returned or began to wait (its coroutine yielded): what the caller
-- of dispatch/serve gets. From now on its answer goes through host.http_send.
local function settle(req)
    req[SYNC] = false
    local out = req[OUT]
    if out then
        req[OUT] = false
        if req.closing or draining then
            host.http_send(req.fd, req[SEQ], out, true, true)
            return false
        end
        return out
    end
    if req[FINISHED] then return false end
    local fd = req.fd
    local by_fd = waiting[fd] -- where it waits (req[CO]), should it never answer
    if by_fd == nil then
        by_fd = {}
        waiting[fd] = by_fd
    end
    by_fd[req[SEQ]] = req
    return nil
end

--- One request (called by eightys/protocols/http.py through lupa). Returns the
--- complete response if the handler produced it before returning (and it does not
--- close the connection): the common case costs no call back into Python.
--- Otherwise false if the handler answered through http_send, nil if it is still
--- working.
function _M.dispatch(fd, seq, method, url, body, flags, raw_headers)
    local path, query = url, ""
    local q = str_find(url, "?", 1, true)
    if q then
        path, query = str_sub(url, 1, q - 1), str_sub(url, q + 1)
    end
    local req, headers
    req, method, path, query, headers, body = new_request(fd, seq, method, path, query, body,
                                                          flags, raw_headers)
    req[CO] = start_request(req, method, path, query, headers, body)
    return settle(req)
end

-- Requests being served by _M.serve that have not returned, waited or failed yet
-- (a handler can serve another request inside it, through Python).
local serving, serving_depth = {}, 0

local function serve_request(fd, seq, method, path, query, body, flags, raw_headers)
    local req, headers
    req, method, path, query, headers, body = new_request(fd, seq, method, path, query, body,
                                                          flags, raw_headers)
    local depth = serving_depth + 1
    serving_depth = depth
    serving[depth] = req
    aio.on_http(aio, req, method, path, query, headers, body)
    if req[SYNC] then -- it did not wait: its result goes to Python now
        serving[depth] = nil
        serving_depth = depth - 1
        return settle(req)
    end
    aio._catch(req[CO][1], nil) -- it finished after waiting: nothing more to catch
end

--- The same as dispatch (with the URL split into path and query), as the body of
--- a Lua thread that Python resumes through the C API (eightys/lua_call.pyx), as
--- OpenResty runs a request: no coroutine
--- switch in Lua, no xpcall. If the handler waits, the thread yields to Python,
--- which then calls _M.suspended with it (aio resumes it later); if it raises, the
--- thread is dead and Python calls _M.failed. (This wrapper is not compiled by
--- LuaJIT, its return into C is NYI; serve_request, which does the work, is.)
function _M.serve(fd, seq, method, path, query, body, flags, raw_headers)
    local out = serve_request(fd, seq, method, path, query, body, flags, raw_headers)
    return out
end

-- pops the request on top of `serving` (nil: none, then an error of serve itself)
local function unserve()
    local depth = serving_depth
    local req = serving[depth]
    if req then
        serving[depth] = nil
        serving_depth = depth - 1
    end
    return req
end

local WEAK_VALUES = { __mode = "v" }

local function catch_http_error(co, err, req)
    on_http_error(req, traceback(co, err))
end

--- The thread `co` running _M.serve yielded (its handler waits): what dispatch
--- would return for that request. An error after this is caught by aio, which
--- resumes the thread: the request still gets its 500.
function _M.suspended(co)
    local req = unserve()
    -- held weakly: what the handler waits on keeps the thread alive; if that is
    -- dropped, the thread goes (the request still gets its 504 or is gone)
    req[CO] = setmetatable({ co }, WEAK_VALUES)
    aio._catch(co, catch_http_error, req)
    return settle(req)
end

--- The thread `co` running _M.serve raised `err`: the handler's failure is logged
--- and answered (500), and what dispatch would return for it is returned.
function _M.failed(co, err)
    local req = unserve()
    if req == nil then error(traceback(co, err), 0) end -- serve's own bug: Python raises
    on_http_error(req, traceback(co, err))
    return settle(req)
end

local LIBRARY_DIR = "eightys/lua/"

-- "file.lua:12" for a Lua function
local function where(fn)
    if type(fn) ~= "function" then return "unknown" end
    local info = debug.getinfo(fn, "S")
    return info.short_src .. ":" .. (info.linedefined or 0)
end

-- The innermost frame of a suspended handler outside the library: where it waits.
local function waiting_at(co)
    if type(co) ~= "thread" then return "unknown" end
    for line in string.gmatch(traceback(co, "", 0), "\n%s*([^\n]+)") do
        local at = line:match("^(.-:%d+):")
        if at and not str_find(at, LIBRARY_DIR, 1, true) then return at end
    end
    return "unknown"
end

--- Request `seq` on `fd` got no answer within --handler-timeout: log where it is
--- stuck and return the 504 to send (the app's error page, if it has one);
--- whatever the handler sends later is dropped.
function _M.timeout(fd, seq)
    local by_fd = waiting[fd]
    local req = by_fd and by_fd[seq]
    if req == nil then return nil end
    by_fd[seq] = nil
    if next(by_fd) == nil then waiting[fd] = nil end
    local err = str_format("handler timeout after %s s: %s %s (handler at %s), waiting on: %s",
        tostring(host.handler_timeout or "?"), req.method, req.path, where(req[HANDLER]),
        req.waiting_on or waiting_at(type(req[CO]) == "table" and req[CO][1] or req[CO]))
    host.log_error(err)
    local mime, body = DEFAULT_TYPE, "Gateway Timeout"
    local page = aio.http_error_page
    if page then
        local ok, page_mime, page_body = pcall(page, 504, err, req)
        if ok and page_body then mime, body = page_mime, page_body end
    end
    req.gone = true
    return status_lines[504] .. server_date_headers() .. "Content-Type: " .. mime
        .. "\r\nContent-Length: " .. #body .. "\r\nConnection: close\r\n\r\n"
        .. (req.method == "HEAD" and "" or body)
end

--- Connection `fd` closed while handlers were working on its requests.
function _M.gone(fd)
    local by_fd = waiting[fd]
    if by_fd == nil then return end
    waiting[fd] = nil
    for _, req in pairs(by_fd) do req.gone = true end
end

--- The worker is stopping: responses from now on carry Connection: close.
function _M.set_draining(on)
    draining = on and true or false
end

--- Internal: whether any route is registered or aio:on_http was replaced (the
--- worker then serves HTTP even if the script also defines the raw hooks).
function _M.has_routes()
    return next(routes.exact) ~= nil or #routes.patterns > 0 or aio.on_http ~= aio.route
end

--- Internal: bootstrap hands over the host functions.
function _M.attach(private)
    host = private
    local wire = private.wire
    for code, phrase in pairs(wire.reasons) do REASONS[code] = phrase end
    SERVER = wire.server_line
    _M.set_date(private.date_line())
    FLAG_HTTP10 = wire.flag_http10
    FLAG_BODY_FILE = wire.flag_body_file
    if wire.flag_limit ~= 2 * FLAG_BODY_FILE then
        error("eightys/wire.py: flag_body_file must stay the highest flag bit (http.dispatch)")
    end
    local keep_alive, tls = wire.flag_keep_alive, wire.flag_tls
    for flags = 0, wire.flag_limit - 1 do
        local keeps = flags % (2 * keep_alive) >= keep_alive
        local http10 = flags % (2 * FLAG_HTTP10) >= FLAG_HTTP10
        CONNECTION[flags] = not keeps and "Connection: close\r\n"
            or (http10 and "Connection: keep-alive\r\n" or "")
        SCHEME[flags] = flags % (2 * tls) >= tls and "https" or "http"
    end
end

return _M
