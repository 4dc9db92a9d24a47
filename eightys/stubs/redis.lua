---@meta
-- require("redis"): the Lua Redis client (see the README's Redis section).

---@class redismodule
local redis = {}

---A client for `url` (default: the server's --redis / $REDIS_URL); nil, err if none.
---@param url? string
---@return redisclient|nil
---@return string? err
function redis:new(url) end

---@class redisclient
---Any Redis command is a method returning a promise: `client:get(k)`, `client:hgetall(k)`,
---`client:EXPIRE(k, 60)`... resolving to the reply, or nil, err.
---@field [string] fun(self: redisclient, ...): aiopromise
local redisclient = {}

---Any command by name: a promise of its reply (or nil, err).
---@param name string
---@return aiopromise
function redisclient:call(name, ...) end

---Call `fn(message, channel)` for each message on `channel` (restored after reconnects).
---@param channel string
---@param fn fun(message: string, channel: string)
function redisclient:subscribe(channel, fn) end

---Like subscribe, for a glob pattern.
---@param pattern string
---@param fn fun(message: string, channel: string)
function redisclient:psubscribe(pattern, fn) end

---@param channel string
---@param fn? function
function redisclient:unsubscribe(channel, fn) end

---@param pattern string
---@param fn? function
function redisclient:punsubscribe(pattern, fn) end

---Queue commands, then `:execute()`: a promise of all their replies.
---@param opts? table
---@return redispipeline
function redisclient:pipeline(opts) end

---Close the client's connections.
function redisclient:close() end

---@class redispipeline
local redispipeline = {}
---@param name string
---@return redispipeline
function redispipeline:call(name, ...) end
---@return aiopromise
function redispipeline:execute() end
