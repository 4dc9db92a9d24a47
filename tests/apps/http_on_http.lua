-- Test app for tests/test_http.py: an 80s-style aio:on_http override that takes
-- every /dyn/... request itself and hands the rest to the routes (aio:route).
--
--   ANY  /dyn/NAME  -> 200 "dyn METHOD NAME N" (N = #body), from the override
--   GET  /routed    -> 200 "routed", from the route table via aio:route
--   anything else   -> aio:route's 404 / 405

aio:http_get("/routed", function(fd)
    fd:http_response(200, "text/plain; charset=utf-8", "routed")
end)

function aio:on_http(fd, method, path, query, headers, body)
    if path:sub(1, 5) == "/dyn/" then
        return fd:http_response(200, "text/plain; charset=utf-8",
            "dyn " .. method .. " " .. path:sub(6) .. " " .. #body)
    end
    return self:route(fd, method, path, query, headers, body)
end
