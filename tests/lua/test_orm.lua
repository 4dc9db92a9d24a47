-- eightys/lua/orm.lua against a fake SQL client: the exact SQL and parameters of
-- every generated method and option, finder-name parsing, validation (error() at
-- create time, nil, err at run time) and type conversions both ways.
-- tests/test_orm.py runs the same ORM against a real MariaDB.

local orm = require("orm")
local NULL = orm.NULL
local t_ = orm.t

local T = {}

local unpack = unpack or table.unpack
local pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- A client that records each exec_args/select_args call as {kind, sql, args} and
--- answers from a queue of replies (each a pack of values); by default select gives
--- no rows and exec {affected_rows=1, last_insert_id=0, warnings=0}. With
--- `async`, replies come from a timer, as a real client's do.
local function fake(replies, async)
    local client = { calls = {}, replies = replies or {} }
    local function answer(default)
        local reply = table.remove(client.replies, 1) or default
        if not async then return aio:resolved(unpack(reply, 1, reply.n)) end
        local resolve, promise = aio:prepare_promise()
        aio:set_timeout(function() resolve(unpack(reply, 1, reply.n)) end, 0)
        return promise
    end
    local function record(self, kind, sql, args)
        assert(self == client, kind .. " not called with ':'")
        assert(type(sql) == "string", "sql is a string")
        assert(type(args) == "table", "args is a table")
        local n = 0
        for _ in pairs(args) do n = n + 1 end
        assert(n == #args, "args is an array without holes")
        client.calls[#client.calls + 1] = { kind, sql, args }
    end
    function client.select_args(self, sql, args)
        record(self, "select", sql, args)
        return answer(pack({}))
    end
    function client.exec_args(self, sql, args)
        record(self, "exec", sql, args)
        return answer(pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }))
    end
    function client.exec() error("the ORM must not call exec (string formatting)") end
    function client.select() error("the ORM must not call select (string formatting)") end
    return client
end

local function rows(...)
    return pack({ ... })
end

local ENTITY = {
    id = { field = "id", type = t_.int },
    author = { field = "author", type = t_.varchar(8) },
    text = { field = "text", type = t_.text },
    created = { field = "created_at", type = t_.datetime },
    score = { field = "score", type = t_.double },
    published = { field = "is_published", type = t_.bit },
}

--- The standard posts repository over client.
local function posts(client, extra)
    local def = {
        source = "posts", entity = ENTITY, index = "id",
        findById = true, findBy = true, findByAuthor = true, findByAuthorAndText = true,
        findRecent = "ORDER BY id DESC",
        findByAuthorRaw = "SELECT * FROM posts WHERE author = ? AND text <> '?'",
        findTitles = "SELECT id, author FROM posts WHERE id > ?",
    }
    for k, v in pairs(extra or {}) do def[k] = v end
    return orm:create(client, def)
end

--- The error message of fn(...), which must raise.
local function raises(t, fn, ...)
    local ok, err = pcall(fn, ...)
    t.ok(not ok, "raises an error")
    return tostring(err)
end

local function contains(t, text, part, msg)
    t.ok(string.find(text, part, 1, true), (msg or "message") .. " contains " .. string.format("%q", part)
        .. ": " .. text)
end

--- Await promise; returns its values packed.
local function await(promise)
    return pack(aio:await(promise))
end

