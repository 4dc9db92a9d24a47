-- WebSocket routes and connections for eightys (RFC 6455; see README, "WebSocket").
--
--   aio:websocket("/chat", { open = ..., message = ..., close = ... }, options)
--   fd:websocket(handlers, options)       -- from inside an HTTP handler
--   ws:send(data[, binary]) ws:close([code[, reason]]) ws:ping([data])
--   ws:subscribe(channel) ws:unsubscribe(channel) aio:publish(channel, data[, binary])
--
-- eightys/protocols/websocket.py does the framing (websockets' sans-IO protocol)
-- and calls dispatch.open / message / close: one call per whole message. Each
-- handler runs in a pooled coroutine, so it may aio:await. An error in a handler
-- is logged with its file:line and closes that connection with 1011.

local setmetatable = setmetatable
local type = type
local tostring = tostring
local error = error
local xpcall = xpcall
local pairs = pairs
local traceback = debug.traceback
local co_yield = coroutine.yield

local aio = aio
local json_encode = codec.json_encode
local host = require("eightys.host")
local http = require("eightys.http")

local ws_options = host.ws_options
local ws_accept = host.ws_accept
local ws_send = host.ws_send
local ws_close = host.ws_close
local ws_ping = host.ws_ping
local ws_subscribe = host.ws_subscribe
local ws_unsubscribe = host.ws_unsubscribe
local ws_publish = host.ws_publish
local log_error = host.log_error

local _M = {}

local sockets = {} -- id -> ws, open connections
local pending = {} -- id -> { ws = ws, headers = headers }: accepted, open handler not run yet

---------------------------------------------------------------------------
-- Options
---------------------------------------------------------------------------

local DEFAULTS = { max_message = 1048576, compress = false, idle_timeout = 0,
                   send_buffer = 1048576 }
local KNOWN = { protocols = true, max_message = true, compress = true, idle_timeout = true,
                origins = true, send_buffer = true, allow = true, deny = true }

local options_ids = setmetatable({}, { __mode = "k" }) -- options table -> id in Python
local default_id

local function string_list(value, name)
    if value == nil then return nil end
    if type(value) == "string" then value = { value } end
    if type(value) ~= "table" then error("option " .. name .. " must be a list of strings", 4) end
    for i = 1, #value do
        if type(value[i]) ~= "string" then error("option " .. name .. " must be a list of strings", 4) end
    end
    return value
end

local function positive(value, name, allow_zero)
    if type(value) ~= "number" or value < 0 or value ~= value or (value == 0 and not allow_zero) then
        error("option " .. name .. " must be a " .. (allow_zero and "non-negative" or "positive")
            .. " number", 4)
    end
    return value
end

-- The Python-side id of an options table (validated once per table).
local function options_id(opts)
    if opts == nil then
        if default_id == nil then
            default_id = ws_options(nil, DEFAULTS.max_message, false, 0, nil, DEFAULTS.send_buffer)
        end
        return default_id
    end
    if type(opts) ~= "table" then error("WebSocket options must be a table", 3) end
    local id = options_ids[opts]
    if id then return id end
    for key in pairs(opts) do
        if not KNOWN[key] then error("unknown WebSocket option " .. tostring(key), 3) end
    end
    local max_message = positive(opts.max_message or DEFAULTS.max_message, "max_message")
    local idle = positive(opts.idle_timeout or DEFAULTS.idle_timeout, "idle_timeout", true)
    local send_buffer = positive(opts.send_buffer or DEFAULTS.send_buffer, "send_buffer")
    id = ws_options(string_list(opts.protocols, "protocols"), max_message,
                         opts.compress and true or false, idle,
                         string_list(opts.origins, "origins"), send_buffer)
    options_ids[opts] = id
    return id
end

---------------------------------------------------------------------------
-- Connections
---------------------------------------------------------------------------

--- @class websocket
--- @field id integer the connection handle
--- @field protocol string|nil the negotiated subprotocol
--- @field params table path parameters of the route (`/rooms/:room` -> params.room)
--- @field path string the request path
--- @field scheme string "wss" over TLS, else "ws"
--- @field closed boolean true once the close handler has run (or is about to)
local WebSocket = {}
WebSocket.__index = WebSocket
_M.WebSocket = WebSocket

--- Queue one message: a text frame, or a binary one with `binary` true; a table is
--- sent as JSON text. Returns true, or nil, err ("closed", "send buffer full").
--- @param data string|table
--- @param binary? boolean
function WebSocket:send(data, binary)
    local kind = type(data)
    if kind ~= "string" then
        if kind == "table" then
            local encoded, err = json_encode(data)
            if encoded == nil then error("cannot encode the message as JSON: " .. err, 2) end
            data = encoded
        elseif data == nil then
            error("ws:send(data[, binary]) needs data", 2)
        else
            data = tostring(data)
        end
    end
    return ws_send(self.id, data, binary == true)
end

--- Start the closing handshake: code (default 1000) and a reason of at most 123
--- bytes. The close handler runs once the connection is closed. Returns true, or
--- false if it was closing already.
--- @param code? integer
--- @param reason? string
function WebSocket:close(code, reason)
    if code ~= nil and (type(code) ~= "number" or code % 1 ~= 0) then
        error("ws:close: bad close code " .. tostring(code), 2)
    end
    if code ~= nil and not (code == 1000 or (code >= 3000 and code <= 4999)
                            or (code >= 1001 and code <= 1014 and code ~= 1004
                                and code ~= 1005 and code ~= 1006)) then
        error("ws:close: close code " .. code .. " may not be sent (1000-1014, 3000-4999)", 2)
    end
    if reason ~= nil and (type(reason) ~= "string" or #reason > 123) then
        error("ws:close: the reason must be a string of at most 123 bytes", 2)
    end
    return ws_close(self.id, code, reason)
end

--- Send a ping (at most 125 bytes of data). Pongs are not reported: any data from
--- the client shows it is alive. Returns true, or false if the connection is closing.
--- @param data? string
function WebSocket:ping(data)
    if data ~= nil and (type(data) ~= "string" or #data > 125) then
        error("ws:ping: data must be a string of at most 125 bytes", 2)
    end
    return ws_ping(self.id, data)
end

--- Receive what aio:publish sends to `channel`, from any worker of this server.
--- Returns true, or false if already subscribed (or closed).
--- @param channel string
function WebSocket:subscribe(channel)
    if type(channel) ~= "string" then error("ws:subscribe(channel): channel must be a string", 2) end
    return ws_subscribe(self.id, channel)
end

--- Stop receiving `channel`. Returns true, or false if not subscribed.
--- @param channel string
function WebSocket:unsubscribe(channel)
    if type(channel) ~= "string" then error("ws:unsubscribe(channel): channel must be a string", 2) end
    return ws_unsubscribe(self.id, channel)
end

--- Send a message to every subscriber of `channel` in every worker of this server
--- and, with --redis, of every server sharing that Redis (a table is sent as JSON
--- text). Returns how many subscribers of this worker it was queued for, and with
--- --redis the reason when it could not go to the other servers (at once: it
--- never waits for Redis). A subscriber too slow to take it is closed with 1013.
--- `options`: true (binary) or { binary = true, scope = "server" }: "server"
--- keeps the message on this server (a relay of your own from Redis uses it).
--- @param channel string
--- @param data string|table
--- @param options? boolean|{binary?: boolean, scope?: "all"|"server"}
--- @return integer
--- @return string|nil
function aio:publish(channel, data, options)
    if type(channel) ~= "string" then error("aio:publish(channel, data): channel must be a string", 2) end
    local binary, server_only = options == true, false
    if type(options) == "table" then
        binary = options.binary == true
        local scope = options.scope
        if scope == "server" then
            server_only = true
        elseif scope ~= nil and scope ~= "all" then
            error('aio:publish: options.scope must be "all" or "server"', 2)
        end
    end
    local kind = type(data)
    if kind ~= "string" then
        if kind == "table" then
            local encoded, err = json_encode(data)
            if encoded == nil then error("cannot encode the message as JSON: " .. err, 2) end
            data = encoded
        elseif data == nil then
            error("aio:publish(channel, data): data is missing", 2)
        else
            data = tostring(data)
        end
    end
    return ws_publish(channel, data, binary, server_only)
end

---------------------------------------------------------------------------
-- Handlers
---------------------------------------------------------------------------

-- The 80s hooks form: messages go to on_data, the end to on_close; net.write on
-- the handle sends a text message, net.close closes with 1000.
local HOOKS = {
    message = function(ws, data)
        local hook = on_data
        if hook then return hook(ELFD, ws.id, data, #data) end
    end,
    close = function(ws)
        local hook = on_close
        if hook then return hook(ELFD, ws.id) end
    end,
}

local function check_handlers(handlers, level)
    if handlers == "hooks" then return HOOKS end
    if type(handlers) ~= "table" then
        error("WebSocket handlers must be a table {open=, message=, close=} or \"hooks\"", level + 1)
    end
    for _, name in pairs({ "open", "message", "close" }) do
        local h = handlers[name]
        if h ~= nil and type(h) ~= "function" then
            error("WebSocket handler " .. name .. " must be a function", level + 1)
        end
    end
    return handlers
end

local IDLE = aio.IDLE

local function handler_failed(name, ws, err)
    log_error("WebSocket " .. name .. " handler for " .. tostring(ws.path) .. ": " .. tostring(err))
    if not ws.closed then ws_close(ws.id, 1011, "internal error", true) end
end

local function event_loop(fn, name, ws, a, b, c)
    while true do
        local ok, err = xpcall(fn, traceback, ws, a, b, c)
        if not ok then handler_failed(name, ws, err) end
        fn, name, ws, a, b, c = co_yield(IDLE)
    end
end
local run = aio:coroutine_pool(event_loop)

local dispatch = {}
_M.dispatch = dispatch

--- The handshake went out: the open handler runs (before any message).
function dispatch.open(id, query, protocol)
    local p = pending[id]
    if p == nil then return end
    pending[id] = nil
    local ws = p.ws
    if protocol ~= "" then ws.protocol = protocol end
    sockets[id] = ws
    local fn = ws.route.handlers.open
    if fn then run(fn, "open", ws, query, p.headers) end
end

--- One whole message (text, or binary with `binary` true).
function dispatch.message(id, data, binary)
    local ws = sockets[id]
    if ws == nil then return end
    local fn = ws.route.handlers.message
    if fn then run(fn, "message", ws, data, binary) end
end

--- The connection closed (exactly once per open connection).
function dispatch.close(id, code, reason)
    local ws = sockets[id]
    if ws == nil then
        pending[id] = nil -- closed before its open handler ran: nothing to tell
        return
    end
    sockets[id] = nil
    ws.closed = true
    local fn = ws.route.handlers.close
    if fn then run(fn, "close", ws, code, reason) end
end

---------------------------------------------------------------------------
-- Upgrades
---------------------------------------------------------------------------

local UPGRADE_HEADERS = { ["Upgrade"] = "websocket",
                          ["Content-Type"] = "text/plain; charset=utf-8" }
local UPGRADE_BODY = "This is a WebSocket endpoint: connect with a WebSocket client.\n"

-- Switch request `fd` to a WebSocket with the handlers of `route`.
local function upgrade(fd, route)
    local id = fd.fd
    if fd[http.STARTED] then error("fd:websocket: a response was already sent for this request", 3) end
    local ws = setmetatable({ id = id, params = fd.params, path = fd.path, route = route,
                              scheme = fd.scheme == "https" and "wss" or "ws",
                              closed = false }, WebSocket)
    pending[id] = { ws = ws, headers = fd.headers }
    local protocol, err = ws_accept(id, fd[http.SEQ], route.options)
    if protocol == nil then
        pending[id] = nil
        if err == "upgrade required" then
            fd:http_response(426, UPGRADE_HEADERS, UPGRADE_BODY)
        else
            fd[http.STARTED], fd[http.FINISHED] = true, true -- answered (400/403) or gone
        end
        return nil, err
    end
    fd[http.STARTED], fd[http.FINISHED] = true, true -- the 101 was the answer
    return ws
end

--- Switch this request to a WebSocket served by `handlers` ({open=, message=,
--- close=}, or "hooks" for the 80s on_data/on_close hooks) with `options` (see
--- aio:websocket). Returns the ws object, or nil, err: a request that is not a
--- WebSocket upgrade gets 426, a bad handshake 400, a disallowed Origin 403.
--- @return websocket|nil, string|nil
function http.Request:websocket(handlers, options)
    local route = { handlers = check_handlers(handlers, 2), options = options_id(options) }
    return upgrade(self, route)
end

aio.ws_routes = aio.ws_routes or {} -- path -> route; kept across reloads

local METHODS = { "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS" }

--- A WebSocket route: a GET with a valid Upgrade on `path` is switched, anything
--- else on the path gets 426. `path` may hold parameters ("/rooms/:room" -> ws.params.room).
--- Registering the path again (on reload) switches open connections to the new handlers.
--- @param path string
--- @param handlers table|string {open=fn(ws, query, headers), message=fn(ws, data, binary),
---   close=fn(ws, code, reason)}, or "hooks"
--- @param options? table protocols, max_message, compress, idle_timeout, origins, send_buffer
function aio:websocket(path, handlers, options)
    if type(path) ~= "string" then error("aio:websocket(path, handlers[, options]): path must be a string", 2) end
    local checked = check_handlers(handlers, 2)
    local id = options_id(options)
    local route = aio.ws_routes[path]
    if route == nil then
        route = {}
        aio.ws_routes[path] = route
    end
    route.handlers, route.options = checked, id
    local function serve(fd)
        if fd.method ~= "GET" then
            return fd:http_response(426, UPGRADE_HEADERS, UPGRADE_BODY)
        end
        upgrade(fd, route)
    end
    -- allow/deny: the route's ACL, checked on the upgrade request (403, no upgrade)
    local acl = options and (options.allow ~= nil or options.deny ~= nil)
        and { allow = options.allow, deny = options.deny } or nil
    for i = 1, #METHODS do
        self:http_any(METHODS[i], path, serve, acl)
    end
end

--- Internal (tests): the open connections by id, and those accepted but not yet open.
_M.sockets = sockets
_M.pending = pending

return _M
