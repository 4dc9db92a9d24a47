-- The rest of 80s's Lua surface (github.com/diznq/80s, aio/aio.lua and the C
-- libraries), so apps written for 80s run unchanged: the globals (NODE_ID,
-- NILFD, S80_FD_*, S80_RELOAD), the aio methods eightys' own library does not
-- have (stream routes, popen, close handlers, 80s encryption helpers, ...), and
-- the net/codec/crypto entries (sockname, partscan, mkdir, lua_encode,
-- mysql_encode, cipher).
--
-- bootstrap.lua loads it once per Lua state, after aio and eightys.http. The
-- net/codec/crypto tables apps see hold Lua functions (type(f) == "function",
-- as in 80s); the library keeps the Python callables it captured before.

local type = type
local pairs = pairs
local ipairs = ipairs
local select = select
local tostring = tostring
local tonumber = tonumber
local error = error
local setmetatable = setmetatable
local str_find = string.find
local str_sub = string.sub
local str_lower = string.lower
local str_format = string.format
local str_gsub = string.gsub
local str_match = string.match
local str_gmatch = string.gmatch
local concat = table.concat
local sort = table.sort
local co_resume = coroutine.resume
local co_status = coroutine.status
local co_yield = coroutine.yield
local unpack = unpack or table.unpack

local aio = aio
local aiosocket = aiosocket
local host = require("eightys.host")

local _M = {}

---------------------------------------------------------------------------
-- Globals
---------------------------------------------------------------------------

--- "NODE/PORT/WORKERID": this worker's name among all nodes (80s).
NODE_ID = str_format("%s/%d/%d", NODE, PORT, WORKERID)
--- The null handle (80s pushes NULL); handles are opaque, so this is only a marker.
NILFD = NILFD or 0
S80_FD_SOCKET = 1
S80_FD_KTLS_SOCKET = 2
S80_FD_PIPE = 3
S80_FD_OTHER = 4
S80_FD_SERVER_SOCKET = 5
S80_MB_MESSAGE = 5
--- Passed to net.reload / net.quit / net.mail to act on the whole server (80s).
S80_RELOAD = S80_RELOAD or setmetatable({}, { __tostring = function() return "S80_RELOAD" end })
local S80_RELOAD = S80_RELOAD

---------------------------------------------------------------------------
-- net, codec, crypto additions (raw Python callables; wrapped below)
---------------------------------------------------------------------------

local raw_reload, raw_mail = net.reload, net.mail

net.sockname = host.sockname
net.popen = host.popen

