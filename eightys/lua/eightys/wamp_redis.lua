-- The Redis link of the WAMP router (eightys.wamp) between servers; see README,
-- "WAMP router", "Across servers".
--
-- Every worker of every server is a peer with an address RUN:WORKER:INCARNATION
-- (RUN tells one server run apart from the others, the incarnation one process of
-- a worker position from the one it replaced). A peer subscribes to two channels:
-- PREFIX:all (broadcasts: sessions, registrations, events) and PREFIX:peer:ADDR (what
-- is for it alone: calls, results, errors, cancels). A message is the sender's
-- address, a newline and the router's bytes; a bare address is a heartbeat.
--
-- The workers of one server talk through the master (aio:post) as before; what
-- Redis brings from a peer of our own run is dropped, so a broadcast reaches each
-- worker once. Peers are known from what they send: one not heard for three
-- heartbeats, or whose inbox has no subscriber when we send to it, is lost; one
-- heard for the first time is new (the router then tells it what it has).
--
-- Registrations are claimed in the hash PREFIX:regs (field realm\0match\0uri,
-- value "ADDR ID") by a Redis script, atomically: a procedure is registered once
-- across all servers. A claim held by a peer whose PREFIX:alive:ADDR key expired
-- (it stopped heart-beating) is taken over.
--
-- What a worker publishes leaves in the order it was sent (progressive results,
-- events of one publisher): one pipeline at a time, the messages queued meanwhile
-- going in the next one (so a busy worker also makes fewer round trips).

local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local xpcall = xpcall
local traceback = debug.traceback
local floor = math.floor
local str_find = string.find
local str_sub = string.sub
local str_format = string.format
local str_byte = string.byte

local aio = aio
local crypto = crypto
local clock = net.clock

local host = require("eightys.host")
local log_error = host.log_error

local _M = {}

local MAX_BATCH = 512 -- PUBLISH commands in one pipeline

local Bridge = {}
Bridge.__index = Bridge

