-- aio:cached and aio:set_max_cache_size.

local T = {}

--- A producer that counts its calls and returns what make(call number) returns.
local function counting(make)
    local producer = { calls = 0 }
    setmetatable(producer, { __call = function(self)
        self.calls = self.calls + 1
        return make(self.calls)
    end })
    return producer
end

local function entry_count(name)
    local n = 0
    for _ in pairs(aio.cache[name].entries) do n = n + 1 end
    return n
end

function T.value_is_cached_and_produced_once(t)
    local produce = counting(function(call) return "v" .. call end)
    t.eq(aio:cached("c", "k", produce), "v1", "first call")
    t.eq(aio:cached("c", "k", produce), "v1", "second call")
    t.eq(aio:cached("other cache", "k", produce), "v2", "caches are separate")
    t.eq(aio:cached("c", "other key", produce), "v3", "keys are separate")
    t.eq(produce.calls, 3, "producer calls")
end

function T.concurrent_callers_share_the_in_flight_promise(t)
    local resolve
    local produce = counting(function()
        local r, promise = aio:prepare_promise()
        resolve = r
        return promise
    end)
    local first = aio:cached("c", "k", produce)
    local second = aio:cached("c", "k", produce)
    t.ok(first == second, "same promise")
    t.eq(produce.calls, 1, "producer ran once")
    local got = {}
    for i, promise in ipairs({ first, second }) do
        aio:async(function() got[i] = aio:await(promise) end)
    end
    resolve("value")
    t.eq(got, { "value", "value" }, "both waiters got the value")
    t.ok(aio:cached("c", "k", produce) == first, "the resolved promise stays cached")
    t.eq(produce.calls, 1, "producer still ran once")
end

function T.failed_promises_are_not_kept(t)
    for _, failure in ipairs({ "nil", "error table" }) do
        local produce = counting(function(call)
            if call == 1 then
                local value = failure == "nil" and nil or make_error("down")
                local resolve, promise = aio:prepare_promise()
                aio:set_timeout(function() resolve(value, "why") end, 0.001)
                return promise
            end
            return aio:resolved("ok")
        end)
        local first = aio:cached("c", failure, produce)
        t.ok(aio:cached("c", failure, produce) == first, failure .. ": cached while in flight")
        aio:await(first)
        local retry = aio:cached("c", failure, produce)
        t.ok(retry ~= first, failure .. ": dropped once it failed")
        t.eq(aio:await(retry), "ok", failure .. ": retried")
        t.eq(produce.calls, 2, failure .. ": producer calls")
        t.ok(aio:cached("c", failure, produce) == retry, failure .. ": success is kept")
    end
    t.eq(aio.cache.c.size, entry_count("c"), "size matches the entries")
end

function T.failed_plain_values_are_not_kept(t)
    local produce = counting(function(call)
        if call == 1 then return nil, "down" end
        if call == 2 then return make_error("down") end
        return "up"
    end)
    local value, err = aio:cached("c", "k", produce)
    t.eq({ value, err }, { nil, "down" }, "nil, err is passed through")
    t.eq(aio:cached("c", "k", produce), { error = "down" }, "retried; error table passed through")
    t.eq(aio:cached("c", "k", produce), "up", "retried again")
    t.eq(aio:cached("c", "k", produce), "up", "success is kept")
    t.eq(produce.calls, 3, "producer calls")
    t.eq(aio.cache.c.size, 1, "size")
end

function T.entry_expires_after_ttl(t)
    local produce = counting(function(call) return call end)
    t.eq(aio:cached("c", "k", produce, 0.02), 1, "first")
    t.eq(aio:cached("c", "k", produce, 0.02), 1, "cached within the ttl")
    aio:await(aio:sleep(0.03))
    t.eq(aio:cached("c", "k", produce, 0.02), 2, "produced again after the ttl")
    t.eq(aio:cached("c", "k", produce, 0.02), 2, "and cached again")
    t.eq(aio.cache.c.size, 1, "the expired entry was replaced")
end

function T.ttl_can_be_given_as_expire(t)
    local produce = counting(function(call) return call end)
    t.eq(aio:cached("c", "k", produce, true, 0.01), 1, "first")
    t.eq(aio:cached("c", "k", produce, true, 0.01), 1, "cached")
    aio:await(aio:sleep(0.02))
    t.eq(aio:cached("c", "k", produce, true, 0.01), 2, "expired")
end

function T.false_bypasses_the_cache(t)
    local produce = counting(function(call) return call, "extra" end)
    t.eq({ aio:cached("c", "k", produce, false) }, { 1, "extra" }, "first")
    t.eq({ aio:cached("c", "k", produce, false) }, { 2, "extra" }, "not cached")
    t.eq(aio.cache.c, nil, "nothing stored")
    t.eq(aio:cached("c", "k", produce), 3, "a normal call produces")
    t.eq(aio:cached("c", "k", produce, false), 4, "bypass ignores the stored value")
    t.eq(aio:cached("c", "k", produce), 3, "which is still there")
end

function T.cache_size_is_bounded_newest_kept(t)
    aio:set_max_cache_size(3)
    local produce = counting(function(call) return call end)
    for i = 1, 5 do aio:cached("c", "k" .. i, produce) end
    t.eq(entry_count("c"), 3, "entries")
    t.eq(aio.cache.c.size, 3, "size")
    for i = 3, 5 do
        t.eq(aio:cached("c", "k" .. i, produce), i, "k" .. i .. " kept")
    end
    t.eq(produce.calls, 5, "no producer call for kept keys")
    t.eq(aio:cached("c", "k1", produce), 6, "k1 was evicted")
    t.eq(entry_count("c"), 3, "still 3 entries")
end

function T.cache_stays_bounded_under_churn(t)
    aio:set_max_cache_size(3)
    local failing = function() return aio:resolved(nil) end
    for i = 1, 1000 do
        aio:cached("c", "k" .. i, function() return i end)
        aio:cached("c", "f" .. i, failing)       -- dropped at once
        aio:cached("c", "t" .. i, function() return i end, 0) -- expires at once
    end
    local cache = aio.cache.c
    t.eq(entry_count("c"), 3, "entries")
    t.eq(cache.size, 3, "size")
    t.ok(cache.tail - cache.head + 1 <= 2 * 3 + 65, "eviction order stays bounded: "
        .. (cache.tail - cache.head + 1))
end

function T.bad_max_cache_size_is_an_error(t)
    t.eq(pcall(aio.set_max_cache_size, aio, 0), false, "0")
    t.eq(pcall(aio.set_max_cache_size, aio, "3"), false, "string")
end

return T
