-- Redis client for eightys apps: `local redis = require("redis")`.
--
-- The protocol work happens in Python (eightys/redis_host.py, on redis-py's
-- asyncio client with the hiredis parser): every command returns an aio promise
-- at once, so nothing blocks the worker's loop. Failures at run time (Redis
-- down, a server error reply) are values, `nil, "redis: message"`; misuse (an
-- argument that is not a string or a number) raises with error().
--
--     local client = redis:new()                     -- the server's --redis / REDIS_URL
--     local ok, err = aio:await(client:set("greeting", "hello", "EX", 60))  -- "OK"
--     local value, err = aio:await(client:get("greeting"))   -- "hello" (nil: no such key)
--     local n = aio:await(client:call("HSET", "user:1", "name", "Ada"))
--     local p = client:pipeline()
--     p:incr("hits"); p:get("greeting")
--     local replies, err = aio:await(p:execute())    -- { 1, "hello" }
--     client:subscribe("news", function(message, channel) print(channel, message) end)
--
-- Any Redis command is a method (its name in any case; `client:call(NAME, ...)`
-- for the others, e.g. `client:call("CLIENT", "KILL", ...)`). Replies are raw
-- RESP: status replies are strings ("OK", "PONG"), integers are numbers, bulk
-- strings are strings (bytes, exact), a nil reply is nil, arrays are
-- codec.array tables with redis.null for the nil entries (HGETALL is the flat
-- { field, value, ... } list Redis sends).
--
-- When Redis goes away, calls fail at once with `nil, err`; after a failed
-- connection attempt the client makes the next one only after a back-off
-- (0.05 s doubling up to 5 s), failing calls at once meanwhile. Pub/sub
-- subscriptions are re-made on their own connection when it comes back.

local host = require("eightys.host")

local type = type
local error = error
local select = select
local tostring = tostring
local setmetatable = setmetatable
local xpcall = xpcall
local traceback = debug.traceback
local format = string.format
local upper = string.upper
local floor = math.floor
local huge = math.huge
local math_type = math.type -- nil on LuaJIT
local unpack = unpack or table.unpack

local redis_new = host.redis_new
local redis_call = host.redis_call
local redis_pipeline = host.redis_pipeline
local redis_subscribe = host.redis_subscribe
local redis_unsubscribe = host.redis_unsubscribe
local redis_close = host.redis_close

---@class redis
local redis = {}
redis._VERSION = "1.0"

--- The nil entry of an array reply (== codec.null; JSON-encodes as null).
redis.null = codec.null

--- The server's --redis URL (or REDIS_URL), or nil when it has none.
redis.url = host.redis_url ~= "" and host.redis_url or nil

-- client id -> { [channel] = { fn, ... } } and { [pattern] = { fn, ... } }
local listeners = {}

local function deliver(client_id, channel, message, pattern)
    local subs = listeners[client_id]
    if subs == nil then return end
    local fns
    if pattern then fns = subs.patterns[pattern] else fns = subs.channels[channel] end
    if fns == nil then return end
    for i = 1, #fns do -- one failing callback does not keep the message from the others
        local ok, err = xpcall(fns[i], traceback, message, channel, pattern)
        if not ok then host.log_error("redis subscriber of " .. channel .. ": " .. tostring(err)) end
    end
end

host.redis_setup(deliver, redis.null, getmetatable(codec.array()))

---------------------------------------------------------------------------
-- Arguments
---------------------------------------------------------------------------

local function argument(v, level)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" then
        if math_type and math_type(v) == "integer" then return tostring(v) end
        if v ~= v or v == huge or v == -huge then
            error("redis: cannot send " .. tostring(v), level + 1)
        end
        if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
        return format("%.17g", v)
    end
    error("redis: an argument must be a string or a number, got " .. t, level + 1)
end

-- { name, args... } with every argument a string, and its count.
local function command(name, level, ...)
    local n = select("#", ...)
    local cmd = { argument(name, level + 1) }
    for i = 1, n do
        cmd[i + 1] = argument((select(i, ...)), level + 1)
    end
    cmd.n = n + 1
    return cmd
end

---------------------------------------------------------------------------
-- Clients
---------------------------------------------------------------------------

--- @class redisclient
local Client = {}

-- Methods, then any other name as a Redis command (cached, one closure per name).
local commands = {}
local function lookup(methods)
    return function(_, name)
        local method = methods[name]
        if method ~= nil then return method end
        method = commands[name]
        if method == nil then
            if type(name) ~= "string" then return nil end
            local cmd = upper(name)
            method = function(self, ...) return self:call(cmd, ...) end
            commands[name] = method
        end
        return method
    end
end
local client_mt = { __index = lookup(Client) }

