-- Error values as the log shows them: error(table) with its fields (not
-- "table: 0x..."), and, for the message handlers of xpcall, where it was raised.

local type = type
local tostring = tostring
local pairs = pairs
local getmetatable = getmetatable
local getinfo = debug.getinfo
local debug_traceback = debug.traceback
local str_format = string.format
local str_find = string.find
local sort = table.sort
local concat = table.concat

local MAX_FIELDS = 20

local _M = {}

--- A one-line description of an error value: strings as they are, a table
--- with a __tostring as that, other tables as `{code = 1, message = "x"}`.
---@param err any
---@return string
function _M.describe(err)
    if type(err) ~= "table" then return tostring(err) end
    local mt = getmetatable(err)
    if mt and mt.__tostring then return tostring(err) end
    local keys = {}
    for k in pairs(err) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for i = 1, #keys do
        if i > MAX_FIELDS then
            parts[#parts + 1] = "..."
            break
        end
        local k, v = keys[i], err[keys[i]]
        local key = type(k) == "string" and k or "[" .. tostring(k) .. "]"
        local value = type(v) == "string" and str_format("%q", v) or tostring(v)
        parts[#parts + 1] = key .. " = " .. value
    end
    return "error {" .. concat(parts, ", ") .. "}"
end
local describe = _M.describe

-- "file:line: " of the first Lua frame among three stack levels from `first`,
-- found by info(level) (debug.getinfo on some stack), or "" if there is none
local function position(info, first)
    for level = first, first + 2 do
        local at = info(level)
        if at == nil then break end
        if at.what ~= "C" and at.currentline and at.currentline > 0 then
            return at.short_src .. ":" .. at.currentline .. ": "
        end
    end
    return ""
end

-- an error table (error() adds no position to it), or a message raised in Python (a
-- host or -m module function) without one: the position is named from the stack
local function unplaced(err, msg)
    return type(err) == "table" or not str_find(msg, "^[^\n]-:%d+: ")
end

--- debug.traceback that describes error tables: as an xpcall message handler,
--- traceback(err) gives "file:line: error {code = 1}" plus the stack; called
--- as traceback(msg, level) or traceback(co, msg, level) it works like
--- debug.traceback, levels counted from the caller.
function _M.traceback(a, b, c)
    if type(a) == "thread" then return _M.thread_traceback(a, b, c) end
    local msg = a
    if a ~= nil then
        msg = describe(a)
        if unplaced(a, msg) then
            -- level 2 of this function is where it was raised (error() itself, if it
            -- was: the user's code is next); +2 for position and this closure
            msg = position(function(level) return getinfo(level + 2, "Sl") end, 2) .. msg
        end
    end
    return debug_traceback(msg, (b or 1) + 1)
end

--- traceback(co, err, level) for a coroutine that raised `err` and stopped there
--- (dead, its stack kept): the same message as the message handler gives, with
--- the position found on co's stack, whose level 0 is where it raised.
function _M.thread_traceback(co, err, level)
    local msg = describe(err)
    if err ~= nil and unplaced(err, msg) then
        msg = position(function(at) return getinfo(co, at, "Sl") end, 0) .. msg
    end
    return debug_traceback(co, msg, level)
end

return _M
