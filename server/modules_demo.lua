-- The -m example: ./scripts/80.sh server/modules_demo.lua -m modules/example.py
--   curl 'http://localhost:8080/upper?text=hello'      -> HELLO
--   curl 'http://localhost:8080/resolve?host=localhost' -> ["127.0.0.1","::1"]
if example == nil then
    error("start with -m modules/example.py (the module gives example.upper and example.resolve)", 0)
end

aio:http_get("/upper", function(fd, query)
    local text = aio:parse_query(query).text or ""
    fd:http_response(200, "text/plain; charset=utf-8", example.upper(text))
end)

aio:http_get("/resolve", function(fd, query)
    local addresses, err = aio:await(example.resolve(aio:parse_query(query).host or "localhost"))
    if not addresses then return fd:http_response(502, "text/plain", tostring(err)) end
    fd:http_response(200, nil, codec.array(addresses))
end)