--- A client for `url` (redis://[user:password@]host[:port][/db], rediss:// or
--- unix://path); default: the server's --redis. Connects when first used.
--- Returns nil, err for a missing or malformed URL.
--- @param url? string
--- @param opts? { pool_size?: integer, connect_timeout?: number }
--- @return redisclient|nil, string?
function redis:new(url, opts)
    if type(url) == "table" and opts == nil then url, opts = nil, url end
    if url ~= nil and type(url) ~= "string" then
        error("redis:new: the URL must be a string", 2)
    end
    opts = opts or {}
    local id, err = redis_new(url, opts.pool_size, opts.connect_timeout)
    if not id then return nil, err end
    return setmetatable({ id = id }, client_mt)
end

--- Run any command: `client:call("HSET", key, field, value)`. Promise of the reply.
--- @return aiopromise
function Client:call(name, ...)
    local cmd = command(name, 2, ...)
    return redis_call(self.id, cmd, cmd.n)
end

--- Call fn(message, channel) for each message published on `channel` (outside any
--- coroutine: wrap its body in aio:async to await in it). The first
--- callback of a channel subscribes; promise of true once Redis confirmed it, or
--- nil, err when Redis is unreachable now (the subscription is kept and made when
--- it comes back). The subscription lasts until unsubscribe.
--- @param channel string
--- @param fn fun(message: string, channel: string)
--- @return aiopromise
function Client:subscribe(channel, fn)
    return self:_listen(channel, fn, false)
end

--- Like subscribe, for a glob pattern (PSUBSCRIBE): fn(message, channel, pattern).
function Client:psubscribe(pattern, fn)
    return self:_listen(pattern, fn, true)
end

function Client:_listen(name, fn, is_pattern)
    if type(name) ~= "string" then error("redis: the channel must be a string", 3) end
    if type(fn) ~= "function" then error("redis: the callback must be a function", 3) end
    local subs = listeners[self.id]
    if subs == nil then
        subs = { channels = {}, patterns = {} }
        listeners[self.id] = subs
    end
    local by_name = is_pattern and subs.patterns or subs.channels
    local fns = by_name[name] or {}
    local grown = { unpack(fns) } -- a new list, as in _unlisten
    grown[#grown + 1] = fn
    by_name[name] = grown
    return redis_subscribe(self.id, name, is_pattern)
end

--- Stop calling `fn` for `channel` (every callback of it when fn is nil); the
--- last one gone unsubscribes. Promise of true.
function Client:unsubscribe(channel, fn)
    return self:_unlisten(channel, fn, false)
end

--- Like unsubscribe, for a pattern given to psubscribe.
function Client:punsubscribe(pattern, fn)
    return self:_unlisten(pattern, fn, true)
end

function Client:_unlisten(name, fn, is_pattern)
    local subs = listeners[self.id]
    local by_name = subs and (is_pattern and subs.patterns or subs.channels)
    local fns = by_name and by_name[name]
    if fns and fn then
        -- a new list: a delivery running over the old one (a callback that
        -- unsubscribes) still reaches every callback it started with
        local kept = {}
        for i = 1, #fns do
            if fns[i] ~= fn then kept[#kept + 1] = fns[i] end
        end
        fns = kept
        by_name[name] = kept
    end
    if fns and (fn == nil or #fns == 0) then
        by_name[name] = nil
        return redis_unsubscribe(self.id, name, is_pattern)
    end
    return aio:resolved(true)
end

--- Close the client: its pooled connections and its pub/sub connection. Promise of true.
function Client:close()
    listeners[self.id] = nil
    return redis_close(self.id)
end

---------------------------------------------------------------------------
-- Pipelines
---------------------------------------------------------------------------

--- @class redispipeline
local Pipeline = {}
local pipeline_mt = { __index = lookup(Pipeline) }

--- Queue commands and send them in one round trip with :execute(). With
--- `{ transaction = true }` they run in MULTI/EXEC (all or nothing, no other
--- client's command in between).
--- @param opts? { transaction?: boolean }
--- @return redispipeline
function Client:pipeline(opts)
    return setmetatable({ client = self, commands = {}, n = 0,
        transaction = opts ~= nil and opts.transaction == true }, pipeline_mt)
end

--- Queue any command: `p:call("HSET", key, field, value)`; returns the pipeline.
function Pipeline:call(name, ...)
    local n = self.n + 1
    self.commands[n] = command(name, 2, ...)
    self.n = n
    return self
end

--- Send the queued commands: promise of the array of their replies (a command
--- Redis refused has `{ error = "redis: ..." }` in its place), or nil, err when
--- the whole batch failed (Redis unreachable). The pipeline is empty afterwards.
--- @return aiopromise
function Pipeline:execute()
    local cmds, n = self.commands, self.n
    self.commands, self.n = {}, 0
    if n == 0 then return aio:resolved(codec.array()) end
    return redis_pipeline(self.client.id, cmds, n, self.transaction)
end

return redis
