-- orm: Java JPA-like repositories over the MySQL client (eightys/lua/mysql.lua).
--
--     local orm = require("orm")          -- also the global `orm`, and require("aio.lib.orm")
--     local posts = orm:create(SQL, {
--         source = "posts",
--         entity = {
--             id      = { field = "id",         type = orm.t.int },
--             author  = { field = "author",     type = orm.t.varchar(64) },
--             text    = { field = "text",       type = orm.t.text },
--             created = { field = "created_at", type = orm.t.datetime },
--         },
--         index = "id",                        -- or {"a", "b"}; default "id" if there is one
--         findById = true,                     -- repo.all:byId(id), repo.one:byId(id), ...
--         findBy = true,                       -- repo.all:by() (every row)
--         findByAuthorAndText = true,          -- WHERE `author` = ? AND `text` = ?
--         findRecent = "ORDER BY id DESC",     -- suffix: SELECT * FROM `posts` ORDER BY id DESC
--     })
--     local rows = aio:await(posts.all:byAuthor("ann", { orderBy = "created DESC", limit = 10 }))
--
-- Follows 80s (aio/lib/orm.lua) with its bugs fixed:
--   * every value reaches the server as a `?` parameter of sql:exec_args/select_args,
--     never formatted into the SQL; table and column names come only from the
--     definition, are checked against ^[%a_][%w_]*$ at create time and backquoted;
--   * orderBy/limit/offset are validated (entity fields only, non-negative integers)
--     instead of being pasted into the query: a bad one resolves `nil, err`;
--   * types validate what they write (an int field given "abc" is `nil, err`, a
--     varchar(n) value longer than n characters is refused, not truncated);
--   * the definition is checked as a whole when the repository is created: an unknown
--     field in a finder name, a missing type, a bad identifier raise error() there;
--   * `findByIpAndPort` works as the 80s README says (80s only understood `findByIpPort`);
--   * repo:save(obj) exists, and repo:delete(obj) deletes by the index.
--
-- Methods (each returns an aio promise; call them with `:`):
--   repo.all:byX(args..., opts?)   array of entities
--   repo.one:byX(args..., opts?)   entity or nil (LIMIT 1)
--   repo.count:byX(args..., opts?) integer
--   repo.delete:byX(args..., opts?) / repo.deleteAll:byX  exec result; deleteOne: LIMIT 1
--   repo:insert(obj, ...)  repo:replace(obj, ...)  repo:update(obj, changes?)
--   repo:save(obj)  repo:delete(obj)  repo:to_entity(row)
-- A finder takes exactly as many arguments as it has fields (or `?` placeholders,
-- for an SQL string finder), then optionally opts = {orderBy = "field [ASC|DESC]"
-- or a list of them (or "a, b DESC"), limit = n, offset = n}. orderBy names entity
-- keys, not columns. `one` and `deleteOne` take no limit; deletes take no offset;
-- count ignores orderBy and counts what `all` would return under limit/offset.
-- Finder definitions: `findByAuthorAndText = true` -> method byAuthorAndText,
-- `findBy = true` -> by (every row); a string value is a full query if it starts
-- with SELECT (count wraps it in a subquery, delete needs "SELECT * FROM ..."),
-- else a suffix of SELECT * FROM `source`; it gets opts appended as they are, so
-- do not pass orderBy/limit to one that already has them. Other `findX` keys keep
-- their name (findRecent -> repo.all:findRecent()), as in 80s.
--
-- nil and NULL on writes: insert leaves nil fields out (the column's DEFAULT; NULL
-- if it has none) and writes orm.NULL as NULL; update(obj) writes only the fields set
-- in obj; save(obj) is insert or update. Reads turn NULL into nil. Finder
-- arguments cannot be nil (`col = NULL` matches nothing): write an SQL finder
-- with IS NULL.
--
-- Errors: every generated method returns an aio promise. Runtime failures (a value
-- the type refuses, bad options, the server's error) resolve it with `nil, err`.
-- Programming mistakes (calling with `.` instead of `:`, a wrong number of finder
-- arguments, an unknown field in `changes`, a non-table entity) raise error().
--
-- Types (orm.t), Lua value <-> SQL value. A type never sees nil or NULL (orm.NULL ==
-- mysql.NULL == codec.null): those are SQL NULL (nil on writes as above), and NULL
-- reads back as nil. Values a type refuses are `nil, err`, never sent:
--   int         integers (numbers with an integral value, or strings of decimal digits,
--               which is how LuaJIT receives BIGINTs beyond 2^53; those stay strings)
--   double      finite numbers (or decimal number strings); DECIMAL columns read as numbers
--   text        strings (numbers are written with tostring)
--   varchar(n)  text of at most n characters (UTF-8 code points, as MySQL counts them)
--   bit         Lua boolean <-> BIT(1) / TINYINT(1) (also accepts 0 and 1); alias `boolean`
--   datetime    writes "YYYY-MM-DD HH:MM:SS", "YYYY-MM-DDTHH:MM:SS" (optionally with
--               ".ffffff"), "YYYY-MM-DD", an epoch number (local time, like os.date) or
--               a table with year, month, day[, hour, min, sec, usec] (os.date("*t")).
--               Reads give an os.date-style table {year, month, day, hour, min, sec}
--               (plus usec when the value has non-zero fractional seconds), as 80s
--               does: os.time(value) turns it back into an epoch (on Lua 5.4 it also
--               adds wday/yday/isdst to the table), and it can be written back as is.
--               Local time throughout: DATETIME has no time zone.
-- A custom type is any table with to_sql(v) -> value | nil, err and
-- from_sql(v) -> value | nil, err (neither sees NULL).

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local select = select
local tostring = tostring
local tonumber = tonumber
local error = error
local pcall = pcall
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawequal = rawequal
local floor = math.floor
local huge = math.huge
local math_type = math.type           -- nil on LuaJIT: every number is a double there
local tointeger = math.tointeger
local concat = table.concat
local sort = table.sort
local fmt = string.format
local str_sub = string.sub
local str_upper = string.upper
local str_lower = string.lower
local str_match = string.match
local str_find = string.find
local str_gsub = string.gsub
local str_byte = string.byte
local str_rep = string.rep
local os_date = os.date

local aio = require("aio")

--- SQL NULL: the same sentinel as mysql.NULL and json.null (codec.null).
local NULL = codec and codec.null
    or setmetatable({}, { __tostring = function() return "NULL" end })

--- Marks result arrays so that an empty one JSON-encodes as [] (as mysql's rows do).
local as_array = codec and codec.array or function(t) return t end

local orm = { NULL = NULL }
_G.orm = orm

local IDENT = "^[%a_][%w_]*$"
local INT64_LIMIT = 2 ^ 63
local NO_LIMIT = "18446744073709551615" -- MySQL's own idiom for OFFSET without LIMIT

local function is_null(v)
    return v == nil or rawequal(v, NULL)
end

--- A value for an error message: strings quoted and cut short.
local function show(v)
    if type(v) == "string" then
        if #v > 40 then v = str_sub(v, 1, 40) .. "..." end
        return fmt("%q", v)
    end
    if type(v) == "table" or type(v) == "function" or type(v) == "thread" then
        return "a " .. type(v)
    end
    return tostring(v)
end

--- n as an integer-valued number (an integer on Lua 5.4), or nil if it has no
--- exact integer value in the int64 range.
local function as_integer(n)
    if type(n) ~= "number" then return nil end
    if math_type then
        if math_type(n) == "integer" then return n end
        return tointeger(n)
    end
    if n ~= n or floor(n) ~= n or n < -INT64_LIMIT or n >= INT64_LIMIT then return nil end
    return n
end

--- A string of decimal digits as a number when that is exact, else the string itself
--- (BIGINTs beyond 2^53 on LuaJIT, beyond the int64 range on Lua 5.4).
local function digits_to_integer(s)
    local digits = #s - (str_byte(s, 1) == 45 and 1 or 0)
    if digits <= 15 then return tonumber(s) end
    if math_type then
        local n = tonumber(s)
        if math_type(n) == "integer" and tostring(n) == str_gsub(s, "^(%-?)0+(%d)", "%1%2") then
            return n
        end
    end
    return s
end

local function is_number_string(s)
    return (str_match(s, "^%-?%d+%.?%d*$") or str_match(s, "^%-?%.%d+$")
        or str_match(s, "^%-?%d+%.?%d*[eE][-+]?%d+$") or str_match(s, "^%-?%.%d+[eE][-+]?%d+$")) ~= nil
end

local function is_finite(n)
    return n == n and n ~= huge and n ~= -huge
end

---------------------------------------------------------------------------
-- Types
---------------------------------------------------------------------------

--- @class ormtype
--- @field name string
--- @field to_sql fun(v: any): any, string?    Lua value -> query parameter, or nil, err
--- @field from_sql fun(v: any): any, string?  result value -> Lua value, or nil, err

local function new_type(name, to_sql, from_sql)
    return { name = name, to_sql = to_sql, from_sql = from_sql }
end

local function int_to_sql(v)
    local t = type(v)
    if t == "number" then
        local n = as_integer(v)
        if n ~= nil then return n end
    elseif t == "string" and #v <= 21 and str_match(v, "^%-?%d+$") then
        return digits_to_integer(v)
    elseif t == "cdata" then -- LuaJIT int64_t/uint64_t boxes print as 123LL / 123ULL
        local digits = str_match(tostring(v), "^(%-?%d+)U?LL$")
        if digits then return digits_to_integer(digits) end
    end
    return nil, "expected an integer, got " .. show(v)
end

local function int_from_sql(v)
    local t = type(v)
    if t == "number" then
        local n = as_integer(v)
        if n ~= nil then return n end
        if is_finite(v) then return floor(v) end
    elseif t == "string" then
        if str_match(v, "^%-?%d+$") then return digits_to_integer(v) end
        if is_number_string(v) then return floor(tonumber(v)) end -- a DECIMAL column
    elseif t == "cdata" then
        local digits = str_match(tostring(v), "^(%-?%d+)U?LL$")
        if digits then return digits_to_integer(digits) end
    end
    return nil, "cannot read " .. show(v) .. " as an integer"
end

local function double_to_sql(v)
    local n = v
    if type(v) == "string" and is_number_string(v) then n = tonumber(v) end
    if type(n) == "number" and is_finite(n) then return n end
    return nil, "expected a finite number, got " .. show(v)
end

local function double_from_sql(v)
    if type(v) == "number" then return v end
    if type(v) == "string" and is_number_string(v) then return tonumber(v) end
    return nil, "cannot read " .. show(v) .. " as a number"
end

local function text_to_sql(v)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" and is_finite(v) then return tostring(v) end
    return nil, "expected a string, got " .. show(v)
end

local function text_from_sql(v)
    local t = type(v)
    if t == "string" then return v end
    if t == "number" then return tostring(v) end
    return nil, "cannot read " .. show(v) .. " as text"
end

local function bit_to_sql(v)
    if v == true or v == 1 then return 1 end
    if v == false or v == 0 then return 0 end
    return nil, "expected a boolean, got " .. show(v)
end

local function bit_from_sql(v)
    local t = type(v)
    if t == "boolean" then return v end
    if t == "number" then return v ~= 0 end
    if t == "string" then
        if v == "0" or v == "\0" then return false end
        if v == "1" or v == "\1" then return true end
    end
    return nil, "cannot read " .. show(v) .. " as a boolean"
end

local DAYS_IN_MONTH = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function is_leap(year)
    return year % 4 == 0 and (year % 100 ~= 0 or year % 400 == 0)
end

--- "YYYY-MM-DD[( |T)HH:MM:SS[.f{1,6}]]" -> table, or nil.
local function parse_datetime(s)
    local y, mo, d, rest = str_match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
    if y == nil then return nil end
    local h, mi, sec, frac = "0", "0", "0", nil
    if rest ~= "" then
        h, mi, sec, frac = str_match(rest, "^[T ](%d%d):(%d%d):(%d%d)(.*)$")
        if h == nil then return nil end
        if frac == "" then
            frac = nil
        else
            frac = str_match(frac, "^%.(%d+)$")
            if frac == nil or #frac > 6 then return nil end
        end
    end
    local value = {
        year = tonumber(y), month = tonumber(mo), day = tonumber(d),
        hour = tonumber(h), min = tonumber(mi), sec = tonumber(sec),
    }
    if frac then
        local usec = tonumber(frac .. str_rep("0", 6 - #frac))
        if usec ~= 0 then value.usec = usec end
    end
    return value
end

--- Range-check a datetime table; returns the SQL string or nil, err.
local function format_datetime(value)
    local parts = {}
    for i, key in ipairs({ "year", "month", "day", "hour", "min", "sec", "usec" }) do
        local v = value[key]
        if v == nil and i > 3 then v = 0 end
        local n = as_integer(v)
        if n == nil then
            return nil, "datetime " .. key .. " must be an integer, got " .. show(v)
        end
        parts[i] = n
    end
    local year, month, day, hour, min, sec, usec = parts[1], parts[2], parts[3], parts[4],
        parts[5], parts[6], parts[7]
    if year < 0 or year > 9999 or month < 1 or month > 12 or day < 1
        or day > DAYS_IN_MONTH[month] or (month == 2 and day == 29 and not is_leap(year))
        or hour < 0 or hour > 23 or min < 0 or min > 59 or sec < 0 or sec > 59
        or usec < 0 or usec > 999999 then
        return nil, fmt("datetime out of range: %d-%d-%d %d:%d:%d", year, month, day, hour, min, sec)
    end
    local text = fmt("%04d-%02d-%02d %02d:%02d:%02d", year, month, day, hour, min, sec)
    if usec > 0 then text = text .. fmt(".%06d", usec) end
    return text
end

local function datetime_to_sql(v)
    local t = type(v)
    if t == "string" then
        local value = parse_datetime(v)
        if value == nil then
            return nil, "expected a datetime (YYYY-MM-DD HH:MM:SS), got " .. show(v)
        end
        return format_datetime(value)
    elseif t == "number" then
        if not is_finite(v) then return nil, "expected a datetime, got " .. show(v) end
        local seconds = floor(v)
        local ok, value = pcall(os_date, "*t", seconds)
        if not ok or type(value) ~= "table" then
            return nil, "epoch " .. show(v) .. " is out of range"
        end
        value.usec = floor((v - seconds) * 1000000)
        return format_datetime(value)
    elseif t == "table" then
        return format_datetime(v)
    end
    return nil, "expected a datetime, got " .. show(v)
end

local function datetime_from_sql(v)
    if type(v) == "string" then
        local value = parse_datetime(v)
        if value then return value end
    end
    return nil, "cannot read " .. show(v) .. " as a datetime"
end

--- @type {[string]: ormtype|fun(size: integer): ormtype}
orm.t = {
    int = new_type("int", int_to_sql, int_from_sql),
    double = new_type("double", double_to_sql, double_from_sql),
    text = new_type("text", text_to_sql, text_from_sql),
    bit = new_type("bit", bit_to_sql, bit_from_sql),
    datetime = new_type("datetime", datetime_to_sql, datetime_from_sql),
}
orm.t.boolean = orm.t.bit

--- VARCHAR(size): text of at most `size` characters; longer values are refused.
--- @param size integer
--- @return ormtype
function orm.t.varchar(size)
    if as_integer(size) == nil or size < 0 then
        error("orm.t.varchar: size must be a non-negative integer, got " .. show(size), 2)
    end
    local name = "varchar(" .. fmt("%d", size) .. ")"
    return new_type(name, function(v)
        local text, err = text_to_sql(v)
        if text == nil then return nil, err end
        if #text > size then
            -- MySQL counts characters: every byte but UTF-8 continuation bytes
            local _, continuation = str_gsub(text, "[\128-\191]", "")
            local length = #text - continuation
            if length > size then
                return nil, fmt("%d characters is longer than %s", length, name)
            end
        end
        return text
    end, text_from_sql)
end

---------------------------------------------------------------------------
-- Building queries
---------------------------------------------------------------------------

local function quote(name)
    return "`" .. name .. "`"
end

local function check_identifier(name, what)
    if type(name) ~= "string" or not str_match(name, IDENT) then
        error("orm:create: " .. what .. " must be an identifier (" .. IDENT .. "), got " .. show(name), 3)
    end
    return name
end

local function capitalised(key)
    return str_upper(str_sub(key, 1, 1)) .. str_sub(key, 2)
end

--- Split "IpAndPort" into entity keys {"ip", "port"}: each part is an entity key with
--- its first letter upper-cased, longest first, optionally joined by "And". Returns
--- nil if the name cannot be split.
local function split_finder_name(rest, names)
    local function parse(pos, out)
        if pos > #rest then return out end
        for _, name in ipairs(names) do
            local cap = capitalised(name)
            if str_sub(rest, pos, pos + #cap - 1) == cap then
                out[#out + 1] = name
                if parse(pos + #cap, out) then return out end
                out[#out] = nil
            end
        end
        if #out > 0 and str_sub(rest, pos, pos + 2) == "And" and pos + 3 <= #rest then
            return parse(pos + 3, out)
        end
        return nil
    end
    return parse(1, {})
end

--- Number of `?` placeholders in sql, outside quotes, backquotes and comments;
--- nil, err if a quote or comment is not closed.
local function count_placeholders(sql)
    local count, i, n = 0, 1, #sql
    while i <= n do
        local c = str_sub(sql, i, i)
        if c == "?" then
            count = count + 1
            i = i + 1
        elseif c == "'" or c == '"' or c == "`" then
            local j = i + 1
            while true do
                local d = str_sub(sql, j, j)
                if d == "" then return nil, "unterminated " .. c end
                if d == "\\" and c ~= "`" then
                    j = j + 2
                elseif d == c then
                    if str_sub(sql, j + 1, j + 1) ~= c then break end
                    j = j + 2 -- a doubled quote stands for itself
                else
                    j = j + 1
                end
            end
            i = j + 1
        elseif c == "#" or (c == "-" and str_find(sql, "^%-%-[%s%c]", i))
            or (c == "-" and i == n - 1 and str_sub(sql, i) == "--") then
            local eol = str_find(sql, "\n", i, true)
            i = eol and eol + 1 or n + 1
        elseif c == "/" and str_sub(sql, i + 1, i + 1) == "*" then
            local close = str_find(sql, "*/", i + 2, true)
            if close == nil then return nil, "unterminated /* comment" end
            i = close + 2
        else
            i = i + 1
        end
    end
    return count
end

local function resolved(...)
    return aio:resolved(...)
end

local function empty_result()
    return resolved({ affected_rows = 0, last_insert_id = 0, warnings = 0 })
end

--- sql:select_args / exec_args, then on_result(value) -> value | nil, err on success.
local function run(sql, method, query, args, on_result)
    local resolve, promise = aio:prepare_promise()
    sql[method](sql, query, args)(function(result, err)
        if result == nil then
            resolve(nil, err or "query failed")
        elseif on_result then
            resolve(on_result(result))
        else
            resolve(result)
        end
    end)
    return promise
end

---------------------------------------------------------------------------
-- Repositories
---------------------------------------------------------------------------

--- @class ormrepo
--- @field sql table the client given to orm:create
--- @field source string
--- @field entity table the definition's entity table
--- @field index string[]|nil
--- @field all table<string, fun(self, ...): aiopromise>
--- @field one table<string, fun(self, ...): aiopromise>
--- @field count table<string, fun(self, ...): aiopromise>
--- @field delete table<string, fun(self, ...): aiopromise> also callable: repo:delete(obj)
--- @field deleteAll table<string, fun(self, ...): aiopromise>
--- @field deleteOne table<string, fun(self, ...): aiopromise>
local Repo = {}
Repo.__index = Repo

local DEF_KEYS = { source = true, entity = true, index = true }
local FIELD_KEYS = { field = true, type = true }
local OPTION_KEYS = { orderBy = true, limit = true, offset = true }

--- Validate one `findX = ...` entry; returns the finder description or nil (disabled).
local function parse_finder(key, value, fields, names, source)
    if value == false then return nil end
    local rest = str_match(key, "^findBy(.*)$") or str_match(key, "^by(.*)$")
    local name = rest and "by" .. rest or key
    if type(value) == "string" then
        local sql = str_gsub(value, "%s+$", "")
        local arity, err = count_placeholders(sql)
        if arity == nil then error("orm:create: " .. key .. ": " .. err, 3) end
        local full = str_find(sql, "^%s*[Ss][Ee][Ll][Ee][Cc][Tt]%s") ~= nil
        local select_sql = full and sql or "SELECT * FROM " .. quote(source) .. " " .. sql
        local delete_sql
        if not full then
            delete_sql = "DELETE FROM " .. quote(source) .. " " .. sql
        else
            local from = str_match(sql, "^%s*[Ss][Ee][Ll][Ee][Cc][Tt]%s+%*%s+([Ff][Rr][Oo][Mm]%s.*)$")
            delete_sql = from and "DELETE " .. from
        end
        return { name = name, key = key, custom = true, arity = arity,
                 select = select_sql, delete = delete_sql }
    end
    if value ~= true then
        error("orm:create: " .. key .. " must be true or an SQL string, got " .. show(value), 3)
    end
    if rest == nil then
        error("orm:create: " .. key .. " = true: only findBy... finders are built from their "
            .. "name; give an SQL string (a full SELECT or a suffix like \"ORDER BY id DESC\")", 3)
    end
    local keys = split_finder_name(rest, names)
    if keys == nil then
        error("orm:create: " .. key .. ": " .. show(rest) .. " does not name entity fields "
            .. "(capitalised, optionally joined by And)", 3)
    end
    local where, types, labels = {}, {}, {}
    for i, k in ipairs(keys) do
        where[i] = fields[k].qcolumn .. " = ?"
        types[i] = fields[k].type
        labels[i] = k
    end
    local from = " FROM " .. quote(source)
    if #where > 0 then from = from .. " WHERE " .. concat(where, " AND ") end
    return { name = name, key = key, custom = false, arity = #keys, types = types, labels = labels,
             select = "SELECT *" .. from, count = "SELECT COUNT(*) AS c" .. from,
             delete = "DELETE" .. from }
end

--- orderBy -> "ORDER BY `a`, `b` DESC", or nil, err.
local function order_clause(order_by, fields)
    local items = order_by
    if type(order_by) == "string" then
        items = {}
        for part in (order_by .. ","):gmatch("([^,]*),") do items[#items + 1] = part end
    elseif type(order_by) ~= "table" then
        return nil, "orderBy must be a field name or an array of them, got " .. show(order_by)
    end
    if #items == 0 then return nil, "orderBy is empty" end
    local parts = {}
    for i = 1, #items do
        local item = items[i]
        if type(item) ~= "string" then return nil, "orderBy: expected a field name, got " .. show(item) end
        local key, direction = str_match(item, "^%s*([%a_][%w_]*)%s*$"), nil
        if key == nil then
            key, direction = str_match(item, "^%s*([%a_][%w_]*)%s+(%a+)%s*$")
            direction = direction and str_upper(direction)
            if direction ~= "ASC" and direction ~= "DESC" then
                return nil, "orderBy: expected \"field\" or \"field ASC|DESC\", got " .. show(item)
            end
        end
        local field = fields[key]
        if field == nil then return nil, "orderBy: unknown field " .. show(key) end
        parts[i] = direction and field.qcolumn .. " " .. direction or field.qcolumn
    end
    return "ORDER BY " .. concat(parts, ", ")
end

local function count_option(opts, name)
    local v = opts[name]
    if v == nil then return nil end
    local n = as_integer(v)
    if n == nil or n < 0 then
        return nil, name .. " must be a non-negative integer, got " .. show(v)
    end
    return n
end

--- The clauses opts add for a method kind ("all", "one", "count", "delete",
--- "deleteOne"). Returns order clause (or nil), limit clause (or nil), extra args;
--- or false, err.
local function option_clauses(opts, kind, fields)
    local args = {}
    if opts == nil then
        if kind == "one" or kind == "deleteOne" then return nil, "LIMIT 1", args end
        return nil, nil, args
    end
    for k in pairs(opts) do
        if not OPTION_KEYS[k] then return false, "unknown option " .. show(k) end
    end
    local order, limit, offset, err
    if opts.orderBy ~= nil then
        order, err = order_clause(opts.orderBy, fields)
        if order == nil then return false, err end
    end
    limit, err = count_option(opts, "limit")
    if err then return false, err end
    offset, err = count_option(opts, "offset")
    if err then return false, err end
    if limit ~= nil and (kind == "one" or kind == "deleteOne") then
        return false, "limit is not allowed here: it is always 1"
    end
    if offset ~= nil and (kind == "delete" or kind == "deleteOne") then
        return false, "offset is not allowed in a DELETE"
    end
    local limit_sql
    if kind == "one" or kind == "deleteOne" then
        limit_sql = "LIMIT 1"
    elseif limit ~= nil then
        limit_sql = "LIMIT ?"
        args[1] = limit
    elseif offset ~= nil then
        limit_sql = "LIMIT " .. NO_LIMIT
    end
    if offset ~= nil then
        limit_sql = limit_sql .. " OFFSET ?"
        args[#args + 1] = offset
    end
    return order, limit_sql, args
end

--- A finder argument as a query parameter, or nil, err.
local function finder_value(finder, i, v)
    if not finder.custom then
        if is_null(v) then
            return nil, "argument " .. i .. " (" .. finder.labels[i] .. ") is nil: `= NULL` matches "
                .. "nothing; use a custom finder with IS NULL"
        end
        local value, err = finder.types[i].to_sql(v)
        if value == nil then return nil, "argument " .. i .. " (" .. finder.labels[i] .. "): " .. err end
        return value
    end
    local t = type(v)
    if is_null(v) then return NULL end
    if t == "boolean" then return v and 1 or 0 end
    if t == "string" or (t == "number" and is_finite(v)) then return v end
    return nil, "argument " .. i .. ": cannot send " .. show(v)
end

--- Turn a result row into an entity: columns mapped to entity keys and converted;
--- NULL becomes nil; columns the entity does not name pass through unchanged.
local function decoder(fields, source)
    local by_column, by_lower = {}, {}
    for _, field in pairs(fields) do
        by_column[field.column] = field
        by_lower[str_lower(field.column)] = field
    end
    return function(row)
        local obj = {}
        for column, value in pairs(row) do
            local field = by_column[column] or (type(column) == "string" and by_lower[str_lower(column)])
            if not field then
                obj[column] = value
            elseif not is_null(value) then
                local v, err = field.type.from_sql(value)
                if v == nil then return nil, source .. "." .. field.key .. ": " .. tostring(err) end
                obj[field.key] = v
            end
        end
        return obj
    end
end

--- The method namespace[finder.name] for one kind of query.
local function make_method(repo, namespace, ns_name, kind, finder, decode)
    local sql = repo.sql
    local where = repo.source .. "." .. ns_name .. ":" .. finder.name
    local fields = repo._fields
    local arity = finder.arity
    if (kind == "delete" or kind == "deleteOne") and finder.delete == nil then
        return function()
            error(where .. ": the query of " .. finder.key .. " is not SELECT * FROM ...; "
                .. "it cannot be turned into a DELETE", 2)
        end
    end

    local function fail(err)
        return resolved(nil, where .. ": " .. err)
    end

    return function(self, ...)
        if self ~= namespace then
            error("call repo." .. ns_name .. ":" .. finder.name .. "(...) with ':'", 2)
        end
        local n = select("#", ...)
        if n ~= arity and n ~= arity + 1 then
            error(fmt("%s expects %d argument(s) and optional options, got %d", where, arity, n), 2)
        end
        local opts = n > arity and select(n, ...) or nil
        if opts ~= nil and type(opts) ~= "table" then
            return fail("options must be a table, got " .. show(opts))
        end
        local args = {}
        for i = 1, arity do
            local value, err = finder_value(finder, i, (select(i, ...)))
            if value == nil then return fail(err) end
            args[i] = value
        end
        local order, limit, extra = option_clauses(opts, kind, fields)
        if order == false then return fail(limit) end
        for i = 1, #extra do args[#args + 1] = extra[i] end

        if kind == "count" then
            local query
            if finder.custom or limit ~= nil then
                -- count what `all` would return: the subquery keeps its LIMIT
                query = "SELECT COUNT(*) AS c FROM (" .. finder.select
                    .. (limit and " " .. limit or "") .. ") AS `_q`"
            else
                query = finder.count
            end
            return run(sql, "select_args", query, args, function(rows)
                local row = rows[1]
                local c = row and tonumber(row.c)
                if row and c == nil then return nil, where .. ": no count in the result" end
                return c or 0
            end)
        end

        local base = (kind == "delete" or kind == "deleteOne") and finder.delete or finder.select
        local query = base
        if order then query = query .. " " .. order end
        if limit then query = query .. " " .. limit end
        if kind == "delete" or kind == "deleteOne" then
            return run(sql, "exec_args", query, args)
        end
        return run(sql, "select_args", query, args, function(rows)
            if kind == "one" then
                if rows[1] == nil then return nil end
                return decode(rows[1])
            end
            local out = as_array({})
            for i = 1, #rows do
                local obj, err = decode(rows[i])
                if obj == nil then return nil, err end
                out[i] = obj
            end
            return out
        end)
    end
end

--- Create a repository over sql (a mysql client, or anything with exec_args and
--- select_args returning promises) from a definition (see the top of this file).
--- Raises error() if the definition is invalid.
--- @param sql table
--- @param def {source: string, entity: table<string, {field: string?, type: ormtype}>,
---   index: string|string[]|nil, [string]: boolean|string}
--- @return ormrepo
function orm:create(sql, def)
    if self ~= orm then error("use orm:create(sql, def), with ':'", 2) end
    if type(sql) ~= "table" or sql.exec_args == nil or sql.select_args == nil then
        error("orm:create: sql must be a mysql client (with exec_args and select_args), got "
            .. show(sql), 2)
    end
    if type(def) ~= "table" then error("orm:create: the definition must be a table", 2) end
    local source = check_identifier(def.source, "source")
    local entity = def.entity
    if type(entity) ~= "table" or next(entity) == nil then
        error("orm:create: entity must be a non-empty table of fields", 2)
    end

    local fields, names, columns = {}, {}, {}
    for key, spec in pairs(entity) do
        check_identifier(key, "an entity key")
        if type(spec) ~= "table" then
            error("orm:create: entity." .. key .. " must be a table {field=, type=}", 2)
        end
        for k in pairs(spec) do
            if not FIELD_KEYS[k] then
                error("orm:create: entity." .. key .. ": unknown key " .. show(k), 2)
            end
        end
        local column = check_identifier(spec.field == nil and key or spec.field, "entity." .. key .. ".field")
        local ftype = spec.type
        if type(ftype) ~= "table" or type(ftype.to_sql) ~= "function"
            or type(ftype.from_sql) ~= "function" then
            error("orm:create: entity." .. key .. ".type must be an orm.t type, got " .. show(ftype)
                .. (ftype == orm.t.varchar and " (varchar needs a size: orm.t.varchar(n))" or ""), 2)
        end
        local lower = str_lower(column)
        if columns[lower] then
            error("orm:create: entity." .. key .. " and entity." .. columns[lower]
                .. " both map to column " .. column, 2)
        end
        columns[lower] = key
        fields[key] = { key = key, column = column, qcolumn = quote(column), type = ftype }
        names[#names + 1] = key
    end
    sort(names)

    local index = def.index
    if index == nil then
        index = fields.id and { "id" } or nil
    elseif type(index) == "string" then
        index = { index }
    elseif type(index) ~= "table" or #index == 0 then
        error("orm:create: index must be an entity key or a non-empty array of them", 2)
    else
        local copy = {}
        for k, v in pairs(index) do
            if type(k) ~= "number" or k < 1 or k > #index or floor(k) ~= k then
                error("orm:create: index must be an array of entity keys", 2)
            end
            copy[k] = v
        end
        index = copy
    end
    if index then
        for _, key in ipairs(index) do
            if type(key) ~= "string" or fields[key] == nil then
                error("orm:create: index: " .. show(key) .. " is not an entity key", 2)
            end
        end
    end

    -- finders, sorted so that errors and duplicates are reported the same way every time
    local finders, by_name = {}, {}
    local keys = {}
    for key in pairs(def) do
        if type(key) ~= "string" then error("orm:create: unexpected key " .. show(key), 2) end
        if not DEF_KEYS[key] then
            if not (str_find(key, "^find") or str_find(key, "^by")) then
                error("orm:create: unknown key " .. show(key)
                    .. " (expected source, entity, index, find...=true|\"SQL\")", 2)
            end
            keys[#keys + 1] = key
        end
    end
    sort(keys)
    -- longest entity keys first: "findByAuthorName" prefers authorName over author
    local by_length = {}
    for i, key in ipairs(names) do by_length[i] = key end
    sort(by_length, function(a, b) return #a > #b or (#a == #b and a < b) end)
    for _, key in ipairs(keys) do
        local finder = parse_finder(key, def[key], fields, by_length, source)
        if finder then
            if by_name[finder.name] then
                error("orm:create: " .. key .. " and " .. by_name[finder.name].key
                    .. " both define method " .. finder.name, 2)
            end
            by_name[finder.name] = finder
            finders[#finders + 1] = finder
        end
    end

    local repo = setmetatable({
        sql = sql, source = source, entity = entity, index = index,
        all = {}, one = {}, count = {}, deleteAll = {}, deleteOne = {},
        delete = setmetatable({}, {
            -- repo:delete(obj) is repo.delete(repo, obj)
            __call = function(_, self, obj) return Repo.delete_object(self, obj) end,
        }),
        _fields = fields, _names = names,
    }, Repo)
    local decode = decoder(fields, source)
    repo._decode = decode
    -- namespace -> the kind of query its methods run
    local kinds = { all = "all", one = "one", count = "count", delete = "delete",
                    deleteAll = "delete", deleteOne = "deleteOne" }
    for _, finder in ipairs(finders) do
        for ns_name, kind in pairs(kinds) do
            local namespace = repo[ns_name]
            namespace[finder.name] = make_method(repo, namespace, ns_name, kind, finder, decode)
        end
    end
    return repo
end

---------------------------------------------------------------------------
-- Writes
---------------------------------------------------------------------------

local function check_self(self, method)
    if getmetatable(self) ~= Repo then
        error("call repo:" .. method .. "(...) with ':'", 3)
    end
end

--- obj's value for field as a parameter: NULL for nil/NULL, else converted; or nil, err.
local function param(self, obj, field)
    local v = obj[field.key]
    if is_null(v) then return NULL end
    local value, err = field.type.to_sql(v)
    if value == nil then return nil, self.source .. "." .. field.key .. ": " .. err end
    return value
end

--- "WHERE `a` = ? AND `b` = ?" for the index, args appended; or nil, err if a value is missing.
local function index_where(self, obj, method, args)
    local index = self.index
    if index == nil then
        error("repo:" .. method .. ": " .. self.source .. " has no index (set `index` in orm:create)", 3)
    end
    local parts = {}
    for i, key in ipairs(index) do
        if is_null(obj[key]) then return nil, self.source .. ":" .. method .. ": " .. key .. " is not set" end
        local value, err = param(self, obj, self._fields[key])
        if value == nil then return nil, err end
        parts[i] = self._fields[key].qcolumn .. " = ?"
        args[#args + 1] = value
    end
    return " WHERE " .. concat(parts, " AND ")
end

--- After a one-row INSERT/REPLACE, store the auto-increment id in obj's index field.
local function store_insert_id(self, obj, result)
    local index = self.index
    if index == nil or #index ~= 1 or not is_null(obj[index[1]]) then return end
    local id = result.last_insert_id
    if id == nil or id == 0 or id == "0" then return end
    local value = self._fields[index[1]].type.from_sql(id)
    if value ~= nil then obj[index[1]] = value end
end

local function insert_rows(self, verb, ...)
    local n = select("#", ...)
    if n == 0 then return empty_result() end
    local objs = { ... }
    local used = {}
    for i = 1, n do
        local obj = objs[i]
        if type(obj) ~= "table" then
            error("repo:" .. str_lower(verb) .. ": argument " .. i .. " must be an entity table, got "
                .. show(obj), 3)
        end
        for _, key in ipairs(self._names) do
            if obj[key] ~= nil then used[key] = true end
        end
    end
    local fields, cols = {}, {}
    for _, key in ipairs(self._names) do
        if used[key] then
            fields[#fields + 1] = self._fields[key]
            cols[#cols + 1] = self._fields[key].qcolumn
        end
    end
    local args, tuples = {}, {}
    for i = 1, n do
        local obj, marks = objs[i], {}
        for j, field in ipairs(fields) do
            if obj[field.key] == nil then
                marks[j] = "DEFAULT" -- absent: the column's default (NULL if it has none)
            else
                local value, err = param(self, obj, field)
                if value == nil then
                    return resolved(nil, (n > 1 and "object " .. i .. ": " or "") .. err)
                end
                marks[j] = "?"
                args[#args + 1] = value
            end
        end
        tuples[i] = "(" .. concat(marks, ", ") .. ")"
    end
    local query = verb .. " INTO " .. quote(self.source) .. " (" .. concat(cols, ", ") .. ") VALUES "
        .. concat(tuples, ", ")
    return run(self.sql, "exec_args", query, args, function(result)
        if n == 1 then store_insert_id(self, objs[1], result) end
        return result
    end)
end

--- INSERT one or more entities in one statement. Fields that are nil in every object
--- are left out; nil in some objects becomes DEFAULT; NULL is NULL. With one object
--- and a single-field index that was nil, the auto-increment id is stored in it.
--- Resolves with the exec result ({affected_rows, last_insert_id, warnings}) or nil, err.
--- @return aiopromise
function Repo:insert(...)
    check_self(self, "insert")
    return insert_rows(self, "INSERT", ...)
end

--- As insert, with REPLACE INTO (a row with the same unique key is replaced).
--- @return aiopromise
function Repo:replace(...)
    check_self(self, "replace")
    return insert_rows(self, "REPLACE", ...)
end

--- UPDATE the row whose index fields equal obj's. Without changes, every other entity
--- field set in obj is written (nil fields are left as they are, orm.NULL writes NULL);
--- with changes, only those fields (orm.NULL for NULL). obj is not modified. With
--- nothing to write no query runs. Resolves with the exec result, or nil, err.
--- @param obj table
--- @param changes table|nil
--- @return aiopromise
function Repo:update(obj, changes)
    check_self(self, "update")
    if type(obj) ~= "table" then error("repo:update: obj must be an entity table, got " .. show(obj), 2) end
    if changes ~= nil and type(changes) ~= "table" then
        error("repo:update: changes must be a table, got " .. show(changes), 2)
    end
    local keys = {}
    if changes == nil then
        local is_index = {}
        for _, key in ipairs(self.index or {}) do is_index[key] = true end
        for _, key in ipairs(self._names) do
            if not is_index[key] and obj[key] ~= nil then keys[#keys + 1] = key end
        end
    else
        for key in pairs(changes) do
            if type(key) ~= "string" or self._fields[key] == nil then
                error("repo:update: " .. show(key) .. " is not an entity field of " .. self.source, 2)
            end
            keys[#keys + 1] = key
        end
        sort(keys)
    end
    local values = changes or obj
    local sets, args = {}, {}
    for i, key in ipairs(keys) do
        local field = self._fields[key]
        local value, err = param(self, values, field)
        if value == nil then return resolved(nil, err) end
        sets[i] = field.qcolumn .. " = ?"
        args[i] = value
    end
    local where, err = index_where(self, obj, "update", args)
    if where == nil then return resolved(nil, err) end
    if #sets == 0 then return empty_result() end
    local query = "UPDATE " .. quote(self.source) .. " SET " .. concat(sets, ", ") .. where .. " LIMIT 1"
    return run(self.sql, "exec_args", query, args)
end

--- INSERT or UPDATE: when every index field of obj is set and a row with those values
--- exists, update it (repo:update(obj): the fields set in obj); otherwise insert obj
--- (storing the auto-increment id in it). Resolves with the exec result of whichever
--- ran, or nil, err.
--- @param obj table
--- @return aiopromise
function Repo:save(obj)
    check_self(self, "save")
    if type(obj) ~= "table" then error("repo:save: obj must be an entity table, got " .. show(obj), 2) end
    if self.index == nil then
        error("repo:save: " .. self.source .. " has no index (set `index` in orm:create)", 2)
    end
    for _, key in ipairs(self.index) do
        if is_null(obj[key]) then return insert_rows(self, "INSERT", obj) end
    end
    local args = {}
    local where, err = index_where(self, obj, "save", args)
    if where == nil then return resolved(nil, err) end
    local resolve, promise = aio:prepare_promise()
    local query = "SELECT 1 AS `found` FROM " .. quote(self.source) .. where .. " LIMIT 1"
    self.sql:select_args(query, args)(function(rows, select_err)
        if rows == nil then return resolve(nil, select_err or "query failed") end
        local next_step = rows[1] ~= nil and self:update(obj) or insert_rows(self, "INSERT", obj)
        next_step(resolve)
    end)
    return promise
end

--- DELETE the row whose index fields equal obj's (LIMIT 1); called as repo:delete(obj).
--- @param obj table
--- @return aiopromise
function Repo.delete_object(self, obj)
    if getmetatable(self) ~= Repo then error("call repo:delete(obj) with ':'", 3) end
    if type(obj) ~= "table" then error("repo:delete: obj must be an entity table, got " .. show(obj), 3) end
    local args = {}
    local where, err = index_where(self, obj, "delete", args)
    if where == nil then return resolved(nil, err) end
    return run(self.sql, "exec_args", "DELETE FROM " .. quote(self.source) .. where .. " LIMIT 1", args)
end

--- Map a result row (from a custom query) to an entity the way finders do: nil, err if a
--- value does not convert.
--- @param row table
--- @return table|nil, string|nil
function Repo:to_entity(row)
    check_self(self, "to_entity")
    return self._decode(row)
end

return orm