--- net.reload(): this worker re-runs its entry script; net.reload(S80_RELOAD):
--- every worker does (80s's full reload).
net.reload = function(ctx, ...)
    if ctx == S80_RELOAD then return host.reload_all() end
    return raw_reload(ctx, ...)
end

--- net.mail(worker, message[, receiver_fd]) (eightys), or 80s's eight-argument
--- net.mail(S80_RELOAD, sender_wid, sender_elfd, sender_fd, target_wid, target_fd, type, msg).
net.mail = function(target, ...)
    if target == S80_RELOAD then
        local _, _, sender_fd, target_wid, target_fd, _, message = ...
        return raw_mail(target_wid, message, target_fd, sender_fd)
    end
    return raw_mail(target, ...)
end

local function encode_key(k)
    if type(k) == "string" then return "[" .. str_format("%q", k) .. "]" end
    return "[" .. tostring(k) .. "]"
end

local function lua_encode(value, depth)
    local kind = type(value)
    if kind == "string" then
        return (str_gsub(str_format("%q", value), "\\\n", "\\n"))
    elseif kind == "number" then
        if value ~= value then return "(0/0)" end
        if value == math.huge then return "math.huge" end
        if value == -math.huge then return "-math.huge" end
        if value % 1 == 0 and value > -2^53 and value < 2^53 then
            return str_format("%d", value)
        end
        return str_format("%.17g", value)
    elseif kind == "boolean" or kind == "nil" then
        return tostring(value)
    elseif kind ~= "table" then
        error("codec.lua_encode: cannot encode a " .. kind, depth + 2)
    end
    if depth > 64 then error("codec.lua_encode: table nested too deeply (or a cycle)", depth + 2) end
    local out, n = {}, #value
    for i = 1, n do out[i] = lua_encode(value[i], depth + 1) end
    local keys = {}
    for k in pairs(value) do
        if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
            keys[#keys + 1] = k
        end
    end
    sort(keys, function(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then return ta < tb end
        if ta == "number" or ta == "string" then return a < b end
        return tostring(a) < tostring(b)
    end)
    for _, k in ipairs(keys) do
        out[#out + 1] = encode_key(k) .. "=" .. lua_encode(value[k], depth + 1)
    end
    return "{" .. concat(out, ",") .. "}"
end

--- codec.lua_encode(table): the table as a Lua literal (`load("return " .. s)` reads it back).
codec.lua_encode = function(value)
    if type(value) ~= "table" then error("codec.lua_encode: a table expected", 2) end
    return lua_encode(value, 0)
end

-- Apps see Lua functions, like 80s (lupa's Python callables are userdata).
-- Library code captured the raw callables already, so this costs it nothing.
local function as_lua_functions(tbl)
    local out = {}
    for name, fn in pairs(tbl) do
        if type(fn) == "function" then
            out[name] = fn
        elseif type(fn) == "userdata" then
            out[name] = function(...) return fn(...) end
        else
            out[name] = fn
        end
    end
    return out
end

--- Internal (bootstrap): replace the global net/codec/crypto tables by wrapped copies.
function _M.wrap_globals()
    _G.net = as_lua_functions(net)
    _G.codec = as_lua_functions(codec)
    _G.crypto = as_lua_functions(crypto)
end

---------------------------------------------------------------------------
-- aiosocket additions
---------------------------------------------------------------------------

--- The name nodes:register gave this socket, or nil.
--- @return table|nil
function aiosocket:get_name()
    return self.name
end

--- Write a complete HTTP/1.1 response on a raw socket (80s: a stream handler's
--- socket). headers is a table or just the Content-Type; a table body is JSON.
function aiosocket:http_response(status, headers, body)
    if self.closed then return false end
    if type(body) == "table" then body = codec.json_encode(body) end
    body = body == nil and "" or tostring(body)
    local lines = {}
    if type(headers) == "string" then
        lines[1] = "Content-Type: " .. headers .. "\r\n"
    elseif type(headers) == "table" then
        for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. tostring(v) .. "\r\n" end
    end
    if type(status) == "number" then status = tostring(status) end
    return self:write("HTTP/1.1 " .. status .. "\r\nConnection: "
        .. (self.cw and "close" or "keep-alive") .. "\r\n" .. concat(lines)
        .. "Content-Length: " .. #body .. "\r\n\r\n" .. body, self.cw)
end

---------------------------------------------------------------------------
-- Close handlers
---------------------------------------------------------------------------

aio.close_handlers = aio.close_handlers or {}

--- Call handler(sock) whenever an aiosocket closes (80s; aio.lib.nodes uses it).
--- Registering the same name again replaces the handler.
--- @param name string
--- @param handler fun(sock: aiosocket)
function aio:register_close_handler(name, handler)
    if type(name) ~= "string" or type(handler) ~= "function" then
        error("aio:register_close_handler(name, fn) expects a string and a function", 2)
    end
    self.close_handlers[name] = handler
end

--- Run every close handler for sock (the library calls this when an aiosocket closes).
function aio:invoke_close(sock)
    for name, handler in pairs(self.close_handlers) do
        local ok, err = xpcall(handler, debug.traceback, sock)
        if not ok then host.log_error("close handler " .. name .. ": " .. tostring(err)) end
    end
end

---------------------------------------------------------------------------
-- Stream routes
---------------------------------------------------------------------------

aio.http_stream = aio.http_stream or {}

-- Drive a coroutine a stream handler returned: what it yields is read for it.
local function drive(thread)
    local ok, want = co_resume(thread)
    while ok and co_status(thread) ~= "dead" and want ~= nil and want ~= false do
        local value = ""
        if want ~= 0 then value = co_yield(want) end
        ok, want = co_resume(thread, value)
    end
    if not ok then error(want, 0) end
end

-- The HTTP route of a stream route: the request (already a pending upgrade in the
-- HTTP core) becomes a raw stream read by the handler.
local function stream_route(handler)
    local http = require("eightys.http")
    return function(fd, query, headers)
        if not host.stream_ready(fd.fd, fd[http.SEQ]) then -- e.g. HEAD on a GET stream route
            return fd:http_response(400, "text/plain", "this path takes a stream request")
        end
        fd[http.STARTED], fd[http.FINISHED] = true, true -- answered: no HTTP response follows
        local sock = aiosocket:new(ELFD, fd.fd, true)
        -- the socket exists before the switch: the bytes after the head go to it
        aio:buffered_cor(sock, function()
            local result = handler(sock, query, headers, "")
            if type(result) == "thread" then drive(result) end
        end)
        if not host.stream_switch(fd.fd, fd[http.SEQ]) then
            sock:close()
        end
    end
end

--- Register a stream handler h(sock, query, headers, ""): after the request head
--- the connection is a raw stream. Inside h, coroutine.yield(n) returns the next
--- n bytes and coroutine.yield("delim") the bytes before delim (nil at the end),
--- as in aio:buffered_cor; sock:write sends raw bytes. If h returns a coroutine,
--- it is driven the same way.
function aio:stream_http_any(method, path, handler)
    if type(method) ~= "string" or type(path) ~= "string" or type(handler) ~= "function" then
        error("aio:stream_http_any(method, path, handler) expects two strings and a function", 2)
    end
    method = method:upper()
    local by_method = self.http_stream[method]
    if by_method == nil then
        by_method = {}
        self.http_stream[method] = by_method
    end
    by_method[path] = handler
    if host.stream_route then host.stream_route(method, path, true) end
    self:http_any(method, path, stream_route(handler))
end

--- Stream handler for GET (see aio:stream_http_any).
function aio:stream_http_get(path, handler) return self:stream_http_any("GET", path, handler) end
--- Stream handler for POST (see aio:stream_http_any).
function aio:stream_http_post(path, handler) return self:stream_http_any("POST", path, handler) end

---------------------------------------------------------------------------
-- Processes, files, streams
---------------------------------------------------------------------------

--- Start a process (no shell: cmd is looked up on PATH and gets the arguments as
--- given). Returns read_sock (its stdout and stderr), write_sock (its stdin), or
--- nil, err. The process is killed if the worker stops first.
--- @return aiosocket|nil, aiosocket|string|nil
function aio:popen(elfd, cmd, ...)
    local args = {}
    for i = 1, select("#", ...) do args[i] = tostring((select(i, ...))) end
    local rd, wr = net.popen(elfd, cmd, unpack(args))
    if rd == nil then return nil, wr end
    local read_sock = aiosocket:new(elfd, rd, true)
    local write_sock = aiosocket:new(elfd, wr, true)
    return read_sock, write_sock
end

--- A promise of everything a process writes (stdout and stderr) until it exits,
--- or of nil if it cannot start.
--- @return aiopromise
function aio:popen_read(elfd, cmd, ...)
    local rd, wr = self:popen(elfd, cmd, ...)
    if rd == nil then return aio:resolved(nil, wr) end
    wr:close() -- the child reads no input: it sees end of file at once
    return self:read_stream(rd)
end

--- A promise of everything sock receives until it closes.
--- @return aiopromise
function aio:read_stream(sock)
    local resolve, promise = aio:prepare_promise()
    local parts = {}
    sock.on_data = function(_, _, _, data) parts[#parts + 1] = data end
    sock.on_close = function() resolve(concat(parts)) end
    return promise
end

--- Watch files or folders (recursively): on_change(events) gets each batch of
--- changes, each {name, create, modify, delete, dir, clock}. Returns a handle
--- whose :close() stops watching, or nil, err. (80s's inotify watch, on watchfiles.)
--- @param elfd any
--- @param targets string[]
--- @param on_change fun(events: table[])
--- @return table|nil
--- @return string|nil err
function aio:watch(elfd, targets, on_change)
    if type(targets) ~= "table" or type(on_change) ~= "function" then
        error("aio:watch(elfd, {paths...}, fn) expects a table of paths and a function", 2)
    end
    local id, err = host.watch(targets, function(events) on_change(events) end)
    if not id then return nil, err end
    local handle = { watching = targets, closed = false }
    --- Stop watching.
    function handle:close()
        if self.closed then return false end
        self.closed = true
        return host.unwatch(id)
    end
    return handle
end

--- net.readfile (80s).
function aio:read_file_sync(path, mode)
    return net.readfile(path, mode)
end

--- The client's address: headers["x-real-ip"] if given, else the peer's ip, port.
--- With --proxy-from, the client the ACLs check instead (fd:client_ip()): the
--- X-Forwarded-For hop, believed from trusted proxies only; X-Real-IP is ignored.
function aio:get_ip(sock, headers)
    local handle = type(sock) == "table" and sock.fd or sock
    local ip, port = net.sockname(handle)
    if host.proxy_trust then
        local client = host.client_address(handle, headers and headers["x-forwarded-for"])
        return client or ip, port
    end
    if headers and headers["x-real-ip"] then ip = headers["x-real-ip"] end
    return ip, port
end

--- Parse an HTTP head (80s): method, url, headers (lower-case names); with
--- response=true: protocol, status line rest, headers.
function aio:parse_http(data, response)
    local headers = {}
    local first, rest = str_match(data, "^([^\r\n]*)\r?\n?(.*)$")
    local a, b
    if response then
        a, b = str_match(first or "", "^(%S+) (.*)$")
    else
        a, b = str_match(first or "", "^(%S+) (%S+)")
    end
    for name, value in str_gmatch(rest or "", "([^:\r\n]+):[ \t]*([^\r\n]*)") do
        headers[str_lower(name)] = value
    end
    return a, b, headers
end

--- A client TLS context for aio:connect2{ssl = ctx} (80s): params ca_file (PEM CAs
--- instead of the system's), verify (false: no checks). Cached per parameter set.
--- Server contexts are not made here: the listener's TLS is --tls-cert/--tls-key.
--- @return table|nil, string|nil
function aio:get_ssl_context(params)
    params = params or {}
    if params.server then
        return nil, "server TLS is configured with --tls-cert/--tls-key (or TLS=true)"
    end
    local key = tostring(params.ca_file) .. "\0" .. tostring(params.verify ~= false)
    local cache = aio.ssl_contexts
    if not cache then
        cache = {}
        aio.ssl_contexts = cache
    end
    local ctx = cache[key]
    if ctx == nil then
        ctx = { ca_file = params.ca_file, verify = params.verify ~= false }
        cache[key] = ctx
    end
    return ctx
end

--- Open an outgoing connection and resolve once it is up: params {host, port,
--- tls = true or a context from aio:get_ssl_context (80s: ssl = ctx),
--- server_name}. TLS checks the certificate and host name (see aio:connect).
--- Resolves with the aiosocket, or {error = "..."}.
--- @return aiopromise
function aio:connect2(params)
    local resolve, promise = aio:prepare_promise()
    local ctx = params.tls or params.ssl
    local opts
    if ctx then
        opts = { tls = true, server_name = params.server_name }
        if type(ctx) == "table" then opts.ca_file, opts.verify = ctx.ca_file, ctx.verify end
    end
    local sock, err = aio:connect(params.elfd or ELFD, params.host, params.port, opts)
    if not sock then
        resolve(make_error(err))
        return promise
    end
    local on_connect, on_close = sock.on_connect, sock.on_close
    sock.on_connect = function(self, ...)
        self.on_connect, self.on_close = on_connect, on_close
        resolve(self)
    end
    sock.on_close = function(self, elfd, fd, reason)
        resolve(make_error("connect to " .. tostring(params.host) .. ":"
            .. tostring(params.port) .. " failed: " .. tostring(reason)))
    end
    return promise
end

---------------------------------------------------------------------------
-- Limits, keys and encryption (80s)
---------------------------------------------------------------------------

--- Largest request head in bytes (nil: the configured limit); over it -> 431.
function aio:set_max_http_header(size)
    host.set_http_limit("header", size)
end

--- Largest request body in bytes (nil: the configured limit); over it -> 413.
function aio:set_max_http_body(size)
    host.set_http_limit("body", size)
end

--- Set the master key for encrypted URLs (at least 16 bytes; "b64:" prefix for
--- base64; "" or nil turns encryption off). The content server uses it too.
function aio:set_master_key(key)
    if type(key) == "string" then
        if str_sub(key, 1, 4) == "b64:" then key = crypto.from64(str_sub(key, 5)) end
        if key == nil or #key == 0 then
            key = nil
        elseif #key < 16 then
            error("master key must be at least 16 bytes long", 2)
        end
    elseif key ~= nil then
        error("master key must be a string", 2)
    end
    self.master_key = key
    local httpd = package.loaded["eightys.httpd"]
    if type(httpd) == "table" then httpd.master_key = key end
end

local function master_key()
    if aio.master_key then return aio.master_key end
    local httpd = package.loaded["eightys.httpd"]
    return type(httpd) == "table" and httpd.master_key or nil
end

--- The key for private_key under the master key (80s: master_key .. private_key).
function aio:create_key(private_key)
    local key = master_key()
    if key then return key .. private_key end
    return private_key
end

--- 80s's crypto.cipher, base64 unless raw: data encrypted here decrypts on 80s
--- and the other way round. iv defaults to true (random IV). nil on failure.
function aio:encrypt(data, key, iv, raw)
    if iv == nil then iv = true end
    local out = crypto.cipher(data, key, iv and true or false, true)
    if out and not raw then out = crypto.to64(out) end
    return out
end

--- Inverse of aio:encrypt; nil if data is not a valid token for key.
function aio:decrypt(data, key, raw)
    if type(data) ~= "string" or type(key) ~= "string" then return nil end
    if not raw then
        data = crypto.from64(data)
        if not data then return nil end
    end
    return (crypto.cipher(data, key, true, false))
end

local function query_string(params, ordered)
    local parts = {}
    for k, v in pairs(params) do
        if type(v) ~= "table" then
            parts[#parts + 1] = codec.url_encode(tostring(k)) .. "=" .. codec.url_encode(tostring(v))
        end
    end
    if ordered ~= false then sort(parts) end
    return concat(parts, "&")
end

--- A query string from params; with private_key the parameters travel in `e`,
--- encrypted and authenticated under aio:create_key(private_key).
function aio:create_query(params, private_key, ordered)
    local qs = query_string(params, ordered)
    if type(private_key) ~= "string" or qs == "" then return qs end
    local token = crypto.encrypt(qs, self:create_key(private_key), true)
    return "e=" .. codec.url_encode(crypto.to64(token))
end

--- A URL for endpoint with params (and #hash). With a master key set the
--- parameters are encrypted in `e` for this endpoint (the content server's
--- format); params.e = false sends them in the clear.
function aio:to_url(endpoint, params, hash)
    local path = endpoint
    if type(params) == "table" then
        local copy = {}
        for k, v in pairs(params) do copy[k] = v end
        local encrypt = copy.e ~= false and master_key() ~= nil
        local ordered = copy.ordered
        copy.e, copy.iv, copy.ordered = nil, nil, nil
        local qs = aio:create_query(copy, encrypt and endpoint or nil, ordered)
        if qs ~= "" then path = path .. "?" .. qs end
    end
    if hash ~= nil then path = path .. "#" .. codec.url_encode(tostring(hash)) end
    return path
end

--- Internal (aio:parse_query with a private key): decrypt query.e into query.
function aio:_decrypt_query(query, private_key)
    local e = query.e
    query.e = {}
    if type(e) ~= "string" or e == "" then return query end
    local token = crypto.from64(e)
    local plain = token and crypto.decrypt(token, self:create_key(private_key))
    if not plain then return query end
    local decrypted = self:parse_query(plain)
    query.e = decrypted
    for k, v in pairs(decrypted) do query[k] = v end
    return query
end

--- 80s: set the DNS provider aio:connect2 resolves names with (eightys resolves
--- through the event loop; a provider with :get_ip is kept for apps that call it).
function aio:set_dns(provider)
    self.dns = provider or require("eightys.dns")
end

return _M