--- Expect promise to resolve nil, err without any query; returns err.
local function refused(t, client, promise, part)
    local calls = #client.calls
    local got = await(promise)
    t.eq(got[1], nil, "no value")
    t.ok(type(got[2]) == "string", "an error message")
    if part then contains(t, got[2], part) end
    t.eq(#client.calls, calls, "nothing sent to the server")
    return got[2]
end

local function last(client)
    local call = client.calls[#client.calls]
    return call[2], call[3], call[1]
end

---------------------------------------------------------------------------
-- module
---------------------------------------------------------------------------

function T.module_is_global_and_null_is_the_codec_null(t)
    t.ok(rawequal(_G.orm, orm), "global orm")
    t.ok(rawequal(NULL, codec.null), "orm.NULL is codec.null (= mysql.NULL)")
    t.ok(rawequal(t_.boolean, t_.bit), "boolean is bit")
end

---------------------------------------------------------------------------
-- types
---------------------------------------------------------------------------

--- to_sql(v) -> value or nil, err; checks either.
local function writes(t, ty, v, expected)
    local got, err = ty.to_sql(v)
    t.eq(got, expected, ty.name .. " writes " .. tostring(v))
    if expected == nil then t.ok(type(err) == "string" and err ~= "", "an error for " .. tostring(v)) end
    return got
end

local function reads(t, ty, v, expected)
    local got, err = ty.from_sql(v)
    t.eq(got, expected, ty.name .. " reads " .. tostring(v))
    if expected == nil then t.ok(type(err) == "string" and err ~= "", "an error for " .. tostring(v)) end
    return got
end

function T.int_type(t)
    writes(t, t_.int, 42, 42)
    writes(t, t_.int, -7, -7)
    writes(t, t_.int, "42", 42)
    writes(t, t_.int, "-0012", -12)
    writes(t, t_.int, "abc", nil)
    writes(t, t_.int, "4 2", nil)
    writes(t, t_.int, "1e3", nil)
    writes(t, t_.int, 1.5, nil)
    writes(t, t_.int, 0 / 0, nil)
    writes(t, t_.int, math.huge, nil)
    writes(t, t_.int, true, nil)
    writes(t, t_.int, {}, nil)
    if math.type then
        t.eq(math.type(t_.int.to_sql(42.0)), "integer", "a float with an integral value is sent as an integer")
    end
    t.eq(tostring(t_.int.to_sql("12345678901234567890")), "12345678901234567890", "BIGINT UNSIGNED kept exact")
    reads(t, t_.int, 42, 42)
    reads(t, t_.int, "17", 17)
    reads(t, t_.int, "3.75", 3)
    reads(t, t_.int, "x", nil)
    -- LuaJIT gets BIGINTs beyond 2^53 as strings: they must stay exact
    t.eq(tostring(t_.int.from_sql("9007199254740993")), "9007199254740993", "big integer exact")
    if jit then -- LuaJIT's boxed 64-bit integers (cdata)
        local ffi = require("ffi")
        t.eq(t_.int.to_sql(ffi.new("int64_t", -5)), -5, "int64_t")
        t.eq(tostring(t_.int.to_sql(ffi.cast("uint64_t", -1))), "18446744073709551615", "uint64_t")
        t.eq(t_.int.from_sql(ffi.new("int64_t", 7)), 7, "int64_t read")
        writes(t, t_.int, ffi.new("double", 1.5), nil)
    end
end

function T.double_type(t)
    writes(t, t_.double, 1.5, 1.5)
    writes(t, t_.double, 3, 3)
    writes(t, t_.double, "2.25", 2.25)
    writes(t, t_.double, "-1e3", -1000)
    writes(t, t_.double, "0x10", nil)
    writes(t, t_.double, "abc", nil)
    writes(t, t_.double, 0 / 0, nil)
    writes(t, t_.double, -math.huge, nil)
    writes(t, t_.double, false, nil)
    reads(t, t_.double, 2.5, 2.5)
    reads(t, t_.double, "12.50", 12.5)
    reads(t, t_.double, "twelve", nil)
end

function T.text_and_varchar_types(t)
    writes(t, t_.text, "hello", "hello")
    writes(t, t_.text, 5, "5")
    writes(t, t_.text, true, nil)
    writes(t, t_.text, {}, nil)
    reads(t, t_.text, "x", "x")
    reads(t, t_.text, 7, "7")
    local v3 = t_.varchar(3)
    t.eq(v3.name, "varchar(3)", "name")
    writes(t, v3, "abc", "abc")
    writes(t, v3, "", "")
    writes(t, v3, "h\195\169\195\169", "h\195\169\195\169") -- "héé": 3 characters, 5 bytes
    local _, err = v3.to_sql("abcd")
    contains(t, err, "varchar(3)", "too long, not truncated")
    writes(t, v3, "h\195\169\195\169l", nil)
    writes(t, v3, true, nil)
    contains(t, raises(t, t_.varchar, -1), "size")
    contains(t, raises(t, t_.varchar, "3"), "size")
    contains(t, raises(t, t_.varchar, 1.5), "size")
    contains(t, raises(t, t_.varchar), "size")
end

function T.bit_type(t)
    writes(t, t_.bit, true, 1)
    writes(t, t_.bit, false, 0)
    writes(t, t_.bit, 1, 1)
    writes(t, t_.bit, 0, 0)
    writes(t, t_.bit, 2, nil)
    writes(t, t_.bit, "yes", nil)
    writes(t, t_.bit, "true", nil)
    reads(t, t_.bit, 1, true)
    reads(t, t_.bit, 0, false)
    reads(t, t_.bit, "\1", true)
    reads(t, t_.bit, "\0", false)
    reads(t, t_.bit, "0", false)
    reads(t, t_.bit, true, true)
    reads(t, t_.bit, "maybe", nil)
end

function T.datetime_writes(t)
    local d = t_.datetime
    writes(t, d, "2024-02-29 12:34:56", "2024-02-29 12:34:56")
    writes(t, d, "2024-02-29T12:34:56", "2024-02-29 12:34:56")
    writes(t, d, "2024-02-29", "2024-02-29 00:00:00")
    writes(t, d, "2024-01-02 03:04:05.25", "2024-01-02 03:04:05.250000")
    writes(t, d, "2024-01-02T03:04:05.000000", "2024-01-02 03:04:05")
    writes(t, d, "2023-02-29 00:00:00", nil)
    writes(t, d, "2024-13-01 00:00:00", nil)
    writes(t, d, "2024-01-01 24:00:00", nil)
    writes(t, d, "2024-01-01 00:00:00Z", nil)
    writes(t, d, "2024-01-01 00:00:00.1234567", nil)
    writes(t, d, "yesterday", nil)
    writes(t, d, "2024-01-01' OR '1'='1", nil)
    local epoch = os.time({ year = 2024, month = 3, day = 4, hour = 5, min = 6, sec = 7 })
    writes(t, d, epoch, "2024-03-04 05:06:07")
    writes(t, d, epoch + 0.5, "2024-03-04 05:06:07.500000")
    writes(t, d, os.date("*t", epoch), "2024-03-04 05:06:07")
    writes(t, d, { year = 2024, month = 3, day = 4 }, "2024-03-04 00:00:00")
    writes(t, d, { year = 2024, month = 3, day = 4, hour = 1, min = 2, sec = 3, usec = 7 },
        "2024-03-04 01:02:03.000007")
    writes(t, d, { year = 2024, month = 13, day = 1 }, nil)
    writes(t, d, { year = "2024", month = 1, day = 1 }, nil)
    writes(t, d, { month = 1, day = 1 }, nil)
    writes(t, d, true, nil)
    writes(t, d, 0 / 0, nil)
end

function T.datetime_reads_give_os_date_tables(t)
    local d = t_.datetime
    local value = reads(t, d, "2024-03-04T05:06:07",
        { year = 2024, month = 3, day = 4, hour = 5, min = 6, sec = 7 })
    t.eq(os.time(value), os.time({ year = 2024, month = 3, day = 4, hour = 5, min = 6, sec = 7 }),
        "os.time turns it back into the epoch")
    t.eq(d.to_sql(value), "2024-03-04 05:06:07", "it can be written back as is")
    reads(t, d, "2024-03-04 05:06:07.123", { year = 2024, month = 3, day = 4, hour = 5, min = 6, sec = 7, usec = 123000 })
    reads(t, d, "2024-03-04", { year = 2024, month = 3, day = 4, hour = 0, min = 0, sec = 0 })
    reads(t, d, "not a date", nil)
    reads(t, d, 1700000000, nil)
end

---------------------------------------------------------------------------
-- orm:create validation: error() at create time
---------------------------------------------------------------------------

local function create_error(t, def_changes, part)
    local def = { source = "posts", entity = { id = { field = "id", type = t_.int } }, findById = true }
    for k, v in pairs(def_changes) do
        if v == "<nil>" then def[k] = nil else def[k] = v end
    end
    local msg = raises(t, orm.create, orm, fake(), def)
    contains(t, msg, part)
    return msg
end

function T.create_rejects_unknown_fields_in_finder_names(t)
    create_error(t, { findByNope = true }, "findByNope")
    create_error(t, { findByIdAndNope = true }, "findByIdAndNope")
    create_error(t, { findByid = true }, "findByid") -- the field must be capitalised
    create_error(t, { findByIdAnd = true }, "findByIdAnd")
end

function T.create_rejects_bad_identifiers(t)
    create_error(t, { source = "posts; DROP TABLE posts" }, "source")
    create_error(t, { source = "`posts`" }, "source")
    create_error(t, { source = "<nil>" }, "source")
    create_error(t, { entity = { id = { field = "id`; DROP", type = t_.int } } }, "entity.id.field")
    create_error(t, { entity = { id = { field = "a b", type = t_.int } } }, "entity.id.field")
    create_error(t, { entity = { ["bad key"] = { type = t_.int } } }, "entity key")
end

function T.create_rejects_bad_entities_and_types(t)
    create_error(t, { entity = {} }, "entity")
    create_error(t, { entity = "id" }, "entity")
    create_error(t, { entity = { id = t_.int } }, "entity.id")
    create_error(t, { entity = { id = { field = "id" } } }, "entity.id.type")
    create_error(t, { entity = { id = { field = "id", type = "int" } } }, "entity.id.type")
    create_error(t, { entity = { id = { field = "id", type = t_.varchar } } }, "orm.t.varchar(n)")
    create_error(t, { entity = { id = { field = "id", type = t_.int, nullable = true } } }, "nullable")
    create_error(t, { entity = { id = { type = t_.int }, other = { field = "ID", type = t_.int } } },
        "both map to column")
end

function T.create_rejects_bad_keys_indexes_and_finders(t)
    create_error(t, { fidnById = true }, "fidnById")
    create_error(t, { findRecent = true }, "findRecent")
    create_error(t, { findById = 1 }, "findById")
    create_error(t, { findByIdRaw = "SELECT * FROM posts WHERE x = 'unterminated" }, "unterminated")
    create_error(t, { index = "nope" }, "nope")
    create_error(t, { index = {} }, "index")
    create_error(t, { index = { "id", "nope" } }, "nope")
    create_error(t, { index = 5 }, "index")
    create_error(t, { byId = true }, "byId") -- both findById and byId define byId
    contains(t, raises(t, orm.create, orm, {}, { source = "p", entity = ENTITY }), "exec_args")
    contains(t, raises(t, orm.create, orm, nil, { source = "p", entity = ENTITY }), "sql")
    contains(t, raises(t, orm.create, fake(), { source = "p", entity = ENTITY }), "orm:create")
end

---------------------------------------------------------------------------
-- finder names
---------------------------------------------------------------------------

function T.finder_names_split_into_fields_joined_with_and(t)
    local client = fake()
    local repo = orm:create(client, {
        source = "hosts",
        entity = {
            ip = { type = t_.text }, port = { type = t_.int }, ipA = { type = t_.text },
            add = { type = t_.int }, andy = { type = t_.int }, id = { type = t_.int },
            userId = { field = "user_id", type = t_.int }, author = { type = t_.text },
            authorName = { field = "author_name", type = t_.text }, name = { type = t_.text },
        },
        findByIpAndPort = true, findByIpPort = true, findByIpAdd = true, findByIdAndy = true,
        findByIdAndAndy = true, findByUserId = true, findByAuthorName = true,
        findByAuthorAndName = true, byPort = true, findById = false,
    })
    local expect = {
        byIpAndPort = { "`ip` = ? AND `port` = ?", { "h", 80 } },
        byIpPort = { "`ip` = ? AND `port` = ?", { "h", 80 } },          -- the 80s form
        byIpAdd = { "`ip` = ? AND `add` = ?", { "h", 80 } },            -- backtracks from ipA
        byIdAndy = { "`id` = ? AND `andy` = ?", { 1, 2 } },             -- "Andy" is a field
        byIdAndAndy = { "`id` = ? AND `andy` = ?", { 1, 2 } },
        byUserId = { "`user_id` = ?", { 1 } },
        byAuthorName = { "`author_name` = ?", { "a" } },               -- longest field first
        byAuthorAndName = { "`author` = ? AND `name` = ?", { "a", "b" } },
        byPort = { "`port` = ?", { 80 } },
    }
    for method, case in pairs(expect) do
        t.ok(repo.all[method], "method " .. method)
        aio:await(repo.all[method](repo.all, unpack(case[2])))
        local sql, args = last(client)
        t.eq(sql, "SELECT * FROM `hosts` WHERE " .. case[1], method)
        t.eq(args, case[2], method .. " args")
    end
    t.eq(repo.all.byId, nil, "findById = false defines nothing")
end

---------------------------------------------------------------------------
-- generated methods
---------------------------------------------------------------------------

function T.all_one_count_delete_sql(t)
    local client = fake({
        rows(), rows(), rows(), rows(),
        rows({ c = 3 }), rows({ c = 12 }),
    })
    local repo = posts(client)
    local cases = {
        { repo.all:byId(5), "select", "SELECT * FROM `posts` WHERE `id` = ?", { 5 } },
        { repo.all:by(), "select", "SELECT * FROM `posts`", {} },
        { repo.one:byId(5), "select", "SELECT * FROM `posts` WHERE `id` = ? LIMIT 1", { 5 } },
        { repo.one:by(), "select", "SELECT * FROM `posts` LIMIT 1", {} },
        { repo.count:byId(5), "select", "SELECT COUNT(*) AS c FROM `posts` WHERE `id` = ?", { 5 } },
        { repo.count:by(), "select", "SELECT COUNT(*) AS c FROM `posts`", {} },
        { repo.delete:byId(5), "exec", "DELETE FROM `posts` WHERE `id` = ?", { 5 } },
        { repo.deleteAll:byAuthor("ann"), "exec", "DELETE FROM `posts` WHERE `author` = ?", { "ann" } },
        { repo.deleteOne:byAuthor("ann"), "exec", "DELETE FROM `posts` WHERE `author` = ? LIMIT 1", { "ann" } },
        { repo.all:byAuthorAndText("ann", "hi"), "select",
          "SELECT * FROM `posts` WHERE `author` = ? AND `text` = ?", { "ann", "hi" } },
    }
    for i, case in ipairs(cases) do
        local call = client.calls[i]
        t.eq(call[1], case[2], "kind " .. i)
        t.eq(call[2], case[3], "sql " .. i)
        t.eq(call[3], case[4], "args " .. i)
    end
    t.eq(await(cases[1][1]), pack({}), "all resolves with the rows")
    t.eq(codec.json_encode(await(cases[1][1])[1]), "[]", "an empty result is a JSON array")
    t.eq(await(cases[3][1]), pack(nil), "one resolves nil when there is no row")
    t.eq(await(cases[5][1]), pack(3), "count resolves the integer")
    t.eq(await(cases[6][1]), pack(12), "count:by")
    t.eq(await(cases[7][1]), pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }), "delete: exec result")
