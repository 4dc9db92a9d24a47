-- The Lua side of tests/test_lua.py: lists and runs the tests of a test file.
--
-- A test file (tests/lua/test_*.lua) returns a table of test functions; pytest
-- runs each one, in definition order, on every engine:
--
--     local T = {}
--
--     function T.second_resolve_is_ignored(t)
--         local resolve, promise = aio:prepare_promise()
--         resolve(1)
--         resolve(2)
--         promise(function(v) t.eq(v, 1, "value") end)
--     end
--
--     return T
--
-- Each test runs inside aio:async, so it may aio:await. It passes once it has
-- returned, no check failed and every log_error line it caused was claimed with
-- t.logged. The `t` object:
--   t.eq(actual, expected, msg)  equal values; tables are compared key by key
--   t.ok(value, msg)             value is truthy
--   t.logged(text)               claim (and return) a log_error line containing text
--   t.here()                     "file:line" of the caller, to match error messages
--   t.done(), t.wait()           t.wait() suspends the test until t.done() is called
-- A failed check is recorded and raises, so a failure inside a callback or a
-- coroutine fails the test too (after ending that callback).

local harness = {}

local ESCAPES = { ["\r"] = "\\r", ["\n"] = "\\n", ["\t"] = "\\t", ['"'] = '\\"', ["\\"] = "\\\\" }

local function show(v, depth)
    if type(v) == "string" then
        return '"' .. v:gsub('[%c"\\]', function(c)
            return ESCAPES[c] or string.format("\\%03d", c:byte())
        end) .. '"'
    end
    if type(v) ~= "table" or (depth or 0) > 3 then return tostring(v) end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
        if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
        return type(a) < type(b)
    end)
    local parts = {}
    for i, k in ipairs(keys) do
        local key = type(k) == "number" and "[" .. k .. "]=" or tostring(k) .. "="
        parts[i] = key .. show(v[k], (depth or 0) + 1)
    end
    return "{" .. table.concat(parts, ", ") .. "}"
end

local function equal(a, b)
    if a == b then return true end
    if type(a) ~= "table" or type(b) ~= "table" then return false end
    for k, v in pairs(a) do
        if not equal(v, b[k]) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

local function caller(level)
    local info = debug.getinfo(level + 1, "Sl")
    return info.short_src .. ":" .. (info.currentline or "?")
end

--- Test names of the file at path, in definition order.
function harness.list(path)
    local tests = assert(loadfile(path))()
    local names = {}
    for name, fn in pairs(tests) do
        if type(fn) == "function" then names[#names + 1] = name end
    end
    table.sort(names, function(a, b)
        return debug.getinfo(tests[a], "S").linedefined < debug.getinfo(tests[b], "S").linedefined
    end)
    return names
end

--- Start test `name` of the file at path. Returns its state: `finished` once it
--- ended, `failure` (the first failure's message) if it failed.
--- claim_error(text) is the host's: the first logged line containing text, removed.
function harness.start(path, name, claim_error)
    local state = { finished = false, failure = nil }
    local function fail(message, level)
        message = caller(level + 1) .. ": " .. message
        state.failure = state.failure or message
        error(message, 0)
    end

    local t = {}
    function t.eq(actual, expected, msg)
        if not equal(actual, expected) then
            fail((msg or "values differ") .. ": expected " .. show(expected) .. ", got " .. show(actual), 2)
        end
    end
    function t.ok(value, msg)
        if not value then fail((msg or "not true") .. ": got " .. show(value), 2) end
    end
    function t.logged(text)
        local line, logged = claim_error(text)
        if line == nil then
            fail("no log_error line contains " .. show(text) .. "; logged:\n" .. logged, 2)
        end
        return line
    end
    function t.here()
        local where = caller(2) -- not a tail call: that would drop this frame
        return where
    end
    local done, finished = aio:prepare_promise()
    t.done = function() done(true) end
    function t.wait()
        return aio:await(finished)
    end

    local tests = assert(loadfile(path))()
    local fn = tests[name]
    if type(fn) ~= "function" then
        state.failure = "no test " .. name .. " in " .. path
        state.finished = true
        return state
    end
    aio:async(fn, function(err)
        state.failure = state.failure or ("error: " .. tostring(err))
    end, t)(function()
        state.finished = true
    end)
    return state
end

return harness
