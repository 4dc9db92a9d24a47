-- aio: promises, coroutines, timers, sockets, caching and mail for eightys apps.
--
-- The API follows 80s (github.com/diznq/80s, aio/aio.lua): a promise is callable,
-- `promise(callback)` subscribes; errors are values (`nil, err`), there is no
-- rejection channel. Differences from 80s, all deliberate:
--   * a promise takes any number of subscribers and resolves once;
--   * aio:async returns a promise of the function's results;
--   * every coroutine is resumed through one place (resume() below), so a
--     coroutine can aio:await inside aio:cor / aio:buffered_cor without losing
--     socket data, and an error in it is logged with its traceback;
--   * timers (aio:sleep, set_timeout, set_interval), which 80s lacks.
--
-- Lua cannot yield across a Python frame, so nothing here ever yields inside a
-- call into Python: Python work returns a promise at once and resolves it later.

local setmetatable = setmetatable
local getmetatable = getmetatable
local select = select
local type = type
local error = error
local tostring = tostring
local xpcall = xpcall
local pairs = pairs
local traceback = require("eightys.errors").traceback -- describes error(table) too
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_running = coroutine.running
local co_status = coroutine.status
local str_find = string.find
local str_sub = string.sub
local unpack = unpack or table.unpack
local net = net

local aio = aio or {}
_G.aio = aio

aio.fds = aio.fds or {}              -- fd -> aiosocket, for sockets aio owns
aio.cache = aio.cache or {}          -- cache name -> cache state (aio:cached)
aio.max_cache_size = aio.max_cache_size or 10000
aio.max_buffer = aio.max_buffer or 1048576 -- default byte cap of aio:buffered_cor reads

local host -- private host functions, set by aio:_attach

local function report(where, err)
    if host then
        host.log_error(where .. ": " .. tostring(err))
    else
        print(where .. ": " .. tostring(err))
    end
end

local function pack(...)
    return { n = select("#", ...), ... }
end

---------------------------------------------------------------------------
-- Promises
---------------------------------------------------------------------------

--- @class aiopromise
local Promise = {}
Promise.__index = Promise

local resume -- forward declaration (coroutines below)

local function deliver(callback, values)
    if type(callback) == "thread" then
        resume(callback, unpack(values, 1, values.n))
        return
    end
    local ok, err = xpcall(callback, traceback, unpack(values, 1, values.n))
    if not ok then report("promise callback", err) end
end