end

function T.custom_sql_finders(t)
    local client = fake({}, true)
    local repo = posts(client)
    aio:await(repo.all:findRecent())
    t.eq({ last(client) }, { "SELECT * FROM `posts` ORDER BY id DESC", {}, "select" }, "suffix")
    aio:await(repo.one:findRecent())
    t.eq(last(client), "SELECT * FROM `posts` ORDER BY id DESC LIMIT 1", "one")
    aio:await(repo.count:findRecent())
    t.eq(last(client), "SELECT COUNT(*) AS c FROM (SELECT * FROM `posts` ORDER BY id DESC) AS `_q`", "count")
    aio:await(repo.delete:findRecent())
    t.eq(last(client), "DELETE FROM `posts` ORDER BY id DESC", "delete")
    -- a full SELECT; the '?' inside quotes is no placeholder
    aio:await(repo.all:byAuthorRaw("ann"))
    t.eq({ last(client) }, { "SELECT * FROM posts WHERE author = ? AND text <> '?'", { "ann" }, "select" }, "full")
    aio:await(repo.deleteOne:byAuthorRaw("ann"))
    t.eq({ last(client) }, { "DELETE FROM posts WHERE author = ? AND text <> '?' LIMIT 1", { "ann" }, "exec" },
        "full SELECT * turned into DELETE")
    aio:await(repo.count:byAuthorRaw("ann", { limit = 2 }))
    t.eq({ last(client) }, {
        "SELECT COUNT(*) AS c FROM (SELECT * FROM posts WHERE author = ? AND text <> '?' LIMIT ?) AS `_q`",
        { "ann", 2 }, "select" }, "count with limit")
    aio:await(repo.all:findTitles(3, { orderBy = "author DESC", limit = 1 }))
    t.eq({ last(client) }, {
        "SELECT id, author FROM posts WHERE id > ? ORDER BY `author` DESC LIMIT ?", { 3, 1 }, "select" },
        "custom with options")
    contains(t, raises(t, repo.delete.findTitles, repo.delete, 3), "DELETE")
    -- untyped arguments: booleans as 1/0, nil as NULL, tables refused
    aio:await(repo.all:findTitles(true))
    t.eq(select(2, last(client)), { 1 }, "true -> 1")
    aio:await(repo.all:findTitles(nil, nil))
    t.ok(rawequal(select(2, last(client))[1], NULL), "nil -> NULL")
    refused(t, client, repo.all:findTitles({ 1 }, nil), "argument 1")
    refused(t, client, repo.all:findTitles(0 / 0, nil), "argument 1")
