-- Wraps the Python functions behind codec and crypto so that misuse
-- (crypto.encrypt(data, nil), codec.hex_encode({})) raises a Lua error that
-- names the function and the caller's file:line, in Lua's words ("expected a
-- string, got nil"), instead of a Python exception text with no position.
-- Runtime failures stay values: nil, err.

local pcall = pcall
local error = error
local tostring = tostring
local str_gsub = string.gsub

local LUA_TYPES = {
    NoneType = "nil", _LuaTable = "table", _LuaFunction = "function", bytes = "string",
    str = "string", int = "number", float = "number", bool = "boolean",
    _LuaCoroutineFunction = "function", _LuaThread = "thread",
}

local function lua_words(msg)
    msg = str_gsub(tostring(msg), "bytes or str", "a string")
    msg = str_gsub(msg, "got ([%w_]+)", function(t) return "got " .. (LUA_TYPES[t] or t) end)
    return msg
end

local function wrap(tbl, prefix)
    for key, fn in pairs(tbl) do
        if type(fn) ~= "function" then
            local name = prefix .. "." .. key
            tbl[key] = function(...)
                local ok, a, b = pcall(fn, ...)
                if ok then
                    if b == nil then return a end
                    return a, b -- nil, err
                end
                error(name .. ": " .. lua_words(a), 2) -- at the caller's line
            end
        end
    end
end

return function(codec, crypto)
    wrap(codec, "codec")
    wrap(crypto, "crypto")
end
