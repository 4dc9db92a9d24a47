-- JSON codec for eightys apps. Pure Lua; runs unchanged on LuaJIT 2.1 and
-- Lua 5.4.
--
-- Decoded arrays and objects carry `array_mt` / `object_mt`, and JSON null
-- decodes to the `null` sentinel, so decode -> encode keeps `[]`, `{}`, null
-- elements and null members intact.

local type = type
local pairs = pairs
local next = next
local tostring = tostring
local tonumber = tonumber
local rawequal = rawequal
local getmetatable = getmetatable
local setmetatable = setmetatable
local pcall = pcall
local require = require
local error = error
local str_byte = string.byte
local str_char = string.char
local str_find = string.find
local str_format = string.format
local str_gsub = string.gsub
local str_match = string.match
local str_sub = string.sub
local tbl_concat = table.concat
local math_floor = math.floor
local math_huge = math.huge
local math_type = math.type -- nil on LuaJIT
local loadstring = loadstring -- LuaJIT only

-- LuaJIT only: 64-bit integers beyond 2^53 are represented as FFI cdata.
local ffi
do
    local ok, mod = pcall(require, "ffi")
    if ok then
        ffi = mod
    end
end
local int64_t = ffi and ffi.typeof("int64_t")
local uint64_t = ffi and ffi.typeof("uint64_t")

local MAX_DEPTH = 1000
local MAX_SAFE_INT = 2 ^ 53

local _M = {
    _VERSION = "1.0",
}

_M.null = setmetatable({}, {
    __tostring = function() return "null" end,
    __newindex = function() error("json.null is read-only", 2) end,
    __metatable = false,
})
local null = _M.null

local array_mt = {}
local object_mt = {}
_M.array_mt = array_mt
_M.object_mt = object_mt


---Mark a table as a JSON array (a new empty one when `t` is nil). Marked
---arrays are written as elements 1..#t (nil elements as null), even when
---empty.
---@param t table|nil
---@return table
function _M.array(t)
    if t == nil then
        return setmetatable({}, array_mt)
    end
    if type(t) ~= "table" then
        error("json.array: table expected, got " .. type(t), 2)
    end
    return setmetatable(t, array_mt)
end


---Mark a table as a JSON object (a new empty one when `t` is nil).
---@param t table|nil
---@return table
function _M.object(t)
    if t == nil then
        return setmetatable({}, object_mt)
    end
    if type(t) ~= "table" then
        error("json.object: table expected, got " .. type(t), 2)
    end
    return setmetatable(t, object_mt)
end


-- Encoding ------------------------------------------------------------------

local escapes = {
    ['"'] = '\\"',
    ["\\"] = "\\\\",
    ["\b"] = "\\b",
    ["\f"] = "\\f",
    ["\n"] = "\\n",
    ["\r"] = "\\r",
    ["\t"] = "\\t",
    -- U+2028/U+2029 are valid in JSON but end a line in JavaScript, so they
    -- would break JSON embedded in a <script> element.
    ["\226\128\168"] = "\\u2028",
    ["\226\128\169"] = "\\u2029",
}
for b = 0, 31 do
    local c = str_char(b)
    if not escapes[c] then
        escapes[c] = str_format("\\u%04x", b)
    end
end

local function encode_string(s)
    -- Most strings need no escaping; \226 is the lead byte of U+2028/9.
    if not str_find(s, '[%z\1-\31"\\\226]') then
        return '"' .. s .. '"'
    end
    s = str_gsub(s, '[%z\1-\31"\\]', escapes)
    if str_find(s, "\226\128[\168\169]") then
        s = str_gsub(s, "\226\128[\168\169]", escapes)
    end
    return '"' .. s .. '"'
end

-- Doubles: integral values in the exact range print as plain digits; others
-- get the shortest of %.14g / %.17g that reads back as the same double.
local function encode_float(v)
    if v ~= v or v == math_huge or v == -math_huge then
        return nil, "json: cannot encode " .. tostring(v)
    end
    if v == math_floor(v) and v >= -MAX_SAFE_INT and v <= MAX_SAFE_INT then
        return str_format("%.0f", v)
    end
    local s = str_format("%.14g", v)
    if tonumber(s) ~= v then
        s = str_format("%.17g", v)
    end
    return s
end

