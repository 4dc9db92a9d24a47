-- Server-side sessions in Redis, for the content server (eightys.httpd): every
-- worker of every server behind a load balancer sees the same sessions, and a
-- session can be revoked at once (store:delete(id)).
--
--     -- main.lua, beside the site root
--     httpd.session_store = require("eightys.redis_sessions"):new({ ttl = 3600 })
--
-- It implements the httpd.session_store interface (get/set/delete). Each session
-- is one Redis string, `PREFIX .. id` (default prefix "eightys:session:"),
-- holding the session table as JSON (so a session holds plain data: strings,
-- numbers, booleans, tables of them) with an expiry of `ttl` seconds that
-- slides: each request that reads the session renews it (GETEX).
--
-- The store's calls wait for Redis (aio:await), so they run where httpd calls
-- them, inside a request's coroutine. When Redis is unreachable, get returns
-- nil, err (the request runs with an empty session) and set logs the failure:
-- Redis calls fail at once, never hold the worker (see the Redis client). With
-- `fallback` (another store: get/set/delete, e.g. a per-worker one), the sessions
-- of an outage live there instead, and get looks there when Redis has nothing.

local redis = require("redis")
local host = require("eightys.host")

local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local floor = math.floor

---@class redis_sessions
local Store = {}
Store.__index = Store

local M = {}

--- A store on `opts.url` (default: the server's --redis), or opts.client (a
--- redis:new() client to share). Raises when no Redis is configured.
--- @param opts? { url?: string, client?: table, ttl?: number, prefix?: string, fallback?: table }
--- @return redis_sessions
function M:new(opts)
    opts = opts or {}
    local ttl = opts.ttl or 3600
    if type(ttl) ~= "number" or ttl < 1 then
        error("redis_sessions: ttl must be at least 1 second", 2)
    end
    local client = opts.client
    if client == nil then
        local err
        client, err = redis:new(opts.url)
        if not client then error("redis_sessions: " .. tostring(err), 2) end
    end
    return setmetatable({ client = client, ttl = floor(ttl),
        prefix = opts.prefix or "eightys:session:", fallback = opts.fallback or false }, Store)
end

--- The session `id` (renewing its expiry), nil if there is none, or nil, err
--- when Redis cannot be reached.
--- @return table|nil, string?
function Store:get(id)
    local json, err = aio:await(self.client:call("GETEX", self.prefix .. id, "EX", self.ttl))
    if json == nil then
        local fallback = self.fallback
        if fallback then
            local data = fallback:get(id)
            if data then return data end
        end
        return nil, err
    end
    local data = codec.json_decode(json)
    if type(data) ~= "table" then return nil end
    return data
end

--- Store session `id` for ttl seconds. Returns true, or nil, err (also logged).
function Store:set(id, data)
    local json, err = codec.json_encode(data)
    if not json then
        host.log_error("session not saved: it must hold plain data (" .. tostring(err) .. ")")
        return nil, err
    end
    local ok
    ok, err = aio:await(self.client:set(self.prefix .. id, json, "EX", self.ttl))
    if not ok then
        local fallback = self.fallback
        if fallback then
            fallback:set(id, data)
            return true
        end
        host.log_error("session not saved: " .. tostring(err))
        return nil, err
    end
    return true
end

--- Revoke session `id`, on every server at once. Returns true, or nil, err.
function Store:delete(id)
    if self.fallback then self.fallback:delete(id) end
    local n, err = aio:await(self.client:del(self.prefix .. id))
    if n == nil then return nil, err end
    return true
end

return M
