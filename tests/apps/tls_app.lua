-- TLS tests (tests/test_tls.py): the scheme as Lua sees it, a WebSocket that
-- says its scheme, and outgoing TLS (aio:connect, aio:connect2, http_client) to
-- this server's own port, with or without the test CA.
local http_client = require("aio.lib.http_client")

aio:http_get("/scheme", function(fd)
    fd:http_response(200, "text/plain", fd.scheme)
end)

aio:websocket("/ws", { open = function(ws) ws:send(ws.scheme) end })

-- big bodies and messages through the TLS transport: echoed back
aio:http_post("/echo", function(fd, query, headers, body)
    fd:http_response(200, "application/octet-stream", body)
end)
aio:websocket("/echo-ws", { message = function(ws, data, binary) ws:send(data, binary) end },
              { max_message = 4 * 1024 * 1024 })

-- opts from the query: ca=PATH, verify=0, name=SERVER_NAME
local function tls_opts(query)
    local q = aio:parse_query(query)
    return { tls = true, ca_file = q.ca, verify = q.verify ~= "0", server_name = q.name }
end

-- aio:connect over TLS: one request to /scheme, answered with what came back
aio:http_get("/connect", function(fd, query)
    local sock, err = aio:connect(ELFD, "localhost", PORT, tls_opts(query))
    if not sock then return fd:http_response(500, "text/plain", "connect: " .. err) end
    local got = {}
    sock.on_data = function(self, elfd, childfd, data) got[#got + 1] = data end
    sock.on_close = function(self, elfd, childfd, reason)
        local text = table.concat(got)
        if text == "" then
            fd:http_response(502, "text/plain", "closed: " .. tostring(reason))
        else
            fd:http_response(200, "text/plain", text:match("\r\n\r\n(.*)$") or text)
        end
    end
    sock:write("GET /scheme HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
end)

-- aio:connect2 (80s style: ssl = aio:get_ssl_context{...})
aio:http_get("/connect2", function(fd, query)
    local q = aio:parse_query(query)
    local ctx = aio:get_ssl_context({ ca_file = q.ca, verify = q.verify ~= "0" })
    local sock = aio:await(aio:connect2({ host = "localhost", port = PORT, ssl = ctx }))
    if iserror(sock) then return fd:http_response(502, "text/plain", sock.error) end
    sock:close()
    fd:http_response(200, "text/plain", "connected")
end)

aio:http_get("/client", function(fd, query)
    local q = aio:parse_query(query)
    local res = aio:await(http_client:GET("https://localhost:" .. PORT .. "/scheme",
        { ca_file = q.ca, verify = q.verify ~= "0" }))
    if iserror(res) then return fd:http_response(502, "text/plain", res.error) end
    fd:http_response(200, "text/plain", res.body)
end)