local encode_number = encode_float
if math_type then
    encode_number = function(v)
        if math_type(v) == "integer" then
            return str_format("%d", v)
        end
        return encode_float(v)
    end
end

local function encode_cdata(v)
    if int64_t and (ffi.istype(int64_t, v) or ffi.istype(uint64_t, v)) then
        -- tostring() gives e.g. "-5LL" / "7ULL"; keep the digits only.
        return str_match(tostring(v), "^-?%d+")
    end
    return nil, "json: cannot encode cdata"
end

-- An unmarked table is an array when its keys are exactly 1..n.
local function is_sequence(t)
    local n, max = 0, 0
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k ~= math_floor(k) then
            return false
        end
        n = n + 1
        if k > max then
            max = k
        end
    end
    -- n distinct positive integers whose maximum is n are exactly 1..n.
    return n > 0 and max == n
end

local encode_value

-- Appends the encoding of `v` to buf[n+1..]; returns the new n, or nil, err.
local function encode_table(t, buf, n, seen, depth)
    if seen[t] then
        return nil, "json: cycle"
    end
    if depth >= MAX_DEPTH then
        return nil, "json: nesting too deep"
    end
    seen[t] = true
    depth = depth + 1

    local mt = getmetatable(t)
    local err
    if mt == array_mt or (mt ~= object_mt and is_sequence(t)) then
        n = n + 1
        buf[n] = "["
        for i = 1, #t do
            if i > 1 then
                n = n + 1
                buf[n] = ","
            end
            n, err = encode_value(t[i], buf, n, seen, depth)
            if not n then
                return nil, err
            end
        end
        n = n + 1
        buf[n] = "]"
    elseif next(t) == nil then
        n = n + 1
        buf[n] = "{}"
    else
        local sep = "{"
        for k, v in pairs(t) do
            local kt = type(k)
            local key
            if kt == "string" then
                key = k
            elseif kt == "number" then
                key, err = encode_number(k)
                if not key then
                    return nil, err
                end
            else
                return nil, "json: cannot encode object key of type " .. kt
            end
            n = n + 1
            buf[n] = sep
            n = n + 1
            buf[n] = encode_string(key)
            n = n + 1
            buf[n] = ":"
            n, err = encode_value(v, buf, n, seen, depth)
            if not n then
                return nil, err
            end
            sep = ","
        end
        n = n + 1
        buf[n] = "}"
    end

    seen[t] = nil -- shared (non-cyclic) subtables are fine
    return n
end

encode_value = function(v, buf, n, seen, depth)
    local vt = type(v)
    local s, err
    if vt == "string" then
        s = encode_string(v)
    elseif vt == "number" then
        s, err = encode_number(v)
    elseif vt == "boolean" then
        s = v and "true" or "false"
    elseif v == nil or rawequal(v, null) then
        s = "null"
    elseif vt == "table" then
        return encode_table(v, buf, n, seen, depth)
    elseif vt == "cdata" then
        s, err = encode_cdata(v)
    else
        err = "json: cannot encode " .. vt
    end
    if not s then
        return nil, err
    end
    n = n + 1
    buf[n] = s
    return n
end


---Encode a Lua value as JSON text.
---@param value any
---@return string|nil json
---@return string|nil err
function _M.encode(value)
    if type(value) == "string" then
        return encode_string(value)
    end
    local buf = {}
    local n, err = encode_value(value, buf, 0, {}, 0)
    if not n then
        return nil, err
    end
    return tbl_concat(buf, "", 1, n)
end


-- Decoding ------------------------------------------------------------------

local unescapes = {
    [34] = '"',  -- "
    [92] = "\\", -- \
    [47] = "/",  -- /
    [98] = "\b", -- b
    [102] = "\f", -- f
    [110] = "\n", -- n
    [114] = "\r", -- r
    [116] = "\t", -- t
}

local function unexpected(s, pos)
    local c = str_byte(s, pos)
    if not c then
        return str_format("json: unexpected end of input at position %d", pos)
    end
    if c < 32 or c > 126 then
        return str_format("json: unexpected byte 0x%02X at position %d", c, pos)
    end
    return str_format("json: unexpected character '%s' at position %d",
                      str_char(c), pos)
end

local function skip_ws(s, pos)
    local c = str_byte(s, pos)
    if c == 32 or c == 10 or c == 13 or c == 9 then
        local _, e = str_find(s, "^[ \n\r\t]+", pos)
        return e + 1
    end
    return pos
