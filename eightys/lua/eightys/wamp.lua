-- A WAMP v2 router (https://wamp-proto.org) on eightys' WebSocket layer; see
-- README, "WAMP router".
--
--   local wamp = require("eightys.wamp")
--   local router = wamp.router{ realms = { realm1 = {} } }
--   router:listen("/ws")
--   router:register("realm1", "com.example.add", function(args) return { args[1] + args[2] } end)
--
-- Basic Profile (sessions, pub/sub, RPC) plus the advanced features: publisher and
-- caller identification, publisher exclusion, subscriber black/whitelisting,
-- progressive call results, call timeouts and cancelling, pattern-based
-- subscriptions and registrations, the session meta API, WAMP-CRA and ticket
-- authentication.
--
-- Each worker runs the router for the sessions it accepted. Workers share what
-- the others need through aio:post (relayed by the master): every registration
-- and every session is announced to all workers, events are handed to every
-- worker once, and a call to a procedure registered in another worker travels
-- there and its results come back. Nothing is shared or locked.
--
-- With Redis (the server's --redis, or options.redis) the same messages reach
-- the workers of the other servers through Redis pub/sub (eightys.wamp_redis):
-- a worker elsewhere is addressed by its peer address (a string), a worker of
-- this server by its number, and "*" is everyone. Registrations are claimed in
-- Redis, so a procedure is registered once across the servers.

local type = type
local pairs = pairs
local next = next
local tostring = tostring
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local tonumber = tonumber
local xpcall = xpcall
local traceback = debug.traceback
local floor = math.floor
local random = math.random
local str_byte = string.byte
local str_find = string.find
local str_sub = string.sub

local aio = aio
local codec = codec
local crypto = crypto
local json_encode = codec.json_encode
local json_decode = codec.json_decode
local array = codec.array
local object = codec.object

local host = require("eightys.host")
local log_error = host.log_error
local msgpack = require("eightys.msgpack")
local cbor = require("eightys.cbor")

local _M = {}

local WORKER = WORKERID or 0
local NWORKERS = WORKERS or 1
local MAILBOX = "eightys.wamp"
-- This server run (the same in all its workers): what Redis brings from it is ours.
local RUN = host.run_id or ("r" .. tostring(floor(random() * 1e15)))

-- Message codes (WAMP v2).
local HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE = 1, 2, 3, 4, 5, 6
local ERROR = 8
local PUBLISH, PUBLISHED = 16, 17
local SUBSCRIBE, SUBSCRIBED, UNSUBSCRIBE, UNSUBSCRIBED, EVENT = 32, 33, 34, 35, 36
local CALL, CANCEL, RESULT = 48, 49, 50
local REGISTER, REGISTERED, UNREGISTER, UNREGISTERED, INVOCATION, INTERRUPT, YIELD =
    64, 65, 66, 67, 68, 69, 70
_M.codes = { HELLO = HELLO, WELCOME = WELCOME, ABORT = ABORT, CHALLENGE = CHALLENGE,
             AUTHENTICATE = AUTHENTICATE, GOODBYE = GOODBYE, ERROR = ERROR, PUBLISH = PUBLISH,
             PUBLISHED = PUBLISHED, SUBSCRIBE = SUBSCRIBE, SUBSCRIBED = SUBSCRIBED,
             UNSUBSCRIBE = UNSUBSCRIBE, UNSUBSCRIBED = UNSUBSCRIBED, EVENT = EVENT, CALL = CALL,
             CANCEL = CANCEL, RESULT = RESULT, REGISTER = REGISTER, REGISTERED = REGISTERED,
             UNREGISTER = UNREGISTER, UNREGISTERED = UNREGISTERED, INVOCATION = INVOCATION,
             INTERRUPT = INTERRUPT, YIELD = YIELD }

local E_PROTOCOL = "wamp.error.protocol_violation"
local E_NO_PROC = "wamp.error.no_such_procedure"
local E_CANCELED = "wamp.error.canceled"
local E_INVALID_URI = "wamp.error.invalid_uri"
local E_UNAVAILABLE = "wamp.error.unavailable"

local ROLES = object({
    broker = { features = {
        publisher_identification = true, publisher_exclusion = true,
        subscriber_blackwhite_listing = true, pattern_based_subscription = true,
        session_meta_api = true,
    } },
    dealer = { features = {
        caller_identification = true, progressive_call_results = true, call_canceling = true,
        call_timeout = true, pattern_based_registration = true, session_meta_api = true,
    } },
})

---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

-- IDs are random in [1, 2^53] (as the spec asks) and carry the worker that made
-- them in their low 7 bits, so any worker can tell where a session lives.
local SLOTS = 128
local seeded = false
local function new_id()
    if not seeded then
        local b = crypto.random(6)
        local seed = 0
        for i = 1, 6 do seed = seed * 256 + str_byte(b, i) end
        math.randomseed(seed)
        seeded = true
    end
    return (floor(random() * 70368744177663) + 1) * SLOTS + WORKER -- < 2^46 * 2^7
end
_M.new_id = new_id

--- The worker that created WAMP id `id` (sessions, registrations, publications).
function _M.worker_of(id)
    return id % SLOTS
end

local ARRAY_MT = getmetatable(array())
local OBJECT_MT = getmetatable(object())

local function is_array(t)
    return type(t) == "table" and getmetatable(t) ~= OBJECT_MT and (t[1] ~= nil or next(t) == nil)
end
local function is_dict(t)
    return type(t) == "table" and getmetatable(t) ~= ARRAY_MT and t[1] == nil
end

-- A deterministic id for a subscription (the same topic and match give the same id
-- in every worker, so subscribers of one topic share one subscription id).
local function topic_id(match, topic)
    local h = crypto.sha256(match .. "\0" .. topic)
    local n = 0
    for i = 1, 6 do n = n * 256 + str_byte(h, i) end
    return (n % 70368744177663 + 1) * SLOTS + SLOTS - 1 -- marked as "no worker"
end

-- URIs: dot-separated components without whitespace, '.' or '#'. Patterns may
-- have empty components (wildcard) or end in a partial component (prefix).
local function valid_uri(uri, match)
    if type(uri) ~= "string" or uri == "" then return false end
    if str_find(uri, "[%s#]") then return false end
    if match == "prefix" then return true end
    if match == "wildcard" then return true end
    return not (str_find(uri, "%.%.") or str_byte(uri, 1) == 46 or str_byte(uri, #uri) == 46)
end

local function split(uri)
    local parts, start = {}, 1
    while true do
        local at = str_find(uri, ".", start, true)
        if not at then
            parts[#parts + 1] = str_sub(uri, start)
            return parts
        end
        parts[#parts + 1] = str_sub(uri, start, at - 1)
        start = at + 1
    end
end

local function wildcard_match(parts, uri)
    local target = split(uri)
    if #target ~= #parts then return false end
    for i = 1, #parts do
        local p = parts[i]
        if p ~= "" and p ~= target[i] then return false end
    end
    return true
end

-- How specific a wildcard pattern is (more non-empty components first).
local function specificity(parts)
    local n = 0
    for i = 1, #parts do if parts[i] ~= "" then n = n + 1 end end
    return n
end

local function list_has(list, value)
    if type(list) ~= "table" then return false end
    for i = 1, #list do if list[i] == value then return true end end
    return false
end

local function constant_equal(a, b)
    if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then return false end
    local diff = 0
    for i = 1, #a do
        if str_byte(a, i) ~= str_byte(b, i) then diff = diff + 1 end
    end
    return diff == 0
end

local function copy_details(s)
    return object({ session = s.id, authid = s.authid, authrole = s.authrole,
                    authmethod = s.authmethod, authprovider = s.authprovider,
                    transport = object({ type = "websocket", protocol = s.serializer,
                                         peer = s.peer }),
                    worker = s.worker, node = NODE })
end

---------------------------------------------------------------------------
-- Serializers
---------------------------------------------------------------------------

local SERIALIZERS = {
    ["wamp.2.json"] = { encode = json_encode, decode = json_decode, binary = false, name = "json" },
    ["wamp.2.msgpack"] = { encode = msgpack.encode, decode = msgpack.decode, binary = true,
                           name = "msgpack" },
    ["wamp.2.cbor"] = { encode = cbor.encode, decode = cbor.decode, binary = true, name = "cbor" },
}

-- The WAMP message as a list: trailing args/kwargs only when present.
local function with_payload(msg, n, args, kwargs)
    if kwargs ~= nil and next(kwargs) ~= nil then
        msg[n] = args or array()
        msg[n + 1] = kwargs
    elseif args ~= nil and next(args) ~= nil then
        msg[n] = args
    end
    return msg
end

---------------------------------------------------------------------------
-- Realms and their state
---------------------------------------------------------------------------

local Realm = {}
Realm.__index = Realm

local function new_realm(router, name, config)
    local realm = setmetatable({
        router = router, name = name, config = config or {},
        sessions = {},       -- id -> local session (established)
        directory = {},      -- id -> details of every session in every worker
        count = 0,           -- #directory
        subs = {},           -- key (match \0 topic) -> local subscription
        subs_by_id = {},     -- id -> local subscription
        pattern_subs = {},   -- key -> subscription, prefix and wildcard only
        regs = {},           -- key -> local registration
        regs_by_id = {},     -- id -> local registration
        patterns = {},       -- key -> local registration, prefix and wildcard only
        remote_regs = {},    -- id -> { id, procedure, match, key, worker } in other workers
                             -- (worker: a number for this server's, a peer address for another's)
        owners = {},         -- session id -> the worker that has it (as remote_regs' worker)
        pending = {},        -- key -> true while a registration is being claimed in Redis
        remote_by_key = {},  -- key -> { id -> entry } (Lua procedures exist in every worker)
        remote_patterns = {}, -- id -> entry, prefix and wildcard only
        calls = {},          -- call id -> pending call whose caller is here
        remote_invocations = {}, -- call id -> invocation here for a caller elsewhere
        lua_subs = {},       -- key -> handle of router:subscribe (one per topic and match)
    }, Realm)
    return realm
end

local function reg_key(match, uri) return match .. "\0" .. uri end

--- The registration serving `uri`: exact first, then the longest prefix, then the
--- most specific wildcard; a registration in this worker before one elsewhere.
function Realm:find_registration(uri)
    local key = reg_key("exact", uri)
    local exact = self.regs[key]
    if exact then return exact end
    local remote = self.remote_by_key[key]
    if remote then -- Lua procedures exist in many workers: one of this server first
        local found
        for _, entry in pairs(remote) do
            found = entry
            if type(entry.worker) == "number" then break end
        end
        if found then return found end
    end
    local best, best_len, best_local
    local function consider_prefix(r, is_local)
        if r.match == "prefix" and str_sub(uri, 1, #r.procedure) == r.procedure then
            local n = #r.procedure
            if best == nil or n > best_len or (n == best_len and is_local and not best_local) then
                best, best_len, best_local = r, n, is_local
            end
        end
    end
    for _, r in pairs(self.patterns) do consider_prefix(r, true) end
    for _, r in pairs(self.remote_patterns) do consider_prefix(r, false) end
    if best then return best end
    local function consider_wildcard(r, is_local)
        if r.match == "wildcard" then
            r.parts = r.parts or split(r.procedure)
            if wildcard_match(r.parts, uri) then
                local n = specificity(r.parts)
                if best == nil or n > best_len or (n == best_len and is_local and not best_local) then
                    best, best_len, best_local = r, n, is_local
                end
            end
        end
    end
    for _, r in pairs(self.patterns) do consider_wildcard(r, true) end
    for _, r in pairs(self.remote_patterns) do consider_wildcard(r, false) end
    return best
end

-- A registration in another worker, announced to us.
function Realm:add_remote(entry)
    self:drop_remote(entry.id)
    entry.key = reg_key(entry.match, entry.procedure)
    self.remote_regs[entry.id] = entry
    local same = self.remote_by_key[entry.key]
    if same == nil then
        same = {}
        self.remote_by_key[entry.key] = same
    end
    same[entry.id] = entry
    if entry.match ~= "exact" then self.remote_patterns[entry.id] = entry end
end

-- A registration in another worker went away.
function Realm:drop_remote(id)
    local entry = self.remote_regs[id]
    if entry == nil then return end
    self.remote_regs[id] = nil
    self.remote_patterns[id] = nil
    local same = self.remote_by_key[entry.key]
    if same then
        same[id] = nil
        if next(same) == nil then self.remote_by_key[entry.key] = nil end
    end
end

-- The local subscriptions an event on `topic` goes to.
function Realm:matching_subscriptions(topic)
    local found = {}
    local exact = self.subs[reg_key("exact", topic)]
    if exact then found[1] = exact end
    for _, sub in pairs(self.pattern_subs) do
        if sub.match == "prefix" then
            if str_sub(topic, 1, #sub.topic) == sub.topic then found[#found + 1] = sub end
        elseif wildcard_match(sub.parts, topic) then
            found[#found + 1] = sub
        end
    end
    return found
end

---------------------------------------------------------------------------
-- Between workers
---------------------------------------------------------------------------

local routers = {} -- name -> router, for the mailbox

-- Messages between workers are MessagePack: any bytes survive (a msgpack
-- session's binary payloads), and it is the faster of our codecs. `worker`: a
-- worker of this server (a number), a peer of another server (its address),
-- "*" (every other worker of every server) or "peers" (every worker of the other
-- servers). `message[2]` is the router's name.
-- For a peer, returns the promise of Bridge:send (true, or nil, reason).
local function post(worker, message)
    local bridge
    if type(worker) == "string" then
        local router = routers[message[2]]
        bridge = router and router.bridge
        if bridge == nil and worker ~= "*" then return aio:resolved(nil, "no Redis") end
    end
    if NWORKERS <= 1 and bridge == nil then return end
    local data, err = msgpack.encode(message)
    if data == nil then
        log_error("wamp: cannot encode a message for worker " .. tostring(worker) .. ": " .. tostring(err))
        return
    end
    if worker == "*" or worker == "peers" then
        if bridge then bridge:broadcast(data) end
        if NWORKERS <= 1 or worker == "peers" then return end
    elseif bridge then
        return bridge:send(worker, data)
    end
    local ok
    ok, err = aio:post(worker, MAILBOX, data)
    if not ok then log_error("wamp: cannot reach worker " .. tostring(worker) .. ": " .. tostring(err)) end
end

---------------------------------------------------------------------------
-- Sessions
---------------------------------------------------------------------------

local Session = {}
Session.__index = Session

-- Send an already encoded message. A client that does not read what it is sent
-- (its send buffer is full) is closed with 1013 rather than silently missing
-- messages, as WebSocket pub/sub does (the close ends its session).
function Session:send_raw(data)
    local ws = self.ws
    if ws == nil then return end
    local ok, err = ws:send(data, self.codec.binary)
    if not ok and err == "send buffer full" then
        ws:close(1013, "too slow")
        if self.state == "open" then self.router:_leave(self) end -- now, not after the close handshake
        self.state = "closed"
    end
end

function Session:send(msg)
    local data, err = self.codec.encode(msg)
    if data == nil then
        log_error("wamp: cannot encode a message for session " .. tostring(self.id) .. ": " .. tostring(err))
        return
    end
    self:send_raw(data)
end

---------------------------------------------------------------------------
-- The router
---------------------------------------------------------------------------

local Router = {}
Router.__index = Router
_M.Router = Router

--- Create (or, on reload, update) the router called `options.name` (default
--- "default"). `options.realms`: realm name -> realm config ({} for an open realm;
--- `wampcra = { authid = { secret =, role = } }`, `ticket = { authid = { ticket =,
--- role = } }`, `anonymous = false` to require authentication).
--- @param options? table
--- @return table router
function _M.router(options)
    options = options or {}
    if type(options) ~= "table" then error("wamp.router(options): options must be a table", 2) end
    local name = options.name or "default"
    local router = routers[name]
    if router == nil then
        router = setmetatable({ name = name, realms = {}, started = false }, Router)
        routers[name] = router
    end
    local realms = options.realms or { realm1 = {} }
    for realm_name, config in pairs(realms) do
        if type(realm_name) ~= "string" or type(config) ~= "table" then
            error("wamp.router: realms must map names to config tables", 2)
        end
        local realm = router.realms[realm_name]
        if realm == nil then
            realm = new_realm(router, realm_name, config)
            router.realms[realm_name] = realm
            router:_install_meta(realm)
        else
            realm.config = config
        end
    end
    router.default_call_timeout = options.call_timeout
    local limits = options.limits or {}
    router.limits = { calls = limits.calls or 1000, subscriptions = limits.subscriptions or 10000,
                      registrations = limits.registrations or 10000 }
    if not router.started then
        router.started = true
        if NWORKERS > 1 then post("*", { "hello", name }) end
        router:_connect(options.redis)
    end
    return router
end

-- Link the router to the other servers through Redis: `redis` is false (never),
-- a URL, or { url =, prefix =, heartbeat = }; nil uses the server's --redis when
-- it has one. Read once, when the router is made.
function Router:_connect(redis)
    if redis == false then return end
    if type(redis) == "string" then redis = { url = redis } end
    if redis ~= nil and type(redis) ~= "table" then
        error("wamp.router: redis must be false, a URL or a table", 3)
    end
    redis = redis or {}
    if redis.url == nil and (host.redis_url or "") == "" then return end
    local heartbeat = redis.heartbeat or 2
    if type(heartbeat) ~= "number" or heartbeat <= 0 then
        error("wamp.router: redis.heartbeat must be a positive number of seconds", 3)
    end
    local router = self
    local bridge, err = require("eightys.wamp_redis").new({
        url = redis.url, prefix = redis.prefix or ("eightys:wamp:" .. self.name),
        heartbeat = heartbeat, run = RUN, worker = WORKER,
        on_message = function(sender, data, new) router:_from_peer(sender, data, new) end,
        on_lost = function(addr) router:_forget(addr, "its server went away") end,
        on_ready = function()
            -- "forget what I had, here is what I have": the other servers' peers
            -- answer with what they have
            post("peers", { "hello", router.name })
            router:_tell_state("peers")
        end,
        on_beat = function() router:_reclaim() end,
    })
    if bridge == nil then
        log_error("wamp: no Redis link: " .. tostring(err))
        return
    end
    self.bridge = bridge
end

--- This worker's peer address on Redis (nil without Redis).
function Router:peer_address()
    return self.bridge and self.bridge.addr
end

--- The realm called `name` (its sessions, subscriptions and registrations);
--- an unknown name is a usage error.
function Router:realm(name)
    local realm = self.realms[name]
    if realm == nil then error("wamp: no realm " .. tostring(name), 3) end
    return realm
end

--- Serve WAMP over WebSocket on `path` (subprotocols wamp.2.json, wamp.2.msgpack
--- and wamp.2.cbor); `ws_options` are aio:websocket's options.
--- @param path string
--- @param ws_options? table
function Router:listen(path, ws_options)
    local opts = {}
    for k, v in pairs(ws_options or {}) do opts[k] = v end
    opts.protocols = opts.protocols or { "wamp.2.json", "wamp.2.msgpack", "wamp.2.cbor" }
    local router = self
    aio:websocket(path, {
        open = function(ws, query, headers)
            local ser = SERIALIZERS[ws.protocol or ""]
            if ser == nil then
                ws:close(1002, "a WAMP subprotocol (wamp.2.json, wamp.2.msgpack, wamp.2.cbor) is required")
                return
            end
            ws.wamp = setmetatable({ ws = ws, codec = ser, serializer = ser.name, state = "new",
                                     router = router, worker = WORKER,
                                     peer = headers and headers["x-forwarded-for"] or nil }, Session)
        end,
        message = function(ws, data, binary)
            local s = ws.wamp
            if s == nil then return end
            router:_receive(s, data, binary)
        end,
        close = function(ws)
            local s = ws.wamp
            if s == nil then return end
            s.ws = nil
            router:_leave(s)
        end,
    }, opts)
end

---------------------------------------------------------------------------
-- Session life cycle
---------------------------------------------------------------------------

function Router:_abort(s, reason, message)
    if s.ws then
        s:send({ ABORT, object({ message = message }), reason })
        s.ws:close(1000)
    end
    self:_leave(s)
    s.state = "closed" -- whatever still arrives before the close is ignored
end

function Router:_violation(s, message)
    self:_abort(s, E_PROTOCOL, message)
end

function Router:_welcome(s, realm, authid, authrole, authmethod)
    s.id = new_id()
    s.realm = realm
    s.authid = authid or string.format("%.0f", s.id)
    s.authrole = authrole or "anonymous"
    s.authmethod = authmethod or "anonymous"
    s.authprovider = authmethod == "anonymous" and "static" or "static"
    s.state = "open"
    s.subscriptions = {}
    s.registrations = {}
    s.invocations = {}  -- invocation request id -> invocation (we are its callee)
    s.calls = {}        -- call request id -> call (we are its caller)
    s.ncalls = 0
    s.nsubscriptions = 0
    s.nregistrations = 0
    s.next_request = 0
    realm.sessions[s.id] = s
    realm.owners[s.id] = WORKER
    s:send({ WELCOME, s.id, object({
        roles = ROLES, realm = realm.name, authid = s.authid, authrole = s.authrole,
        authmethod = s.authmethod, authprovider = s.authprovider,
        authextra = object({ x_eightys_worker = WORKER, x_eightys_node = NODE }),
    }) })
    local details = copy_details(s)
    self:_joined(realm, details)
    post("*", { "join", self.name, realm.name, details })
end

-- A session joined (here or in another worker): directory and meta event.
function Router:_joined(realm, details)
    if realm.directory[details.session] == nil then realm.count = realm.count + 1 end
    realm.directory[details.session] = details
    self:_publish_local(realm, "wamp.session.on_join", nil, { details }, nil, {})
end

function Router:_left(realm, id)
    local details = realm.directory[id]
    if details == nil then return end
    realm.directory[id] = nil
    realm.owners[id] = nil
    realm.count = realm.count - 1
    self:_publish_local(realm, "wamp.session.on_leave", nil,
                        { id, details.authid, details.authrole }, nil, {})
end

-- The session ended (GOODBYE, ABORT, violation, closed transport): drop its
-- subscriptions and registrations, fail its callers, cancel its calls.
function Router:_leave(s)
    local realm = s.realm
    local was_open = s.state == "open"
    s.state = s.ws and "new" or "closed"
    if not was_open then return end
    s.realm = nil
    realm.sessions[s.id] = nil
    for sub in pairs(s.subscriptions) do self:_unsubscribe(realm, sub, s) end
    s.subscriptions = {}
    for reg in pairs(s.registrations) do self:_unregister(realm, reg) end
    s.registrations = {}
    for _, inv in pairs(s.invocations) do
        inv.reply_error(E_CANCELED, { "callee left" }, nil)
        inv:finish()
    end
    s.invocations = {}
    for _, call in pairs(s.calls) do call:cancel("killnowait", true) end
    s.calls = {}
    s.ncalls = 0
    self:_left(realm, s.id)
    post("*", { "leave", self.name, realm.name, s.id })
end

---------------------------------------------------------------------------
-- Receiving
---------------------------------------------------------------------------

local handlers = {}

function Router:_receive(s, data, binary)
    if binary ~= s.codec.binary then
        return self:_violation(s, (binary and "binary" or "text") .. " message on a "
                                  .. s.serializer .. " session")
    end
    local msg = s.codec.decode(data)
    if type(msg) ~= "table" or type(msg[1]) ~= "number" then
        return self:_violation(s, "a WAMP message must be a list starting with its type")
    end
    local code = msg[1]
    if s.state == "new" then
        if code ~= HELLO then return self:_violation(s, "HELLO expected") end
        return self:_hello(s, msg)
    elseif s.state == "challenged" then
        if code ~= AUTHENTICATE then return self:_violation(s, "AUTHENTICATE expected") end
        return self:_authenticate(s, msg)
    elseif s.state == "closed" then
        return
    end
    local handler = handlers[code]
    if handler == nil then
        return self:_violation(s, "unexpected message type " .. tostring(code))
    end
    local ok, err = xpcall(handler, traceback, self, s, msg)
    if not ok then
        log_error("wamp: message " .. code .. " of session " .. tostring(s.id) .. ": " .. tostring(err))
        self:_violation(s, "the router could not handle a message of type " .. code)
    elseif err then
        self:_violation(s, err) -- handlers return a string for a malformed message
    end
end

function Router:_hello(s, msg)
    local realm_name, details = msg[2], msg[3]
    if type(realm_name) ~= "string" or not is_dict(details) then
        return self:_violation(s, "HELLO: [1, realm, details] expected")
    end
    local realm = self.realms[realm_name]
    if realm == nil then
        s:send({ ABORT, object({ message = "no realm " .. realm_name }), "wamp.error.no_such_realm" })
        if s.ws then s.ws:close(1000) end
        return
    end
    local config = realm.config
    local methods = details.authmethods
    if type(methods) ~= "table" then methods = { "anonymous" } end
    local authid = details.authid
    for i = 1, #methods do
        local method = methods[i]
        if method == "wampcra" and config.wampcra and type(authid) == "string" then
            local user = config.wampcra[authid]
            if user then return self:_challenge_cra(s, realm, authid, user) end
        elseif method == "ticket" and config.ticket and type(authid) == "string" then
            local user = config.ticket[authid]
            if user then
                s.state, s.pending = "challenged", { realm = realm, method = "ticket", authid = authid, user = user }
                return s:send({ CHALLENGE, "ticket", object({}) })
            end
        elseif method == "anonymous" and self:_anonymous_allowed(config) then
            return self:_welcome(s, realm, nil, "anonymous", "anonymous")
        end
    end
    s:send({ ABORT, object({ message = "no acceptable authentication method" }),
             "wamp.error.no_auth_method" })
    if s.ws then s.ws:close(1000) end
end

function Router:_anonymous_allowed(config)
    if config.anonymous ~= nil then return config.anonymous end
    return config.wampcra == nil and config.ticket == nil
end

function Router:_challenge_cra(s, realm, authid, user)
    local role = user.role or "user"
    local nonce = codec.base64_encode(crypto.random(16))
    local challenge = json_encode(object({
        authid = authid, authrole = role, authmethod = "wampcra", authprovider = "static",
        nonce = nonce, timestamp = os.date("!%Y-%m-%dT%H:%M:%SZ"), session = new_id(),
    }))
    s.state = "challenged"
    s.pending = { realm = realm, method = "wampcra", authid = authid, user = user, challenge = challenge }
    s:send({ CHALLENGE, "wampcra", object({ challenge = challenge }) })
end

function Router:_authenticate(s, msg)
    local p = s.pending
    s.pending = nil
    local signature = msg[2]
    local ok = false
    if p.method == "wampcra" then
        local expected = codec.base64_encode(crypto.hmac_sha256(p.challenge, p.user.secret))
        ok = constant_equal(signature, expected)
    elseif p.method == "ticket" then
        ok = constant_equal(signature, p.user.ticket)
    end
    if not ok then
        s.state = "new"
        s:send({ ABORT, object({ message = "authentication failed" }), "wamp.error.authentication_failed" })
        if s.ws then s.ws:close(1000) end
        return
    end
    self:_welcome(s, p.realm, p.authid, p.user.role or "user", p.method)
end

handlers[HELLO] = function(router, s)
    return "HELLO on an open session"
end

handlers[GOODBYE] = function(router, s, msg)
    s:send({ GOODBYE, object({}), "wamp.close.goodbye_and_out" })
    router:_leave(s)
end

handlers[ABORT] = function(router, s)
    router:_leave(s)
    if s.ws then s.ws:close(1000) end
end

---------------------------------------------------------------------------
-- Publish & subscribe
---------------------------------------------------------------------------

handlers[SUBSCRIBE] = function(router, s, msg)
    local request, options, topic = msg[2], msg[3], msg[4]
    if type(request) ~= "number" or not is_dict(options) or type(topic) ~= "string" then
        return "SUBSCRIBE: [32, request, options, topic] expected"
    end
    local match = options.match or "exact"
    if match ~= "exact" and match ~= "prefix" and match ~= "wildcard" then
        return s:send({ ERROR, SUBSCRIBE, request, object({}), "wamp.error.invalid_option" })
    end
    if not valid_uri(topic, match) then
        return s:send({ ERROR, SUBSCRIBE, request, object({}), E_INVALID_URI })
    end
    if s.nsubscriptions >= router.limits.subscriptions then
        return s:send({ ERROR, SUBSCRIBE, request, object({}), "wamp.error.too_many_subscriptions" })
    end
    local sub = router:_subscribe(s.realm, match, topic, s)
    s:send({ SUBSCRIBED, request, sub.id })
end

function Router:_subscribe(realm, match, topic, subscriber)
    local key = reg_key(match, topic)
    local sub = realm.subs[key]
    if sub == nil then
        sub = { id = topic_id(match, topic), topic = topic, match = match, subscribers = {},
                n = 0, key = key, parts = match == "wildcard" and split(topic) or nil,
                encoded = {} }
        realm.subs[key] = sub
        realm.subs_by_id[sub.id] = sub
        if match ~= "exact" then realm.pattern_subs[key] = sub end
    end
    if not sub.subscribers[subscriber] then
        sub.subscribers[subscriber] = true
        sub.n = sub.n + 1
        if subscriber.nsubscriptions then subscriber.nsubscriptions = subscriber.nsubscriptions + 1 end
    end
    if subscriber.subscriptions then subscriber.subscriptions[sub] = true end
    return sub
end

function Router:_unsubscribe(realm, sub, subscriber)
    if not sub.subscribers[subscriber] then return false end
    sub.subscribers[subscriber] = nil
    sub.n = sub.n - 1
    if subscriber.nsubscriptions then subscriber.nsubscriptions = subscriber.nsubscriptions - 1 end
    if subscriber.subscriptions then subscriber.subscriptions[sub] = nil end
    if sub.n == 0 then
        realm.subs[sub.key] = nil
        realm.subs_by_id[sub.id] = nil
        realm.pattern_subs[sub.key] = nil
    end
    return true
end

handlers[UNSUBSCRIBE] = function(router, s, msg)
    local request, id = msg[2], msg[3]
    if type(request) ~= "number" or type(id) ~= "number" then
        return "UNSUBSCRIBE: [34, request, subscription] expected"
    end
    local sub = s.realm.subs_by_id[id]
    if sub == nil or not router:_unsubscribe(s.realm, sub, s) then
        return s:send({ ERROR, UNSUBSCRIBE, request, object({}), "wamp.error.no_such_subscription" })
    end
    s:send({ UNSUBSCRIBED, request })
end

-- Whether an event from `publisher` (id, authid, authrole) with `options` goes to
-- session `s` (exclude_me, exclude*, eligible*).
local function eligible(s, publisher, options)
    if s.id ~= nil and s.id == publisher.session and options.exclude_me ~= false then return false end
    if options.exclude and list_has(options.exclude, s.id) then return false end
    if options.exclude_authid and list_has(options.exclude_authid, s.authid) then return false end
    if options.exclude_authrole and list_has(options.exclude_authrole, s.authrole) then return false end
    if options.eligible and not list_has(options.eligible, s.id) then return false end
    if options.eligible_authid and not list_has(options.eligible_authid, s.authid) then return false end
    if options.eligible_authrole and not list_has(options.eligible_authrole, s.authrole) then return false end
    return true
end

local filtering = { "exclude", "exclude_authid", "exclude_authrole", "eligible",
                    "eligible_authid", "eligible_authrole" }

-- Deliver an event to this worker's subscribers. `publisher`: { session, authid,
-- authrole } (nil for the router); `options`: the PUBLISH options.
function Router:_publish_local(realm, topic, publication, args, kwargs, options, publisher)
    local subs = realm:matching_subscriptions(topic)
    if #subs == 0 then return 0 end
    publication = publication or new_id()
    publisher = publisher or {}
    local filtered = options.exclude_me ~= false and publisher.session ~= nil
    for i = 1, #filtering do if options[filtering[i]] ~= nil then filtered = true end end
    local n = 0
    for i = 1, #subs do
        local sub = subs[i]
        local details = object({})
        if sub.match ~= "exact" then details.topic = topic end
        if publisher.disclosed then
            details.publisher = publisher.session
            details.publisher_authid = publisher.authid
            details.publisher_authrole = publisher.authrole
        end
        local msg = with_payload({ EVENT, sub.id, publication, details }, 5, args, kwargs)
        local encoded = {} -- serializer name -> bytes: each message is encoded once
        for subscriber in pairs(sub.subscribers) do
            if not filtered or eligible(subscriber, publisher, options) then
                if subscriber.handler then
                    subscriber.handler(args, kwargs, details)
                else
                    local c = subscriber.codec
                    local data = encoded[c.name]
                    if data == nil then
                        data = c.encode(msg)
                        encoded[c.name] = data
                    end
                    subscriber:send_raw(data)
                end
                n = n + 1
            end
        end
    end
    return n
end

function Router:_publish(realm, topic, args, kwargs, options, publisher)
    local publication = new_id()
    self:_publish_local(realm, topic, publication, args, kwargs, options, publisher)
    if NWORKERS > 1 or self.bridge then
        post("*", { "event", self.name, realm.name, topic, publication, args or array(),
                    kwargs or object({}), options, publisher or object({}) })
    end
    return publication
end

handlers[PUBLISH] = function(router, s, msg)
    local request, options, topic, args, kwargs = msg[2], msg[3], msg[4], msg[5], msg[6]
    if type(request) ~= "number" or not is_dict(options) or type(topic) ~= "string"
        or (args ~= nil and not is_array(args)) or (kwargs ~= nil and not is_dict(kwargs)) then
        return "PUBLISH: [16, request, options, topic, args?, kwargs?] expected"
    end
    if not valid_uri(topic, "exact") then
        if options.acknowledge then
            s:send({ ERROR, PUBLISH, request, object({}), E_INVALID_URI })
        end
        return
    end
    local disclosed = (options.disclose_me or s.realm.config.disclose_publisher) and true or false
    local publication = router:_publish(s.realm, topic, args, kwargs, options,
                                        { session = s.id, authid = s.authid, authrole = s.authrole,
                                          disclosed = disclosed })
    if options.acknowledge then s:send({ PUBLISHED, request, publication }) end
end

---------------------------------------------------------------------------
-- Registrations
---------------------------------------------------------------------------

-- Whether a client may register `key` now (as far as this worker knows).
function Realm:can_register(key, callee)
    if self.regs[key] or self.pending[key] then return false end
    -- a client's procedure is unique across the workers
    return not (callee and self.remote_by_key[key])
end

function Router:_register(realm, match, procedure, callee, fn, id)
    local key = reg_key(match, procedure)
    if not realm:can_register(key, callee) then return nil, "wamp.error.procedure_already_exists" end
    local reg = { id = id or new_id(), procedure = procedure, match = match, callee = callee, fn = fn,
                  key = key, worker = WORKER, parts = match == "wildcard" and split(procedure) or nil }
    realm.regs[key] = reg
    realm.regs_by_id[reg.id] = reg
    if match ~= "exact" then realm.patterns[key] = reg end
    if callee then
        callee.registrations[reg] = true
        callee.nregistrations = callee.nregistrations + 1
        reg.claimed = id ~= nil -- claimed in Redis before (Router:_claim)
        if self.bridge and not reg.claimed then reg.unclaimed = true end
    end
    if not reg.meta then
        post("*", { "reg", self.name, realm.name, { id = reg.id, procedure = procedure, match = match } })
    end
    return reg
end

function Router:_unregister(realm, reg)
    if realm.regs[reg.key] ~= reg then return false end
    realm.regs[reg.key] = nil
    realm.regs_by_id[reg.id] = nil
    realm.patterns[reg.key] = nil
    if reg.callee and reg.callee.registrations[reg] then
        reg.callee.registrations[reg] = nil
        reg.callee.nregistrations = reg.callee.nregistrations - 1
    end
    if reg.claimed and self.bridge then self.bridge:release(realm.name .. "\0" .. reg.key, reg.id) end
    post("*", { "unreg", self.name, realm.name, reg.id })
    return true
end

-- Claim `key` of `realm` in Redis for session `s`, then register it; `done(reg,
-- err)`. Redis out of reach: registered here alone (claimed when it is back).
function Router:_claim(realm, match, procedure, s, done)
    local key = reg_key(match, procedure)
    if not realm:can_register(key, s) then return done(nil, "wamp.error.procedure_already_exists") end
    realm.pending[key] = true
    local id = new_id()
    local router = self
    self.bridge:claim(realm.name .. "\0" .. key, id)(function(ours, err)
        realm.pending[key] = nil
        if ours == nil then
            log_error("wamp: registration of " .. procedure .. " not claimed in Redis (" .. tostring(err)
                      .. "): it is served, and claimed when Redis is back")
            id = nil
        elseif not ours then
            return done(nil, "wamp.error.procedure_already_exists")
        end
        if s.state ~= "open" or s.realm ~= realm then -- the session left meanwhile
            if id then router.bridge:release(realm.name .. "\0" .. key, id) end
            return done(nil, nil)
        end
        local reg, failed = router:_register(realm, match, procedure, s, nil, id)
        if reg == nil and id then router.bridge:release(realm.name .. "\0" .. key, id) end
        done(reg, failed)
    end)
end

-- Each heartbeat: claim the registrations made while Redis was out of reach.
function Router:_reclaim()
    for _, realm in pairs(self.realms) do
        for _, reg in pairs(realm.regs) do
            if reg.unclaimed then
                reg.unclaimed = nil
                self.bridge:claim(realm.name .. "\0" .. reg.key, reg.id)(function(ours, held)
                    if ours == nil then
                        reg.unclaimed = realm.regs[reg.key] == reg or nil
                    elseif ours then
                        reg.claimed = true
                        if realm.regs[reg.key] ~= reg then
                            self.bridge:release(realm.name .. "\0" .. reg.key, reg.id)
                        end
                    else
                        log_error("wamp: " .. reg.procedure .. " was registered on two servers while "
                                  .. "Redis was out of reach (the other: " .. tostring(held)
                                  .. "); each server's callers use their own")
                    end
                end)
            end
        end
    end
end

handlers[REGISTER] = function(router, s, msg)
    local request, options, procedure = msg[2], msg[3], msg[4]
    if type(request) ~= "number" or not is_dict(options) or type(procedure) ~= "string" then
        return "REGISTER: [64, request, options, procedure] expected"
    end
    local match = options.match or "exact"
    if match ~= "exact" and match ~= "prefix" and match ~= "wildcard" then
        return s:send({ ERROR, REGISTER, request, object({}), "wamp.error.invalid_option" })
    end
    if not valid_uri(procedure, match) or str_sub(procedure, 1, 5) == "wamp." then
        return s:send({ ERROR, REGISTER, request, object({}), E_INVALID_URI })
    end
    if s.nregistrations >= router.limits.registrations then
        return s:send({ ERROR, REGISTER, request, object({}), "wamp.error.too_many_registrations" })
    end
    if router.bridge then
        return router:_claim(s.realm, match, procedure, s, function(reg, err)
            if reg then return s:send({ REGISTERED, request, reg.id }) end
            if err then s:send({ ERROR, REGISTER, request, object({}), err }) end
        end)
    end
    local reg, err = router:_register(s.realm, match, procedure, s)
    if reg == nil then return s:send({ ERROR, REGISTER, request, object({}), err }) end
    s:send({ REGISTERED, request, reg.id })
end

handlers[UNREGISTER] = function(router, s, msg)
    local request, id = msg[2], msg[3]
    if type(request) ~= "number" or type(id) ~= "number" then
        return "UNREGISTER: [66, request, registration] expected"
    end
    local reg = s.realm.regs_by_id[id]
    if reg == nil or reg.callee ~= s then
        return s:send({ ERROR, UNREGISTER, request, object({}), "wamp.error.no_such_registration" })
    end
    router:_unregister(s.realm, reg)
    s:send({ UNREGISTERED, request })
end

---------------------------------------------------------------------------
-- Calls
---------------------------------------------------------------------------
-- A call lives in the caller's worker (timeout, cancel, the caller leaving); its
-- invocation lives in the callee's worker. When both are here they are linked
-- directly, otherwise through the mailbox by the call's id.

local Call = {}
Call.__index = Call

local Invocation = {}
Invocation.__index = Invocation

-- Start an invocation of local registration `reg`. `info`: { procedure, args,
-- kwargs, caller = { session, authid, authrole } or nil, receive_progress, timeout }.
-- `reply_result(args, kwargs, progress)`, `reply_error(uri, args, kwargs)`.
function Router:_invoke(realm, reg, info, reply_result, reply_error)
    local inv = setmetatable({ realm = realm, reg = reg, reply_result = reply_result,
                               reply_error = reply_error,
                               receive_progress = info.receive_progress }, Invocation)
    if reg.fn then
        inv.fn = true
        aio:async(function()
            local ok, a, b = xpcall(reg.fn, traceback, info.args or array(), info.kwargs or object({}),
                                    { procedure = info.procedure, caller = info.caller and info.caller.session,
                                      progress = info.receive_progress and function(pa, pk)
                                          if not inv.done then reply_result(pa, pk, true) end
                                      end or nil })
            if inv.done then return end
            inv.done = true
            if ok and type(a) == "table" and a.wamp_error then
                reply_error(a.wamp_error, a.args, a.kwargs)
            elseif ok then
                if a ~= nil and type(a) ~= "table" then
                    reply_result({ a }, b, false) -- a single plain value
                elseif a ~= nil and b == nil and is_dict(a) and next(a) ~= nil then
                    reply_result(nil, a, false) -- a dict: keyword results
                else
                    reply_result(a, b, false)
                end
            else
                log_error("wamp: procedure " .. tostring(info.procedure) .. ": " .. tostring(a))
                -- the caller gets the message (file:line: text), the log the traceback
                local message = tostring(a)
                reply_error("wamp.error.runtime_error", { (message:match("^[^\n]*")) }, nil)
            end
        end)
        return inv
    end
    local callee = reg.callee
    callee.next_request = callee.next_request + 1
    local id = callee.next_request
    inv.id, inv.callee = id, callee
    callee.invocations[id] = inv
    local details = object({})
    if reg.match ~= "exact" then details.procedure = info.procedure end
    if info.caller then
        details.caller = info.caller.session
        details.caller_authid = info.caller.authid
        details.caller_authrole = info.caller.authrole
    end
    if info.receive_progress then details.receive_progress = true end
    if info.timeout and info.timeout > 0 then details.timeout = info.timeout end
    callee:send(with_payload({ INVOCATION, id, reg.id, details }, 5, info.args, info.kwargs))
    return inv
end

function Invocation:finish()
    self.done = true
    if self.callee then self.callee.invocations[self.id] = nil end
    if self.remote_id then self.realm.remote_invocations[self.remote_id] = nil end
end

--- Interrupt the invocation ("kill": the callee answers; "killnowait": no answer
--- expected; "skip": nothing is sent).
function Invocation:interrupt(mode)
    if self.done then return end
    if self.fn then -- a Lua procedure cannot be stopped: its result is dropped
        self.done = true
        if mode == "kill" then self.reply_error(E_CANCELED, nil, nil) end
        return
    end
    if mode ~= "skip" and self.callee.ws then
        self.callee:send({ INTERRUPT, self.id, object({ mode = mode, reason = E_CANCELED }) })
    end
    if mode ~= "kill" then self:finish() end
end

handlers[YIELD] = function(router, s, msg)
    local request, options, args, kwargs = msg[2], msg[3], msg[4], msg[5]
    if type(request) ~= "number" or not is_dict(options) then
        return "YIELD: [70, request, options, args?, kwargs?] expected"
    end
    local inv = s.invocations[request]
    if inv == nil then return end -- cancelled or timed out meanwhile
    if options.progress then
        if inv.receive_progress then inv.reply_result(args, kwargs, true) end
        return
    end
    inv:finish()
    inv.reply_result(args, kwargs, false)
end

local function on_error_message(router, s, msg)
    local kind, request, details, uri, args, kwargs = msg[2], msg[3], msg[4], msg[5], msg[6], msg[7]
    if kind ~= INVOCATION then return "ERROR: only for an INVOCATION from a client" end
    if type(request) ~= "number" or not is_dict(details) or type(uri) ~= "string" then
        return "ERROR: [8, 68, request, details, error, args?, kwargs?] expected"
    end
    local inv = s.invocations[request]
    if inv == nil then return end
    inv:finish()
    inv.reply_error(uri, args, kwargs)
end
handlers[ERROR] = on_error_message

-- Route a call: to a local registration, or to the worker that has it.
-- `call` has procedure, args, kwargs, caller, receive_progress, timeout and the
-- reply functions.
function Router:_route_call(realm, call)
    local reg = realm:find_registration(call.procedure)
    if reg == nil then
        call:fail(E_NO_PROC, nil, nil)
        return
    end
    if reg.worker == WORKER then
        local inv = self:_invoke(realm, reg, call,
            function(args, kwargs, progress) call:result(args, kwargs, progress) end,
            function(uri, args, kwargs) call:fail(uri, args, kwargs) end)
        call.inv = inv
    else
        call.remote_worker = reg.worker
        realm.calls[call.id] = call
        local sent = post(reg.worker, { "call", self.name, realm.name, call.id, WORKER, reg.id, call.procedure,
                                        call.args or array(), call.kwargs or object({}),
                                        call.caller or object({}), call.receive_progress and true or false,
                                        call.timeout or 0 })
        if sent then -- to another server: nobody got it, or Redis is out of reach
            sent(function(ok, why)
                if not ok then call:fail(E_UNAVAILABLE, { "the callee cannot be reached: " .. tostring(why) }) end
            end)
        end
    end
    if call.timeout and call.timeout > 0 then
        call.timer = aio:set_timeout(function()
            call.timer = nil
            if call.done then return end
            call:cancel("killnowait", true)
            call.reply_error("wamp.error.timeout", { "the call timed out" }, nil)
        end, call.timeout / 1000)
    end
end

function Call:result(args, kwargs, progress)
    if self.done then return end
    if not progress then self:_finish() end
    self.reply_result(args, kwargs, progress)
end

function Call:fail(uri, args, kwargs)
    if self.done then return end
    self:_finish()
    self.reply_error(uri, args, kwargs)
end

function Call:_finish()
    self.done = true
    if self.timer then self.timer:cancel(); self.timer = nil end
    local s = self.session
    if s and s.calls and s.calls[self.request] == self then
        s.calls[self.request] = nil
        s.ncalls = s.ncalls - 1
    end
    if self.remote_worker then self.realm.calls[self.id] = nil end
end

--- Cancel the call: `mode` as in CANCEL; `quiet`: the caller gets no error (it
--- left, or will get another one).
function Call:cancel(mode, quiet)
    if self.done then return end
    if quiet and mode == "kill" then mode = "killnowait" end
    if self.inv then
        self.inv:interrupt(mode)
    elseif self.remote_worker then
        post(self.remote_worker, { "cancel", self.realm.router.name, self.realm.name, self.id, mode })
    end
    if mode == "kill" then return end -- the callee's ERROR ends the call
    self:_finish()
    if not quiet then self.reply_error(E_CANCELED, nil, nil) end
end

local function new_call(realm, fields)
    fields.realm = realm
    fields.id = fields.id or new_id()
    return setmetatable(fields, Call)
end

handlers[CALL] = function(router, s, msg)
    local request, options, procedure, args, kwargs = msg[2], msg[3], msg[4], msg[5], msg[6]
    if type(request) ~= "number" or not is_dict(options) or type(procedure) ~= "string"
        or (args ~= nil and not is_array(args)) or (kwargs ~= nil and not is_dict(kwargs)) then
        return "CALL: [48, request, options, procedure, args?, kwargs?] expected"
    end
    if not valid_uri(procedure, "exact") then
        return s:send({ ERROR, CALL, request, object({}), E_INVALID_URI })
    end
    if s.calls[request] then return "CALL: request id " .. request .. " is in use" end
    if s.ncalls >= router.limits.calls then
        return s:send({ ERROR, CALL, request, object({}), "wamp.error.too_many_calls",
                        { "more than " .. router.limits.calls .. " calls in flight" } })
    end
    local timeout = tonumber(options.timeout) or router.default_call_timeout or 0
    local call = new_call(s.realm, {
        session = s, request = request, procedure = procedure, args = args, kwargs = kwargs,
        caller = (options.disclose_me or s.realm.config.disclose_caller)
                 and { session = s.id, authid = s.authid, authrole = s.authrole } or nil,
        receive_progress = options.receive_progress == true, timeout = timeout,
        reply_result = function(a, k, progress)
            local details = progress and object({ progress = true }) or object({})
            s:send(with_payload({ RESULT, request, details }, 4, a, k))
        end,
        reply_error = function(uri, a, k)
            s:send(with_payload({ ERROR, CALL, request, object({}), uri }, 6, a, k))
        end,
    })
    s.calls[request] = call
    s.ncalls = s.ncalls + 1
    router:_route_call(s.realm, call)
end

handlers[CANCEL] = function(router, s, msg)
    local request, options = msg[2], msg[3]
    if type(request) ~= "number" or not is_dict(options) then
        return "CANCEL: [49, request, options] expected"
    end
    local call = s.calls[request]
    if call == nil then return end -- finished meanwhile
    local mode = options.mode or "killnowait"
    if mode ~= "skip" and mode ~= "kill" and mode ~= "killnowait" then
        return "CANCEL: mode must be skip, kill or killnowait"
    end
    call:cancel(mode)
end

---------------------------------------------------------------------------
-- Mailbox: what the other workers tell us
---------------------------------------------------------------------------

local remote = {}

-- Worker (or peer) `sender` is gone, or starts again: drop its sessions and
-- registrations, fail the calls it was serving, stop the invocations it asked for.
function Router:_forget(sender, why)
    for _, realm in pairs(self.realms) do
        for id, r in pairs(realm.remote_regs) do
            if r.worker == sender then realm:drop_remote(id) end
        end
        for id, owner in pairs(realm.owners) do
            if owner == sender then self:_left(realm, id) end
        end
        for _, call in pairs(realm.calls) do
            if call.remote_worker == sender then call:fail(E_CANCELED, { "the callee's worker is gone: " .. why }) end
        end
        for _, inv in pairs(realm.remote_invocations) do -- their callers are gone
            if inv.caller_worker == sender then inv:interrupt("killnowait") end
        end
    end
end

-- Tell `to` (a worker, a peer or "*") the registrations and sessions of this worker.
function Router:_tell_state(to)
    for _, realm in pairs(self.realms) do
        for _, reg in pairs(realm.regs) do
            if not reg.meta then
                post(to, { "reg", self.name, realm.name, { id = reg.id, procedure = reg.procedure, match = reg.match } })
            end
        end
        for _, s in pairs(realm.sessions) do
            post(to, { "join", self.name, realm.name, copy_details(s) })
        end
    end
end

remote.hello = function(router, sender)
    -- a (re)started worker: forget what it had, tell it what we have
    router:_forget(sender, "it restarted")
    router:_tell_state(sender)
end

remote.join = function(router, sender, realm, details)
    if type(details) ~= "table" or type(details.session) ~= "number" then return end
    realm.owners[details.session] = sender
    router:_joined(realm, details)
end

remote.leave = function(router, sender, realm, id)
    router:_left(realm, id)
end

remote.reg = function(router, sender, realm, entry)
    entry.worker = sender
    realm:add_remote(entry)
end

remote.unreg = function(router, sender, realm, id)
    realm:drop_remote(id)
end

remote.event = function(router, sender, realm, topic, publication, args, kwargs, options, publisher)
    router:_publish_local(realm, topic, publication, args, kwargs, options, publisher)
end

remote.call = function(router, sender, realm, call_id, _, reg_id, procedure, args,
                       kwargs, caller, receive_progress, timeout)
    local caller_worker = sender -- results go back the way the call came
    local function reply_error(uri, a, k)
        post(caller_worker, { "error", router.name, realm.name, call_id, uri, a or array(), k or object({}) })
    end
    local reg = realm.regs_by_id[reg_id]
    if reg == nil then return reply_error(E_NO_PROC) end
    local inv = router:_invoke(realm, reg, {
        procedure = procedure, args = args, kwargs = kwargs,
        caller = caller.session and caller or nil, receive_progress = receive_progress,
        timeout = timeout,
    }, function(a, k, progress)
        post(caller_worker, { "result", router.name, realm.name, call_id, a or array(), k or object({}), progress })
    end, reply_error)
    if not inv.done then
        inv.remote_id, inv.caller_worker = call_id, caller_worker
        realm.remote_invocations[call_id] = inv
    end
end

remote.result = function(router, sender, realm, call_id, args, kwargs, progress)
    local call = realm.calls[call_id]
    if call then call:result(args, kwargs, progress) end
end

remote.error = function(router, sender, realm, call_id, uri, args, kwargs)
    local call = realm.calls[call_id]
    if call then call:fail(uri, args, kwargs) end
end

remote.cancel = function(router, sender, realm, call_id, mode)
    local inv = realm.remote_invocations[call_id]
    if inv then inv:interrupt(mode) end
end

-- A message from another worker (a number) or a peer of another server (its
-- address), for router msg[2].
local function dispatch(sender, msg)
    if type(msg) ~= "table" then return end
    local router = routers[msg[2]]
    if router == nil then return end
    local op = remote[msg[1]]
    if op == nil then return end
    if msg[1] == "hello" then return op(router, sender) end
    local realm = router.realms[msg[3]]
    if realm == nil then return end
    op(router, sender, realm, msg[4], msg[5], msg[6], msg[7], msg[8], msg[9], msg[10], msg[11],
       msg[12], msg[13])
end

aio:mailbox(MAILBOX, function(sender, data)
    if sender == WORKER then return end -- our own broadcast
    dispatch(sender, msgpack.decode(data))
end)

-- What the bridge brings from peer `sender` of another server (data nil: a
-- heartbeat). A peer we did not know (new, or lost meanwhile) is told to forget
-- what it had from us and gets it again, unless it said hello itself.
function Router:_from_peer(sender, data, new)
    local msg = data and msgpack.decode(data)
    if new and not (type(msg) == "table" and msg[1] == "hello") then
        post(sender, { "hello", self.name })
        self:_tell_state(sender)
    end
    if msg ~= nil then dispatch(sender, msg) end
end

---------------------------------------------------------------------------
-- The Lua API
---------------------------------------------------------------------------

--- An error result for a procedure registered from Lua: `return wamp.error(uri, args, kwargs)`.
function _M.error(uri, args, kwargs)
    if type(uri) ~= "string" then error("wamp.error(uri[, args[, kwargs]]): uri must be a string", 2) end
    return { wamp_error = uri, args = args, kwargs = kwargs }
end

--- Register procedure `procedure` in `realm`, served by `fn(args, kwargs, details)`
--- in this worker (`details`: procedure, caller (if disclosed), progress(args,
--- kwargs) when the caller accepts progressive results). `fn` runs in a coroutine
--- (it may aio:await) and returns the result's args (a list) and kwargs, a dict
--- (keyword results), or wamp.error(uri, ...). `options.match`: "exact" (default),
--- "prefix", "wildcard". Returns the registration id, or nil, err.
--- @return integer|nil, string|nil
function Router:register(realm_name, procedure, fn, options)
    local realm = self:realm(realm_name)
    if type(fn) ~= "function" then error("router:register(realm, procedure, fn): fn must be a function", 2) end
    local match = options and options.match or "exact"
    if not valid_uri(procedure, match) then error("router:register: invalid procedure URI " .. tostring(procedure), 2) end
    local known = realm.regs[reg_key(match, procedure)]
    if known and known.fn and not known.meta then -- registered from Lua before (a reload): new code
        known.fn = fn
        return known.id
    end
    local reg, err = self:_register(realm, match, procedure, nil, fn)
    if reg == nil then return nil, err end
    return reg.id
end

--- Remove a registration made with router:register. Returns true, or false if unknown.
function Router:unregister(realm_name, id)
    local realm = self:realm(realm_name)
    local reg = realm.regs_by_id[id]
    if reg == nil or reg.callee then return false end
    return self:_unregister(realm, reg)
end

--- Receive the events of `topic` in this worker: `fn(args, kwargs, details)`
--- (`options.match` as for register). Returns a subscription handle for
--- router:unsubscribe.
function Router:subscribe(realm_name, topic, fn, options)
    local realm = self:realm(realm_name)
    if type(fn) ~= "function" then error("router:subscribe(realm, topic, fn): fn must be a function", 2) end
    local match = options and options.match or "exact"
    if not valid_uri(topic, match) then error("router:subscribe: invalid topic URI " .. tostring(topic), 2) end
    local key = reg_key(match, topic)
    local handle = realm.lua_subs[key]
    if handle then -- subscribed from Lua before (a reload): the new function takes over
        handle.subscriber.fn = fn
        if not handle.sub.subscribers[handle.subscriber] then
            handle.sub = self:_subscribe(realm, match, topic, handle.subscriber)
        end
        return handle
    end
    local subscriber = { fn = fn }
    subscriber.handler = function(args, kwargs, details)
        local ok, err = xpcall(subscriber.fn, traceback, args or array(), kwargs or object({}), details)
        if not ok then log_error("wamp: subscriber of " .. topic .. ": " .. tostring(err)) end
    end
    local sub = self:_subscribe(realm, match, topic, subscriber)
    handle = { sub = sub, subscriber = subscriber, realm = realm, key = key }
    realm.lua_subs[key] = handle
    return handle
end

--- Stop a subscription made with router:subscribe.
function Router:unsubscribe(handle)
    if handle.realm.lua_subs[handle.key] == handle then handle.realm.lua_subs[handle.key] = nil end
    return self:_unsubscribe(handle.realm, handle.sub, handle.subscriber)
end

--- Publish an event to `topic` in `realm` (every worker's subscribers).
--- `options`: exclude, eligible, ... as in PUBLISH. Returns the publication id.
function Router:publish(realm_name, topic, args, kwargs, options)
    local realm = self:realm(realm_name)
    if not valid_uri(topic, "exact") then error("router:publish: invalid topic URI " .. tostring(topic), 2) end
    return self:_publish(realm, topic, args, kwargs, options or {}, nil)
end

--- Call `procedure` in `realm` (served here, by a client, or in another worker).
--- Returns a promise of (args, kwargs), or (nil, error_uri, args, kwargs).
--- `options`: timeout (ms).
function Router:call(realm_name, procedure, args, kwargs, options)
    local realm = self:realm(realm_name)
    local resolve, promise = aio:prepare_promise()
    local call = new_call(realm, {
        procedure = procedure, args = args, kwargs = kwargs,
        timeout = options and options.timeout or self.default_call_timeout or 0,
        reply_result = function(a, k, progress)
            if not progress then resolve(a or array(), k or object({})) end
        end,
        reply_error = function(uri, a, k) resolve(nil, uri, a, k) end,
    })
    if not valid_uri(procedure, "exact") then
        resolve(nil, E_INVALID_URI)
        return promise
    end
    self:_route_call(realm, call)
    return promise
end

--- Number of sessions in `realm` across all workers.
function Router:session_count(realm_name)
    return self:realm(realm_name).count
end

---------------------------------------------------------------------------
-- Session meta API (answered by every worker from its directory)
---------------------------------------------------------------------------

-- The optional first argument of count/list: a list of authroles to count.
local function role_filter(args)
    local roles = args and args[1]
    if type(roles) ~= "table" then return nil end
    return roles
end

function Router:_install_meta(realm)
    local function meta(name, fn)
        local reg = { id = new_id(), procedure = name, match = "exact", fn = fn, meta = true,
                      key = reg_key("exact", name), worker = WORKER }
        realm.regs[reg.key] = reg
        realm.regs_by_id[reg.id] = reg
    end
    meta("wamp.session.count", function(args)
        local roles = role_filter(args)
        if roles == nil then return { realm.count } end
        local n = 0
        for _, d in pairs(realm.directory) do if list_has(roles, d.authrole) then n = n + 1 end end
        return { n }
    end)
    meta("wamp.session.list", function(args)
        local roles = role_filter(args)
        local ids = array()
        for id, d in pairs(realm.directory) do
            if roles == nil or list_has(roles, d.authrole) then ids[#ids + 1] = id end
        end
        return { ids }
    end)
    meta("wamp.session.get", function(args)
        local d = realm.directory[args[1]]
        if d == nil then return _M.error("wamp.error.no_such_session", { "no session " .. tostring(args[1]) }) end
        return { d }
    end)
end

_M.routers = routers
return _M
