-- MessagePack (https://msgpack.org) for eightys apps, in pure Lua (LuaJIT 2.1 and
-- Lua 5.4), with the same value model as the JSON codec: arrays and maps decode
-- marked with codec.array / codec.object, nil decodes to codec.null, and an
-- unmarked table is an array when its keys are exactly 1..n.
--
--   local msgpack = require("eightys.msgpack")
--   local bytes = msgpack.encode({ 1, "two", { three = 3 } })
--   local value, err = msgpack.decode(bytes)
--
-- A Lua string is written as str when it is valid UTF-8 and as bin otherwise;
-- both decode to Lua strings. Integers up to 2^53 are exact.

local type = type
local pairs = pairs
local error = error
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
local tostring = tostring

local json = require("json")
local valid_utf8 = require("eightys.utf8").valid
local null = json.null
local array_mt = json.array_mt
local object_mt = json.object_mt

local _M = {}

local MAX_DEPTH = 1000

-- Doubles: string.pack on Lua 5.4, the FFI on LuaJIT.
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

local function be(n, width) -- big-endian bytes of non-negative integer n
    local out = {}
    for i = width, 1, -1 do
        out[i] = n % 256
        n = floor(n / 256)
    end
    return char(unpack(out, 1, width))
end

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

local function encode_integer(v, buf)
    if v >= 0 then
        if v < 128 then buf[#buf + 1] = char(v)
        elseif v < 256 then buf[#buf + 1] = "\204" .. char(v)
        elseif v < 65536 then buf[#buf + 1] = "\205" .. be(v, 2)
        elseif v < 4294967296 then buf[#buf + 1] = "\206" .. be(v, 4)
        else buf[#buf + 1] = "\207" .. be(v, 8) end
    else
        if v >= -32 then buf[#buf + 1] = char(256 + v)
        elseif v >= -128 then buf[#buf + 1] = "\208" .. char(256 + v)
        elseif v >= -32768 then buf[#buf + 1] = "\209" .. be(65536 + v, 2)
        elseif v >= -2147483648 then buf[#buf + 1] = "\210" .. be(4294967296 + v, 4)
        else
            -- two's complement of a negative integer beyond 32 bits, in 2 halves
            local hi = floor(v / 4294967296)
            local lo = v - hi * 4294967296
            buf[#buf + 1] = "\211" .. be(hi + 4294967296, 4) .. be(lo, 4)
        end
    end
end

local function encode_table(t, buf, depth)
    if depth > MAX_DEPTH then error("msgpack: nesting too deep (or a cycle)", 0) end
    local mt = getmetatable(t)
    if mt == array_mt or (mt ~= object_mt and is_sequence(t)) then
        local n = #t
        if n < 16 then buf[#buf + 1] = char(0x90 + n)
        elseif n < 65536 then buf[#buf + 1] = "\220" .. be(n, 2)
        else buf[#buf + 1] = "\221" .. be(n, 4) end
        for i = 1, n do encode_value(t[i], buf, depth + 1) end
        return
    end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    if n < 16 then buf[#buf + 1] = char(0x80 + n)
    elseif n < 65536 then buf[#buf + 1] = "\222" .. be(n, 2)
    else buf[#buf + 1] = "\223" .. be(n, 4) end
    for k, v in pairs(t) do
        encode_value(k, buf, depth + 1)
        encode_value(v, buf, depth + 1)
    end
end

encode_value = function(v, buf, depth)
    local kind = type(v)
    if kind == "string" then
        local n = #v
        if not valid_utf8(v) then -- bytes: bin 8/16/32
            if n < 256 then buf[#buf + 1] = "\196" .. char(n)
            elseif n < 65536 then buf[#buf + 1] = "\197" .. be(n, 2)
            else buf[#buf + 1] = "\198" .. be(n, 4) end
        elseif n < 32 then buf[#buf + 1] = char(0xa0 + n)
        elseif n < 256 then buf[#buf + 1] = "\217" .. char(n)
        elseif n < 65536 then buf[#buf + 1] = "\218" .. be(n, 2)
        else buf[#buf + 1] = "\219" .. be(n, 4) end
        buf[#buf + 1] = v
    elseif kind == "number" then
        if v == floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
            encode_integer(v, buf)
        elseif v ~= v or v == huge or v == -huge then
            error("msgpack: cannot encode " .. tostring(v), 0)
        else
            buf[#buf + 1] = "\203" .. pack_double(v)
        end
    elseif kind == "boolean" then
        buf[#buf + 1] = v and "\195" or "\194"
    elseif v == null or v == nil then
        buf[#buf + 1] = "\192"
    elseif kind == "table" then
        encode_table(v, buf, depth)
    else
        error("msgpack: cannot encode a " .. kind, 0)
    end
end

--- Encode `value` as MessagePack bytes; returns the string, or nil, err.
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

local function need(s, pos, n)
    if pos + n - 1 > #s then error("msgpack: truncated input", 0) end
end

local tointeger = math.tointeger -- nil on LuaJIT

local function uint(s, pos, n)
    need(s, pos, n)
    if n == 8 then -- in floats (no wrap-around on Lua 5.4); only 53 bits are exact
        local v = 0.0
        for i = pos, pos + 7 do v = v * 256 + byte(s, i) end
        if v > 9007199254740992 then error("msgpack: integer beyond 2^53", 0) end
        return tointeger and tointeger(v) or v
    end
    local v = 0
    for i = pos, pos + n - 1 do v = v * 256 + byte(s, i) end
    return v
end

local function int(s, pos, n)
    local v = uint(s, pos, n)
    local limit = 2 ^ (8 * n - 1)
    if v >= limit then v = v - 2 * limit end
    return v
end

local function str(s, pos, n)
    need(s, pos, n)
    return sub(s, pos, pos + n - 1), pos + n
end

local function arr(s, pos, n, depth)
    local t = setmetatable({}, array_mt)
    local v
    for i = 1, n do
        v, pos = decode_value(s, pos, depth)
        t[i] = v
    end
    return t, pos
end

local function map(s, pos, n, depth)
    local t = setmetatable({}, object_mt)
    local k, v
    for _ = 1, n do
        k, pos = decode_value(s, pos, depth)
        v, pos = decode_value(s, pos, depth)
        if k == null then error("msgpack: nil map key", 0) end
        t[k] = v
    end
    return t, pos
end

decode_value = function(s, pos, depth)
    if depth > MAX_DEPTH then error("msgpack: nesting too deep", 0) end
    need(s, pos, 1)
    local b = byte(s, pos)
    pos = pos + 1
    if b < 0x80 then return b, pos end
    if b >= 0xe0 then return b - 256, pos end
    if b < 0x90 then return map(s, pos, b - 0x80, depth + 1) end
    if b < 0xa0 then return arr(s, pos, b - 0x90, depth + 1) end
    if b < 0xc0 then return str(s, pos, b - 0xa0) end
    if b == 0xc0 then return null, pos end
    if b == 0xc2 then return false, pos end
    if b == 0xc3 then return true, pos end
    if b == 0xc4 or b == 0xd9 then return str(s, pos + 1, uint(s, pos, 1)) end
    if b == 0xc5 or b == 0xda then return str(s, pos + 2, uint(s, pos, 2)) end
    if b == 0xc6 or b == 0xdb then return str(s, pos + 4, uint(s, pos, 4)) end
    if b == 0xca then need(s, pos, 4) return unpack_float(s, pos), pos + 4 end
    if b == 0xcb then need(s, pos, 8) return unpack_double(s, pos), pos + 8 end
    if b == 0xcc then return uint(s, pos, 1), pos + 1 end
    if b == 0xcd then return uint(s, pos, 2), pos + 2 end
    if b == 0xce then return uint(s, pos, 4), pos + 4 end
    if b == 0xcf then return uint(s, pos, 8), pos + 8 end
    if b == 0xd0 then return int(s, pos, 1), pos + 1 end
    if b == 0xd1 then return int(s, pos, 2), pos + 2 end
    if b == 0xd2 then return int(s, pos, 4), pos + 4 end
    if b == 0xd3 then
        local hi = int(s, pos, 4)
        if hi < -2097152 or hi >= 2097152 then error("msgpack: integer beyond 2^53", 0) end
        return hi * 4294967296 + uint(s, pos + 4, 4), pos + 8
    end
    if b == 0xdc then return arr(s, pos + 2, uint(s, pos, 2), depth + 1) end
    if b == 0xdd then return arr(s, pos + 4, uint(s, pos, 4), depth + 1) end
    if b == 0xde then return map(s, pos + 2, uint(s, pos, 2), depth + 1) end
    if b == 0xdf then return map(s, pos + 4, uint(s, pos, 4), depth + 1) end
    error(("msgpack: unsupported type byte 0x%02x at %d"):format(b, pos - 1), 0)
end

--- Decode one MessagePack value filling all of `data`; returns the value, or nil, err.
--- @return any, string|nil
function _M.decode(data)
    if type(data) ~= "string" then return nil, "msgpack: a string expected" end
    local ok, value, pos = pcall(decode_value, data, 1, 0)
    if not ok then return nil, value end
    if pos <= #data then return nil, "msgpack: trailing bytes at " .. pos end
    return value
end

return _M
