-- main.lua runs when the content server starts and on every reload (globals
-- survive reloads: write `x = x or ...` for state that must persist).
-- What it defines is visible to every template; httpd:expose shares plain data
-- with Jinja2 pages.

SITE = SITE or { name = "eightys", started = os.date("!%Y-%m-%d %H:%M:%S UTC") }
SITE.worker, SITE.workers = WORKERID, WORKERS

-- The navigation of every page (header.priv.html and layout.priv.j2.html).
SITE.nav = {
    { href = "/", label = "Home" },
    { href = "/loop", label = "Templates" },
    { href = "/form/", label = "Forms" },
    { href = "/counter", label = "Sessions" },
    { href = "/secret", label = "Encrypted links" },
    { href = "/posts/", label = "Posts" },
    { href = "/hello?name=Jinja", label = "Jinja2" },
}

--- Whether nav link `href` is the page at `endpoint` (or a section holding it).
function nav_current(href, endpoint)
    local path = href:match("^[^?]*")
    if path == "/" then return endpoint == "/" end
    return endpoint == path or (path:sub(-1) == "/" and endpoint:sub(1, #path) == path)
end

-- "How this page is made": the source of a page of the site, re-read at most
-- every 2 seconds, so the box shows an edited page without a reload.
local sources = {}
function page_source(name)
    local entry = sources[name]
    local now = os.time()
    if entry == nil or now - entry.read > 1 then
        local text = net.readfile(httpd.root .. "/" .. name)
        entry = { text = text or "", read = now }
        sources[name] = entry
    end
    return entry.text
end
-- Jinja2 pages cannot read files: theirs is shared with them (read at start and on reload).
SITE.sources = { ["hello.j2.html"] = page_source("hello.j2.html") }

-- The encrypted-link demo needs a key. Without MASTER_KEY, one per start, derived
-- from the server secret so that every worker has the same (links work on all of
-- them, and stop working at the next start unless SECRET_KEY is set).
if httpd.master_key == nil then
    httpd.master_key = crypto.hmac_sha256("eightys demo: encrypted links", httpd.secret)
    SITE.per_start_key = true
else
    SITE.per_start_key = false
end

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
