-- aio.lua keeps nothing for a coroutine that has finished: many short-lived
-- socket readers (aio:cor, aio:buffered_cor) and bursts of tasks that wait
-- leave the Lua heap and aio's per-coroutine tables where they started after a
-- full collection. (LuaJIT has no ephemerons: a weak-keyed table whose values
-- reach their keys keeps every entry, which is how this leaked before.)

local T = {}

local CYCLES = 3000
--- Lua heap growth (KiB) allowed over CYCLES cycles: a leak of even one small
--- closure per cycle is far above it (a coroutine alone is ~0.5 KiB).
local SLACK_KIB = 64

--- aio.lua's per-coroutine tables, found through the upvalues of its functions
--- (so the library needs no test-only API).
local function state_tables()
    local found, seen = {}, {}
    local function walk(fn, depth)
        if seen[fn] or depth > 4 then return end
        seen[fn] = true
        for i = 1, 255 do
            local name, value = debug.getupvalue(fn, i)
            if name == nil then break end
            if name == "drivers" or name == "on_errors" or name == "awaiting" then
                found[name] = value
            elseif type(value) == "function" then
                walk(value, depth + 1)
            end
        end
    end
    walk(aio.resume, 0)
    walk(aio.cor2, 0)
    walk(aio.async, 0)
    return found
end

local function sizes()
    local out = {}
    for name, tbl in pairs(state_tables()) do
        local n = 0
        for _ in pairs(tbl) do n = n + 1 end
        out[name] = n
    end
    return out
end

local function heap_kib()
    collectgarbage("collect")
    collectgarbage("collect") -- a second round finishes what the first one resurrected
    return collectgarbage("count")
end

local next_fd = 100000

--- An aiosocket as aio:connect returns it; close() reports the close event
--- at once, as the worker does once the socket is gone.
local function socket()
    next_fd = next_fd + 1
    local sock = aiosocket:new(0, next_fd, true)
    function sock:close()
        if self.closed then return false end
        aio.fds[self.fd] = nil
        self.closed = true
        self:on_close(0, self.fd)
        return true
    end
    return sock
end

local function receive(sock, data) sock:on_data(0, sock.fd, data, #data) end

--- One connection read with aio:cor to its end.
local function cor_cycle(t)
    local sock = socket()
    local got
    aio:cor(sock, function(stream, resolve)
        local parts = {}
        for chunk in stream do parts[#parts + 1] = chunk end
        resolve(table.concat(parts))
    end)(function(text) got = text end)
    receive(sock, "hel")
    receive(sock, "lo")
    sock:close()
    if got ~= "hello" then t.eq(got, "hello", "aio:cor read everything") end
end

--- One connection read with aio:buffered_cor: a line, a counted body, then eof.
local function buffered_cycle(t)
    local sock = socket()
    local got
    aio:buffered_cor(sock, function(resolve)
        local line = coroutine.yield("\r\n")
        local body = coroutine.yield(tonumber(line))
        local rest, err = coroutine.yield(1)
        resolve(body, rest, err)
    end)(function(body, rest, err) got = body .. tostring(rest) .. err end)
    receive(sock, "4\r")
    receive(sock, "\nbody")
    sock:close()
    if got ~= "bodynileof" then t.eq(got, "bodynileof", "aio:buffered_cor result") end
end

--- A reader that is waiting in aio:await when its socket closes, and ends later.
local function awaiting_cycle(t)
    local sock = socket()
    local go, gate = aio:prepare_promise()
    local got
    aio:buffered_cor(sock, function(resolve)
        local line = coroutine.yield("\n")
        aio:await(gate)
        resolve(line, coroutine.yield("\n"))
    end)(function(line, _, err) got = line .. err end)
    receive(sock, "first\n")
    sock:close()
    go(true)
    if got ~= "firsteof" then t.eq(got, "firsteof", "the reader ended after its await") end
end

--- A reader that fails: the error closes the socket and resolves nil, err.
local function failing_cycle(t)
    local sock = socket()
    local failed
    aio:cor(sock, function(stream)
        stream()
        error("reader failed", 0)
    end)(function(value, err) failed = value == nil and err end)
    receive(sock, "x")
    if failed ~= "reader failed" then t.eq(failed, "reader failed", "error resolved") end
    if not sock.closed then t.ok(false, "the error closed the socket") end
end

local function check_flat(t, what, cycle)
    for _ = 1, 200 do cycle(t) end -- warm up: pools, interned strings, traces
    local before = heap_kib()
    local before_sizes = sizes()
    for _ = 1, CYCLES do cycle(t) end
    local after = heap_kib()
    local after_sizes = sizes()
    t.eq(after_sizes, before_sizes, what .. ": aio's per-coroutine tables after "
        .. CYCLES .. " cycles")
    t.ok(after - before < SLACK_KIB, string.format(
        "%s: Lua heap grew %.0f KiB over %d cycles (%.0f -> %.0f KiB)",
        what, after - before, CYCLES, before, after))
end

function T.socket_readers_leave_nothing_behind(t)
    t.ok(state_tables().drivers and state_tables().on_errors, "found aio's tables")
    check_flat(t, "aio:cor", cor_cycle)
    check_flat(t, "aio:buffered_cor", buffered_cycle)
    check_flat(t, "a reader awaiting at close", awaiting_cycle)
end

function T.failing_readers_leave_nothing_behind(t)
    -- every failure is logged: claim the lines as they come
    local function cycle(tt)
        failing_cycle(tt)
        t.logged("reader failed")
    end
    check_flat(t, "failing aio:cor", cycle)
end

function T.bursts_of_waiting_tasks_leave_only_the_parked_pool(t)
    local function burst()
        local go, gate = aio:prepare_promise()
        local finished = 0
        for _ = 1, 600 do -- more than the pool keeps parked (256)
            aio:run(function()
                aio:await(gate)
                finished = finished + 1
            end)
        end
        go(true)
        if finished ~= 600 then t.eq(finished, 600, "every task finished") end
    end
    burst()
    local before = heap_kib()
    local before_sizes = sizes()
    for _ = 1, 12 do burst() end
    local after = heap_kib()
    local after_sizes = sizes()
    t.eq(after_sizes, before_sizes, "aio's per-coroutine tables after 12 bursts")
    t.ok(after - before < SLACK_KIB, string.format(
        "Lua heap grew %.0f KiB over 12 bursts (%.0f -> %.0f KiB)", after - before, before, after))
end

return T