end

function T.custom_sql_arity_skips_quotes_and_comments(t)
    local client = fake()
    local repo = posts(client, {
        findTricky = "SELECT * FROM posts WHERE text = 'it\\'s ?' AND author = ? AND `we?rd` = \"?\"\"?\""
            .. " -- a comment?\n AND id = ? /* ? */ # ?",
        findQuoted = "WHERE text = 'it''s ?' AND id = ?",
    })
    aio:await(repo.all:findTricky("a", 1))
    t.eq(select(2, last(client)), { "a", 1 }, "two placeholders")
    contains(t, raises(t, repo.all.findTricky, repo.all, "a", 1, {}, 2), "expects 2 argument")
    aio:await(repo.all:findQuoted(5, { limit = 1 }))
    t.eq({ last(client) }, { "SELECT * FROM `posts` WHERE text = 'it''s ?' AND id = ? LIMIT ?", { 5, 1 }, "select" })
    contains(t, raises(t, repo.all.findQuoted, repo.all), "expects 1 argument")
end

function T.options_order_limit_offset(t)
    local client = fake()
    local repo = posts(client)
    local W = "SELECT * FROM `posts` WHERE `author` = ? "
    local cases = {
        { { orderBy = "text" }, W .. "ORDER BY `text`", { "a" } },
        { { orderBy = "created desc" }, W .. "ORDER BY `created_at` DESC", { "a" } },
        { { orderBy = "  created   Asc " }, W .. "ORDER BY `created_at` ASC", { "a" } },
        { { orderBy = { "published", "id DESC" } }, W .. "ORDER BY `is_published`, `id` DESC", { "a" } },
        { { orderBy = "text ASC, id desc" }, W .. "ORDER BY `text` ASC, `id` DESC", { "a" } },
        { { limit = 10 }, W .. "LIMIT ?", { "a", 10 } },
        { { limit = 0 }, W .. "LIMIT ?", { "a", 0 } },
        { { limit = 10, offset = 20 }, W .. "LIMIT ? OFFSET ?", { "a", 10, 20 } },
        { { offset = 5 }, W .. "LIMIT 18446744073709551615 OFFSET ?", { "a", 5 } },
        { { orderBy = "id", limit = 3.0, offset = 1 }, W .. "ORDER BY `id` LIMIT ? OFFSET ?", { "a", 3, 1 } },
        { {}, W:sub(1, -2), { "a" } },
        { nil, W:sub(1, -2), { "a" } },
    }
    for i, case in ipairs(cases) do
        aio:await(repo.all:byAuthor("a", case[1]))
        local sql, args = last(client)
        t.eq(sql, case[2], "sql " .. i)
        t.eq(args, case[3], "args " .. i)
        if math.type and #args > 1 then t.eq(math.type(args[2]), "integer", "limit sent as an integer") end
    end
    aio:await(repo.one:byAuthor("a", { orderBy = "id DESC", offset = 2 }))
    t.eq({ last(client) }, { W .. "ORDER BY `id` DESC LIMIT 1 OFFSET ?", { "a", 2 }, "select" }, "one")
    aio:await(repo.count:byAuthor("a", { orderBy = "id" }))
    t.eq({ last(client) }, { "SELECT COUNT(*) AS c FROM `posts` WHERE `author` = ?", { "a" }, "select" },
        "count ignores the order")
    aio:await(repo.count:byAuthor("a", { limit = 5, offset = 1 }))
    t.eq({ last(client) }, { "SELECT COUNT(*) AS c FROM (" .. W .. "LIMIT ? OFFSET ?) AS `_q`", { "a", 5, 1 },
        "select" }, "count with limit counts what all returns")
    aio:await(repo.delete:byAuthor("a", { orderBy = "id DESC", limit = 2 }))
    t.eq({ last(client) }, { "DELETE FROM `posts` WHERE `author` = ? ORDER BY `id` DESC LIMIT ?", { "a", 2 },
        "exec" }, "delete")
    aio:await(repo.deleteOne:byAuthor("a", { orderBy = "id" }))
    t.eq(last(client), "DELETE FROM `posts` WHERE `author` = ? ORDER BY `id` LIMIT 1", "deleteOne")
