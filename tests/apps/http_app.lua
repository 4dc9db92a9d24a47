-- Test app for tests/test_http.py: one route per HTTP feature under test.
-- Bodies are short, exact strings so the tests can compare them byte for byte.
--
--   GET  /hello               -> 200 "hello" (text/plain; charset=utf-8)
--   GET  /fast?id=N           -> 200 "fast N"
--   GET  /slow?id=N           -> after 0.3 s (aio:await(aio:sleep)): 200 "slow N"
--   GET  /async               -> after 0.05 s: 200 "async done"
--   POST /echo                -> 200 "got N bytes: BODY" (N = #body)
--   GET|POST /method          -> 200 "method GET" / "method POST" (other methods: 405)
--   GET  /users/:id/posts/:post -> 200 "user ID post POST"
--   GET  /files/:name         -> 200 "file NAME"
--   GET  /stream?n=N          -> chunked: "line 1\n" .. "line N\n", 0.02 s apart
--   GET  /status80            -> fd:http_response("201 Made Here", "text/x-80s", "x")
--   GET  /status80bare        -> fd:http_response("202", ...): "202 Accepted", body "bare"
--   GET  /status80bad         -> fd:http_response("200OK", ...): not a status, so 500
--   GET  /json                -> a table body: {"name":"eightys","n":3}
--   GET  /headers             -> a header table (custom headers, Set-Cookie list,
--                                and a Content-Length the server must ignore)
--   GET  /xecho?v=HEX         -> 200 "echoed" with the header X-Echo: <the bytes HEX encodes>
--                                (bytes a header may not hold: 500)
--   GET  /nocontent           -> 204 without a body
--   GET  /boom                -> raises (the tests expect 500 and this file:line in the log)
--   GET  /asyncboom           -> raises after a 0.05 s sleep (500 from a resumed coroutine)
--   GET  /big?kb=N            -> N KiB of "x" (flow control)
--   GET  /bye                 -> 200 "bye" and fd:close(): the connection closes after it

local function id_of(query)
    return aio:parse_query(query).id or "?"
end

aio:http_get("/hello", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", "hello")
end)

aio:http_get("/fast", function(fd, query)
    fd:http_response(200, "text/plain; charset=utf-8", "fast " .. id_of(query))
end)

aio:http_get("/slow", function(fd, query)
    aio:await(aio:sleep(0.3))
    fd:http_response(200, "text/plain; charset=utf-8", "slow " .. id_of(query))
end)

aio:http_get("/async", function(fd)
    aio:await(aio:sleep(0.05))
    fd:http_response(200, "text/plain; charset=utf-8", "async done")
end)

aio:http_post("/echo", function(fd, query, headers, body)
    fd:http_response(200, "text/plain; charset=utf-8", "got " .. #body .. " bytes: " .. body)
end)

aio:http_get("/method", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", "method GET")
end)

aio:http_post("/method", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", "method POST")
end)

aio:http_get("/users/:id/posts/:post", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8",
        "user " .. fd.params.id .. " post " .. fd.params.post)
end)

aio:http_get("/files/:name", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", "file " .. fd.params.name)
end)

aio:http_get("/stream", function(fd, query)
    local n = tonumber(aio:parse_query(query).n) or 3
    local stream = fd:http_stream(200, "text/plain; charset=utf-8")
    for i = 1, n do
        stream:write("line " .. i .. "\n")
        aio:await(aio:sleep(0.02))
    end
    stream:close()
end)

aio:http_get("/status80", function(fd)
    fd:http_response("201 Made Here", "text/x-80s", "x")
end)

aio:http_get("/status80bare", function(fd)
    fd:http_response("202", "text/plain; charset=utf-8", "bare")
end)

aio:http_get("/status80bad", function(fd)
    fd:http_response("200OK", "text/plain; charset=utf-8", "bad") -- MARK:badstatus
end)

aio:http_get("/json", function(fd)
    fd:http_response(200, nil, { name = "eightys", n = 3 })
end)

aio:http_get("/headers", function(fd)
    fd:http_response(200, {
        ["Content-Type"] = "text/x-custom",
        ["X-Custom"] = "yes",
        ["Set-Cookie"] = { "a=1", "b=2" },
        ["Content-Length"] = "999", -- managed by the server: must be dropped
    }, "custom")
end)

aio:http_get("/xecho", function(fd, query)
    local value = codec.hex_decode(aio:parse_query(query).v or "")
    fd:http_response(200, { ["X-Echo"] = value }, "echoed") -- MARK:xecho
end)

aio:http_get("/nocontent", function(fd)
    fd:http_response(204, "text/plain; charset=utf-8", "")
end)

aio:http_get("/boom", function(fd)
    error("boom from the handler") -- MARK:boom
end)

aio:http_get("/asyncboom", function(fd)
    aio:await(aio:sleep(0.05))
    error("async boom after a sleep") -- MARK:asyncboom
end)

aio:http_get("/big", function(fd, query)
    local kb = tonumber(aio:parse_query(query).kb) or 1
    fd:http_response(200, "text/plain; charset=utf-8", string.rep("x", kb * 1024))
end)

aio:http_get("/bye", function(fd)
    fd:close()
    fd:http_response(200, "text/plain; charset=utf-8", "bye")
end)

-- path parameters per method (GET /u/:id, POST /u/:name)
aio:http_get("/u/:id", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8",
        "get id=" .. tostring(fd.params.id) .. " name=" .. tostring(fd.params.name))
end)
aio:http_post("/u/:name", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8",
        "post id=" .. tostring(fd.params.id) .. " name=" .. tostring(fd.params.name))
end)

-- the private http_send used on a connection that is not HTTP: a Lua error, with a message
aio:http_get("/http_send_on_raw", function(fd)
    local host = require("eightys.host")
    local raw = net.connect(ELFD, "127.0.0.1", PORT)
    local ok, err = pcall(host.http_send, raw, 0, "x", true)
    net.close(ELFD, raw)
    fd:http_response(200, "text/plain; charset=utf-8", tostring(ok) .. " " .. tostring(err))
end)

-- a handler that never answers: --handler-timeout turns it into a 504
aio:http_get("/hang", function(fd) -- MARK:hang-handler
    local _, never = aio:prepare_promise()
    aio:await(never) -- MARK:hang-wait
end)