--- Subscribe: `promise(callback)`. Runs at once if the promise is already resolved.
--- A coroutine may be given instead of a function: it is resumed with the values.
function Promise.__call(self, callback)
    if self.values then
        deliver(callback, self.values)
    elseif self.first == nil then
        self.first = callback
    else
        local rest = self.rest
        if rest == nil then
            rest = {}
            self.rest = rest
        end
        rest[#rest + 1] = callback
    end
    return self
end

--- Promise:next(callback) is the same as promise(callback).
Promise.next = Promise.__call

--- Whether the promise already has its values.
function Promise:is_resolved()
    return self.values ~= nil
end

local function new_promise()
    local promise = setmetatable({}, Promise)
    local function resolve(...)
        if promise.values then return end -- the first resolution wins
        local values = pack(...)
        promise.values = values
        local first = promise.first
        if first ~= nil then
            promise.first = nil
            deliver(first, values)
        end
        local rest = promise.rest
        if rest ~= nil then
            promise.rest = nil
            for i = 1, #rest do
                deliver(rest[i], values)
            end
        end
    end
    return resolve, promise
end

--- Is v something aio can wait on: an aio promise, or an 80s-style `fun(callback)`?
local function is_awaitable(v)
    local t = type(v)
    return t == "function" or (t == "table" and getmetatable(v) == Promise)
end

--- Create a promise.
--- @return fun(...) resolve call with the values once they are known
--- @return aiopromise promise `promise(function(...) end)` receives them
function aio:prepare_promise()
    return new_promise()
end

--- A promise already resolved with the given values.
--- @return aiopromise
function aio:resolved(...)
    local resolve, promise = new_promise()
    resolve(...)
    return promise
end

--- Is v an aio promise?
function aio:is_promise(v)
    return type(v) == "table" and getmetatable(v) == Promise
end

--- Wait for all promises; resolves with each one's first value, in argument order.
--- Plain (non-promise) arguments count as already resolved values.
--- @return aiopromise
function aio:gather(...)
    local n = select("#", ...)
    local resolve, promise = new_promise()
    if n == 0 then
        resolve()
        return promise
    end
    local tasks = pack(...)
    local results, left = {}, n
    for i = 1, n do
        local task = tasks[i]
        if is_awaitable(task) then
            local seen = false
            task(function(value)
                if seen then return end
                seen = true
                results[i] = value
                left = left - 1
                if left == 0 then resolve(unpack(results, 1, n)) end
            end)
        else
            results[i] = task
            left = left - 1
            if left == 0 then resolve(unpack(results, 1, n)) end
        end
    end
    return promise
end

--- Run steps one after another. `first` is a promise or a plain value; each
--- following function gets the previous step's values and returns a promise
--- (awaited) or plain values. Resolves with the last step's values. A step that
--- raises is logged and the chain resolves with `nil, err`.
--- @return aiopromise
function aio:chain(first, ...)
    local steps = pack(...)
    local resolve, promise = new_promise()
    local at = 0
    local step
    local function on_error(err) -- log the traceback, resolve with the error itself
        report("aio:chain step " .. at, traceback(err, 2))
        return err
    end
    local function on_values(...)
        -- iterate rather than recurse while steps return plain values
        local values = pack(...)
        while true do
            at = at + 1
            if at > steps.n then
                return resolve(unpack(values, 1, values.n))
            end
            local result = pack(xpcall(steps[at], on_error, unpack(values, 1, values.n)))
            if not result[1] then
                return resolve(nil, result[2])
            end
            if is_awaitable(result[2]) then
                return result[2](step)
            end
            values = pack(unpack(result, 2, result.n))
        end
    end
    step = on_values
    if is_awaitable(first) then
        first(step)
    else
        step(first)
    end
    return promise
end

--- Array map (80s): a new array of fn(array[i], ...).
--- @param array table
--- @param fn fun(item: any, ...): any
function aio:map(array, fn, ...)
    local out = {}
    for i = 1, #array do
        out[i] = fn(array[i], ...)
    end
    return out
end

---------------------------------------------------------------------------
-- Coroutines
---------------------------------------------------------------------------

-- Per-coroutine state. An entry is removed explicitly when its coroutine ends
-- (returns or raises), when a pool drops a coroutine, and when a socket reader's
-- socket has closed and nothing can wake it any more. Weak keys cannot be
-- relied on: the values (closures over the coroutine and its socket) reach
-- their keys, and LuaJIT has no ephemerons, so such an entry would never go.
local drivers = {}   -- co -> fn(dead, ...yielded)
local on_errors = {} -- co -> fn(err)
-- co -> fn(co, err, arg) and co -> arg: takes over an error entirely (no generic
-- log line), for a coroutine whose owner reports it (an HTTP request's thread:
-- eightys.http). Weak keys, so neither may reach co (LuaJIT has no ephemerons): a
-- coroutine that nothing will resume is collected.
local catchers = setmetatable({}, { __mode = "k" })
local catch_args = setmetatable({}, { __mode = "k" })
-- co -> true while in aio:await. Weak: the value does not reach the key, so a
-- coroutine waiting on a promise that is dropped unresolved is still collected.
local awaiting = setmetatable({}, { __mode = "k" })

local function forget(co)
    drivers[co] = nil
    on_errors[co] = nil
    awaiting[co] = nil
    catchers[co] = nil
    catch_args[co] = nil
end

local function after_resume(co, ok, ...)
    if not ok then
        local err = ...
        local catch = catchers[co]
        if catch then
            local arg = catch_args[co]
            forget(co)
            catch(co, err, arg)
            return false, err
        end
        report("coroutine", traceback(co, err))
        local handler = on_errors[co]
        forget(co)
        if handler then handler(err) end
        return false, err
    end
    if not awaiting[co] then
        local driver = drivers[co]
        if driver then
            local dead = co_status(co) == "dead"
            if dead then forget(co) end
            driver(dead, ...)
        end
    end
    return true, ...
end

--- Resume co; errors are logged with the coroutine's traceback and passed to
--- its error handler. Every resume in aio goes through here.
resume = function(co, ...)
    return after_resume(co, co_resume(co, ...))
end

--- Internal (eightys.http): if coroutine `co` fails when aio resumes it,
--- catch(co, err, arg) is called instead of the generic report (co's stack is
--- still there for a traceback). Neither catch nor arg may reach co. nil: no more.
function aio._catch(co, catch, arg)
    catchers[co] = catch
    catch_args[co] = catch and arg
end

--- Resume a coroutine the aio way (errors logged, drivers honoured).
function aio:resume(co, ...)
    return resume(co, ...)
end

--- coroutine.create (80s).
function aio:cor0(fn)
    return co_create(fn)
end

--- Run fn(...) in a new coroutine so it can aio:await. Returns a promise of fn's
--- return values; if fn raises, the error is logged, on_error(err) is called and
--- the promise resolves with `nil, err`.
--- @param fn fun(...): ...
--- @param on_error? fun(err: any)
--- @return aiopromise
function aio:async(fn, on_error, ...)
    local resolve, promise = new_promise()
    local co
    co = co_create(function(...)
        local function finish(...)
            on_errors[co] = nil -- ended: nothing left to report
            return resolve(...)
        end
        return finish(fn(...))
    end)
    on_errors[co] = function(err)
        if on_error then on_error(err) end
        resolve(nil, err)
    end
    resume(co, ...)
    return promise
end

--- Wait for a promise inside aio:async (or any aio-driven coroutine) and return
--- its values. A plain value is returned as is; a coroutine is resumed once and
--- its yielded values returned (80s).
function aio:await(promise)
    local co, is_main = co_running()
    if co == nil or is_main then
        error("aio:await must run inside aio:async (or a coroutine aio drives)", 2)
    end
    if type(promise) == "thread" then
        local result = pack(co_resume(promise))
        if not result[1] then error(result[2], 2) end
        return unpack(result, 2, result.n)
    end
    if type(promise) == "table" and getmetatable(promise) == Promise then
        local values = promise.values
        if values then return unpack(values, 1, values.n) end
    elseif type(promise) ~= "function" then
        return promise
    end
    local early
    local suspended, fired = false, false
    promise(function(...)
        -- an 80s-style awaitable may call back twice; resuming again would wake
        -- whatever task this (pooled) coroutine runs by then
        if fired then return end
        fired = true
        if suspended then
            awaiting[co] = nil
            resume(co, ...)
        else
            early = pack(...)
        end
    end)
    if early then return unpack(early, 1, early.n) end
    suspended = true
    awaiting[co] = true
    return co_yield()
end

-- A coroutine that reads from socket `target`: an error in it closes the socket
-- and resolves the reader's promise with nil, err; `driver` sees what it yields.
local function socket_coroutine(target, fn, resolve, driver)
    local co = co_create(fn)
    on_errors[co] = function(err)
        if target.close then target:close() end
        resolve(nil, err)
    end
    drivers[co] = driver
    return co
end

--- Turn a socket's on_data/on_close events into a stream read by a coroutine.
--- fn(stream, resolve): `stream()` returns the next chunk (waiting for it), or
--- nil once the socket closed, so `for chunk in stream do ... end` reads all.
--- Returns a promise resolved by resolve(...).
--- @return aiopromise
function aio:cor2(target, event_name, close_name, fn)
    local resolve, promise = new_promise()
    local chunks, head, tail = {}, 1, 0
    local closed, waiting = false, false
    local missed, draining = 0, false -- events that came while fn could not be woken
    local co

    local function stream()
        while head > tail do
            if closed then return nil end
            waiting = true
            missed = 0 -- caught up: every chunk has been read
            co_yield()
        end
        local chunk = chunks[head]
        chunks[head] = nil
        head = head + 1
        return unpack(chunk, 1, chunk.n)
    end

    local function wake()
        if waiting and not awaiting[co] and co_status(co) == "suspended" then
            waiting = false
            resume(co)
        else
            missed = missed + 1
        end
    end

    -- Once the close is seen, a reader suspended outside aio:await has no event
    -- left to wake it: its state goes (a reader that ends is forgotten anyway).
    local function release_if_stranded()
        if closed and missed == 0 and not awaiting[co] and co_status(co) == "suspended" then
            forget(co)
        end
    end

    target[event_name] = function(self, elfd, fd, ...)
        tail = tail + 1
        chunks[tail] = pack(...)
        wake()
    end
    if close_name then
        target[close_name] = function()
            closed = true
            wake()
            release_if_stranded()
        end
    end
    co = socket_coroutine(target, fn, resolve, function(dead)
        -- a bare coroutine.yield() in fn (the 80s idiom) also waits for the next
        -- event; one that came while fn was in aio:await ends it at once
        if dead then return end
        waiting = true
        if draining then return end -- resumed by the loop below: it goes on
        draining = true
        while missed > 0 and waiting and co_status(co) == "suspended" and not awaiting[co] do
            missed = missed - 1
            waiting = false
            resume(co)
        end
        draining = false
        release_if_stranded()
    end)
    resume(co, stream, resolve)
    return promise
end

--- aio:cor2 without a close event.
function aio:cor1(target, event_name, fn)
    return self:cor2(target, event_name, nil, fn)
end

--- aio:cor2(sock, "on_data", "on_close", fn).
function aio:cor(target, fn)
    return self:cor2(target, "on_data", "on_close", fn)
end

--- Framed reader over a socket. Inside fn(resolve):
---   coroutine.yield(n)               -> exactly n bytes
---   coroutine.yield("delim"[, cap])  -> the bytes before delim (delim consumed)
--- A read whose result would be longer than `cap` bytes (default aio.max_buffer)
--- returns nil, "overflow"; a read the stream can no longer satisfy returns nil, "eof".
--- fn may aio:await between reads. Returns a promise resolved by resolve(...).
--- @return aiopromise
function aio:buffered_cor(target, fn)
    local resolve, promise = new_promise()
    local buf, pos = "", 1   -- unread bytes are buf[pos..]
    local searched = 1       -- delimiter search resumes here (keeps scanning O(n))
    local want, cap = nil, nil
    local eof, pumping = false, false
    local co

    -- Try to answer the pending read; returns the value(s) to resume with, or nil.
    local function take()
        local available = #buf - pos + 1
        if type(want) == "number" then
            if want > cap then return nil, "overflow" end
            if available >= want then
                local out = str_sub(buf, pos, pos + want - 1)
                pos = pos + want
                return out
            end
        else
            local from = searched > pos and searched or pos
            local s, e = str_find(buf, want, from, true)
            if s and s - pos > cap then return nil, "overflow" end
            if s then
                local out = str_sub(buf, pos, s - 1)
                pos = e + 1
                searched = pos
                return out
            end
            -- overflow only once even a delimiter starting in the last #want-1
            -- bytes (not searchable yet) would leave more than cap bytes before it
            if available - #want + 1 > cap then return nil, "overflow" end
            -- a delimiter may straddle the next packet: rescan its last #want-1 bytes
            local next_from = #buf - #want + 2
            searched = next_from > pos and next_from or pos
        end
        if eof then return nil, "eof" end
        return false
    end

    local function pump()
        if pumping then return end
        pumping = true
        while want ~= nil and co_status(co) == "suspended" and not awaiting[co] do
            local value, err = take()
            if value == false then break end
            want = nil
            resume(co, value, err)
        end
        pumping = false
        if pos > 4096 and pos > #buf / 2 then -- drop consumed bytes now and then
            buf = str_sub(buf, pos)
            searched = searched - pos + 1
            pos = 1
        end
        if eof and want == nil and not awaiting[co] and co_status(co) == "suspended" then
            -- after the close, a reader suspended outside a read or aio:await has
            -- nothing left to wake it: its state goes
            forget(co)
        end
    end

    target.on_data = function(self, elfd, fd, data)
        if co_status(co) == "dead" then return end
        buf = buf .. data
        if want == nil and #buf - pos + 1 > 4 * aio.max_buffer then
            -- nobody is reading (fn is awaiting something): bound what a peer can pile up
            report("aio:buffered_cor", "unread input exceeds " .. 4 * aio.max_buffer .. " bytes; closing")
            if target.close then target:close() end
            return
        end
        pump()
    end
    target.on_close = function()
        eof = true
        pump()
    end

    co = socket_coroutine(target, fn, resolve, function(dead, request, limit)
        if dead then
            want = nil
            return
        end
        local kind = type(request)
        if kind == "number" or (kind == "string" and request ~= "") then
            want = request
            cap = limit or aio.max_buffer
            searched = pos -- progress of an earlier read's search is not this one's
            pump()
        elseif request ~= nil then
            error("aio:buffered_cor: yield a byte count or a non-empty delimiter, got "
                .. tostring(request), 0)
        end
    end)
    resume(co, resolve)
    return promise
end

-- Coroutines for short tasks (one per HTTP request) are reused: creating one
-- costs more than the rest of a small request. A pooled coroutine runs a task,
-- then parks at coroutine.yield(aio.IDLE) until the next one; one suspended in
-- aio:await goes back to its pool when its task finishes.
local IDLE = {}
aio.IDLE = IDLE

--- Internal: a pool of coroutines that run `body`. `body` gets the first task's
--- arguments and must loop: run the task, then `coroutine.yield(aio.IDLE)`,
--- which returns the next task's arguments. Returns start(...), which runs a
--- task in a parked coroutine (or a new one).
--- @param body fun(...)
--- @param max? integer coroutines kept parked (default 256)
function aio:coroutine_pool(body, max)
    max = max or 256
    local parked, size = {}, 0
    local function repark(co)
        if size < max then
            size = size + 1
            parked[size] = co
        else
            drivers[co] = nil -- the pool is full: this one is dropped
        end
    end
    local function park(co)
        return function(dead, marker)
            if marker == IDLE then repark(co) end
        end
    end
    return function(...)
        local co
        if size > 0 then
            co = parked[size]
            parked[size] = nil
            size = size - 1
        else
            co = co_create(body)
            -- parks it when a task that was suspended in aio:await finishes later
            drivers[co] = park(co)
        end
        -- The common case is a task that finishes without waiting: resume directly
        -- and re-park, skipping the generic resume() bookkeeping.
        local ok, marker = co_resume(co, ...)
        if marker == IDLE then
            repark(co)
        elseif not ok then
            report("coroutine", traceback(co, marker))
            forget(co)
        end
        return co -- the caller may want to know where a task that went on waiting is
    end
end

local function run_task(fn, ...)
    local ok, err = xpcall(fn, traceback, ...)
    if not ok then report("task", err) end
    return co_yield(IDLE)
end

local function pooled_loop(...)
    return pooled_loop(run_task(...)) -- a tail call: the stack does not grow
end

local start_task = aio:coroutine_pool(pooled_loop)

--- Run fn(...) in a (reused) coroutine, so fn may aio:await. Errors are logged;
--- fn must handle its own failures if it needs to answer someone.
function aio:run(fn, ...)
    start_task(fn, ...)
end

---------------------------------------------------------------------------
-- Caching
---------------------------------------------------------------------------

local function is_failure(v)
    return v == nil or (type(v) == "table" and getmetatable(v) == nil and v.error ~= nil)
end

-- { shared = true } caches: one fill per key per worker (cache_name \0 key -> promise)
-- and one Redis client per worker (the server's --redis), made on first use.
local shared_fills = {}
local shared_client

local function shared_cached(self, cache_name, key, producer, ttl)
    local kt = type(key)
    if kt ~= "string" and kt ~= "number" then
        error("aio:cached: a shared cache's key must be a string or a number", 3)
    end
    if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
        error("aio:cached: ttl must be a positive number of seconds", 3)
    end
    local id = cache_name .. "\0" .. key
    local inflight = shared_fills[id]
    if inflight then return inflight end
    if shared_client == nil then
        local redis = require("redis")
        if not redis.url then
            error("aio:cached: { shared = true } needs the server's --redis (or REDIS_URL)", 3)
        end
        shared_client = assert(redis:new())
    end
    local client = shared_client
    local redis_key = "eightys:cache:" .. cache_name .. ":" .. key
    local promise = self:async(function()
        local hit = self:await(client:get(redis_key))
        if hit ~= nil then
            local value = codec.json_decode(hit)
            if value ~= nil then return value end
        end
        local value, err = producer()
        if is_awaitable(value) then value, err = self:await(value) end
        if is_failure(value) then return value, err end
        local json = codec.json_encode(value)
        if json then -- a value JSON cannot hold is returned, not shared
            if ttl then
                self:await(client:set(redis_key, json, "PX", math.max(1, math.floor(ttl * 1000))))
            else
                self:await(client:set(redis_key, json))
            end
        end
        return value
    end)
    shared_fills[id] = promise
    promise(function() shared_fills[id] = nil end)
    return promise
end

--- Memoise producer()'s result under (cache_name, key). A promise is cached too,
--- so concurrent callers share one in-flight promise. A failure is not kept: a
--- result of nil or {error=...} is returned as is (with producer's err), and a
--- promise that resolves with one is dropped from the cache.
--- @param ttl? number|boolean|table seconds to keep the value (nil: until evicted);
---   false bypasses the cache for this call (80s `condition`); or options
---   `{ ttl = seconds, shared = true }`: shared keeps the value in Redis (the
---   server's --redis) under `eightys:cache:NAME:KEY`, JSON-encoded, for every
---   worker of every server; the result is then always a promise, one fill per
---   key runs at a time in each worker, and when Redis is unreachable producer's
---   value is returned without being cached.
--- Each (per-worker) cache holds at most aio.max_cache_size entries; the oldest go first.
function aio:cached(cache_name, key, producer, ttl, expire)
    if ttl == false then return producer() end
    if type(ttl) == "table" then
        local opts = ttl
        if opts.shared then return shared_cached(self, cache_name, key, producer, opts.ttl) end
        ttl = opts.ttl
    end
    if type(ttl) ~= "number" then ttl = expire end
    local cache = self.cache[cache_name]
    if cache == nil then
        -- order is a FIFO of entries, oldest first; it may hold stale entries
        -- (expired or replaced), skipped on eviction and dropped on compaction
        cache = { entries = {}, order = {}, head = 1, tail = 0, size = 0 }
        self.cache[cache_name] = cache
    end
    local entries = cache.entries
    local now = net.clock()
    local entry = entries[key]
    if entry ~= nil then
        if entry.expires == nil or entry.expires > now then
            return entry.value
        end
        entries[key] = nil
        cache.size = cache.size - 1
    end
    local value, err = producer()
    if is_failure(value) then return value, err end
    entry = { key = key, value = value, expires = ttl and now + ttl or nil }
    entries[key] = entry
    cache.size = cache.size + 1
    local order = cache.order
    cache.tail = cache.tail + 1
    order[cache.tail] = entry
    while cache.size > self.max_cache_size do
        local old = order[cache.head]
        order[cache.head] = nil
        cache.head = cache.head + 1
        if entries[old.key] == old then
            entries[old.key] = nil
            cache.size = cache.size - 1
        end
    end
    if cache.tail - cache.head > 2 * cache.size + 64 then
        local live, n = {}, 0
        for i = cache.head, cache.tail do
            local e = order[i]
            if entries[e.key] == e then
                n = n + 1
                live[n] = e
            end
        end
        cache.order, cache.head, cache.tail = live, 1, n
    end
    if is_awaitable(value) then
        value(function(first)
            if is_failure(first) and entries[key] == entry then
                entries[key] = nil
                cache.size = cache.size - 1
            end
        end)
    end
    return value
end

--- Set the largest number of entries one aio:cached cache holds.
function aio:set_max_cache_size(n)
    if type(n) ~= "number" or n < 1 then error("bad cache size " .. tostring(n), 2) end
    self.max_cache_size = n
end

---------------------------------------------------------------------------
-- Timers
---------------------------------------------------------------------------

--- @class aiotimer
local Timer = {}
Timer.__index = Timer

--- Stop the timer; a cancelled timer never fires again. Returns true if it was pending.
function Timer:cancel()
    if self.cancelled then return false end
    self.cancelled = true
    if self.id then
        local pending = host.cancel_timer(self.id)
        self.id = nil
        return pending
    end
    return false
end

local function check_delay(seconds)
    if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
        error("bad delay " .. tostring(seconds) .. " (seconds >= 0 expected)", 3)
    end
end

--- Call fn() once after `seconds`. Returns a timer with :cancel().
--- @return aiotimer
function aio:set_timeout(fn, seconds)
    check_delay(seconds)
    local timer = setmetatable({}, Timer)
    timer.id = host.start_timer(seconds, function()
        timer.id = nil
        if not timer.cancelled then fn() end
    end)
    return timer
end

--- Call fn() every `seconds` until the timer is cancelled.
--- @return aiotimer
function aio:set_interval(fn, seconds)
    check_delay(seconds)
    local timer = setmetatable({}, Timer)
    local function tick()
        timer.id = nil
        if timer.cancelled then return end
        timer.id = host.start_timer(seconds, tick) -- re-arm first: fn may cancel
        fn()
    end
    timer.id = host.start_timer(seconds, tick)
    return timer
end

--- Cancel a timer from set_timeout/set_interval (nil is ignored).
function aio:clear_timeout(timer)
    if timer then return timer:cancel() end
    return false
end
aio.clear_interval = aio.clear_timeout

--- A promise resolved (with true) after `seconds`.
--- @return aiopromise
function aio:sleep(seconds)
    check_delay(seconds)
    local resolve, promise = new_promise()
    host.start_timer(seconds, function() resolve(true) end)
    return promise
end

---------------------------------------------------------------------------
-- Sockets
---------------------------------------------------------------------------

--- @class aiosocket
aiosocket = aiosocket or {}
aiosocket.__index = aiosocket

--- Wrap a connection handle. Events for fd go to the object's methods from now on.
--- @return aiosocket
function aiosocket:new(elfd, fd, connected)
    local sock = setmetatable({ elfd = elfd, fd = fd, connected = connected ~= false,
                                closed = false }, self)
    aio.fds[fd] = sock
    return sock
end

--- Queue data for sending; returns true, or false and an error if the socket is closed.
--- With close=true the socket is closed once everything is sent.
function aiosocket:write(data, close)
    if self.closed then return false, "closed" end
    local ok, err = net.write(self.elfd, self.fd, data)
    if close then self:close() end
    return ok, err
end

--- Close after pending data is sent; on_close follows.
function aiosocket:close()
    if self.closed then return false end
    self.closed = true
    return net.close(self.elfd, self.fd)
end

--- Called with each chunk of received data. Override it (or use aio:cor).
function aiosocket:on_data(elfd, fd, data, length) end

--- Called once the connection is closed; err says why when it failed.
function aiosocket:on_close(elfd, fd, err) end

--- Called once an outgoing connection is established.
function aiosocket:on_connect(elfd, fd) end

--- Called when the socket can take more data; the first call of an outgoing
--- socket means it connected.
function aiosocket:on_write(elfd, fd)
    if not self.connected then
        self.connected = true
        self:on_connect(elfd, fd)
    end
end

--- Open an outgoing TCP connection (host name lookup does not block). Writes
--- before the connection is up are queued. Returns an aiosocket, or nil, err.
--- host may be "v6:addr" or "unix:/path". With `opts.tls` the connection is TLS:
--- the certificate is checked against the system CAs (or `opts.ca_file`) and the
--- host name (or `opts.server_name`, also sent as SNI); `opts.verify = false` turns
--- the checks off. A failed handshake closes the socket: on_close gets the reason.
--- @param opts? {tls: boolean|nil, ca_file: string|nil, server_name: string|nil, verify: boolean|nil}
--- @return aiosocket|nil, string|nil
function aio:connect(elfd, host_name, port, opts)
    local fd, err
    if type(opts) == "table" and opts.tls then
        if type(host_name) ~= "string" then error("aio:connect: host must be a string", 2) end
        fd, err = host.connect_tls(elfd, host_name, port, opts.server_name, opts.ca_file,
                                   opts.verify ~= false)
    else
        fd, err = net.connect(elfd, host_name, port)
    end
    if not fd then return nil, err end
    return aiosocket:new(elfd, fd, false)
end

--- Take over an accepted connection (e.g. in on_accept): its events go to the
--- returned aiosocket instead of the global hooks.
--- @return aiosocket
function aio:wrap(fd)
    return aiosocket:new(ELFD, fd, true)
end

---------------------------------------------------------------------------
-- Workers
---------------------------------------------------------------------------

--- Send a message (string or plain table) to worker `worker` ("*" for every
--- worker), delivered to its on_message hook. Returns true, or nil, err.
function aio:mail(params)
    if type(params) ~= "table" or params.message == nil then
        error("aio:mail{worker=N, message=...} expected", 2)
    end
    return net.mail(params.worker or WORKERID, params.message, params.fd or params.target)
end

--- Send a message to every worker (this one included).
function aio:broadcast(message)
    return net.mail("*", message)
end

-- Library mailboxes: name -> handler(sender_worker, data). Messages posted to a
-- mailbox bypass the app's on_message hook, so libraries (eightys.wamp) can talk
-- between workers without taking the hook from the app.
aio.mailboxes = aio.mailboxes or {}
local MAILBOX_KEY = "eightys.mailbox"
aio.MAILBOX_KEY = MAILBOX_KEY

--- Receive what aio:post sends to mailbox `name`: `handler(sender_worker, data)`
--- runs in the receiving worker (registering the name again replaces the handler).
--- @param name string
--- @param handler fun(sender: integer, data: string)
function aio:mailbox(name, handler)
    if type(name) ~= "string" or type(handler) ~= "function" then
        error("aio:mailbox(name, handler): a string and a function expected", 2)
    end
    aio.mailboxes[name] = handler
end

--- Send string `data` to mailbox `name` of worker `worker` ("*": every worker,
--- this one included), relayed by the master. Returns true, or nil, err.
--- @param worker integer|string
--- @param name string
--- @param data string
function aio:post(worker, name, data)
    if type(name) ~= "string" or type(data) ~= "string" then
        error("aio:post(worker, name, data): name and data must be strings", 2)
    end
    return net.mail(worker, { [MAILBOX_KEY] = name, data = data })
end

--- Reload the Lua code of every worker (each re-runs its entry script in place).
function aio:reload()
    return host.reload_all()
end

--- Stop the whole server gracefully. In a script (`eightys --cli`), end it with
--- exit status `code` (an integer 0-255, default 0) once the current callback returns.
--- @param code? integer
function aio:quit(code)
    if code ~= nil and (type(code) ~= "number" or code % 1 ~= 0 or code < 0 or code > 255) then
        error("aio:quit(code): code must be an integer 0-255, got " .. tostring(code), 2)
    end
    return net.quit(code)
end

-- 80s helpers
function iserror(v) return type(v) == "table" and v.error ~= nil end
function ispresent(...)
    for i = 1, select("#", ...) do
        if select(i, ...) == nil then return false end
    end
    return true
end
function make_error(msg) return { error = msg } end

--- Internal: called once by bootstrap.lua with the host's private functions.
function aio:_attach(private)
    host = private
end

return aio
