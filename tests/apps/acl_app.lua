-- Network ACL test app (tests/test_acl.py). Every place Lua could run for a
-- connection counts into RAN (on_accept is a raw hook: not defined here, HTTP routes are).
RAN = RAN or 0

aio:http_get("/open", function(fd)
    RAN = RAN + 1
    fd:http_response(200, "text/plain", "open " .. tostring(fd:client_ip())
        .. " get_ip=" .. tostring((aio:get_ip(fd, fd.headers))))
end)

aio:http_get("/local4", function(fd)
    RAN = RAN + 1
    fd:http_response(200, "text/plain", "v4 only")
end, { allow = { "127.0.0.0/8" } })

aio:http_post("/not6", function(fd)
    RAN = RAN + 1
    fd:http_response(200, "text/plain", "not from ::1")
end, { allow = "0.0.0.0/0,::/0", deny = { "::1" } })

aio:http_get("/nobody", function(fd)
    RAN = RAN + 1
    fd:http_response(200, "text/plain", "unreachable")
end, { allow = {} })

aio:http_get("/users/:id", function(fd)
    RAN = RAN + 1
    fd:http_response(200, "text/plain", "user " .. fd.params.id)
end, { deny = { "10.0.0.0/8" } })

aio:websocket("/ws4", {
    open = function(ws) RAN = RAN + 1; ws:send("hello") end,
    message = function(ws, data) ws:send(data) end,
}, { allow = { "127.0.0.1" } })

aio:http_get("/ran", function(fd)
    fd:http_response(200, "text/plain", tostring(RAN))
end)
