-- WebSocket test app (tests/test_websocket.py).
VERSION = VERSION or "v1"
CLOSES = CLOSES or {} -- "path id code reason", for /closes

local function record(ws, code, reason)
    CLOSES[#CLOSES + 1] = table.concat({ ws.path, ws.id, code, reason, ws.name or "" }, " ")
end

aio:websocket("/echo", {
    open = function(ws, query, headers)
        ws.name = "echo"
        ws:send("open worker=" .. WORKERID .. " query=" .. query .. " ua=" .. (headers["user-agent"] or "")
            .. " protocol=" .. tostring(ws.protocol))
    end,
    message = function(ws, data, binary)
        if data == "boom" then error("handler exploded") end
        if data == "version" then return ws:send(VERSION) end
        if data == "close" then return ws:close(4000, "bye") end
        if data == "sleep" then
            aio:await(aio:sleep(0.05))
            return ws:send("slept")
        end
        if data == "table" then return ws:send({ ok = true }) end
        if data == "flood" then -- the client reads nothing meanwhile
            local chunk = string.rep("f", 65536)
            for i = 1, 1000 do
                local ok, err = ws:send(chunk)
                if not ok then return print("flood stopped at " .. i .. ": " .. err) end
            end
            return print("flood sent everything")
        end
        local ok, err = ws:send(data, binary)
        if not ok then print("send failed: " .. tostring(err)) end
    end,
    close = record,
}, { protocols = { "chat.v1", "chat.v2" }, max_message = 65536, compress = true })

aio:websocket("/rooms/:room", {
    open = function(ws) ws:subscribe(ws.params.room); ws:send("joined " .. ws.params.room .. " worker=" .. WORKERID) end,
    message = function(ws, data)
        local n = aio:publish(ws.params.room, data)
        if data == "count" then ws:send("local=" .. n) end
    end,
    close = record,
}, { send_buffer = 65536 })

aio:websocket("/publish/:room", {
    message = function(ws, data) ws:send(tostring(aio:publish(ws.params.room, data))) end,
})
aio:websocket("/idle", { close = record }, { idle_timeout = 1 })
aio:websocket("/origin", { open = function(ws) ws:send("welcome") end },
              { origins = { "https://good.example" } })
aio:websocket("/hooks", "hooks")

-- 80s hooks: on a WebSocket connection, messages come here
function on_data(elfd, fd, data, len)
    if data == "quit" then return net.close(elfd, fd) end
    net.write(elfd, fd, "hook:" .. data .. ":" .. len)
end
function on_close(elfd, fd)
    CLOSES[#CLOSES + 1] = "hooks " .. fd
end

aio:http_get("/guarded", function(fd, query, headers)
    if headers["x-token"] ~= "secret" then return fd:http_response(403, "text/plain", "no") end
    fd:websocket({ message = function(ws, data) ws:send("guarded:" .. data) end, close = record })
end)

aio:http_get("/later", function(fd) -- the upgrade is decided after an await
    aio:await(aio:sleep(0.1))
    fd:websocket({ open = function(ws) ws:send("late open") end,
                   message = function(ws, data) ws:send("later:" .. data) end, close = record })
end)

aio:http_get("/slow", function(fd)
    aio:await(aio:sleep(0.5))
    fd:http_response(200, "text/plain", "slow")
end)
aio:http_get("/pending", function(fd)
    local n = 0
    for _ in pairs(require("eightys.websocket").pending) do n = n + 1 end
    fd:http_response(200, "text/plain", tostring(n))
end)

aio:http_get("/closes", function(fd) fd:http_response(200, "application/json", CLOSES) end)
aio:http_get("/publish", function(fd, query)
    local q = aio:parse_query(query)
    fd:http_response(200, "text/plain", tostring(aio:publish(q.channel, q.data)))
end)
aio:http_get("/", function(fd) fd:http_response(200, "text/plain", "http on worker " .. WORKERID) end)
