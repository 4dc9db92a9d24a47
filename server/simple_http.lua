-- The default app and the benchmark route (as in 80s):
--   eightys server/simple_http.lua -p 8080
--   curl 'http://localhost:8080/echo?name=Abcde'      -> Hi, Abcde!
--
-- Demo routes:
--   GET  /echo?name=X        plain text
--   GET  /json               a JSON body from a Lua table
--   GET  /users/:id          a path parameter
--   POST /echo               echoes the request body back
--   GET  /stream?n=5         a streaming (chunked) response, one line per 0.1 s
--   GET  /sleep?s=0.5        an async handler (aio:await of a timer)
--   GET  /headers            the request headers as JSON
--   GET  /worker             which worker answered

aio:http_get("/echo", function(fd, query, headers, body)
    local params = aio:parse_query(query)
    fd:http_response(200, "text/plain; charset=utf-8", "Hi, " .. (params.name or "Nomad") .. "!")
end)

aio:http_post("/echo", function(fd, query, headers, body)
    fd:http_response(200, headers["content-type"] or "application/octet-stream", body)
end)

aio:http_get("/json", function(fd)
    fd:http_response(200, nil, { worker = WORKERID, workers = WORKERS, node = NODE,
                                 list = codec.array({ 1, 2, 3 }) })
end)

aio:http_get("/users/:id", function(fd)
    fd:http_response(200, nil, { id = fd.params.id })
end)

aio:http_get("/stream", function(fd, query)
    local n = tonumber(aio:parse_query(query).n) or 5
    local stream = fd:http_stream(200, "text/plain; charset=utf-8")
    for i = 1, math.min(n, 1000) do
        stream:write("line " .. i .. "\n")
        aio:await(aio:sleep(0.1))
    end
    stream:close()
end)

aio:http_get("/sleep", function(fd, query)
    local seconds = tonumber(aio:parse_query(query).s) or 0.1
    aio:await(aio:sleep(math.min(seconds, 30)))
    fd:http_response(200, "text/plain; charset=utf-8", "slept " .. seconds)
end)

aio:http_get("/headers", function(fd, query, headers)
    fd:http_response(200, nil, headers)
end)

aio:http_get("/worker", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", tostring(WORKERID))
end)
