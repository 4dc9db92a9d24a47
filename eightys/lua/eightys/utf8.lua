-- UTF-8 validation for the binary codecs (eightys.cbor, eightys.msgpack), which
-- write a Lua string as text when it is valid UTF-8 and as bytes otherwise.

local byte = string.byte
local find = string.find

local _M = {}

--- Whether s is valid UTF-8 (strict: no overlongs, surrogates or > U+10FFFF).
--- @param s string
--- @return boolean
function _M.valid(s)
    if not find(s, "[\128-\255]") then return true end
    local i, n = 1, #s
    while i <= n do
        local c = byte(s, i)
        if c < 0x80 then
            i = i + 1
        else
            local len, min
            if c >= 0xc2 and c <= 0xdf then len, min = 2, 0x80
            elseif c >= 0xe0 and c <= 0xef then len, min = 3, 0x800
            elseif c >= 0xf0 and c <= 0xf4 then len, min = 4, 0x10000
            else return false end
            if i + len - 1 > n then return false end
            local cp = c % (2 ^ (7 - len))
            for j = i + 1, i + len - 1 do
                local cc = byte(s, j)
                if cc < 0x80 or cc > 0xbf then return false end
                cp = cp * 64 + cc % 64
            end
            if cp < min or cp > 0x10ffff or (cp >= 0xd800 and cp <= 0xdfff) then return false end
            i = i + len
        end
    end
    return true
end

return _M
