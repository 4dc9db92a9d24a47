-- aio:set_timeout, aio:set_interval, aio:clear_timeout, aio:sleep.

local T = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

function T.timeouts_fire_in_delay_order(t)
    local order = {}
    for _, delay in ipairs({ 0.03, 0.01, 0.04, 0.02 }) do
        aio:set_timeout(function() order[#order + 1] = delay end, delay)
    end
    aio:set_timeout(t.done, 0.05)
    t.wait()
    t.eq(order, { 0.01, 0.02, 0.03, 0.04 })
end

function T.equal_delays_fire_in_scheduling_order(t)
    local order = {}
    for i = 1, 5 do
        aio:set_timeout(function() order[#order + 1] = i end, 0.05)
    end
    aio:set_timeout(function() order[#order + 1] = 0 end, 0)
    aio:await(aio:sleep(0.1))
    t.eq(order, { 0, 1, 2, 3, 4, 5 })
end

function T.timeout_does_not_fire_before_its_turn(t)
    local fired = false
    aio:set_timeout(function() fired = true end, 0)
    t.ok(not fired, "not called synchronously")
    aio:await(aio:sleep(0.002))
    t.ok(fired, "called once the loop ran")
end

function T.cancelled_timeout_never_fires(t)
    local fired = {}
    local cancelled = aio:set_timeout(function() fired[#fired + 1] = "cancelled" end, 0.005)
    aio:set_timeout(function() fired[#fired + 1] = "kept" end, 0.005)
    t.eq(cancelled:cancel(), true, "cancel of a pending timer")
    t.eq(cancelled:cancel(), false, "second cancel")
    aio:await(aio:sleep(0.02))
    t.eq(fired, { "kept" }, "only the other timer fired")
end

function T.clear_timeout_cancels_and_ignores_nil(t)
    local fired = false
    local timer = aio:set_timeout(function() fired = true end, 0.002)
    t.eq(aio:clear_timeout(timer), true, "clear_timeout")
    t.eq(aio:clear_timeout(nil), false, "nil is ignored")
    aio:await(aio:sleep(0.01))
    t.ok(not fired, "never fired")

    local fired_timer = aio:set_timeout(function() end, 0)
    aio:await(aio:sleep(0.002))
    t.eq(fired_timer:cancel(), false, "cancel after it fired")
end

function T.interval_repeats_until_cancelled_from_its_callback(t)
    local count, timer = 0, nil
    local resolve, third = aio:prepare_promise()
    timer = aio:set_interval(function()
        count = count + 1
        if count == 3 then resolve(timer:cancel()) end
    end, 0.002)
    t.eq(aio:await(third), true, "cancel from the callback stops a pending re-arm")
    aio:await(aio:sleep(0.02))
    t.eq(count, 3, "no tick after cancel")
end

function T.interval_stops_when_cancelled_from_outside(t)
    local count = 0
    local timer = aio:set_interval(function() count = count + 1 end, 0.002)
    while count < 2 do aio:await(aio:sleep(0.001)) end
    aio:clear_interval(timer)
    local at_cancel = count
    aio:await(aio:sleep(0.02))
    t.eq(count, at_cancel, "count stays fixed after cancel")
    t.ok(at_cancel >= 2, "it repeated")
end

function T.sleep_resolves_with_true(t)
    local sleep = aio:sleep(0.001)
    t.ok(not sleep:is_resolved(), "pending at first")
    t.eq(pack(aio:await(sleep)), { n = 1, true })
end

function T.bad_delay_is_an_error_at_the_call_site(t)
    local where
    local ok, err = pcall(function() where = t.here(); aio:set_timeout(function() end, -1) end)
    t.eq(ok, false, "negative delay")
    t.eq(err, where .. ": bad delay -1 (seconds >= 0 expected)")
    ok = pcall(aio.sleep, aio, "soon")
    t.eq(ok, false, "string delay")
end

function T.error_in_a_timer_is_logged_and_later_timers_fire(t)
    local where
    local fired = {}
    aio:set_timeout(function() where = t.here(); error("timer broke") end, 0.001)
    aio:set_timeout(function() fired[#fired + 1] = "later" end, 0.003)
    local ticks = 0
    local interval
    interval = aio:set_interval(function()
        ticks = ticks + 1
        if ticks == 2 then interval:cancel() end
        error("tick " .. ticks)
    end, 0.001)
    aio:await(aio:sleep(0.01))
    t.eq(fired, { "later" }, "later timer fired")
    t.eq(ticks, 2, "interval kept ticking after an error")
    t.logged(where .. ": timer broke")
    t.logged("tick 1")
    t.logged("tick 2")
end

return T
