-- The LAppS protocol (ITpC/LAppS, LAppS_Protocol_Specification.md) on eightys'
-- WebSocket layer; see README, "LAppS protocol".
--
--   local lapps = require("eightys.lapps")
--   local service = lapps.service{
--       echo = function(client, ...) return ... end,
--   }
--   service:listen("/echo")
--
-- Requests are CBOR maps {lapps = "1", method = name, params = {...}} in binary
-- messages; each is answered on the command channel (cid 0), in request order:
-- {status = 1, cid = 0, result = {...}} or {status = 0, cid = 0, error = {code =,
-- message = [, data =]}} (JSON-RPC 2.0 error codes). The server may send out of
-- order notifications (OON) {cid = N, message = {...}} on channels N > 0, to one
-- client (service:notify) or to every client that joined the channel, in every
-- worker (service:join, service:broadcast: one aio:publish, encoded once).

local type = type
local select = select
local tostring = tostring
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local next = next
local xpcall = xpcall
local traceback = debug.traceback
local find = string.find
local byte = string.byte
local unpack = unpack or table.unpack

local aio = aio
local array = codec.array
local object = codec.object
local cbor = require("eightys.cbor")
local log_error = require("eightys.host").log_error

local encode, decode = cbor.encode, cbor.decode

local _M = {}

-- JSON-RPC 2.0 error codes (the specification reuses them).
_M.PARSE_ERROR = -32700
_M.INVALID_REQUEST = -32600
_M.METHOD_NOT_FOUND = -32601
_M.INVALID_PARAMS = -32602
_M.INTERNAL_ERROR = -32603

local ERROR_MARK = {}

--- An error response from a method: `return lapps.error(code, message[, data])`.
--- @param code integer
--- @param message string
--- @param data? any
function _M.error(code, message, data)
    if type(code) ~= "number" or type(message) ~= "string" then
        error("lapps.error(code, message[, data]): a number and a string expected", 2)
    end
    return setmetatable({ code = code, message = message, data = data }, ERROR_MARK)
end

local function error_response(code, message, data)
    return encode({ status = 0, cid = 0, error = object({ code = code, message = message, data = data }) })
end

local Service = {}
Service.__index = Service
_M.Service = Service

--- A LAppS service: `methods` maps names to `fn(client, ...)` (the request's params
--- are the arguments, in order; the return values are the result). A method runs
--- in a coroutine (it may aio:await); it may return lapps.error(...), and an error
--- it raises becomes -32603 (logged with its traceback). `methods.on_open(client)`,
--- `methods.on_close(client)` and `methods.on_notification(client, cid, message)`
--- (client notifications: requests with a cid) are optional hooks.
--- @param methods table
--- @param options? table name (default "lapps": the pub/sub channel prefix)
function _M.service(methods, options)
    if type(methods) ~= "table" then error("lapps.service(methods): methods must be a table", 2) end
    local name = options and options.name or "lapps"
    return setmetatable({ methods = methods, name = name }, Service)
end

-- Responses leave in request order: a method that awaits holds back the ones after it.
local function respond(ws, seq, data)
    local q = ws.lapps
    q.ready[seq] = data
    while q.ready[q.sent + 1] do
        q.sent = q.sent + 1
        local out = q.ready[q.sent]
        q.ready[q.sent] = nil
        ws:send(out, true)
    end
end

local function collect(ok, ...)
    if not ok then return false, (...) end
    local n = select("#", ...)
    if n == 1 and getmetatable((...)) == ERROR_MARK then return nil, (...) end
    local result = array()
    for i = 1, n do
        local v = select(i, ...)
        if v == nil then v = codec.null end
        result[i] = v
    end
    return true, result
end