end

local function utf8_char(cp)
    if cp < 0x80 then
        return str_char(cp)
    elseif cp < 0x800 then
        return str_char(0xC0 + math_floor(cp / 0x40), 0x80 + cp % 0x40)
    elseif cp < 0x10000 then
        return str_char(0xE0 + math_floor(cp / 0x1000),
                        0x80 + math_floor(cp / 0x40) % 0x40,
                        0x80 + cp % 0x40)
    end
    return str_char(0xF0 + math_floor(cp / 0x40000),
                    0x80 + math_floor(cp / 0x1000) % 0x40,
                    0x80 + math_floor(cp / 0x40) % 0x40,
                    0x80 + cp % 0x40)
end

-- `pos` is at the opening quote. Returns the string and the position after
-- the closing quote, or nil, err.
local function parse_string(s, pos)
    local start = pos + 1
    local i = str_find(s, '[%z\1-\31"\\]', start)
    if i and str_byte(s, i) == 34 then -- fast path: no escapes
        return str_sub(s, start, i - 1), i + 1
    end

    local buf, n = {}, 0
    while true do
        if not i then
            return nil, str_format("json: unterminated string at position %d",
                                   pos)
        end
        local c = str_byte(s, i)
        if c == 34 then
            n = n + 1
            buf[n] = str_sub(s, start, i - 1)
            return tbl_concat(buf, "", 1, n), i + 1
        elseif c ~= 92 then
            return nil, str_format(
                "json: control character in string at position %d", i)
        end

        if i > start then
            n = n + 1
            buf[n] = str_sub(s, start, i - 1)
        end
        local e = str_byte(s, i + 1)
        if e == 117 then -- \uXXXX
            local hex = str_match(s, "^%x%x%x%x", i + 2)
            if not hex then
                return nil, str_format(
                    "json: invalid unicode escape at position %d", i)
            end
            local cp = tonumber(hex, 16)
            start = i + 6
            if cp >= 0xD800 and cp <= 0xDFFF then
                local lo = cp <= 0xDBFF
                           and str_match(s, "^\\u([dD][c-fC-F]%x%x)", start)
                if lo then
                    cp = 0x10000 + (cp - 0xD800) * 0x400
                         + (tonumber(lo, 16) - 0xDC00)
                    start = start + 6
                else
                    cp = 0xFFFD -- lone surrogate
                end
            end
            n = n + 1
            buf[n] = utf8_char(cp)
        else
            local r = unescapes[e]
            if not r then
                if not e then
                    return nil, str_format(
                        "json: unterminated string at position %d", pos)
                end
                return nil, str_format(
                    "json: invalid escape at position %d", i)
            end
            n = n + 1
            buf[n] = r
            start = i + 2
        end
        i = str_find(s, '[%z\1-\31"\\]', start)
    end
end

local function le_digits(a, b)
    local na, nb = #a, #b
    return na < nb or (na == nb and a <= b)
end

-- LuaJIT: integer literals beyond 2^53 that fit 64 bits become exact
-- int64/uint64 cdata instead of being rounded to the nearest double.
local function big_integer(str, digits, neg)
    local d = tonumber(str)
    if -MAX_SAFE_INT < d and d < MAX_SAFE_INT or digits == "9007199254740992"
    then
        return d
    end
    if neg then
        if le_digits(digits, "9223372036854775808") then
            return loadstring("return " .. str .. "LL")()
        end
    elseif le_digits(digits, "9223372036854775807") then
        return loadstring("return " .. str .. "LL")()
    elseif le_digits(digits, "18446744073709551615") then
        return loadstring("return " .. str .. "ULL")()
    end
    return d
end