end

function T.options_are_validated_never_sent(t)
    local client = fake()
    local repo = posts(client)
    local bad_order = {
        "id; DROP TABLE posts", "unknown", "created_at", "id DESCENDING", "id DESC; DROP TABLE posts",
        "`id`", "id -- x", "(SELECT 1)", "id, ", "", {}, { "id", 3 }, { "id; x" }, 5, true,
        "id DESC LIMIT 1",
    }
    for _, v in ipairs(bad_order) do
        refused(t, client, repo.all:by({ orderBy = v }), "orderBy")
    end
    local bad_counts = { -1, 1.5, "10", "1; DROP TABLE posts", true, {}, math.huge, 0 / 0, 2 ^ 70 }
    for _, v in ipairs(bad_counts) do
        refused(t, client, repo.all:by({ limit = v }), "limit")
        refused(t, client, repo.all:by({ offset = v }), "offset")
        refused(t, client, repo.count:by({ limit = v }), "limit")
    end
    refused(t, client, repo.all:by({ order = "id" }), "unknown option")
    refused(t, client, repo.all:by({ orderBy = "id", 5 }), "unknown option")
    refused(t, client, repo.all:by("id DESC"), "options must be a table")
    refused(t, client, repo.all:byId(1, 10), "options must be a table")
    refused(t, client, repo.one:by({ limit = 2 }), "limit")
    refused(t, client, repo.deleteOne:by({ limit = 2 }), "limit")
    refused(t, client, repo.delete:by({ offset = 2 }), "offset")
    refused(t, client, repo.delete:by({ orderBy = "nope" }), "orderBy")
