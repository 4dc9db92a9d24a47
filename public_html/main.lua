-- main.lua runs when the content server starts and on every reload (globals
-- survive reloads: write `x = x or ...` for state that must persist).
-- What it defines is visible to every template; httpd:expose shares plain data
-- with Jinja2 pages.

SITE = SITE or { name = "eightys", started = os.date("!%Y-%m-%d %H:%M:%S UTC") }

--- A few rows for the loop demo (and the .dyn. benchmark page).
function demo_rows(n)
    local rows = {}
    for i = 1, n do
        rows[i] = { id = i, name = "row " .. i, square = i * i }
    end
    return rows
end

httpd:expose("site", SITE)


-- The posts demo: MySQL through the ORM. Settings come from DB_HOST, DB_PORT,
-- DB_USER, DB_PASSWORD and DB_NAME (defaults: 127.0.0.1, 3306, root, no
-- password, eightys_demo). The connection is made once per worker and kept
-- across reloads; SQL_READY resolves with true or nil, err.
local mysql = require("mysql")
local orm = require("orm")

if SQL == nil then
    SQL = mysql:new()
    SQL_READY = aio:chain(
        SQL:connect(os.getenv("DB_USER") or "root", os.getenv("DB_PASSWORD") or "",
                    os.getenv("DB_NAME") or "eightys_demo", os.getenv("DB_HOST") or "127.0.0.1",
                    tonumber(os.getenv("DB_PORT") or "3306")),
        function(ok, err)
            if not ok then return nil, err end
            return SQL:exec([[CREATE TABLE IF NOT EXISTS posts (
                id INT AUTO_INCREMENT PRIMARY KEY,
                author VARCHAR(64) NOT NULL,
                text TEXT NOT NULL,
                created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)]])
        end,
        function(result, err)
            if not result then return nil, err end
            return true
        end)
end

Posts = orm:create(SQL, {
    source = "posts",
    entity = {
        id = { field = "id", type = orm.t.int },
        author = { field = "author", type = orm.t.varchar(64) },
        text = { field = "text", type = orm.t.text },
        created = { field = "created", type = orm.t.datetime },
    },
    index = "id",
    findById = true,
    findBy = true,
})

-- The chat demo (chat.dyn.html, static/chat.js): one WebSocket route. Each message
-- is published to the "chat" channel, so it reaches the participants connected to
-- every worker, not only this one.
local MAX_NAME, MAX_TEXT = 32, 2000

aio:websocket("/chat/ws", {
    open = function(ws)
        ws:subscribe("chat")
        ws:send({ type = "welcome", worker = WORKERID })
    end,
    message = function(ws, data)
        local msg = codec.json_decode(data)
        if type(msg) ~= "table" or type(msg.text) ~= "string" or msg.text == "" then
            return ws:close(1003, "expected JSON {\"name\": ..., \"text\": ...}")
        end
        local name = type(msg.name) == "string" and msg.name ~= "" and msg.name:sub(1, MAX_NAME)
            or "anonymous"
        aio:publish("chat", { type = "message", name = name, text = msg.text:sub(1, MAX_TEXT),
                              worker = WORKERID })
    end,
}, { max_message = 8192, idle_timeout = 60 })
