-- CBOR (RFC 8949) for eightys apps, in pure Lua (LuaJIT 2.1 and Lua 5.4), with the
-- value model of the JSON codec: arrays and maps decode marked with codec.array /
-- codec.object, null and undefined decode to codec.null, an unmarked table is an
-- array when its keys are exactly 1..n.
--
--   local cbor = require("eightys.cbor")
--   local bytes = cbor.encode({ lapps = "1", method = "echo", params = { 1, 2 } })
--   local value, err = cbor.decode(bytes)
--
-- A Lua string is written as a text string when it is valid UTF-8 and as a byte
-- string otherwise; both decode to Lua strings. Tags are skipped (their content
-- is kept), indefinite-length items are read. Integers up to 2^53 are exact.

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local getmetatable = getmetatable
local setmetatable = setmetatable
local pcall = pcall
local floor = math.floor
local huge = math.huge
local char = string.char
local byte = string.byte
local sub = string.sub
local concat = table.concat
local unpack = unpack or table.unpack

local json = require("json")
local null = json.null
local array_mt = json.array_mt
local object_mt = json.object_mt

local _M = {}

local MAX_DEPTH = 1000

local pack_double, unpack_double, unpack_float
if string.pack then
    local spack, sunpack = string.pack, string.unpack
    pack_double = function(v) return spack(">d", v) end
    unpack_double = function(s, pos) return (sunpack(">d", s, pos)) end
    unpack_float = function(s, pos) return (sunpack(">f", s, pos)) end
else
    local ffi = require("ffi")
    local dbl = ffi.new("double[1]")
    local flt = ffi.new("float[1]")
    local bytes8 = ffi.new("uint8_t[8]")
    local little = ffi.abi("le")
    pack_double = function(v)
        dbl[0] = v
        local s = ffi.string(dbl, 8)
        return little and s:reverse() or s
    end
    unpack_double = function(s, pos)
        local raw = sub(s, pos, pos + 7)
        if little then raw = raw:reverse() end
        ffi.copy(bytes8, raw, 8)
        return ffi.cast("double*", bytes8)[0]
    end
    unpack_float = function(s, pos)
        local raw = sub(s, pos, pos + 3)
        if little then raw = raw:reverse() end
        ffi.copy(flt, raw, 4)
        return flt[0]
    end
end

local function half(h) -- IEEE 754 half precision
    local sign = h >= 0x8000 and -1 or 1
    local exp = floor(h / 1024) % 32
    local mant = h % 1024
    if exp == 0 then return sign * mant * 2 ^ -24 end
    if exp == 31 then return mant == 0 and sign * huge or 0 / 0 end
    return sign * (1 + mant / 1024) * 2 ^ (exp - 15)
end

local function be(n, width)
    local out = {}
    for i = width, 1, -1 do
        out[i] = n % 256
        n = floor(n / 256)
    end
    return char(unpack(out, 1, width))
end

-- The head of an item: major type and argument.
local function head(major, n)
    local m = major * 32
    if n < 24 then return char(m + n) end
    if n < 256 then return char(m + 24, n) end
    if n < 65536 then return char(m + 25) .. be(n, 2) end
    if n < 4294967296 then return char(m + 26) .. be(n, 4) end
    return char(m + 27) .. be(n, 8)
end

local valid_utf8 = require("eightys.utf8").valid
_M.valid_utf8 = valid_utf8

local function is_sequence(t)
    local n, max = 0, 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k ~= floor(k) then return false end
        n = n + 1
        if k > max then max = k end
    end
    return n > 0 and max == n
end

local encode_value