end

function T.finder_arguments_are_converted_and_validated(t)
    local client = fake()
    local repo = posts(client)
    aio:await(repo.all:byId("12"))
    t.eq(select(2, last(client)), { 12 }, "digit string -> integer")
    refused(t, client, repo.all:byId("abc"), "argument 1 (id)")
    refused(t, client, repo.all:byId("1 OR 1=1"), "argument 1 (id)")
    refused(t, client, repo.one:byId(1.5), "argument 1 (id)")
    refused(t, client, repo.all:byId(nil), "nil")
    refused(t, client, repo.count:byId(NULL), "nil")
    refused(t, client, repo.all:byAuthor("much too long"), "varchar(8)")
    -- a datetime table is an argument, not options: the arity decides
    local created = { year = 2024, month = 1, day = 2, hour = 3, min = 4, sec = 5 }
    local repo2 = posts(client, { findByCreated = true })
    aio:await(repo2.all:byCreated(created))
    t.eq({ last(client) }, { "SELECT * FROM `posts` WHERE `created_at` = ?", { "2024-01-02 03:04:05" }, "select" })
    aio:await(repo2.all:byCreated(created, { limit = 1 }))
    t.eq(select(2, last(client)), { "2024-01-02 03:04:05", 1 }, "with options")
    -- injection attempts are parameters, never SQL
    aio:await(repo.all:byAuthor("x' OR 1#"))
    t.eq({ last(client) }, { "SELECT * FROM `posts` WHERE `author` = ?", { "x' OR 1#" }, "select" })
end

function T.misuse_raises(t)
    local repo = posts(fake())
    contains(t, raises(t, repo.all.byId, 5), "':'")
    contains(t, raises(t, repo.all.byId, repo.one, 5), "':'")
    contains(t, raises(t, repo.all.byId, repo.all), "expects 1 argument")
    contains(t, raises(t, repo.all.byId, repo.all, 1, {}, 3), "expects 1 argument")
    contains(t, raises(t, repo.all.byAuthorAndText, repo.all, "a"), "expects 2 argument")
    contains(t, raises(t, repo.insert, repo, "not a table"), "entity table")
    contains(t, raises(t, repo.insert, 5, {}), "':'")
    contains(t, raises(t, repo.update, repo, { id = 1 }, { nope = 1 }), "nope")
    contains(t, raises(t, repo.update, repo, { id = 1 }, "text"), "changes")
    contains(t, raises(t, repo.save, repo, nil), "entity table")
    contains(t, raises(t, repo.delete, { id = 1 }), "':'")
    local no_index = orm:create(fake(), { source = "logs", entity = { line = { type = t_.text } } })
    t.eq(no_index.index, nil, "no id, no index")
    contains(t, raises(t, no_index.update, no_index, { line = "x" }), "no index")
    contains(t, raises(t, no_index.save, no_index, { line = "x" }), "no index")
    contains(t, raises(t, no_index.delete, no_index, { line = "x" }), "no index")
end

---------------------------------------------------------------------------
-- results
---------------------------------------------------------------------------