local function parse_number(s, pos)
    local int_start = str_byte(s, pos) == 45 and pos + 1 or pos -- skip -
    local _, e = str_find(s, "^%d+", int_start)
    if not e then
        return nil, unexpected(s, int_start)
    end
    if e > int_start and str_byte(s, int_start) == 48 then
        return nil, str_format("json: leading zero at position %d", int_start)
    end

    local is_int = true
    local c = str_byte(s, e + 1)
    if c == 46 then -- .
        local _, fe = str_find(s, "^%d+", e + 2)
        if not fe then
            return nil, unexpected(s, e + 2)
        end
        e, is_int = fe, false
        c = str_byte(s, e + 1)
    end
    if c == 101 or c == 69 then -- e E
        local _, xe = str_find(s, "^[-+]?%d+", e + 2)
        if not xe then
            local p = e + 2
            local sign = str_byte(s, p)
            if sign == 43 or sign == 45 then
                p = p + 1
            end
            return nil, unexpected(s, p)
        end
        e, is_int = xe, false
    end

    local str = str_sub(s, pos, e)
    -- Lua 5.4's tonumber already yields an integer when the literal fits in
    -- int64, and a float otherwise. On LuaJIT (the only runtime with
    -- int64_t) doubles are exact for anything up to 15 digits.
    if is_int and int64_t and e - int_start >= 15 then
        return big_integer(str, str_sub(s, int_start, e), int_start > pos),
               e + 1
    end
    return tonumber(str), e + 1
end

local parse_value

local function parse_array(s, pos, depth)
    local arr = setmetatable({}, array_mt)
    pos = skip_ws(s, pos + 1)
    if str_byte(s, pos) == 93 then -- ]
        return arr, pos + 1
    end
    local n = 0
    while true do
        local v
        v, pos = parse_value(s, pos, depth)
        if v == nil then
            return nil, pos
        end
        n = n + 1
        arr[n] = v
        pos = skip_ws(s, pos)
        local c = str_byte(s, pos)
        if c == 93 then
            return arr, pos + 1
        elseif c ~= 44 then -- ,
            return nil, unexpected(s, pos)
        end
        pos = pos + 1
    end
end

local function parse_object(s, pos, depth)
    local obj = setmetatable({}, object_mt)
    pos = skip_ws(s, pos + 1)
    if str_byte(s, pos) == 125 then -- }
        return obj, pos + 1
    end
    while true do
        if str_byte(s, pos) ~= 34 then
            return nil, unexpected(s, pos)
        end
        local k, v
        k, pos = parse_string(s, pos)
        if not k then
            return nil, pos
        end
        pos = skip_ws(s, pos)
        if str_byte(s, pos) ~= 58 then -- :
            return nil, unexpected(s, pos)
        end
        v, pos = parse_value(s, pos + 1, depth)
        if v == nil then
            return nil, pos
        end
        obj[k] = v
        pos = skip_ws(s, pos)
        local c = str_byte(s, pos)
        if c == 125 then
            return obj, pos + 1
        elseif c ~= 44 then
            return nil, unexpected(s, pos)
        end
        pos = skip_ws(s, pos + 1)
    end
end

local literals = {
    [116] = { "true", true },   -- t
    [102] = { "false", false }, -- f
    [110] = { "null", null },   -- n
}

-- Returns the value and the position after it, or nil, err.
parse_value = function(s, pos, depth)
    pos = skip_ws(s, pos)
    local c = str_byte(s, pos)
    if c == 34 then
        return parse_string(s, pos)
    elseif c == 123 or c == 91 then -- { [
        if depth >= MAX_DEPTH then
            return nil, "json: nesting too deep"
        end
        if c == 123 then
            return parse_object(s, pos, depth + 1)
        end
        return parse_array(s, pos, depth + 1)
    elseif c == 45 or (c and c >= 48 and c <= 57) then -- - 0-9
        return parse_number(s, pos)
    end
    local lit = literals[c]
    if lit then
        local word = lit[1]
        local len = #word
        if str_sub(s, pos, pos + len - 1) == word then
            return lit[2], pos + len
        end
        for i = 1, len do
            if str_byte(s, pos + i - 1) ~= str_byte(word, i) then
                return nil, unexpected(s, pos + i - 1)
            end
        end
    end
    return nil, unexpected(s, pos)
end


---Decode JSON text. `null` becomes `json.null`; arrays and objects get
---`json.array_mt` / `json.object_mt`.
---@param text string
---@return any value
---@return string|nil err names the byte position (1-based) of the problem
function _M.decode(text)
    if type(text) ~= "string" then
        error("json.decode: string expected, got " .. type(text), 2)
    end
    local v, pos = parse_value(text, 1, 0)
    if v == nil then
        return nil, pos
    end
    pos = skip_ws(text, pos)
    if pos <= #text then
        return nil, unexpected(text, pos)
    end
    return v
end


return _M
