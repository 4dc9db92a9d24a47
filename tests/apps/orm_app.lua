-- Test app for tests/test_orm.py: the ORM (eightys/lua/orm.lua) over the real MySQL
-- client (eightys/lua/mysql.lua) against a real MariaDB.
--
--   POST /run   body: a Lua chunk. It runs in the request's coroutine (so it can
--               aio:await) with these names besides the globals:
--                 sql        the connected mysql client (connected on first use)
--                 posts      orm:create(sql, POSTS) below
--                 pairs_repo orm:create(sql, PAIRS) below
--                 R(promise) -> {v = first value, e = second value} (awaited)
--               Response: JSON {ok = true, result = <what the chunk returned>}, or
--               {ok = false, error = message and traceback}.
--
-- Connection settings come from the environment: ORM_TEST_HOST, ORM_TEST_PORT,
-- ORM_TEST_USER, ORM_TEST_PASSWORD, ORM_TEST_DB (tests/test_orm.py sets them).

local orm = require("orm")
local mysql = require("mysql")

local settings = {
    host = os.getenv("ORM_TEST_HOST") or "127.0.0.1",
    port = tonumber(os.getenv("ORM_TEST_PORT") or "3306"),
    user = os.getenv("ORM_TEST_USER") or "root",
    password = os.getenv("ORM_TEST_PASSWORD") or "",
    db = os.getenv("ORM_TEST_DB") or "eightys_test",
}

local POSTS = {
    source = "orm_posts",
    entity = {
        id = { field = "id", type = orm.t.int },
        author = { field = "author", type = orm.t.varchar(16) },
        text = { field = "text", type = orm.t.text },
        created = { field = "created_at", type = orm.t.datetime },
        score = { field = "score", type = orm.t.double },
        price = { field = "price", type = orm.t.double },
        published = { field = "is_published", type = orm.t.bit },
        flag = { field = "flag", type = orm.t.boolean },
        big = { field = "big", type = orm.t.int },
        note = { field = "note", type = orm.t.varchar(32) },
    },
    index = "id",
    findById = true,
    findBy = true,
    findByAuthor = true,
    findByAuthorAndText = true,
    findByCreated = true,
    findByPublished = true,
    findRecent = "ORDER BY id DESC",
    findByAuthorPrefix = "SELECT * FROM orm_posts WHERE author LIKE CONCAT(?, '%') ORDER BY id",
}

local PAIRS = {
    source = "orm_pairs",
    entity = {
        a = { field = "a", type = orm.t.int },
        b = { field = "b", type = orm.t.varchar(8) },
        value = { field = "val", type = orm.t.double },
    },
    index = { "a", "b" },
    findByA = true,
}

local state -- {sql, posts, pairs_repo} once connected

local function connect()
    if state then return state end
    local client = mysql:new()
    local ok, err = aio:await(client:connect(settings.user, settings.password, settings.db,
        settings.host, settings.port))
    if not ok then return nil, "connect: " .. tostring(err) end
    state = {
        sql = client,
        posts = orm:create(client, POSTS),
        pairs_repo = orm:create(client, PAIRS),
    }
    return state
end

local function R(promise)
    local v, e = aio:await(promise)
    return { v = v, e = e }
end

local function respond(fd, value)
    local body, err = codec.json_encode(value)
    if body == nil then
        body = codec.json_encode({ ok = false, error = "cannot encode the result: " .. tostring(err) })
    end
    fd:http_response(200, "application/json", body)
end

aio:http_post("/run", function(fd, query, headers, body)
    local conn, err = connect()
    if conn == nil then return respond(fd, { ok = false, error = err }) end
    local env = setmetatable({
        sql = conn.sql, posts = conn.posts, pairs_repo = conn.pairs_repo, R = R,
    }, { __index = _G })
    local chunk, load_err = load(body, "=snippet", "t", env)
    if chunk == nil then return respond(fd, { ok = false, error = load_err }) end
    local ok, result = xpcall(chunk, debug.traceback)
    if not ok then return respond(fd, { ok = false, error = tostring(result) }) end
    respond(fd, { ok = true, result = result })
end)
