-- An app written against 80s's API (module names, globals, aio/net/codec/crypto
-- calls), for tests/test_80s_compat.py. Written for the tests: no 80s code.
require("aio.aio")
require("aio.lib.nodes")
local http_client = require("aio.lib.http_client")
local dns = require("aio.lib.dns")
local templates = require("aio.lib.templates")

local master_port = tonumber(os.getenv("NODES_MASTER_PORT") or "")
nodes:start { authorization = "TEST-SECRET", master = master_port and { "localhost", master_port, 0 } }

closed_names = closed_names or {}
aio:register_close_handler("test", function(sock)
    if sock.chat_name then closed_names[#closed_names + 1] = sock.chat_name end
end)

local function kinds(tbl)
    local out = {}
    for name, fn in pairs(tbl) do
        if type(fn) ~= "table" and type(fn) ~= "string" and type(fn) ~= "number"
                and type(fn) ~= "boolean" then
            out[name] = type(fn)
        end
    end
    return out
end

aio:http_get("/globals", function(fd)
    fd:http_response("200 OK", "application/json", {
        node_id = NODE_ID, nilfd = NILFD ~= nil, socket = S80_FD_SOCKET, pipe = S80_FD_PIPE,
        other = S80_FD_OTHER, ktls = S80_FD_KTLS_SOCKET, reload = S80_RELOAD ~= nil,
        mb = S80_MB_MESSAGE, worker = WORKERID,
        net = kinds(net), codec = kinds(codec), crypto = kinds(crypto),
        templates = type(templates.render) == "function" or type(templates) == "table",
    })
end)

aio:http_get("/ip", function(fd)
    local ip, port = net.sockname(fd.fd)
    local ip2 = aio:get_ip(fd, { ["x-real-ip"] = "10.1.2.3" })
    fd:http_response("200 OK", "text/plain", string.format("%s:%d %s", ip, port, ip2))
end)

aio:http_get("/partscan", function(fd, query)
    local q = aio:parse_query(query)
    fd:http_response("200 OK", "application/json",
        { net.partscan(q.haystack or "", q.needle or "", tonumber(q.offset) or 1) })
end)

aio:http_get("/cipher", function(fd, query)
    local q = aio:parse_query(query)
    local key = q.key or "1234567890123456"
    if q.token then -- decrypt a hex token
        local plain, err = crypto.cipher(codec.hex_decode(q.token), key, true, false)
        return fd:http_response("200 OK", "text/plain", plain or ("ERR " .. tostring(err)))
    end
    local token, err = crypto.cipher(q.text or "", key, q.iv ~= "0", true)
    fd:http_response("200 OK", "text/plain", token and codec.hex_encode(token) or ("ERR " .. err))
end)

aio:http_get("/encrypt", function(fd, query)
    local q = aio:parse_query(query)
    local key = aio:create_key("private-key-of-16+")
    local sealed = aio:encrypt(q.text or "", key)
    fd:http_response("200 OK", "application/json", {
        sealed = sealed, opened = aio:decrypt(sealed, key),
        tampered = aio:decrypt("x" .. sealed, key) == nil,
    })
end)

aio:http_get("/url", function(fd, query)
    aio:set_master_key("0123456789abcdef-master")
    local url = aio:to_url("/target", { a = "1", b = "x y" }, "frag")
    local plain = aio:to_url("/target", { a = "1", e = false })
    local qs = url:match("%?(.-)#")
    local back = aio:parse_query(qs, "/target")
    aio:set_master_key(nil)
    fd:http_response("200 OK", "application/json",
        { url = url, plain = plain, a = back.a, b = back.b, e_b = back.e.b })
end)

aio:http_get("/codec", function(fd)
    local value = { 1, "two", { x = "y\n\"z\"" }, flag = true, n = 2.5 }
    local text = codec.lua_encode(value)
    local again = load("return " .. text)()
    fd:http_response("200 OK", "application/json", {
        lua = text, same = again[2] == "two" and again[3].x == "y\n\"z\"" and again.flag
            and again.n == 2.5,
        mysql = codec.mysql_encode("it's \"q\"\n\\ \0 end"),
    })
end)

aio:http_get("/popen", function(fd)
    -- no shell: "$HOME" and "a b" arrive as given
    aio:popen_read(ELFD, "printf", "%s|%s", "a b", "$HOME")(function(out)
        fd:http_response("200 OK", "text/plain", out or "FAILED")
    end)
end)

aio:http_get("/popen-missing", function(fd)
    aio:popen_read(ELFD, "no-such-program-eightys")(function(out)
        fd:http_response("200 OK", "text/plain", "got:" .. tostring(out))
    end)
end)

aio:http_get("/popen-write", function(fd)
    local rd, wr = aio:popen(ELFD, "cat")
    aio:read_stream(rd)(function(out)
        fd:http_response("200 OK", "text/plain", out)
    end)
    wr:write("piped through cat")
    wr:close()
end)

aio:http_get("/sleep", function(fd, query)
    local rd = aio:popen(ELFD, "sleep", aio:parse_query(query).seconds)
    fd:http_response(200, "text/plain", rd and "started" or "failed")
end)

aio:http_get("/chunked", function(fd)
    local stream = fd:http_stream(200, "text/plain")
    stream:write("chunk one, ")
    stream:write("chunk two")
    stream:close()
end)

aio:http_get("/redirect", function(fd)
    fd:http_response(302, { Location = "/chunked" }, "")
end)

aio:http_post("/echo-body", function(fd, query, headers, body)
    fd:http_response(200, "text/plain", (headers["content-type"] or "-") .. " " .. body)
end)

aio:http_get("/client", function(fd, query)
    local base = "http://127.0.0.1:" .. PORT
    aio:async(function()
        local first = aio:await(http_client:GET(base .. "/chunked"))
        local redirect = aio:await(http_client:GET(base .. "/redirect"))
        local followed = aio:await(http_client:GET(base .. "/redirect", { redirects = 2 }))
        local posted = aio:await(http_client:POST(base .. "/echo-body", { k = "v" }))
        local req = aio:await(http_client:request({ method = "GET", url = base .. "/partscan",
            query = { haystack = "abcdef", needle = "cd" } }))
        local refused = aio:await(http_client:GET("http://127.0.0.1:1/"))
        local looked_up = aio:await(dns:get_ip("localhost", "A"))
        local peer1 = aio:await(http_client:GET(base .. "/ip")).body:match(":(%d+)")
        local peer2 = aio:await(http_client:GET(base .. "/ip")).body:match(":(%d+)")
        local fresh = aio:await(http_client:GET(base .. "/ip", { keepalive = false })).body:match(":(%d+)")
        local fresh2 = aio:await(http_client:GET(base .. "/ip")).body:match(":(%d+)")
        fd:http_response("200 OK", "application/json", {
            chunked = first.body, status = first.status,
            redirect_status = redirect.status, location = redirect.headers.location,
            followed = followed.body, posted = posted.body, query = req.body,
            refused = refused.error ~= nil, ip = looked_up.ip,
            reused = peer1 == peer2, not_reused = fresh == peer2 and fresh2 ~= peer2,
        })
    end)
end)

aio:http_get("/closed", function(fd)
    fd:http_response("200 OK", "application/json", codec.array(closed_names))
end)

aio:http_get("/limits", function(fd, query)
    aio:set_max_http_body(tonumber(aio:parse_query(query).body))
    fd:http_response(200, "text/plain", "ok")
end)

aio:http_post("/upload", function(fd, query, headers, body)
    fd:http_response(200, "text/plain", tostring(#body))
end)

-- the 80s chat idiom: raw lines after the request head, broadcast through nodes
aio:stream_http_get("/chat", function(self, query, headers, body)
    self:write("name? ")
    local name = coroutine.yield("\n")
    if not name then return end
    name = name:gsub("\r", "")
    nodes:register(self, { "chat", name })
    self.chat_name = name
    self:write("hello " .. name .. " on " .. WORKERID .. "\n")
    while true do
        local line = coroutine.yield("\n")
        if not line then break end
        nodes:broadcast({ nodes.global, "chat" }, self:get_name(), name .. ": " .. line .. "\n")
    end
end)

-- a stream handler that reads a fixed number of bytes, as a returned coroutine
aio:stream_http_post("/raw", function(self, query, headers)
    return coroutine.create(function()
        local n = tonumber(headers["content-length"]) or 0
        local data = coroutine.yield(n)
        self:write("HTTP/1.1 200 OK\r\nContent-Length: " .. #data + 4 .. "\r\nConnection: close\r\n\r\nraw:" .. data)
        self:close()
    end)
end)

-- 80s's eight-argument net.mail, delivered to on_message
function on_message(sender, sender_elfd, sender_fd, elfd, receiver_fd, mtype, message)
    last_mail = string.format("%s %s %s", tostring(sender), tostring(mtype), tostring(message))
end

aio:http_get("/mail80", function(fd)
    local ok, err = net.mail(S80_RELOAD, WORKERID, ELFD, NILFD, 0, NILFD, S80_MB_MESSAGE, "hi 80s")
    fd:http_response(200, "text/plain", tostring(ok) .. " " .. tostring(err))
end)

aio:http_get("/mailbox", function(fd)
    fd:http_response(200, "text/plain", last_mail or "")
end)

aio:http_get("/connect2", function(fd)
    aio:connect2({ host = "127.0.0.1", port = PORT })(function(sock)
        if iserror(sock) then return fd:http_response(502, "text/plain", sock.error) end
        aio:read_stream(sock)(function(data)
            local method, status, headers = aio:parse_http(data, true)
            fd:http_response(200, "application/json",
                { proto = method, status = status, type = headers["content-type"] })
        end)
        sock:write("GET /ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    end)
end)

aio:http_get("/connect2-refused", function(fd)
    aio:connect2({ host = "127.0.0.1", port = 1 })(function(sock)
        fd:http_response(200, "text/plain", iserror(sock) and "refused" or "connected?")
    end)
end)

-- 80s's templates:prepare / templates:render
aio:http_get("/tpl80", function(fd, query)
    local tpl, err = templates:prepare(
        '<p><?lu write("%s", query.x or "none") ?></p><?lua status("201 Created") header("X-T", "1") done() ?>',
        "tests/apps", "inline.dyn.html")
    if not tpl then return fd:http_response(500, "text/plain", err) end
    templates:render(fd, {}, {}, "", "GET", "/tpl80", aio:parse_query(query), "text/html", tpl)(function(res)
        fd:http_response(res.status, res.headers, res.content)
    end)
end)

-- aio:watch (80s's inotify watch)
watched = watched or {}
aio:http_get("/watch", function(fd, query)
    local dir = aio:parse_query(query).dir
    local w = aio:watch(ELFD, { dir }, function(events)
        for _, e in ipairs(events) do
            local name = e.name:match("[^/]+$")
            watched[#watched + 1] = name .. (e.create and ":create" or e.modify and ":modify"
                or e.delete and ":delete" or ":?")
        end
    end)
    if w then watcher = w end
    fd:http_response(200, "text/plain", w and "watching" or "failed")
end)

aio:http_get("/watched", function(fd)
    fd:http_response(200, "application/json", codec.array(watched))
end)

aio:http_get("/unwatch", function(fd)
    fd:http_response(200, "text/plain", tostring(watcher and watcher:close()))
end)
