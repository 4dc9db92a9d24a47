-- Request headers as http.dispatch builds them from the "name\0value\0..." block
-- Python hands over, including the cache of blocks seen more than once.

local http = require("eightys.http")
local parse = http.parse_headers

local T = {}

local function block(...)
    return table.concat({ ... }, "\0")
end

function T.names_are_lower_cased_and_repeated_fields_joined(t)
    local raw = block("Host", "a", "X-Tag", "1", "x-tag", "2", "Empty", "")
    t.eq(parse(raw), { host = "a", ["x-tag"] = "1, 2", empty = "" })
    t.eq(parse(""), {})
end

function T.a_block_seen_again_gives_equal_but_separate_tables(t)
    local raw = block("Host", "cache.example", "Accept", "*/*", "Cookie", "a=1")
    local first, second, third = parse(raw), parse(raw), parse(raw)
    t.eq(first, { host = "cache.example", accept = "*/*", cookie = "a=1" })
    t.eq(second, first)
    t.eq(third, first)
    t.ok(first ~= second and second ~= third, "each request gets its own table")
    second.host = "changed by a handler"
    second.extra = "added"
    t.eq(parse(raw), first, "a handler's changes do not reach later requests")
end

function T.a_block_seen_often_is_built_by_its_constructor(t)
    -- after 16 copies a kept block gets a generated table constructor (LuaJIT compiles
    -- it into the request path): the same tables, whatever the names and values hold
    local raw = block("Host", "h", "X-Quote", [["q" \ ']], "X-Close", "]] end) os.exit(1) --[[",
                      "X-Newline", "a\nb", "x-\"odd\"", "v")
    local expected = { host = "h", ["x-quote"] = [["q" \ ']], ["x-close"] = "]] end) os.exit(1) --[[",
                       ["x-newline"] = "a\nb", ['x-"odd"'] = "v" }
    local previous
    for i = 1, 40 do
        local got = parse(raw)
        t.eq(got, expected, "request " .. i)
        t.ok(got ~= previous, "a table of its own")
        got.host = "changed"
        previous = got
    end
    -- more fields than a constructor takes (upvalues): copied, still right
    local many, want = {}, {}
    for i = 1, 60 do
        many[#many + 1] = "X-F" .. i
        many[#many + 1] = tostring(i)
        want["x-f" .. i] = tostring(i)
    end
    local big = table.concat(many, "\0")
    for _ = 1, 40 do t.eq(parse(big), want) end
end

function T.the_cache_stays_bounded_under_ever_new_blocks(t)
    for i = 1, 3000 do
        local raw = block("Host", "h", "X-Request-Id", tostring(i))
        parse(raw)
        parse(raw) -- seen twice: kept parsed
    end
    local parsed, seen = http.header_cache_sizes()
    t.ok(parsed <= 256 and seen <= 256, "parsed " .. parsed .. ", seen " .. seen)
end

function T.long_blocks_are_not_kept(t)
    local raw = block("Host", "h", "Cookie", string.rep("c", 5000))
    local before = http.header_cache_sizes()
    parse(raw); parse(raw); parse(raw)
    t.eq((http.header_cache_sizes()), before)
    t.eq(#parse(raw).cookie, 5000)
end

return T
