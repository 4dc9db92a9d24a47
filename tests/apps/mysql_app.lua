-- Test app for tests/test_mysql.py: the MySQL module in a real worker.
--
-- The database comes from the environment (set by the test):
--   EIGHTYS_TEST_MYSQL_HOST, _PORT, _USER, _PASSWORD, _DB   the test database
--   EIGHTYS_TEST_MYSQL_DOWN_PORT                           a port nothing listens on
--
--   GET /rows?name=N  -> JSON {rows = [...]} of `SELECT ... WHERE name = ?` on the
--                        table mysql_app (created by the test), or {error = "..."}
--   GET /down         -> the same query through a client pointed at the closed
--                        port: {error = "mysql: (2003) ..."}
--   GET /pid          -> the worker's pid (from net.info), to prove it survived

local mysql = require("aio.lib.mysql")

local env = os.getenv
local db = mysql:new({ pool_size = 2 })
db:connect(env("EIGHTYS_TEST_MYSQL_USER"), env("EIGHTYS_TEST_MYSQL_PASSWORD"),
    env("EIGHTYS_TEST_MYSQL_DB"), env("EIGHTYS_TEST_MYSQL_HOST"),
    tonumber(env("EIGHTYS_TEST_MYSQL_PORT")))

local down = mysql:new({ connect_timeout = 1 })
down:connect("nobody", "x", "nothing", "127.0.0.1", tonumber(env("EIGHTYS_TEST_MYSQL_DOWN_PORT")))

local function answer(fd, rows, err)
    if rows == nil then
        fd:http_response(503, "application/json", { error = tostring(err) })
    else
        fd:http_response(200, "application/json", { rows = rows })
    end
end

aio:http_get("/rows", function(fd, query)
    local name = aio:parse_query(query).name or ""
    answer(fd, aio:await(db:select_args(
        "SELECT id, name, score, note FROM mysql_app WHERE name = ? ORDER BY id", { name })))
end)

aio:http_get("/down", function(fd)
    answer(fd, aio:await(down:select("SELECT id FROM mysql_app WHERE name = '%s'", "x")))
end)

aio:http_get("/pid", function(fd)
    fd:http_response(200, "text/plain", net.info():match("pid: (%d+)"))
end)