function T.rows_map_columns_to_entity_keys_by_type(t)
    local client = fake({
        rows({ id = 1, author = "ann", text = NULL, created_at = "2024-01-02T03:04:05", score = "2.50",
               is_published = 1, extra = "kept", other = NULL },
             { ID = 2, Author = "bob", is_published = 0 }),
        rows({ id = 7, created_at = "2024-01-02" }),
        rows({ id = "abc" }),
        rows({ id = 1 }, { id = "x" }),
    })
    local repo = posts(client)
    local got = await(repo.all:by())
    t.eq(got[1], {
        { id = 1, author = "ann", created = { year = 2024, month = 1, day = 2, hour = 3, min = 4, sec = 5 },
          score = 2.5, published = true, extra = "kept", other = NULL },
        { id = 2, author = "bob", published = false },
    }, "entities")
    t.eq(got[1][1].text, nil, "NULL reads as nil")
    t.ok(rawequal(got[1][1].other, NULL), "unknown columns pass through unchanged")
    t.eq(await(repo.one:byId(7))[1], { id = 7, created = { year = 2024, month = 1, day = 2, hour = 0, min = 0, sec = 0 } })
    local bad = await(repo.one:byId(1))
    t.eq(bad[1], nil, "a value that does not convert")
    contains(t, bad[2], "posts.id")
    bad = await(repo.all:by())
    t.eq(bad[1], nil, "one bad row fails the query")
    contains(t, bad[2], "posts.id")
end

function T.server_errors_pass_through(t)
    local client = fake({ pack(nil, "Table 'x.posts' doesn't exist"), pack(nil, "gone away"),
                          pack(nil, "deadlock"), pack(nil, "dup"), pack(nil, "lost") }, true)
    local repo = posts(client)
    t.eq(await(repo.all:by()), pack(nil, "Table 'x.posts' doesn't exist"), "select")
    t.eq(await(repo.count:by()), pack(nil, "gone away"), "count")
    t.eq(await(repo.delete:byId(1)), pack(nil, "deadlock"), "delete")
    t.eq(await(repo:insert({ text = "x" })), pack(nil, "dup"), "insert")
    t.eq(await(repo:save({ id = 1 })), pack(nil, "lost"), "save's lookup")
end

---------------------------------------------------------------------------
-- writes
---------------------------------------------------------------------------

function T.insert_one_sets_the_auto_increment_id(t)
    local client = fake({ pack({ affected_rows = 1, last_insert_id = 42, warnings = 0 }) }, true)
    local repo = posts(client)
    local post = { author = "ann", text = "hi", created = "2024-01-02T03:04:05", published = false,
                   unrelated = "ignored" }
    local got = await(repo:insert(post))
    t.eq(got, pack({ affected_rows = 1, last_insert_id = 42, warnings = 0 }), "exec result")
    t.eq({ last(client) }, {
        "INSERT INTO `posts` (`author`, `created_at`, `is_published`, `text`) VALUES (?, ?, ?, ?)",
        { "ann", "2024-01-02 03:04:05", 0, "hi" }, "exec" })
    t.eq(post.id, 42, "id stored")
end