encode_value = function(v, buf, depth)
    local kind = type(v)
    if kind == "string" then
        buf[#buf + 1] = head(valid_utf8(v) and 3 or 2, #v)
        buf[#buf + 1] = v
    elseif kind == "number" then
        if v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
            if v >= 0 then buf[#buf + 1] = head(0, v) else buf[#buf + 1] = head(1, -1 - v) end
        elseif v ~= v or v == huge or v == -huge then
            error("cbor: cannot encode " .. tostring(v), 0)
        else
            buf[#buf + 1] = "\251" .. pack_double(v)
        end
    elseif kind == "boolean" then
        buf[#buf + 1] = v and "\245" or "\244"
    elseif v == null or v == nil then
        buf[#buf + 1] = "\246"
    elseif kind == "table" then
        if depth > MAX_DEPTH then error("cbor: nesting too deep (or a cycle)", 0) end
        local mt = getmetatable(v)
        if mt == array_mt or (mt ~= object_mt and is_sequence(v)) then
            local n = #v
            buf[#buf + 1] = head(4, n)
            for i = 1, n do encode_value(v[i], buf, depth + 1) end
        else
            local n = 0
            for _ in pairs(v) do n = n + 1 end
            buf[#buf + 1] = head(5, n)
            for k, item in pairs(v) do
                encode_value(k, buf, depth + 1)
                encode_value(item, buf, depth + 1)
            end
        end
    else
        error("cbor: cannot encode a " .. kind, 0)
    end
end

--- Encode `value` as CBOR bytes; returns the string, or nil, err.
--- @return string|nil, string|nil
function _M.encode(value)
    local buf = {}
    local ok, err = pcall(encode_value, value, buf, 0)
    if not ok then return nil, err end
    return concat(buf)
end

---------------------------------------------------------------------------
-- Decoding
---------------------------------------------------------------------------

local decode_value
local BREAK = {}

local function need(s, pos, n)
    if pos + n - 1 > #s then error("cbor: truncated input", 0) end
end

local tointeger = math.tointeger -- nil on LuaJIT

local function uint(s, pos, n)
    need(s, pos, n)
    if n == 8 then -- in floats (no wrap-around on Lua 5.4); only 53 bits are exact
        local v = 0.0
        for i = pos, pos + 7 do v = v * 256 + byte(s, i) end
        if v > 9007199254740992 then error("cbor: integer beyond 2^53", 0) end
        return tointeger and tointeger(v) or v
    end
    local v = 0
    for i = pos, pos + n - 1 do v = v * 256 + byte(s, i) end
    return v
end

-- The argument of the head at pos (info: the low 5 bits): value, next pos; nil
-- for indefinite length.
local function argument(s, pos, info)
    if info < 24 then return info, pos end
    if info == 24 then return uint(s, pos, 1), pos + 1 end
    if info == 25 then return uint(s, pos, 2), pos + 2 end
    if info == 26 then return uint(s, pos, 4), pos + 4 end
    if info == 27 then return uint(s, pos, 8), pos + 8 end
    if info == 31 then return nil, pos end
    error("cbor: reserved additional information " .. info, 0)
end

decode_value = function(s, pos, depth)
    if depth > MAX_DEPTH then error("cbor: nesting too deep", 0) end
    need(s, pos, 1)
    local b = byte(s, pos)
    local major, info = floor(b / 32), b % 32
    pos = pos + 1
    if major == 7 then
        if info == 20 then return false, pos end
        if info == 21 then return true, pos end
        if info == 22 or info == 23 then return null, pos end
        if info == 25 then return half(uint(s, pos, 2)), pos + 2 end
        if info == 26 then need(s, pos, 4) return unpack_float(s, pos), pos + 4 end
        if info == 27 then need(s, pos, 8) return unpack_double(s, pos), pos + 8 end
        if info == 31 then return BREAK, pos end
        if info < 24 then return info, pos end -- unassigned simple values: their number
        if info == 24 then return uint(s, pos, 1), pos + 1 end
        error("cbor: reserved simple value", 0)
    end
    local n
    n, pos = argument(s, pos, info)
    if major == 0 then
        if n == nil then error("cbor: indefinite integer", 0) end
        return n, pos
    elseif major == 1 then
        if n == nil then error("cbor: indefinite integer", 0) end
        return -1 - n, pos
    elseif major == 2 or major == 3 then
        if n then
            need(s, pos, n)
            return sub(s, pos, pos + n - 1), pos + n
        end
        local parts = {}
        while true do
            local chunk
            chunk, pos = decode_value(s, pos, depth + 1)
            if chunk == BREAK then return concat(parts), pos end
            if type(chunk) ~= "string" then error("cbor: bad string chunk", 0) end
            parts[#parts + 1] = chunk
        end
    elseif major == 4 then
        local t = setmetatable({}, array_mt)
        local v
        if n then
            if n > #s - pos + 1 then error("cbor: truncated input", 0) end
            for i = 1, n do
                v, pos = decode_value(s, pos, depth + 1)
                if v == BREAK then error("cbor: unexpected break", 0) end
                t[i] = v
            end
            return t, pos
        end
        local i = 0
        while true do
            v, pos = decode_value(s, pos, depth + 1)
            if v == BREAK then return t, pos end
            i = i + 1
            t[i] = v
        end
    elseif major == 5 then
        local t = setmetatable({}, object_mt)
        local k, v
        local i = 0
        while n == nil or i < n do
            k, pos = decode_value(s, pos, depth + 1)
            if k == BREAK then
                if n == nil then return t, pos end
                error("cbor: unexpected break", 0)
            end
            v, pos = decode_value(s, pos, depth + 1)
            if v == BREAK or k == null then error("cbor: bad map entry", 0) end
            t[k] = v
            i = i + 1
        end
        return t, pos
    else -- 6: a tag; its content is the value
        if n == nil then error("cbor: indefinite tag", 0) end
        return decode_value(s, pos, depth + 1)
    end
end

--- Decode one CBOR item filling all of `data`; returns the value, or nil, err.
--- @return any, string|nil
function _M.decode(data)
    if type(data) ~= "string" then return nil, "cbor: a string expected" end
    local ok, value, pos = pcall(decode_value, data, 1, 0)
    if not ok then return nil, value end
    if value == BREAK then return nil, "cbor: unexpected break" end
    if pos <= #data then return nil, "cbor: trailing bytes at " .. pos end
    return value
end

return _M
