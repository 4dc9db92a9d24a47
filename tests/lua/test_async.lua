-- aio:async and aio:await.

local T = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- Run fn() from the main thread (a timer callback), outside any coroutine;
--- returns what it returned.
local function outside_coroutine(fn)
    local resolve, promise = aio:prepare_promise()
    aio:set_timeout(function() resolve(fn()) end, 0)
    return aio:await(promise)
end

function T.await_of_a_resolved_promise_does_not_yield(t)
    local order = {}
    local promise = aio:resolved("v", nil)
    aio:async(function()
        order[#order + 1] = "before await"
        local got = pack(aio:await(promise))
        order[#order + 1] = "after await " .. got.n .. " " .. got[1]
    end)
    order[#order + 1] = "after async"
    t.eq(order, { "before await", "after await 2 v", "after async" })
end

function T.await_of_a_promise_resolved_during_subscription_does_not_yield(t)
    local order = {}
    local eighty_style = function(callback) callback("now") end
    aio:async(function()
        order[#order + 1] = aio:await(eighty_style)
    end)
    order[#order + 1] = "after async"
    t.eq(order, { "now", "after async" })
end

function T.await_of_a_timer_resolved_promise_suspends_until_resolved(t)
    local order = {}
    local resolve, promise = aio:prepare_promise()
    aio:async(function()
        order[#order + 1] = "before await"
        local got = pack(aio:await(promise))
        order[#order + 1] = "resumed with " .. got.n .. " " .. got[1]
    end)
    order[#order + 1] = "after async"
    aio:set_timeout(function()
        order[#order + 1] = "resolving"
        resolve("x", nil)
        order[#order + 1] = "resolved"
        t.done()
    end, 0.005)
    t.wait()
    t.eq(order, { "before await", "after async", "resolving", "resumed with 2 x", "resolved" })
end

function T.await_of_sleep_in_a_loop(t)
    local ticks = {}
    for i = 1, 3 do
        ticks[i] = aio:await(aio:sleep(0.001))
    end
    t.eq(ticks, { true, true, true })
end

function T.await_of_a_plain_value_returns_it(t)
    t.eq(aio:await(42), 42, "number")
    t.eq(aio:await("s"), "s", "string")
    t.eq(pack(aio:await(nil)), { n = 1 }, "nil")
    local plain = { 1 }
    t.eq(aio:await(plain) == plain, true, "a table that is not a promise")
end

function T.await_outside_a_coroutine_raises(t)
    local where
    local ok, err = outside_coroutine(function()
        return pcall(function()
            where = t.here(); local v = aio:await(aio:sleep(0)) -- not a tail call: keep this frame
            return v
        end)
    end)
    t.eq(ok, false, "pcall result")
    t.eq(err, where .. ": aio:await must run inside aio:async (or a coroutine aio drives)")
end

function T.async_returns_a_promise_of_the_results(t)
    local promise = aio:async(function(a, b) return a + b, nil, "x", nil end, nil, 1, 2)
    t.ok(aio:is_promise(promise), "a promise")
    local got
    promise(function(...) got = pack(...) end)
    t.eq(got, { n = 4, 3, nil, "x", nil }, "resolved at once")

    local later = aio:async(function()
        return aio:await(aio:sleep(0.001)), "slept"
    end)
    t.ok(not later:is_resolved(), "pending while the function awaits")
    t.eq(pack(aio:await(later)), { n = 2, true, "slept" }, "resolved when it returns")
end

function T.error_in_async_calls_on_error_and_resolves_nil_err(t)
    local where, handled
    local promise = aio:async(function()
        where = t.here(); error("async broke")
    end, function(err) handled = err end)
    t.eq(handled, where .. ": async broke", "on_error got the error")
    t.eq(pack(aio:await(promise)), { n = 2, nil, where .. ": async broke" }, "promise")
    local line = t.logged(where .. ": async broke")
    t.ok(line:find("stack traceback", 1, true), "traceback in " .. line)
end

function T.error_after_an_await_is_handled_the_same(t)
    local where, handled
    local promise = aio:async(function()
        aio:await(aio:sleep(0.001))
        where = t.here(); error("broke after await")
    end, function(err) handled = err end)
    t.eq(pack(aio:await(promise)), { n = 2, nil, where .. ": broke after await" }, "promise")
    t.eq(handled, where .. ": broke after await", "on_error got the error")
    local line = t.logged(where .. ": broke after await")
    t.ok(line:find("stack traceback", 1, true), "traceback in " .. line)
    t.ok(line:find(where, line:find("stack traceback", 1, true), true), "the traceback names the line")
end

function T.error_without_on_error_still_resolves(t)
    local where
    local promise = aio:async(function() where = t.here(); error({ code = 7 }) end)
    local value, err = aio:await(promise)
    t.eq(value, nil, "value")
    t.eq(err, { code = 7 }, "a non-string error is passed as is")
    t.ok(where, "ran")
    -- logged with its fields, at the line that raised it
    t.logged("coroutine: " .. where .. ": error {code = 7}")
end

function T.await_of_a_coroutine_resumes_it_once(t)
    local co = coroutine.create(function(a)
        coroutine.yield("first", a)
        return "second"
    end)
    t.eq(pack(aio:await(co)), { n = 2, "first", nil }, "first resume")
    t.eq(pack(aio:await(co)), { n = 1, "second" }, "second resume")
end

-- aio:run: tasks in reused coroutines (one per HTTP request)

function T.run_executes_the_task_at_once_with_its_arguments(t)
    local got
    aio:run(function(a, b) got = a .. b end, "x", "y")
    t.eq(got, "xy")
end

function T.run_reuses_a_coroutine_once_a_task_finished(t)
    local first, second
    aio:run(function() first = coroutine.running() end)
    aio:run(function() second = coroutine.running() end)
    t.ok(first ~= nil and first == second, "the second task ran in the first one's coroutine")
end

function T.run_tasks_may_await_and_do_not_share_a_suspended_coroutine(t)
    local order = {}
    local resolve, promise = aio:prepare_promise()
    local waiting_co, other_co
    aio:run(function()
        waiting_co = coroutine.running()
        order[#order + 1] = "a waits"
        local got = aio:await(promise) -- before indexing: `order[#order + 1] = await()` fixes the slot first
        order[#order + 1] = "a got " .. got
    end)
    aio:run(function()
        other_co = coroutine.running()
        order[#order + 1] = "b ran"
    end)
    t.ok(waiting_co ~= other_co, "a suspended task keeps its coroutine")
    resolve("v")
    t.eq(order, { "a waits", "b ran", "a got v" })
    local after
    aio:run(function() after = coroutine.running() end)
    t.ok(after == waiting_co or after == other_co, "finished coroutines return to the pool")
end

function T.run_logs_a_task_error_and_keeps_working(t)
    local where
    aio:run(function() where = t.here(); error("task broke") end)
    t.logged(where .. ": task broke")
    local ran = false
    aio:run(function() ran = true end)
    t.ok(ran, "the next task still runs")
end

return T