function Service:_request(ws, data, binary)
    local q = ws.lapps
    q.seq = q.seq + 1
    local seq = q.seq
    if not binary then
        return respond(ws, seq, error_response(_M.PARSE_ERROR, "LAppS messages are binary CBOR"))
    end
    local req, err = decode(data)
    if req == nil then return respond(ws, seq, error_response(_M.PARSE_ERROR, err)) end
    -- the specification says the string "1"; the number 1 is taken too
    if type(req) ~= "table" or req[1] ~= nil or (req.lapps ~= "1" and req.lapps ~= 1) then
        return respond(ws, seq, error_response(_M.INVALID_REQUEST, 'a request is a map with lapps = "1"'))
    end
    local cid = req.cid
    if cid ~= nil and cid ~= 0 then -- a client notification: never answered
        q.seq = q.seq - 1
        local hook = self.methods.on_notification
        if hook and type(cid) == "number" then hook(ws, cid, req.message or req.params) end
        return
    end
    local method, params = req.method, req.params
    if type(method) ~= "string" or find(method, ".", 1, true) or byte(method, 1) == 95 then
        return respond(ws, seq, error_response(_M.INVALID_REQUEST,
            "method must be a string without '.' and not starting with '_'"))
    end
    local fn = self.methods[method]
    if type(fn) ~= "function" or method == "on_open" or method == "on_close" or method == "on_notification" then
        return respond(ws, seq, error_response(_M.METHOD_NOT_FOUND, "no method " .. method))
    end
    if params ~= nil and (type(params) ~= "table" or (params[1] == nil and next(params) ~= nil)) then
        return respond(ws, seq, error_response(_M.INVALID_PARAMS, "params must be an array"))
    end
    local ok, result = collect(xpcall(fn, traceback, ws, unpack(params or {}, 1, params and #params or 0)))
    if ok then
        return respond(ws, seq, encode({ status = 1, cid = 0, result = result }))
    elseif ok == nil then
        return respond(ws, seq, error_response(result.code, result.message, result.data))
    end
    log_error("LAppS method " .. method .. ": " .. tostring(result))
    respond(ws, seq, error_response(_M.INTERNAL_ERROR, "internal error"))
end

--- Serve the service on WebSocket route `path` (`ws_options`: aio:websocket's).
--- @param path string
--- @param ws_options? table
function Service:listen(path, ws_options)
    local service = self
    aio:websocket(path, {
        open = function(ws)
            ws.lapps = { seq = 0, sent = 0, ready = {} }
            local hook = service.methods.on_open
            if hook then hook(ws) end
        end,
        message = function(ws, data, binary)
            service:_request(ws, data, binary)
        end,
        close = function(ws)
            local hook = service.methods.on_close
            if hook then hook(ws) end
        end,
    }, ws_options)
end

local function oon(cid, message)
    if type(cid) ~= "number" or cid <= 0 or cid % 1 ~= 0 then
        error("LAppS notifications go on channels > 0 (0 is the command channel)", 3)
    end
    if type(message) ~= "table" then error("a LAppS notification's message must be an array", 3) end
    local data, err = encode({ cid = cid, message = array(message) })
    if data == nil then error("cannot encode the notification: " .. err, 3) end
    return data
end

--- Send an out of order notification on channel `cid` (> 0) to one client.
--- Returns true, or nil, err (as ws:send; "no request answered yet" before the
--- client's first request was answered, which the specification requires).
function Service:notify(client, cid, message)
    local data = oon(cid, message)
    local q = client.lapps
    if q == nil or q.sent == 0 then
        return nil, "no request answered yet" -- OONs follow the first request-response exchange
    end
    return client:send(data, true)
end

--- Add a client to channel `cid`'s broadcasts (call it from a method: OONs follow
--- the first request-response exchange).
function Service:join(client, cid)
    return client:subscribe(self.name .. ":" .. tostring(cid))
end

--- Remove a client from channel `cid`'s broadcasts.
function Service:leave(client, cid)
    return client:unsubscribe(self.name .. ":" .. tostring(cid))
end

--- Send a notification on channel `cid` to every client that joined it, in every
--- worker. Returns how many clients of this worker it was queued for.
function Service:broadcast(cid, message)
    return aio:publish(self.name .. ":" .. tostring(cid), oon(cid, message), true)
end

return _M