-- KEYS[1] the hash; ARGV: field, "ADDR ID", the alive-key prefix, our address,
-- our position ("RUN:WORKER:"). Returns 0 when the claim is ours, else the holder's
-- value. A holder at our position is the process we replaced: gone.
local CLAIM = [[
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local owner = string.match(held, '^(%S+)')
  if owner ~= ARGV[4] and string.sub(owner, 1, #ARGV[5]) ~= ARGV[5]
     and redis.call('EXISTS', ARGV[3] .. owner) == 1 then return held end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 0
]]

-- KEYS[1] the hash; ARGV: field, value: delete the field if it still has value.
local RELEASE = [[
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
]]

-- KEYS[1] the hash; ARGV: the alive-key prefix, our address, our position: drop
-- the claims of dead peers and of the process we replaced.
local SWEEP = [[
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local owner = string.match(all[i + 1], '^(%S+)')
  if redis.call('EXISTS', ARGV[1] .. owner) == 0
     or (owner ~= ARGV[2] and string.sub(owner, 1, #ARGV[3]) == ARGV[3]) then
    redis.call('HDEL', KEYS[1], all[i]); n = n + 1
  end
end
return n
]]

local function hex(bytes)
    return (bytes:gsub(".", function(c) return str_format("%02x", str_byte(c)) end))
end

--- The run of peer address `addr` (RUN:WORKER:INCARNATION) and its worker position.
local function parts_of(addr)
    local a = str_find(addr, ":", 1, true)
    if a == nil then return addr, "" end
    local b = str_find(addr, ":", a + 1, true) or #addr + 1
    return str_sub(addr, 1, a - 1), str_sub(addr, 1, b - 1)
end

--- Connect a router to the others through Redis. `o`: url (nil: the server's
--- --redis), prefix, heartbeat (seconds), run, worker, and the router's handlers
--- on_message(sender, data|nil, new) (data nil: a heartbeat; new: the sender was
--- not known), on_lost(addr), on_ready() (subscribed: time to say hello),
--- on_beat() (each heartbeat). Returns the bridge, or nil, err.
function _M.new(o)
    local redis = require("redis")
    local client, err = redis:new(o.url, { pool_size = 1 })
    if client == nil then return nil, err end
    local prefix = o.prefix
    local self = setmetatable({
        client = client, run = o.run, heartbeat = o.heartbeat,
        position = o.run .. ":" .. tostring(o.worker) .. ":",
        all = prefix .. ":all", regs_key = prefix .. ":regs", alive = prefix .. ":alive:",
        inbox_prefix = prefix .. ":peer:",
        peers = {},          -- addr -> when we last heard from it (net.clock)
        -- PUBLISH commands waiting for the pipeline in flight, their reply callbacks
        channels = {}, payloads = {}, callbacks = {}, n = 0, sending = false,
        on_message = o.on_message, on_lost = o.on_lost, on_ready = o.on_ready,
        on_beat = o.on_beat,
    }, Bridge)
    self.addr = self.position .. hex(crypto.random(4))
    self.inbox = self.inbox_prefix .. self.addr
    self.header = self.addr .. "\n"
    local function receive(message) self:_receive(message) end
    aio:gather(client:subscribe(self.all, receive), client:subscribe(self.inbox, receive))(
        function(a, b)
            if not (a and b) then
                -- kept by the client and made when Redis is back; our heartbeats
                -- then make the others greet us
                log_error("wamp: Redis is unreachable for now; the router serves this server alone until it is back")
                return
            end
            self.ready = true
            self:_beat()
            client:call("EVAL", SWEEP, 1, self.regs_key, self.alive, self.addr, self.position)
            self.on_ready()
        end)
    self.timer = aio:set_interval(function() self:_beat() end, o.heartbeat)
    return self
end

function Bridge:_beat()
    local client = self.client
    client:call("SET", self.alive .. self.addr, "1", "PX", floor(self.heartbeat * 3000))
    self:_publish(self.all, self.addr)
    local now = clock()
    local limit = 3 * self.heartbeat
    for addr, seen in pairs(self.peers) do
        if now - seen > limit then self:lost(addr) end
    end
    self.on_beat()
end

function Bridge:_receive(message)
    local at = str_find(message, "\n", 1, true)
    local sender = at and str_sub(message, 1, at - 1) or message
    local run, position = parts_of(sender)
    if run == self.run then return end -- ours: its workers reach us through the master
    local peers = self.peers
    local new = peers[sender] == nil
    if new then
        -- a restarted worker: the process it replaced is gone, with all it had
        for addr in pairs(peers) do
            local _, other = parts_of(addr)
            if other == position then self:lost(addr) end
        end
    end
    peers[sender] = clock()
    local ok, err = xpcall(self.on_message, traceback, sender,
                           at and str_sub(message, at + 1) or nil, new)
    if not ok then log_error("wamp: a message from " .. sender .. ": " .. tostring(err)) end
end

--- Forget peer `addr` (it stopped answering): the router drops what it had.
function Bridge:lost(addr)
    if self.peers[addr] == nil then return end
    self.peers[addr] = nil
    self.on_lost(addr)
end

-- Queue a PUBLISH; `on_reply(receivers, err)` (optional) gets its outcome.
function Bridge:_publish(channel, payload, on_reply)
    local n = self.n + 1
    self.channels[n], self.payloads[n], self.callbacks[n] = channel, payload, on_reply or false
    self.n = n
    if not self.sending then self:_flush() end
end

-- Send what is queued (up to MAX_BATCH) in one pipeline; the rest, and what
-- comes meanwhile, when its replies are in.
function Bridge:_flush()
    local n = self.n
    if n == 0 then
        self.sending = false
        return
    end
    local take = n < MAX_BATCH and n or MAX_BATCH
    local channels, payloads, callbacks = self.channels, self.payloads, self.callbacks
    local p = self.client:pipeline()
    for i = 1, take do p:call("PUBLISH", channels[i], payloads[i]) end
    local keep_channels, keep_payloads, keep_callbacks = {}, {}, {}
    for i = take + 1, n do -- rare: more than MAX_BATCH queued
        keep_channels[i - take], keep_payloads[i - take], keep_callbacks[i - take] =
            channels[i], payloads[i], callbacks[i]
    end
    self.channels, self.payloads, self.callbacks, self.n = keep_channels, keep_payloads, keep_callbacks, n - take
    self.sending = true
    p:execute()(function(replies, err)
        for i = 1, take do
            local fn = callbacks[i]
            if fn then
                local reply = replies and replies[i]
                local ok, failed
                if type(reply) == "number" then
                    ok, failed = xpcall(fn, traceback, reply)
                else
                    ok, failed = xpcall(fn, traceback, nil, type(reply) == "table" and reply.error or err)
                end
                if not ok then log_error("wamp: " .. tostring(failed)) end -- the queue goes on
            end
        end
        self:_flush()
    end)
end

--- Send `data` to every peer of the other servers.
function Bridge:broadcast(data)
    self:_publish(self.all, self.header .. data)
end

--- Send `data` to peer `addr`. Promise of true, or of nil, reason when nothing
--- received it (the peer is lost then) or Redis could not be reached.
function Bridge:send(addr, data)
    local resolve, promise = aio:prepare_promise()
    self:_publish(self.inbox_prefix .. addr, self.header .. data, function(n, err)
        if n == nil then return resolve(nil, err) end
        if n == 0 then -- its inbox has no subscriber: the process is gone...
            resolve(nil, "its server is gone")
            -- ...unless it is just starting (its inbox not subscribed yet)
            local heard = self.peers[addr]
            if heard and clock() - heard > self.heartbeat then self:lost(addr) end
            return
        end
        resolve(true)
    end)
    return promise
end

--- Claim registration `field` for registration `id` of ours. Promise of true
--- (ours), false, holder (held by a live peer), or nil, err (Redis unreachable).
function Bridge:claim(field, id)
    local resolve, promise = aio:prepare_promise()
    local value = self.addr .. " " .. str_format("%.0f", id)
    self.client:call("EVAL", CLAIM, 1, self.regs_key, field, value, self.alive, self.addr,
                     self.position)(
        function(held, err)
            if held == nil then return resolve(nil, err) end
            if held == 0 then return resolve(true) end
            resolve(false, held)
        end)
    return promise
end

--- Give up the claim `field` of registration `id` (if it is still ours).
function Bridge:release(field, id)
    return self.client:call("EVAL", RELEASE, 1, self.regs_key, field,
                            self.addr .. " " .. str_format("%.0f", id))
end

_M.parts_of = parts_of
return _M