function T.insert_many_defaults_and_nulls(t)
    local client = fake({ pack({ affected_rows = 3, last_insert_id = 10, warnings = 0 }) })
    local repo = posts(client)
    local a, b, c = { author = "a" }, { text = "t", score = NULL }, { id = 5, author = "c" }
    await(repo:insert(a, b, c))
    local sql, args = last(client)
    t.eq(sql, "INSERT INTO `posts` (`author`, `id`, `score`, `text`) VALUES "
        .. "(?, DEFAULT, DEFAULT, DEFAULT), (DEFAULT, DEFAULT, ?, ?), (?, ?, DEFAULT, DEFAULT)")
    t.eq(#args, 5, "five parameters")
    t.eq(args[1], "a")
    t.ok(rawequal(args[2], NULL), "NULL is a NULL parameter")
    t.eq({ args[3], args[4], args[5] }, { "t", "c", 5 })
    t.eq(a.id, nil, "ids are not guessed for several rows")
    await(repo:replace({ id = 5, text = "r" }))
    t.eq({ last(client) }, { "REPLACE INTO `posts` (`id`, `text`) VALUES (?, ?)", { 5, "r" }, "exec" })
    await(repo:insert({}))
    t.eq(last(client), "INSERT INTO `posts` () VALUES ()", "nothing set: every column's default")
    local calls = #client.calls
    t.eq(await(repo:insert()), pack({ affected_rows = 0, last_insert_id = 0, warnings = 0 }), "no objects")
    t.eq(#client.calls, calls, "no query for no objects")
end

function T.insert_refuses_invalid_values(t)
    local client = fake()
    local repo = posts(client)
    refused(t, client, repo:insert({ id = "abc" }), "posts.id")
    refused(t, client, repo:insert({ author = "ok" }, { author = "far too long" }), "object 2: posts.author")
    refused(t, client, repo:insert({ created = "tomorrow" }), "posts.created")
    refused(t, client, repo:insert({ published = "yes" }), "posts.published")
    refused(t, client, repo:replace({ score = "NaN" }), "posts.score")
end

function T.update_whole_object_or_changes(t)
    local client = fake()
    local repo = posts(client)
    local post = { id = 3, author = "ann", text = "hi", published = true, score = NULL, unrelated = 1 }
    await(repo:update(post))
    local sql, args = last(client)
    t.eq(sql, "UPDATE `posts` SET `author` = ?, `is_published` = ?, `score` = ?, `text` = ? "
        .. "WHERE `id` = ? LIMIT 1", "nil fields (created) are left out")
    t.eq(#args, 5, "five parameters")
    t.eq({ args[1], args[2], args[4], args[5] }, { "ann", 1, "hi", 3 })
    t.ok(rawequal(args[3], NULL), "NULL is written as NULL")
    post.score = nil
    await(repo:update(post, { text = "new", score = NULL }))
    sql, args = last(client)
    t.eq(sql, "UPDATE `posts` SET `score` = ?, `text` = ? WHERE `id` = ? LIMIT 1")
    t.ok(rawequal(args[1], NULL), "NULL change")
    t.eq({ args[2], args[3] }, { "new", 3 })
    t.eq(post.text, "hi", "obj is not modified")
    await(repo:update(post, { id = 4 }))
    t.eq({ last(client) }, { "UPDATE `posts` SET `id` = ? WHERE `id` = ? LIMIT 1", { 4, 3 }, "exec" }, "new id")
    local calls = #client.calls
    t.eq(await(repo:update(post, {})), pack({ affected_rows = 0, last_insert_id = 0, warnings = 0 }), "no changes")
    t.eq(await(repo:update({ id = 3 })), pack({ affected_rows = 0, last_insert_id = 0, warnings = 0 }), "no fields")
    t.eq(#client.calls, calls, "no query for nothing to write")
    refused(t, client, repo:update({ author = "x" }), "id is not set")
    refused(t, client, repo:update({ id = NULL }, { text = "x" }), "id is not set")
    refused(t, client, repo:update({ id = "x" }, { text = "x" }), "posts.id")
    refused(t, client, repo:update(post, { author = "much too long" }), "posts.author")
    refused(t, client, repo:update(post, { created = "soon" }), "posts.created")
end

function T.composite_index(t)
    local client = fake({ rows({ found = 1 }) })
    local repo = orm:create(client, {
        source = "pairs", index = { "a", "b" },
        entity = { a = { type = t_.int }, b = { type = t_.text }, v = { field = "value", type = t_.double } },
    })
    await(repo:save({ a = 1, b = "x", v = 2.5 }))
    t.eq(client.calls[1][2], "SELECT 1 AS `found` FROM `pairs` WHERE `a` = ? AND `b` = ? LIMIT 1", "lookup")
    t.eq(client.calls[1][3], { 1, "x" })
    t.eq({ last(client) }, { "UPDATE `pairs` SET `value` = ? WHERE `a` = ? AND `b` = ? LIMIT 1", { 2.5, 1, "x" },
        "exec" }, "update")
    await(repo:delete({ a = 1, b = "x" }))
    t.eq({ last(client) }, { "DELETE FROM `pairs` WHERE `a` = ? AND `b` = ? LIMIT 1", { 1, "x" }, "exec" })
    refused(t, client, repo:delete({ a = 1 }), "b is not set")
    local calls = #client.calls
    await(repo:save({ a = 1, v = 1 }))
    t.eq(#client.calls, calls + 1, "no lookup when an index field is missing")
    t.eq(last(client), "INSERT INTO `pairs` (`a`, `value`) VALUES (?, ?)")
end

function T.save_inserts_or_updates(t)
    local client = fake({
        pack({ affected_rows = 1, last_insert_id = 9, warnings = 0 }), -- insert (no id)
        rows({ found = 1 }), pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }), -- update
        rows(), pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }), -- insert (id, no row)
    }, true)
    local repo = posts(client)
    local post = { author = "ann" }
    t.eq(await(repo:save(post)), pack({ affected_rows = 1, last_insert_id = 9, warnings = 0 }))
    t.eq(#client.calls, 1, "one query")
    t.eq(last(client), "INSERT INTO `posts` (`author`) VALUES (?)")
    t.eq(post.id, 9, "id stored")
    post.text = "edited"
    await(repo:save(post))
    t.eq({ client.calls[2][2], client.calls[2][3] }, { "SELECT 1 AS `found` FROM `posts` WHERE `id` = ? LIMIT 1", { 9 } })
    t.eq({ client.calls[3][2], client.calls[3][3] }, { "UPDATE `posts` SET `author` = ?, `text` = ? WHERE `id` = ? LIMIT 1",
        { "ann", "edited", 9 } }, "existing row: update")
    local other = { id = 77, author = "bob" }
    await(repo:save(other))
    t.eq(client.calls[4][2], "SELECT 1 AS `found` FROM `posts` WHERE `id` = ? LIMIT 1")
    t.eq({ client.calls[5][2], client.calls[5][3] }, { "INSERT INTO `posts` (`author`, `id`) VALUES (?, ?)", { "bob", 77 } },
        "no such row: insert with the id")
    t.eq(other.id, 77, "id kept")
    refused(t, client, repo:save({ id = "nope" }), "posts.id")
    refused(t, client, repo:save({ author = "far too long" }), "posts.author")
end

function T.delete_object_by_index(t)
    local client = fake({ pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }) })
    local repo = posts(client)
    t.eq(await(repo:delete({ id = 4, text = "ignored" })), pack({ affected_rows = 1, last_insert_id = 0, warnings = 0 }))
    t.eq({ last(client) }, { "DELETE FROM `posts` WHERE `id` = ? LIMIT 1", { 4 }, "exec" })
    refused(t, client, repo:delete({ text = "x" }), "id is not set")
    refused(t, client, repo:delete({ id = "4; DROP TABLE posts" }), "posts.id")
end

return T
