-- aio:prepare_promise, aio:resolved, aio:gather, aio:chain, aio:map.

local T = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- A promise resolved with the given values after `seconds`.
local function later(seconds, ...)
    local values = pack(...)
    local resolve, promise = aio:prepare_promise()
    aio:set_timeout(function() resolve(unpack(values, 1, values.n)) end, seconds)
    return promise
end

---------------------------------------------------------------------------
-- prepare_promise
---------------------------------------------------------------------------

function T.resolve_before_subscribe(t)
    local resolve, promise = aio:prepare_promise()
    resolve("a", "b")
    local got
    promise(function(...) got = pack(...) end)
    t.eq(got, { n = 2, "a", "b" }, "delivered at once")
    t.ok(promise:is_resolved(), "is_resolved")
end

function T.resolve_after_subscribe(t)
    local resolve, promise = aio:prepare_promise()
    local got
    promise(function(...) got = pack(...) end)
    t.eq(got, nil, "nothing before resolve")
    t.ok(not promise:is_resolved(), "not resolved yet")
    resolve("a", "b")
    t.eq(got, { n = 2, "a", "b" }, "delivered on resolve")
end

function T.every_subscriber_is_called_in_order(t)
    local resolve, promise = aio:prepare_promise()
    local calls = {}
    for i = 1, 4 do
        promise(function(v) calls[#calls + 1] = i .. v end)
    end
    promise:next(function(v) calls[#calls + 1] = "next" .. v end)
    resolve("!")
    promise(function(v) calls[#calls + 1] = "late" .. v end)
    t.eq(calls, { "1!", "2!", "3!", "4!", "next!", "late!" })
end

function T.second_resolve_is_ignored(t)
    local resolve, promise = aio:prepare_promise()
    local calls = {}
    promise(function(v) calls[#calls + 1] = v end)
    resolve(1)
    resolve(2)
    promise(function(v) calls[#calls + 1] = v end)
    t.eq(calls, { 1, 1 }, "each subscriber called once with the first value")
end

function T.nils_and_value_count_are_preserved(t)
    local resolve, promise = aio:prepare_promise()
    local before, after
    promise(function(...) before = pack(...) end)
    resolve(nil, 2, nil)
    promise(function(...) after = pack(...) end)
    t.eq(before, { n = 3, nil, 2, nil }, "subscribed before")
    t.eq(after, { n = 3, nil, 2, nil }, "subscribed after")
    t.eq(pack(aio:await(promise)), { n = 3, nil, 2, nil }, "awaited")

    local empty = aio:resolved()
    empty(function(...) before = pack(...) end)
    t.eq(before, { n = 0 }, "no values")
end

function T.failing_subscriber_is_logged_and_others_still_run(t)
    local resolve, promise = aio:prepare_promise()
    local calls, where = {}, nil
    promise(function(v) calls[#calls + 1] = "first " .. v end)
    promise(function() where = t.here(); error("subscriber broke") end)
    promise(function(v) calls[#calls + 1] = "third " .. v end)
    resolve("x")
    t.eq(calls, { "first x", "third x" })
    local line = t.logged(where .. ": subscriber broke")
    t.ok(line:find("stack traceback", 1, true), "traceback in " .. line)

    -- subscribing a failing callback to a resolved promise is logged the same way
    promise(function() where = t.here(); error("late subscriber broke") end)
    t.logged(where .. ": late subscriber broke")
end

function T.coroutine_subscriber_is_resumed_with_the_values(t)
    local resolve, promise = aio:prepare_promise()
    local got
    local co = coroutine.create(function(...)
        got = pack(...)
    end)
    promise(co)
    resolve(1, nil)
    t.eq(got, { n = 2, 1, nil })
    t.eq(coroutine.status(co), "dead")
end

---------------------------------------------------------------------------
-- gather
---------------------------------------------------------------------------

function T.gather_keeps_argument_order(t)
    local resolved = {}
    local function task(name, seconds)
        return later(seconds, name)(function(v) resolved[#resolved + 1] = v end)
    end
    local all = aio:gather(task("a", 0.03), task("b", 0.02), task("c", 0.01))
    t.eq(pack(aio:await(all)), { n = 3, "a", "b", "c" }, "results")
    t.eq(resolved, { "c", "b", "a" }, "the tasks resolved in reverse order")
end

function T.gather_mixes_plain_values_and_nils(t)
    local eighty_style = function(callback) callback("f") end
    local all = aio:gather(later(0.01, "late"), "plain", nil, aio:resolved(false), eighty_style)
    t.eq(pack(aio:await(all)), { n = 5, "late", "plain", nil, false, "f" })
end

function T.gather_takes_each_first_value(t)
    local all = aio:gather(later(0.001, 1, 2), aio:resolved(nil, "err"))
    t.eq(pack(aio:await(all)), { n = 2, 1, nil })
end

function T.gather_of_nothing_resolves_at_once(t)
    local all = aio:gather()
    t.ok(all:is_resolved(), "resolved")
    local got
    all(function(...) got = pack(...) end)
    t.eq(got, { n = 0 })
end

function T.gather_of_plain_values_only_resolves_at_once(t)
    local got
    aio:gather(1, 2)(function(...) got = pack(...) end)
    t.eq(got, { n = 2, 1, 2 })
end

---------------------------------------------------------------------------
-- chain
---------------------------------------------------------------------------

local function times_ten(x) return x * 10 end

function T.chain_starts_from_a_promise(t)
    t.eq(pack(aio:await(aio:chain(later(0.001, 2), times_ten))), { n = 1, 20 })
end

function T.chain_starts_from_a_plain_value(t)
    local got
    aio:chain(2, times_ten)(function(...) got = pack(...) end)
    t.eq(got, { n = 1, 20 }, "plain steps resolve at once")
end

function T.chain_without_steps_passes_the_first_through(t)
    t.eq(pack(aio:await(aio:chain(aio:resolved(1, nil, 3)))), { n = 3, 1, nil, 3 })
end

function T.chain_awaits_promise_steps_and_passes_plain_ones(t)
    local seen = {}
    local result = aio:chain(1,
        function(x) seen[#seen + 1] = x; return later(0.005, x + 1) end,
        function(x) seen[#seen + 1] = x; return x * 2 end,
        function(x) seen[#seen + 1] = x; return aio:resolved(x, "tail") end,
        function(x, tail) seen[#seen + 1] = tail; return x + 1, tail end)
    t.eq(pack(aio:await(result)), { n = 2, 5, "tail" }, "result")
    t.eq(seen, { 1, 2, 4, "tail" }, "each step saw the previous result")
end

function T.chain_passes_multiple_values_and_nils_between_steps(t)
    local seen = {}
    local result = aio:chain(aio:resolved(1, nil, 3),
        function(...) seen[1] = pack(...); return nil, "b", nil end,
        function(...) seen[2] = pack(...); return later(0.001, "x", nil) end,
        function(...) seen[3] = pack(...); return ... end)
    t.eq(pack(aio:await(result)), { n = 2, "x", nil }, "result")
    t.eq(seen, { { n = 3, 1, nil, 3 }, { n = 3, nil, "b", nil }, { n = 2, "x", nil } }, "steps")
end

function T.chain_step_that_raises_resolves_nil_err(t)
    local where
    local ran = false
    local result = aio:chain(later(0.001, 1),
        function(x) return x + 1 end,
        function() where = t.here(); error("step broke") end,
        function() ran = true end)
    local value, err = aio:await(result)
    t.eq(value, nil, "value")
    t.eq(err, where .. ": step broke", "err is the error, without traceback")
    t.ok(not ran, "later steps do not run")
    local line = t.logged("aio:chain step 2: " .. where .. ": step broke")
    t.ok(line:find("stack traceback", 1, true), "traceback in " .. line)
end

---------------------------------------------------------------------------
-- map
---------------------------------------------------------------------------

function T.map_returns_the_mapped_array(t)
    t.eq(aio:map({ 1, 2, 3 }, function(x, k) return x * k end, 10), { 10, 20, 30 })
    t.eq(aio:map({}, tostring), {})
end

return T
