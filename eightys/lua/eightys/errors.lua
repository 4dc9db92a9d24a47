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

--- debug.traceback that describes error tables: as an xpcall message handler,
--- traceback(err) gives "file:line: error {code = 1}" plus the stack; called
--- as traceback(msg, level) or traceback(co, msg, level) it works like
--- debug.traceback, levels counted from the caller.
function _M.traceback(a, b, c)
    if type(a) == "thread" then return _M.thread_traceback(a, b, c) end
    local msg = a
    if type(a) == "table" then
        msg = describe(a)
        -- level 2 is error() itself when the table was raised by it; the user's code is next
        local info = getinfo(2, "Sl")
        if info and info.what == "C" then info = getinfo(3, "Sl") end
        if info and info.currentline and info.currentline > 0 then
            msg = info.short_src .. ":" .. info.currentline .. ": " .. msg
        end
    elseif a ~= nil then
        msg = tostring(a)
        -- an error raised in Python (a host or -m module function) carries no
        -- position: name the Lua line that called it
        if not str_find(msg, "^[^\n]-:%d+: ") then
            for level = 2, 4 do
                local info = getinfo(level, "Sl")
                if info == nil then break end
                if info.what ~= "C" and info.currentline and info.currentline > 0 then
                    msg = info.short_src .. ":" .. info.currentline .. ": " .. msg
                    break
                end
            end
        end
    end
    return debug_traceback(msg, (b or 1) + 1)
end

--- traceback(co, err, level) for a coroutine that raised `err` and stopped there
--- (dead, its stack kept): the same message as the message handler gives, with
--- the position found on co's stack, whose level 0 is where it raised.
function _M.thread_traceback(co, err, level)
    local msg = describe(err)
    if err ~= nil and (type(err) == "table" or not str_find(msg, "^[^\n]-:%d+: ")) then
        for at = 0, 2 do
            local info = getinfo(co, at, "Sl")
            if info == nil then break end
            if info.what ~= "C" and info.currentline and info.currentline > 0 then
                msg = info.short_src .. ":" .. info.currentline .. ": " .. msg
                break
            end
        end
    end
    return debug_traceback(co, msg, level)
end

return _M
